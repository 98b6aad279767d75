"""FuxiCTR 2.3.10's own LongCTR TWIN and SIM on the peer split, over seeds: how lucky is seed 2026?

PEERS.md reports one seed (2026) of FuxiCTR's TWIN and SIM on the MovieLens-1M peer split with
popularity negatives. This script runs FuxiCTR's own code (its LongCTR model classes, data loader,
``BaseModel.fit``/``evaluate`` and metrics) at the peer's settings for any list of seeds, one
fresh process per (model, seed), and appends one JSON line per run to ``<out>/runs.jsonl``;
``--report`` writes ``<out>/table.md`` (mean +- sample std over seeds, min-max, the published
figure beside it). Pairs already in runs.jsonl are skipped, so an interrupted sweep resumes.

FuxiCTR is not a dependency of this project. Install it beside the project's venv, not into it::

    . /work/venv/bin/activate   # torch 2.13.0 CPU comes from here
    pip install --target /tmp/fxlib --no-deps fuxictr==2.3.10 polars polars-runtime-32 h5py

(pandas, pyyaml, scikit-learn, tqdm, pyarrow, numpy come from the venv.) ``ray[data]``, which
FuxiCTR 2.3.10 lists, is not installed: it is imported only by ``fuxictr.preprocess.build_dataset``
(the CSV-to-parquet transform, not run for a prebuilt LongCTR dataset with
``rebuild_dataset: False``) and by ``fuxictr.pytorch.dataloaders`` (whose ``RankDataLoader`` only
dispatches to ``LongCTRDataLoader`` here, so this script builds the three LongCTR loaders with
the same arguments itself). The peer's ``run_expid.py`` also asserts ``fuxictr == 2.3.2``
(``model_zoo/LongCTR/fuxictr_version.py``), so it cannot have run unmodified on 2.3.10 either;
this script follows its order of operations (seed, feature processor, feature map, model,
loaders, fit, valid evaluation, test evaluation).

Commands (from the repository root)::

    python ../shared/benchmarks/ml1m_peer_split.py --out /tmp/peer/pop --negatives popularity
    PYTHONPATH=/tmp/fxlib python -m benchmarks.fuxictr_seeds --models twin --seeds 2026
    PYTHONPATH=/tmp/fxlib python -m benchmarks.fuxictr_seeds --models twin sim --seeds 2026 0 1 2 3 4 5 6 7 8
    python -m benchmarks.fuxictr_seeds --report

The split is converted once to FuxiCTR's LongCTR layout under ``--work`` (default /tmp/fxwork):
``user_info.parquet`` (one row per sample: its own ``item_history`` as ``full_item_seq``, so
``user_index`` is the global row number over train, valid and test), ``item_info.parquet`` (row
k = item id k: ``item_id``, ``cate_id``; row 0 the padding item) and ``{train,valid,test}.parquet``
(``user_index, item_index, seq_len, user_id, label``, all integers: LongCTR's loader stacks the
columns into one array and indexes with them). The collator takes ``full_item_seq[:seq_len]``,
keeps the last ``max_len`` (200), left-pads to the batch's longest history and appends the
target, which gives the model exactly the split's ``item_history`` (oldest first) and
``cate_history``. FuxiCTR's checkpoints, logs and feature map go under ``--work``; only small
text (runs.jsonl, table.md, the YAML configs) is written to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "fuxictr-seeds"
DEFAULT_DATA = Path("/tmp/peer/pop")
DEFAULT_WORK = Path("/tmp/fxwork")
DATASET_ID = "ml1m_peer_pop_longctr"
INSTALL_HINT = (
    "FuxiCTR 2.3.10 is not importable. Install it outside the project venv and put it on "
    "PYTHONPATH:\n  pip install --target /tmp/fxlib --no-deps fuxictr==2.3.10 polars "
    "polars-runtime-32 h5py\n  PYTHONPATH=/tmp/fxlib python -m benchmarks.fuxictr_seeds ..."
)

#: PEERS.md, second table (popularity negatives), seed 2026: (test AUC, valid AUC, test gAUC, logloss).
PUBLISHED = {
    "TWIN": {
        "test_auc": 0.7349,
        "val_auc": 0.7432,
        "test_gauc": 0.7250,
        "test_logloss": 0.6047,
    },
    "SIM": {
        "test_auc": 0.7259,
        "val_auc": 0.7320,
        "test_gauc": 0.7161,
        "test_logloss": 0.6146,
    },
    "DIN": {
        "test_auc": 0.6733,
        "val_auc": 0.6822,
        "test_gauc": 0.6735,
        "test_logloss": 0.6456,
    },
}
MODELS = {"twin": "TWIN", "sim": "SIM"}

#: Decisions this harness had to make; written into table.md.
CHOICES = (
    (
        "FuxiCTR ships no LongCTR dataset config: the data is the split in LongCTR layout "
        "(one user_info row per sample), `rebuild_dataset: False`, ids used as they are "
        "(0 = padding) with `vocab_size` = max id + 2 (pad, ids, OOV): user_id 6042, item_id 3954, "
        "cate_id 20; the variant-vocab-max1/ run uses max id + 1"
    ),
    (
        "features in this order: user_id (source user), item_id and cate_id (source item, from "
        "item_info); user_index, item_index, seq_len are meta columns; no share_embedding (the "
        "history and the target read the same item_id / cate_id tables through item_info)"
    ),
    "gAUC: `group_id: user_id` and metrics [logloss, AUC, gAUC]; gAUC computed on test only",
    (
        "Base section of FuxiCTR's twin/sim model_config.yaml kept: num_workers 3, "
        "early_stop_patience 2, save_best_only, eval once per epoch, monitor AUC (max), shuffle, "
        "no dropout, no batch norm, regularisers 0, relu, Kc_cross_features 0 (TWIN), alpha = "
        "beta = 1 (SIM), max_gradient_norm 10 (BaseModel.fit default)"
    ),
    "torch.set_num_threads(threads) before FuxiCTR is imported; one fresh process per run",
)

#: FuxiCTR's ``model_zoo/LongCTR/config/{twin,sim}_config/model_config.yaml`` ``Base`` section,
#: with the roots moved under the work directory.
BASE = {
    "num_workers": 3,
    "verbose": 1,
    "early_stop_patience": 2,
    "pickle_feature_encoder": True,
    "save_best_only": True,
    "eval_steps": None,
    "debug_mode": False,
    "group_id": None,
    "use_features": None,
    "feature_specs": None,
    "feature_config": None,
}

#: What FuxiCTR's ``TWIN_default`` and ``SIM_default`` templates share (same repository files).
_SHARED_DEFAULTS: dict[str, Any] = {
    "loss": "binary_crossentropy",
    "metrics": ["logloss", "AUC"],
    "task": "binary_classification",
    "optimizer": "adam",
    "learning_rate": 1.0e-3,
    "embedding_regularizer": 0,
    "net_regularizer": 0,
    "batch_size": 8192,
    "embedding_dim": 4,
    "dnn_hidden_units": [64, 32],
    "dnn_activations": "relu",
    "attention_dim": 64,
    "num_heads": 2,
    "attention_dropout": 0,
    "topk": 50,
    "short_seq_len": 50,
    "net_dropout": 0,
    "batch_norm": False,
    "epochs": 100,
    "shuffle": True,
    "seed": 20222023,
    "monitor": "AUC",
    "monitor_mode": "max",
    "max_len": 50,
    "accumulation_steps": 1,
}
#: The templates themselves: the shared part plus each model's own keys.
DEFAULTS: dict[str, dict[str, Any]] = {
    "TWIN": {"model": "TWIN", **_SHARED_DEFAULTS, "Kc_cross_features": 0},
    "SIM": {"model": "SIM", **_SHARED_DEFAULTS, "gsu_type": "soft", "alpha": 1, "beta": 1},
}

#: What PEERS.md states (the rest stays at FuxiCTR's defaults above).
PEER = {
    "batch_size": 1024,
    "embedding_dim": 32,
    "dnn_hidden_units": [256, 128, 64],
    "attention_dim": 64,
    "num_heads": 2,
    "topk": 50,
    "short_seq_len": 20,
    "max_len": 200,
    "learning_rate": 1.0e-3,
    "epochs": 1,
    # gAUC is reported in PEERS.md, grouped by user: FuxiCTR needs group_id and the metric.
    "metrics": ["logloss", "AUC", "gAUC"],
    "group_id": "user_id",
}


def _import_fuxictr() -> dict[str, Any]:
    """Import FuxiCTR's pieces used here without the ray-importing package ``__init__`` files."""
    try:
        import fuxictr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(INSTALL_HINT) from exc
    pkg = Path(fuxictr.__file__).parent
    # fuxictr/preprocess/__init__.py imports build_dataset, which imports ray at module level;
    # register the package without running its __init__ and import the submodules directly.
    if "fuxictr.preprocess" not in sys.modules:
        stub = types.ModuleType("fuxictr.preprocess")
        stub.__path__ = [str(pkg / "preprocess")]
        sys.modules["fuxictr.preprocess"] = stub
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess.feature_processor import FeatureProcessor
    from fuxictr.pytorch.torch_utils import seed_everything
    from fuxictr.utils import load_config, print_to_json, set_logger

    spec = importlib.util.find_spec("model_zoo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            INSTALL_HINT + "\n(model_zoo/LongCTR from the fuxictr wheel not found)"
        )
    longctr = Path(next(iter(spec.submodule_search_locations))) / "LongCTR"
    sys.path.insert(0, str(longctr))
    from longctr_dataloader import LongCTRDataLoader
    from SIM import SIM
    from TWIN import TWIN

    return {
        "fuxictr": fuxictr,
        "FeatureProcessor": FeatureProcessor,
        "FeatureMap": FeatureMap,
        "seed_everything": seed_everything,
        "load_config": load_config,
        "print_to_json": print_to_json,
        "set_logger": set_logger,
        "LongCTRDataLoader": LongCTRDataLoader,
        "TWIN": TWIN,
        "SIM": SIM,
    }


def prepare_longctr(data: Path, data_dir: Path) -> dict[str, int]:
    """Convert the peer split to FuxiCTR's LongCTR layout under ``data_dir``; return vocab maxima."""
    import numpy as np
    import pandas as pd

    meta_path = data_dir / "longctr_meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    splits = {
        s: pd.read_parquet(data / f"{s}.parquet") for s in ("train", "valid", "test")
    }
    item_to_cate: dict[int, int] = {}
    offset = 0
    user_seqs: list[np.ndarray] = []
    for name, df in splits.items():
        hist = df["item_history"].to_list()
        chist = df["cate_history"].to_list()
        for items, cates in zip(hist, chist):
            item_to_cate.update(
                zip(np.asarray(items).tolist(), np.asarray(cates).tolist())
            )
        item_to_cate.update(zip(df["item_id"].tolist(), df["cate_id"].tolist()))
        user_seqs.extend(np.asarray(h, dtype=np.int64) for h in hist)
        out = pd.DataFrame(
            {
                "user_index": np.arange(offset, offset + len(df), dtype=np.int64),
                "item_index": df["item_id"].to_numpy(np.int64),
                "seq_len": df["item_history"].map(len).to_numpy(np.int64),
                "user_id": df["user_id"].to_numpy(np.int64),
                "label": df["label"].to_numpy(np.int64),
            }
        )
        out.to_parquet(data_dir / f"{name}.parquet", index=False)
        offset += len(df)
    if 0 in item_to_cate:
        raise ValueError(
            "item id 0 occurs in the split; LongCTR reserves it for padding"
        )
    pd.DataFrame(
        {
            "user_index": np.arange(len(user_seqs), dtype=np.int64),
            "full_item_seq": user_seqs,
        }
    ).to_parquet(data_dir / "user_info.parquet", index=False)
    max_item = max(item_to_cate)
    cate = np.zeros(max_item + 1, dtype=np.int64)
    for item, c in item_to_cate.items():
        cate[item] = c
    pd.DataFrame(
        {
            "item_index": np.arange(max_item + 1, dtype=np.int64),
            "item_id": np.arange(max_item + 1, dtype=np.int64),
            "cate_id": cate,
        }
    ).to_parquet(data_dir / "item_info.parquet", index=False)
    meta = {
        "max_user_id": int(max(int(d["user_id"].max()) for d in splits.values())),
        "max_item_id": int(max_item),
        "max_cate_id": int(cate.max()),
        "samples": offset,
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def dataset_config(data_dir: Path, meta: dict[str, int]) -> dict[str, Any]:
    """FuxiCTR dataset config for the prebuilt LongCTR data (ids used as is, 0 = padding).

    ``vocab_size`` = max id + 2: padding 0, the ids, FuxiCTR's OOV index last (what its
    tokenizer rebuilds from ``vocab_size`` when ``rebuild_dataset`` is False).
    """

    def meta_col(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "active": True,
            "dtype": "int",
            "type": "meta",
            "remap": False,
        }

    def cat_col(name: str, source: str, max_id: int) -> dict[str, Any]:
        return {
            "name": name,
            "active": True,
            "dtype": "int",
            "type": "categorical",
            "source": source,
            "vocab_size": max_id + 2,
            "remap": False,
        }

    return {
        DATASET_ID: {
            "data_root": str(data_dir.parent) + "/",
            "data_format": "parquet",
            "train_data": str(data_dir / "train.parquet"),
            "valid_data": str(data_dir / "valid.parquet"),
            "test_data": str(data_dir / "test.parquet"),
            "user_info": str(data_dir / "user_info.parquet"),
            "item_info": str(data_dir / "item_info.parquet"),
            "rebuild_dataset": False,
            "feature_cols": [
                meta_col("user_index"),
                meta_col("item_index"),
                meta_col("seq_len"),
                cat_col("user_id", "user", meta["max_user_id"]),
                cat_col("item_id", "item", meta["max_item_id"]),
                cat_col("cate_id", "item", meta["max_cate_id"]),
            ],
            "label_col": {"name": "label", "dtype": "float"},
        }
    }


def expid(model: str, seed: int) -> str:
    """The experiment id of one run in model_config.yaml."""
    return f"{model}_peer_pop_seed{seed}"


def model_config(models: list[str], seeds: list[int], work: Path) -> dict[str, Any]:
    """FuxiCTR model config: its Base section and one experiment per (model, seed)."""
    cfg: dict[str, Any] = {
        "Base": dict(BASE, model_root=str(work / "checkpoints") + "/")
    }
    for model in models:
        for seed in seeds:
            cfg[expid(model, seed)] = dict(
                DEFAULTS[model], **PEER, dataset_id=DATASET_ID, seed=seed
            )
    return cfg


def write_configs(
    config_dir: Path,
    models: list[str],
    seeds: list[int],
    work: Path,
    data_dir: Path,
    meta: dict[str, int],
) -> None:
    """Write model_config.yaml and dataset_config.yaml (merged with experiments already there)."""
    import yaml

    config_dir.mkdir(parents=True, exist_ok=True)
    mpath = config_dir / "model_config.yaml"
    existing = yaml.safe_load(mpath.read_text()) if mpath.exists() else {}
    existing = existing or {}
    existing.update(model_config(models, seeds, work))

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    for path, content in (
        (mpath, existing),
        (config_dir / "dataset_config.yaml", dataset_config(data_dir, meta)),
    ):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            yaml.dump(
                content, Dumper=NoAliases, sort_keys=False, default_flow_style=None
            )
        )
        tmp.replace(path)


def run_one(
    config_dir: Path, model: str, seed: int, threads: int, out: Path, command: str
) -> dict[str, Any]:
    """Train and evaluate one FuxiCTR model as run_expid.py does; append its JSON line."""
    import torch

    torch.set_num_threads(threads)
    fx = _import_fuxictr()
    import logging

    log = logging.getLogger("fuxictr_seeds")  # FuxiCTR's set_logger configures the root

    experiment_id = expid(model, seed)
    params = fx["load_config"](str(config_dir), experiment_id)
    params["gpu"] = -1
    fx["set_logger"](params)
    log.info("Params: " + fx["print_to_json"](params))
    fx["seed_everything"](seed=params["seed"])

    data_dir = os.path.join(params["data_root"], params["dataset_id"])
    feature_encoder = fx["FeatureProcessor"](**params)
    # build_dataset(..., rebuild_dataset=False) does exactly this and returns the paths unchanged.
    feature_encoder.fit(train_ddf=None, **params)
    feature_map = fx["FeatureMap"](params["dataset_id"], data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)
    log.info("Feature specs: " + fx["print_to_json"](feature_map.features))

    net = fx[MODELS[model.lower()]](feature_map, **params)
    net.count_parameters()

    # RankDataLoader(feature_map, stage="train"/"test", data_loader=LongCTRDataLoader, **params)
    loader = fx["LongCTRDataLoader"]
    kwargs = {
        k: v
        for k, v in params.items()
        if k not in ("train_data", "valid_data", "test_data", "batch_size", "shuffle")
    }

    def make_loader(split: str, shuffle: bool) -> Any:
        return loader(feature_map, params[f"{split}_data"], split=split, batch_size=params["batch_size"],
                      shuffle=shuffle, **kwargs)

    train_gen = make_loader("train", params["shuffle"])
    valid_gen = make_loader("valid", False)

    eval_s = [0.0]
    inner_eval = net.eval_step

    def timed_eval_step() -> None:
        t = time.perf_counter()
        inner_eval()
        eval_s[0] += time.perf_counter() - t

    net.eval_step = timed_eval_step
    t0 = time.perf_counter()
    net.fit(train_gen, validation_data=valid_gen, **params)
    fit_s = time.perf_counter() - t0
    train_s = fit_s - eval_s[0]

    log.info("****** Validation evaluation ******")
    # gAUC only on test: FuxiCTR computes it in a 1-process pool over 6,040 users (~45 s on
    # this machine); AUC and logloss on valid are what the comparison needs.
    valid_result = net.evaluate(valid_gen, metrics=["logloss", "AUC"])
    del train_gen, valid_gen
    log.info("******** Test evaluation ********")
    test_gen = make_loader("test", False)
    test_result = net.evaluate(test_gen)

    n_train = _count_rows(params["train_data"])
    record = {
        "model": MODELS[model.lower()],
        "seed": seed,
        "val_auc": float(valid_result["AUC"]),
        "val_gauc": _maybe(valid_result, "gAUC"),
        "val_logloss": float(valid_result["logloss"]),
        "test_auc": float(test_result["AUC"]),
        "test_gauc": _maybe(test_result, "gAUC"),
        "test_logloss": float(test_result["logloss"]),
        "train_samples": n_train,
        "train_samples_per_s": round(n_train / train_s, 1),
        "epoch_s": round(train_s, 1),
        "fit_s_with_eval": round(fit_s, 1),
        "peak_rss_gib_main": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
        ),
        "threads": torch.get_num_threads(),
        "num_workers": params["num_workers"],
        "fuxictr": fx["fuxictr"].__version__,
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "experiment_id": experiment_id,
        "command": command,
    }
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    log.info("Recorded: " + json.dumps(record))
    return record


def _maybe(result: dict[str, Any], key: str) -> float | None:
    """A metric of FuxiCTR's result dict as float, None when it was not computed."""
    return float(result[key]) if key in result else None


def _count_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def load_runs(out: Path) -> list[dict[str, Any]]:
    """All records of ``<out>/runs.jsonl`` (empty if none)."""
    path = out / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stats(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} +- {statistics.stdev(values):.4f}"


def report(out: Path) -> str:
    """Write ``<out>/table.md`` from runs.jsonl and return it."""
    runs = load_runs(out)
    lines = [
        "# FuxiCTR 2.3.10 LongCTR models on the peer split (popularity negatives), over seeds",
        "",
        "Written by `python -m benchmarks.fuxictr_seeds --report` from runs.jsonl. Mean +- sample",
        "std over seeds; published = PEERS.md's single run (seed 2026). Configs: configs/.",
        "",
        (
            "| model | seeds | val AUC | val min-max | test AUC | test min-max | test gAUC | test logloss "
            "| published val / test AUC | seed 2026 here val / test | test z of published "
            "| train samples/s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in ("TWIN", "SIM"):
        rs = sorted((r for r in runs if r["model"] == model), key=lambda r: r["seed"])
        if not rs:
            continue
        val = [r["val_auc"] for r in rs]
        test = [r["test_auc"] for r in rs]
        pub = PUBLISHED[model]
        own = [r for r in rs if r["seed"] == 2026]
        own_s = f"{own[0]['val_auc']:.4f} / {own[0]['test_auc']:.4f}" if own else "-"
        if len(test) > 1 and statistics.stdev(test) > 0:
            z = f"{(pub['test_auc'] - statistics.fmean(test)) / statistics.stdev(test):+.2f}"
        else:
            z = "-"
        speed = statistics.median(r["train_samples_per_s"] for r in rs)
        lines.append(
            f"| {model} | {len(rs)} ({', '.join(str(r['seed']) for r in rs)}) | {_stats(val)} "
            f"| {min(val):.4f}-{max(val):.4f} | {_stats(test)} | {min(test):.4f}-{max(test):.4f} "
            f"| {_stats([r['test_gauc'] for r in rs])} | {_stats([r['test_logloss'] for r in rs])} "
            f"| {pub['val_auc']:.4f} / {pub['test_auc']:.4f} | {own_s} | {z} | {speed:,.0f} (median) |"
        )
    lines += [
        "",
        "Train samples/s: training loop only (end-of-epoch validation excluded), 2 torch threads,",
        "3 loader workers, measured while other jobs shared the 2 cores: not a speed figure.",
        "",
        "Choices PEERS.md does not state (everything else is FuxiCTR's LongCTR default):",
        "",
        *[f"- {c}" for c in CHOICES],
        "",
    ]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["twin"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2026])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="peer split directory"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        help="FuxiCTR data / checkpoint / log directory (outside the repo)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="only rewrite table.md")
    parser.add_argument(
        "--one", nargs=2, metavar=("MODEL", "SEED"), help=argparse.SUPPRESS
    )
    parser.add_argument("--command", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    config_dir = args.out / "configs"
    if args.report:
        print(report(args.out))
        return
    if args.one:
        run_one(
            config_dir,
            args.one[0].upper(),
            int(args.one[1]),
            args.threads,
            args.out,
            args.command,
        )
        return

    if importlib.util.find_spec("fuxictr") is None:
        raise SystemExit(INSTALL_HINT)
    command = "python -m benchmarks.fuxictr_seeds " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    data_dir = args.work / "data" / DATASET_ID
    meta = prepare_longctr(args.data, data_dir)
    models = [MODELS[m] for m in args.models]
    write_configs(config_dir, models, args.seeds, args.work, data_dir, meta)
    done = {(r["model"], r["seed"]) for r in load_runs(args.out)}
    for model in models:
        for seed in args.seeds:
            if (model, seed) in done:
                print(f"skip {model} seed {seed}: already in runs.jsonl", flush=True)
                continue
            print(f"run {model} seed {seed}", flush=True)
            # One fresh process per run, as run_expid.py is used.
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.fuxictr_seeds",
                    "--one",
                    model,
                    str(seed),
                    "--threads",
                    str(args.threads),
                    "--out",
                    str(args.out),
                    "--command",
                    command,
                ],
                cwd=ROOT,
                check=True,
            )
    print(report(args.out))


if __name__ == "__main__":
    main()
