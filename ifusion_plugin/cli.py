"""Command line: ``python -m ifusion_plugin.cli {fit,validate,test,predict} --config recipes/twin.yaml``,
and ``python -m ifusion_plugin.cli export --ckpt ...`` (serving files, see
:mod:`ifusion_plugin.export_command`).

A thin :class:`~lightning.pytorch.cli.LightningCLI`: the model is a :class:`~ifusion_plugin.task.CTRTask`
whose host (and the host's fusion layer) is a ``class_path`` in YAML, the data any subclass of
``CTRDataModule``. The datamodule's ``feature_spec`` is linked to the task once the datamodule
exists, so vocabulary sizes are never written by hand.

Differences from a plain ``LightningCLI``:

- ``fit --run_test true`` tests after training, on the **best** checkpoint of the trainer's
  ``ModelCheckpoint`` (``ckpt_path="best"``; the recipes monitor ``val_auc``), or on the final
  weights when no checkpoint was written (checkpointing turned off);
- logs (CSV by default), checkpoints and the resolved ``config.yaml`` go under ``logs/``, never
  into the working directory, where the config would overwrite a user's own file;
- after ``fit``, ``validate`` and ``test`` a table of the final epoch metrics is printed;
- ``predict`` scores the split ``--predict_split`` (default ``test``) and writes one
  ``row, user, target_item, label, prob, user_id, item_id`` row per sample to
  ``--predictions_path``: Parquet when the path ends in ``.parquet``, else CSV (default
  ``logs/predictions.csv``). ``row`` is the sample's index in the split (for a prepared-sample
  table, its row in that split's file); ``user`` and ``target_item`` are the encoded ids of the
  batch layout (0 padding, 1 out-of-vocabulary); ``user_id`` and ``item_id`` are the same
  sample's ids as the source data spells them (ints, or strings where the source has string ids;
  an out-of-vocabulary item keeps its true id), from
  :meth:`~ifusion_plugin.data.CTRDataModule.raw_ids`. Every built-in datamodule provides them;
  with a datamodule that does not (``has_raw_ids`` false, or not a ``CTRDataModule``) the file
  has the first five columns only and a ``UserWarning`` says so. An existing file is replaced
  only with ``--overwrite_predictions true``.
"""

from __future__ import annotations

import csv
import functools
import importlib
import os
import sys
import warnings
from typing import Any, Optional

import numpy as np
import torch
from jsonargparse import Namespace

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from .batch import FIRST_ID, FeatureSpec
from .task import CTRTask


__all__ = ["CTRLightningCLI", "check_model_config", "format_summary", "main", "write_predictions"]

PREDICT_SPLITS = ("train", "valid", "test")
PREDICTION_COLUMNS = ("row", "user", "target_item", "label", "prob")
#: Appended after :data:`PREDICTION_COLUMNS` when the datamodule keeps raw ids: readers that
#: take the first five columns by position keep working.
RAW_ID_PREDICTION_COLUMNS = ("user_id", "item_id")

#: Defaults every run gets unless the YAML or the command line says otherwise.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 1,
    "default_root_dir": "logs",
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}},
}


def format_summary(metrics: dict[str, float], title: str) -> str:
    """A two-column text table of ``metrics`` (sorted by name) under ``title``."""
    if not metrics:
        return f"{title}: no metrics logged"
    width = max(len(name) for name in metrics)
    rule = "-" * (width + 14)
    rows = [f"{name:<{width}}  {value:>12.6f}" for name, value in sorted(metrics.items())]
    return "\n".join([rule, title, rule, *rows, rule])


def write_predictions(columns: dict[str, np.ndarray], path: str) -> None:
    """Write equal-length prediction columns to ``path``: Parquet for ``.parquet``, else CSV.

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a truncated file behind.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    base, ext = os.path.splitext(path)
    partial = f"{base}.partial{ext}"
    if ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), partial)
    else:
        with open(partial, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(columns))
            writer.writerows(zip(*(values.tolist() for values in columns.values())))
    os.replace(partial, path)


def _factory(node: Any) -> Any:
    """A config node as Python: a ``class_path`` block becomes ``partial(cls, **init_args)``."""
    if isinstance(node, Namespace) and "class_path" in node:
        module, _, name = node.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        init_args = node.get("init_args") or Namespace()
        kwargs = {k: _factory(v) for k, v in vars(init_args).items() if not k.startswith("__")}
        return functools.partial(cls, **kwargs)
    if isinstance(node, Namespace):
        return {k: _factory(v) for k, v in vars(node).items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_factory(v) for v in node]
    return node


def check_model_config(model: Any, data: Any) -> None:
    """Build the configured host on a placeholder :class:`FeatureSpec` shaped like the data
    config (sequence lengths, context columns), so constructor errors of the host and its fusion
    layer (dimensions, heads, options) surface before the datamodule reads any file.

    Nothing is checked when the model config has no ``host`` block (a built module).
    """
    host = getattr(getattr(model, "init_args", None), "host", None)
    if not (isinstance(host, Namespace) and "class_path" in host):
        return
    options = vars(getattr(data, "init_args", None) or Namespace())
    context = options.get("context_columns") or []
    spec = FeatureSpec(
        num_users=FIRST_ID + 2, num_items=FIRST_ID + 2, num_cates=FIRST_ID + 2,
        long_len=int(options.get("long_len") or 100), num_sessions=int(options.get("num_sessions") or 4),
        session_len=int(options.get("session_len") or 5), context_cardinalities=tuple(FIRST_ID + 2 for _ in context),
    )
    _factory(host)(spec)


class CTRLightningCLI(LightningCLI):
    """LightningCLI with the ``data.feature_spec -> model.feature_spec`` link, ``--run_test`` and
    a final metrics summary. Construct it like ``LightningCLI``; :func:`main` does so for
    :class:`CTRTask` and ``CTRDataModule``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # On instantiate: the spec is known only after the datamodule reads (or builds) its cache.
        parser.link_arguments("data.feature_spec", "model.init_args.feature_spec", apply_on="instantiate")
        # Added to every subcommand's parser (LightningCLI has no per-subcommand hook); only
        # `fit` reads it, and it never reaches the Trainer methods.
        parser.add_argument(
            "--run_test",
            type=bool,
            default=False,
            help="fit only: after training, run the test split on the best checkpoint "
            "(ckpt_path='best'), or on the final weights when no checkpoint was saved",
        )
        parser.add_argument(
            "--predictions_path",
            type=str,
            default=os.path.join("logs", "predictions.csv"),
            help="predict only: file receiving one 'row, user, target_item, label, prob, user_id, item_id' row "
            "per sample (user_id/item_id: the raw ids of the source data); Parquet when it ends in .parquet, else CSV",
        )
        parser.add_argument(
            "--predict_split",
            type=str,
            default="test",
            help="predict only: the split to score, 'train', 'valid' or 'test'",
        )
        parser.add_argument(
            "--overwrite_predictions",
            type=bool,
            default=False,
            help="predict only: replace an existing --predictions_path",
        )

    def predict(self, **kwargs: Any) -> None:
        """``trainer.predict`` on ``--predict_split`` (LightningCLI calls this instead of it),
        then the predictions file."""
        path = self._get(self.config, "predictions_path")
        split = self._get(self.config, "predict_split", "test")
        if split not in PREDICT_SPLITS:
            raise ValueError(f"--predict_split must be one of {', '.join(PREDICT_SPLITS)}, got {split!r}")
        # Checked before predicting: an hour of scoring must not end on an existing file.
        if os.path.exists(path) and not self._get(self.config, "overwrite_predictions", False):
            raise FileExistsError(f"--predictions_path {path} exists; pass --overwrite_predictions true to replace it")
        if self.datamodule is not None:
            self.datamodule.predict_split = split
        batches = self.trainer.predict(**kwargs)
        if not self.trainer.is_global_zero or batches is None:
            return
        # `batches` is a list of per-dataloader lists when predicting on several loaders.
        parts = [part for batch in batches for part in (batch if isinstance(batch, list) else [batch])]
        columns = {name: torch.cat([part[name] for part in parts]).cpu().numpy() for name in PREDICTION_COLUMNS[1:]}
        # The predict loader keeps the split's order, so a running index is the sample's row.
        columns = {"row": np.arange(len(columns["prob"])), **columns}
        columns.update(self._raw_id_columns(split, columns["row"]))
        write_predictions(columns, path)
        print(f"predictions for the {split} split written to {path}", flush=True)

    def _raw_id_columns(self, split: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The raw ``user_id`` and ``item_id`` of the predicted ``rows`` of ``split``.

        Args:
            split: the predicted split.
            rows: int array of shape ``(R,)``, the predicted samples' rows in the split.

        Returns:
            ``{"user_id": (R,), "item_id": (R,)}``, or ``{}`` with a ``UserWarning`` when the
            datamodule keeps no raw ids (the file then has the encoded ids only).
        """
        datamodule = self.datamodule
        if not getattr(datamodule, "has_raw_ids", False):
            reason = (
                "there is no datamodule" if datamodule is None
                else f"{type(datamodule).__name__} keeps no raw ids (see CTRDataModule.raw_ids)"
            )
            warnings.warn(
                f"predict: the predictions file gets no {'/'.join(RAW_ID_PREDICTION_COLUMNS)} columns: {reason}; "
                "join on 'row' to recover them",
                UserWarning,
                stacklevel=2,
            )
            return {}
        raw = datamodule.raw_ids(split)
        return {name: raw[name][rows] for name in RAW_ID_PREDICTION_COLUMNS}

    def instantiate_classes(self) -> None:
        """Build the host (and its fusion layer) once on a placeholder spec before anything reads
        data, so a bad model setting fails in seconds, not after a dataset build."""
        check_model_config(self._get(self.config, "model"), self._get(self.config, "data"))
        super().instantiate_classes()

    def after_fit(self) -> None:
        self._print_summary("fit (last validation)", prefixes=("val_", "train_"))
        if not self._get(self.config, "run_test", False):
            return
        callback = self.trainer.checkpoint_callback
        has_best = callback is not None and bool(getattr(callback, "best_model_path", ""))
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)
        self._print_summary("test (best checkpoint)" if has_best else "test (final weights)", prefixes=("test_",))

    def after_validate(self) -> None:
        self._print_summary("validate", prefixes=("val_",))

    def after_test(self) -> None:
        self._print_summary("test", prefixes=("test_",))

    @rank_zero_only
    def _print_summary(self, title: str, prefixes: tuple[str, ...]) -> None:
        metrics = {
            name: float(value)
            for name, value in self.trainer.callback_metrics.items()
            if name.startswith(prefixes) and getattr(value, "numel", lambda: 1)() == 1
        }
        print(format_summary(metrics, title), flush=True)


def main(
    args: Optional[list[str]] = None, *, datamodule_class: Optional[type[LightningDataModule]] = None
) -> CTRLightningCLI:
    """Run the CLI and return it (its ``trainer``, ``model`` and ``datamodule`` stay inspectable).

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv[1:]``.
        datamodule_class: base class of the accepted datamodules; ``None`` means
            ``ifusion_plugin.data.CTRDataModule`` (any of its subclasses is accepted in YAML).
    """
    if datamodule_class is None:
        from .data import CTRDataModule  # imported late: pulls in datasets/pyarrow

        datamodule_class = CTRDataModule
    return CTRLightningCLI(
        CTRTask,
        datamodule_class,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        args=args,
        # config.yaml goes into the logger's directory under logs/; a rerun into an existing
        # version directory would otherwise refuse to start.
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def run(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m ifusion_plugin.cli``: ``export`` or a LightningCLI subcommand.

    Args:
        argv: the arguments; ``None`` reads ``sys.argv[1:]`` (LightningCLI then reads them
            itself, as it expects when run from the command line).
    """
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] == "export":
        from .export_command import main as export_main

        return export_main(words[1:])
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run())
