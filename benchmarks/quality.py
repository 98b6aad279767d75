"""The AUC table: every host x fusion layer, several seeds, one epoch, through the CLI recipes.

Each run is ``python -m ifusion_plugin.cli fit --config recipes/<host><fusion>.yaml --config
recipes/data/<data>.yaml --run_test true --seed_everything <seed>`` in a subprocess; its final
metrics are appended to ``<out>/runs.jsonl`` as soon as it ends, so an interrupted sweep resumes
where it stopped (finished runs are never repeated or lost). The table gives test AUC, GAUC and
logloss as mean +- sample std over seeds, RelaImpr (eq. 20) of the mean AUC against
AvgPoolDNN + concat, and the training throughput. Seeds change the model initialisation and the
training order; the data (negatives, splits) stay fixed by the data recipe.

    python -m benchmarks.quality --data movielens-1m --seeds 0 1 2            # the full table
    python -m benchmarks.quality --data movielens-1m --hosts twin --fusions concat ifusion
    python -m benchmarks.quality --quick                                       # CI: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from ifusion_plugin.metrics import rela_impr

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("avgpool", "din", "sim", "twin")
HOST_NAMES = {"avgpool": "AvgPoolDNN", "din": "DIN", "sim": "SIM", "twin": "TWIN"}
FUSIONS = {"concat": "_concat", "gate": "_gate", "ifusion": ""}
DATA = ("movielens-1m", "amazon-grocery", "taobao", "amazon-books-dien", "ml1m-peer", "synthetic")
METRIC_LINE = re.compile(r"^(test_auc|test_gauc|test_logloss|val_auc|train_samples_per_s|train_epoch_s|train_peak_rss_gib)\s+(-?[\d.]+)\s*$")
QUICK_OPTIONS = [
    "--data.init_args.num_users=60", "--data.init_args.num_items=80", "--data.init_args.history_len=30",
    "--data.init_args.train_per_user=2", "--data.init_args.long_len=20",
    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
    "--model.init_args.host.init_args.embed_dim=8", "--model.init_args.host.init_args.head_dims=[16]",
]


def run_key(host: str, fusion: str, seed: int) -> str:
    return f"{host}/{fusion}/{seed}"


def cli_fit_command(args: argparse.Namespace, recipe: str, seed: int, name: str, run_test: bool) -> list[str]:
    """``python -m ifusion_plugin.cli fit`` of ``recipes/<recipe>.yaml`` on ``args.data``, seeded,
    logging under ``<args.out>/logs/<name>`` (``--quick``: the tiny synthetic options)."""
    cmd = [sys.executable, "-m", "ifusion_plugin.cli", "fit", "--config", str(ROOT / "recipes" / f"{recipe}.yaml")]
    if args.data != "synthetic":
        cmd += ["--config", str(ROOT / "recipes" / "data" / f"{args.data}.yaml")]
    if args.data_root:
        cmd += ["--data.init_args.root", args.data_root]
    cmd += ["--run_test", str(run_test).lower(), "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(Path(args.out) / "logs"),
            "--trainer.logger.init_args.name", name,
            "--trainer.default_root_dir", str(Path(args.out) / "logs")]
    return cmd + (QUICK_OPTIONS if args.quick else [])


def command(args: argparse.Namespace, host: str, fusion: str, seed: int) -> list[str]:
    return cli_fit_command(args, f"{host}{FUSIONS[fusion]}", seed, f"{host}-{fusion}-seed{seed}", True) + list(args.extra)


def parse_metrics(stdout: str) -> dict[str, float]:
    """The last value of each metric in the CLI's printed summaries."""
    metrics: dict[str, float] = {}
    for line in stdout.splitlines():
        match = METRIC_LINE.match(line.strip())
        if match:
            metrics[match.group(1)] = float(match.group(2))
    return metrics


def load_runs(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    runs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            runs[run_key(row["host"], row["fusion"], row["seed"])] = row
    return runs


def sweep(args: argparse.Namespace) -> dict[str, dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    runs = load_runs(path)
    for seed in args.seeds:
        for host in args.hosts:
            for fusion in args.fusions:
                key = run_key(host, fusion, seed)
                if key in runs:
                    continue
                start = time.time()
                cmd = command(args, host, fusion, seed)
                result = subprocess.run(cmd, cwd=args.cwd, capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"{key} failed ({' '.join(cmd)}):\n{result.stderr[-3000:]}")
                metrics = parse_metrics(result.stdout)
                missing = {"test_auc", "test_gauc", "test_logloss"} - set(metrics)
                if missing:
                    raise RuntimeError(f"{key}: no {sorted(missing)} in the CLI output")
                restored = re.findall(r"Restoring states from the checkpoint path at (\S+)", result.stdout + result.stderr)
                row = {"host": host, "fusion": fusion, "seed": seed, "data": args.data, "wall_s": time.time() - start,
                       "command": " ".join(cmd[1:]), "checkpoint": restored[-1] if restored else None, **metrics}
                with open(path, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                runs[key] = row
                print(f"{key}: test AUC {metrics['test_auc']:.4f} ({row['wall_s']:.0f} s)", flush=True)
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def table(runs: dict[str, dict], hosts: list[str], fusions: list[str], seeds: list[int]) -> str:
    cells = {}
    for host in hosts:
        for fusion in fusions:
            rows = [runs[run_key(host, fusion, s)] for s in seeds if run_key(host, fusion, s) in runs]
            if rows:
                cells[host, fusion] = rows
    base = cells.get(("avgpool", "concat"))
    base_auc = statistics.fmean(r["test_auc"] for r in base) if base else None
    lines = [
        "| host | fusion | seeds | test AUC | test GAUC | test logloss | RelaImpr vs AvgPoolDNN + concat | val AUC | train samples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (host, fusion), rows in cells.items():
        auc, auc_sd = mean_std([r["test_auc"] for r in rows])
        gauc, gauc_sd = mean_std([r["test_gauc"] for r in rows])
        ll, ll_sd = mean_std([r["test_logloss"] for r in rows])
        val = statistics.fmean(r.get("val_auc", float("nan")) for r in rows)
        speed = statistics.fmean(r.get("train_samples_per_s", float("nan")) for r in rows)
        # RelaImpr is defined against a base better than chance only.
        rel = "-" if base_auc is None or base_auc <= 0.5 else f"{rela_impr(auc, base_auc):+.2f} %"
        lines.append(
            f"| {HOST_NAMES[host]} | {fusion} | {len(rows)} | {auc:.4f} +- {auc_sd:.4f} | {gauc:.4f} +- {gauc_sd:.4f} "
            f"| {ll:.4f} +- {ll_sd:.4f} | {rel} | {val:.4f} | {speed:,.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=DATA, default="movielens-1m", help="a recipes/data/<name>.yaml, or synthetic")
    parser.add_argument("--data-root", help="override the data recipe's root")
    parser.add_argument("--hosts", nargs="+", choices=HOSTS, default=list(HOSTS))
    parser.add_argument("--fusions", nargs="+", choices=sorted(FUSIONS), default=["concat", "gate", "ifusion"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="directory of runs.jsonl, logs and table.md (default benchmarks/out/quality-<data>)")
    parser.add_argument("--cwd", default=str(ROOT), help="working directory of the runs (data paths are relative to it)")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic runs of two hosts: checks the harness (CI)")
    parser.add_argument("extra", nargs="*", help="further CLI options for every run, after --")
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.hosts, args.fusions, args.seeds = "synthetic", ["avgpool", "twin"], ["concat", "ifusion"], [0, 1]
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "out" / f"quality-{args.data}")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    runs = sweep(args)
    text = table(runs, args.hosts, args.fusions, args.seeds)
    header = f"Data: {args.data}; seeds {args.seeds}; one epoch; {time.strftime('%Y-%m-%d')}\n\n"
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(header + text + "\n")
    print("\n" + header + text)


if __name__ == "__main__":
    main()
