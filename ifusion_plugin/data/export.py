"""Write a built-in dataset's splits as a prepared-sample table, for other libraries or a round trip.

Usage::

    python -m ifusion_plugin.data.export --data movielens-1m --root ../shared/data/movielens-1m \\
        --out exports/ml1m [--format parquet|csv] [--max_history 200] [--num_sessions K --session_len N] \\
        [--negative_sampling uniform|popularity] [--init train_per_user=20 ...]

What is written (``OUT/train``, ``OUT/valid``, ``OUT/test`` with the ending of ``--format``, plus
``OUT/export.json``): exactly the samples of the built-in module, in its row order, with

- ``user_id``, ``item_id``, ``cate_id``: the module's **vocabulary ids** (0 pad, 1 OOV, known ids
  from 2), not the raw ids of the source;
- ``label``: 0/1;
- ``item_history``/``cate_history``: the sample's history, oldest first, as the module sees it,
  cut to its latest ``--max_history`` behaviours (pads dropped). It is taken from the module
  built with ``long_len=max_history``, ``session_split="chunk"`` and ``long_includes_short=True``,
  whose long part is precisely that suffix of the full history (``--num_sessions`` and
  ``--session_len`` are passed on, for sources whose content depends on them, e.g. the
  synthetic ``drift_len`` default of ``num_sessions * session_len``);
- ``export.json``: the source, the options and the module's FeatureSpec sizes.

Loading the export back with ``TableDataModule(root=OUT, encoded_ids=True, ...)`` and any
``chunk`` options whose history fits in ``max_history`` (``long_len + num_sessions *
session_len <= max_history``, or ``long_len, num_sessions * session_len <= max_history`` with
``long_includes_short``) gives batches identical to the built-in module's with those options.
``history_timestamps`` are not written: the built-in modules cache no times, so ``time_gap``
sessions cannot be rebuilt from an export.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
from dataclasses import asdict
from typing import Literal, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import yaml

from ..batch import PAD_ID, FeatureSpec
from .datamodule import CTRDataModule
from .table_datamodule import EXPORT_META

__all__ = ["SHORT_NAMES", "resolve_datamodule", "export_samples", "export_datamodule", "main"]

#: Short names of the built-in sources accepted by ``--data``.
SHORT_NAMES: dict[str, str] = {
    "movielens-1m": "ifusion_plugin.data.MovieLens1MDataModule",
    "amazon-grocery": "ifusion_plugin.data.AmazonGroceryDataModule",
    "taobao": "ifusion_plugin.data.TaobaoDataModule",
    "synthetic": "ifusion_plugin.data.SyntheticDataModule",
    "amazon-books-dien": "ifusion_plugin.data.AmazonBooksDIENDataModule",
}
SPLITS = ("train", "valid", "test")


def resolve_datamodule(name: str) -> type[CTRDataModule]:
    """The DataModule class of a short name (:data:`SHORT_NAMES`) or a ``module.Class`` path."""
    path = SHORT_NAMES.get(name, name)
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"--data must be one of {sorted(SHORT_NAMES)} or a class path 'package.module.Class', got {name!r}")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, CTRDataModule)):
        raise ValueError(f"{path!r} is not a CTRDataModule subclass")
    return cls


def _histories(items: np.ndarray, cates: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row the non-pad entries of ``items``/``cates`` (shape ``(R, L)``), oldest first."""
    present = items != PAD_ID
    return [row[mask] for row, mask in zip(items, present)], [row[mask] for row, mask in zip(cates, present)]


def export_samples(columns: Mapping[str, np.ndarray]) -> pa.Table:
    """One split of a module's stored samples as a table.

    Args:
        columns: the split's sample columns (``user``, ``target_item``, ``target_cate``,
            ``label`` of shape ``(R,)`` and ``long_items``/``long_cates`` of shape ``(R, L)``),
            taken from a module whose long part is the whole history it keeps
            (``long_includes_short=True``).

    Returns:
        A table with ``user_id``, ``item_id``, ``cate_id``, ``label`` (int64) and
        ``item_history``, ``cate_history`` (list<int64>), one row per sample in order.
    """
    items, cates = _histories(np.asarray(columns["long_items"]), np.asarray(columns["long_cates"]))
    list_type = pa.list_(pa.int64())
    return pa.table(
        {
            "user_id": pa.array(np.asarray(columns["user"], dtype=np.int64)),
            "item_id": pa.array(np.asarray(columns["target_item"], dtype=np.int64)),
            "cate_id": pa.array(np.asarray(columns["target_cate"], dtype=np.int64)),
            "label": pa.array(np.asarray(columns["label"]).astype(np.int64)),
            "item_history": pa.array(items, type=list_type),
            "cate_history": pa.array(cates, type=list_type),
        }
    )


def _write(table: pa.Table, path: str, fmt: str, list_separator: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
        return
    for name in ("item_history", "cate_history"):
        text = [list_separator.join(str(v) for v in row) for row in table[name].to_pylist()]
        table = table.set_column(table.column_names.index(name), name, pa.array(text, pa.string()))
    pa_csv.write_csv(table, path)


def export_datamodule(
    data: str | type[CTRDataModule],
    out: str,
    *,
    root: Optional[str] = None,
    fmt: Literal["parquet", "csv"] = "parquet",
    max_history: int = 200,
    num_sessions: Optional[int] = None,
    session_len: Optional[int] = None,
    init_args: Optional[Mapping[str, object]] = None,
    cache_dir: Optional[str] = None,
    list_separator: str = " ",
    negative_sampling: Optional[str] = None,
) -> dict[str, str]:
    """Export a built-in source's three splits as a table (see the module docstring).

    Args:
        data: a short name of :data:`SHORT_NAMES`, a class path, or the class.
        out: output directory (created; existing split files are replaced).
        root: the source's ``root`` (ignored by sources without one, e.g. synthetic).
        fmt: ``parquet`` or ``csv`` (lists joined by ``list_separator``).
        max_history: the most recent behaviours kept per history.
        num_sessions, session_len: passed to the source when given (they do not change the
            exported histories, but a source's content may depend on them).
        init_args: further constructor arguments of the source (``train_per_user``, ``seed``,
            ``num_users``, ...). Sequence options are set by the exporter.
        cache_dir: cache directory of the source module (``None``: its default).
        list_separator: separator of list columns in CSV output.
        negative_sampling: ``"uniform"`` or ``"popularity"``, passed to sources that sample
            negatives (``None``: the source's default); a source whose negatives come with its
            files (Amazon Books DIEN) rejects it.

    Returns:
        ``{split: path}`` of the written files (and ``"meta"``: the ``export.json`` path).
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format must be 'parquet' or 'csv', got {fmt!r}")
    if max_history <= 0:
        raise ValueError(f"max_history must be positive, got {max_history}")
    cls = resolve_datamodule(data) if isinstance(data, str) else data
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, object] = dict(init_args or {})
    fixed: dict[str, object] = {"long_len": max_history, "long_includes_short": True, "cache_dir": cache_dir}
    for name, value in (("num_sessions", num_sessions), ("session_len", session_len)):
        if value is not None:
            fixed[name] = value
    if "session_split" in params:
        fixed["session_split"] = "chunk"
    if negative_sampling is not None:
        if "negative_sampling" not in params:
            raise ValueError(f"negative_sampling: {cls.__name__} reads its negatives from its files and samples none")
        fixed["negative_sampling"] = negative_sampling
    if root is not None and "root" in params:
        fixed["root"] = root
    clash = sorted(set(kwargs) & (set(fixed) | {"num_sessions", "session_len", "session_split", "session_gap_seconds",
                                                "session_gap_days"}))
    if clash:
        raise ValueError(f"init_args must not set {clash}: the exporter fixes the sequence options")
    module = cls(**fixed, **kwargs)
    spec: FeatureSpec = module.feature_spec
    if spec.num_behaviors:
        # The export holds one history per sample; a typed source's long-term part and sessions
        # may hold different behaviour kinds, which that history cannot carry: refuse rather
        # than drop the types.
        raise ValueError(
            f"{cls.__name__} has behaviour types (num_behaviors={spec.num_behaviors}); the exporter writes no "
            f"behavior_history yet: write such a table from the raw log instead (docs/table.md)"
        )
    os.makedirs(out, exist_ok=True)
    written: dict[str, str] = {}
    for split in SPLITS:
        columns = module.split(split).select_columns(["user", "target_item", "target_cate", "label", "long_items", "long_cates"])[:]
        path = os.path.join(out, f"{split}.{fmt}")
        _write(export_samples(columns), path, fmt, list_separator)
        written[split] = path
    meta = {
        "source": f"{cls.__module__}.{cls.__qualname__}",
        "root": root,
        "init_args": kwargs,
        "max_history": max_history,
        "num_sessions": num_sessions,
        "session_len": session_len,
        "negative_sampling": getattr(module, "negative_sampling", None),
        "ids": "vocabulary ids of the source module (0 pad, 1 OOV, known from 2); load with encoded_ids: true",
        "feature_spec": {k: v for k, v in asdict(spec).items() if k in ("num_users", "num_items", "num_cates")},
    }
    meta_path = os.path.join(out, EXPORT_META)
    with open(meta_path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=1, default=str)
    written["meta"] = meta_path
    return written


def _parse_init(pairs: Sequence[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--init takes KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, str]:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m ifusion_plugin.data.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help=f"one of {sorted(SHORT_NAMES)} or a CTRDataModule class path")
    parser.add_argument("--root", default=None, help="the source's raw-file directory (its default when omitted)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--max_history", type=int, default=200, help="latest behaviours kept per history (default 200)")
    parser.add_argument("--num_sessions", type=int, default=None, help="passed to the source (its default when omitted)")
    parser.add_argument("--session_len", type=int, default=None, help="passed to the source (its default when omitted)")
    parser.add_argument("--init", action="append", default=[], metavar="KEY=VALUE",
                        help="another constructor argument of the source, e.g. --init train_per_user=5 (repeatable)")
    parser.add_argument("--cache_dir", default=None, help="the source's cache directory (its default when omitted)")
    parser.add_argument("--list_separator", default=" ", help="CSV only: separator of list entries")
    parser.add_argument("--negative_sampling", choices=("uniform", "popularity"), default=None,
                        help="how the source draws negatives (its default, uniform, when omitted)")
    args = parser.parse_args(argv)
    written = export_datamodule(args.data, args.out, root=args.root, fmt=args.format, max_history=args.max_history,
                                num_sessions=args.num_sessions, session_len=args.session_len,
                                init_args=_parse_init(args.init), cache_dir=args.cache_dir,
                                list_separator=args.list_separator, negative_sampling=args.negative_sampling)
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


if __name__ == "__main__":
    main()
