"""The AUC table: every host x fusion layer, several seeds, one epoch, through the CLI recipes.

Each run is ``python -m ifusion_plugin.cli fit --config recipes/<host><fusion>.yaml --config
recipes/data/<data>.yaml --run_test true --seed_everything <seed>`` in a subprocess, then
``predict`` of its best checkpoint on the test split; its final metrics, the commit and the
command are appended to ``<out>/runs.jsonl`` as soon as it ends and its resolved config is
copied to ``<out>/configs/``, so an interrupted sweep resumes where it stopped (finished runs
are never repeated or lost). Test predictions stay under ``--predictions`` (not committed).

The table gives test AUC, GAUC and logloss as mean +- sample std over seeds, RelaImpr (eq. 20)
of the mean AUC against AvgPoolDNN + concat, the training throughput, and for every fusion
other than concat the paired test-AUC difference against concat of the same host on the same
test rows, with a 95 % user-bootstrap interval (:mod:`ifusion_plugin.paired`: seed ``s`` is
paired with concat's seed ``s``, the statistic is the mean over seeds of the per-seed
difference, users are resampled with replacement); "better" means the whole interval lies above
zero. Beside it: the popularity-only test AUC of the data (:mod:`ifusion_plugin.data.popularity`),
flagged when it lies outside [0.40, 0.60]. Seeds change the model initialisation and the
training order; the data (negatives, splits) stay fixed by the data recipe.

The committed raw results are ``runs.jsonl``, ``paired.json``, ``popularity.json`` and
``configs/``; ``--report`` rebuilds ``table.md`` from them alone (and recomputes ``paired.json``
when the predictions are at hand).

    python -m benchmarks.quality --data movielens-1m --seeds 0 1 2 3 4        # the full table
    python -m benchmarks.quality --data movielens-1m --hosts twin --fusions concat ifusion
    python -m benchmarks.quality --report --out benchmarks/results/quality-movielens-1m
    python -m benchmarks.quality --quick                                       # CI: seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ifusion_plugin.metrics import rela_impr
from ifusion_plugin.paired import paired_auc_difference

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("avgpool", "din", "sim", "twin")
HOST_NAMES = {"avgpool": "AvgPoolDNN", "din": "DIN", "sim": "SIM", "twin": "TWIN"}
FUSIONS = {"concat": "_concat", "gate": "_gate", "ifusion": ""}
DATA = ("movielens-1m", "amazon-grocery", "yelp-multibehavior", "taobao-multibehavior", "taobao", "amazon-books-dien",
        "ml1m-peer", "synthetic")
#: Outside [1 - this, this] a popularity-only AUC flags a set that measures popularity.
POPULARITY_FLAG = 0.60
#: The metrics a run's row keeps (the CLI's --metrics_path file holds more).
METRICS = ("test_auc", "test_gauc", "test_logloss", "val_auc", "train_samples_per_s", "train_epoch_s", "train_peak_rss_gib")
QUICK_OPTIONS = [
    "--data.init_args.num_users=60", "--data.init_args.num_items=80", "--data.init_args.history_len=30",
    "--data.init_args.train_per_user=2", "--data.init_args.long_len=20",
    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
    "--model.init_args.host.init_args.embed_dim=8", "--model.init_args.host.init_args.head_dims=[16]",
]


def run_key(host: str, fusion: str, seed: int) -> str:
    return f"{host}/{fusion}/{seed}"


def logs_dir(args: argparse.Namespace) -> str:
    """Where runs log and checkpoint: ``--logs``, else ``<out>/logs`` (never committed)."""
    return str(getattr(args, "logs", None) or Path(args.out) / "logs")


def cli_fit_command(args: argparse.Namespace, recipe: str, seed: int, name: str, run_test: bool) -> list[str]:
    """``python -m ifusion_plugin.cli fit`` of ``recipes/<recipe>.yaml`` on ``args.data``, seeded,
    logging under ``<args.out>/logs/<name>`` (``--quick``: the tiny synthetic options)."""
    cmd = [sys.executable, "-m", "ifusion_plugin.cli", "fit", "--config", str(ROOT / "recipes" / f"{recipe}.yaml")]
    if args.data != "synthetic":
        cmd += ["--config", str(ROOT / "recipes" / "data" / f"{args.data}.yaml")]
    if args.data_root:
        cmd += ["--data.init_args.root", args.data_root]
    cmd += ["--run_test", str(run_test).lower(), "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", logs_dir(args),
            "--trainer.logger.init_args.name", name,
            "--trainer.default_root_dir", logs_dir(args)]
    return cmd + (QUICK_OPTIONS if args.quick else [])


def command(args: argparse.Namespace, host: str, fusion: str, seed: int) -> list[str]:
    return cli_fit_command(args, f"{host}{FUSIONS[fusion]}", seed, f"{host}-{fusion}-seed{seed}", True) + list(args.extra)


def run_cli(cmd: list[str], cwd: "str | Path", key: str, metrics_file: "str | Path") -> dict[str, Any]:
    """Run a CLI command with ``--metrics_path metrics_file`` and return what it wrote there
    (``trainer.callback_metrics`` of its summaries, and ``tested_checkpoint`` after a fit with
    ``--run_test``): the one way the harnesses read a run's results.

    Raises:
        RuntimeError: the command failed (its stderr's end attached) or wrote no metrics.
    """
    metrics_file = Path(metrics_file)
    metrics_file.unlink(missing_ok=True)
    result = subprocess.run([*cmd, "--metrics_path", str(metrics_file)], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{key} failed ({' '.join(cmd)}):\n{result.stderr[-3000:]}")
    if not metrics_file.exists():
        raise RuntimeError(f"{key}: the CLI wrote no metrics to {metrics_file}")
    return json.loads(metrics_file.read_text())


def load_runs(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    runs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            runs[run_key(row["host"], row["fusion"], row["seed"])] = row
    return runs


def commit() -> str:
    """The checked-out commit, with ``+dirty`` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


def predictions_path(args: argparse.Namespace, key: str) -> Path:
    return Path(args.predictions) / (key.replace("/", "-") + ".parquet")


def predict_command(args: argparse.Namespace, fit_cmd: list[str], checkpoint: str, key: str) -> list[str]:
    """``predict`` of ``checkpoint`` on the test split with the fit's own configs and options."""
    configs: list[str] = []
    for i, part in enumerate(fit_cmd):
        if part == "--config":
            configs += ["--config", fit_cmd[i + 1]]
    data_root = ["--data.init_args.root", args.data_root] if args.data_root else []
    # The fit's model and data options, so the checkpoint loads into the same model.
    extra = list(args.extra) + (QUICK_OPTIONS if args.quick else [])
    return [sys.executable, "-m", "ifusion_plugin.cli", "predict", *configs, *data_root, *extra,
            "--ckpt_path", checkpoint, "--predict_split", "test", "--predictions_path", str(predictions_path(args, key)),
            "--overwrite_predictions", "true", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


def sweep(args: argparse.Namespace) -> dict[str, dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.predictions).mkdir(parents=True, exist_ok=True)
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
                written = run_cli(cmd, args.cwd, key, Path(logs_dir(args)) / f"{host}-{fusion}-seed{seed}.metrics.json")
                metrics = {name: written[name] for name in METRICS if name in written}
                missing = {"test_auc", "test_gauc", "test_logloss"} - set(metrics)
                if missing:
                    raise RuntimeError(f"{key}: no {sorted(missing)} in the CLI's metrics")
                checkpoint = written.get("tested_checkpoint")
                if checkpoint is None:
                    raise RuntimeError(f"{key}: the fit tested no checkpoint (none was saved)")
                predicted = subprocess.run(predict_command(args, cmd, checkpoint, key), cwd=args.cwd, capture_output=True, text=True)
                if predicted.returncode != 0:
                    raise RuntimeError(f"{key}: predict failed:\n{predicted.stderr[-3000:]}")
                config = Path(checkpoint).parents[1] / "config.yaml"
                if config.exists():
                    (out / "configs").mkdir(exist_ok=True)
                    shutil.copyfile(config, out / "configs" / f"{host}-{fusion}-seed{seed}.yaml")
                row = {"host": host, "fusion": fusion, "seed": seed, "data": args.data, "wall_s": round(time.time() - start, 1),
                       "commit": commit(), "date": time.strftime("%Y-%m-%d"),
                       "command": " ".join(["python"] + cmd[1:]).replace(str(ROOT) + "/", ""), **metrics}
                with open(path, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                runs[key] = row
                print(f"{key}: test AUC {metrics['test_auc']:.4f} ({row['wall_s']:.0f} s)", flush=True)
    return runs


def read_predictions(args: argparse.Namespace, key: str) -> Optional[dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    path = predictions_path(args, key)
    if not path.exists():
        return None
    table = pq.read_table(path, columns=["row", "user", "label", "prob"]).sort_by("row")
    return {name: table[name].to_numpy() for name in ("row", "user", "label", "prob")}


def _paired_pair(args: argparse.Namespace, runs: dict[str, dict], host: str, base: str, other: str) -> Optional[dict]:
    """``other`` against ``base`` on ``host``: the paired test-AUC difference over the common
    seeds whose predictions exist (``None`` without any), with the per-seed AUC differences."""
    seeds = [s for s in args.seeds if run_key(host, other, s) in runs and run_key(host, base, s) in runs]
    pairs = [(s, read_predictions(args, run_key(host, base, s)), read_predictions(args, run_key(host, other, s))) for s in seeds]
    pairs = [(s, a, b) for s, a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    first = pairs[0][1]
    for _, a, b in pairs:
        if not (np.array_equal(a["row"], first["row"]) and np.array_equal(b["row"], first["row"])
                and np.array_equal(a["label"], first["label"]) and np.array_equal(b["label"], first["label"])):
            raise RuntimeError(f"{host}/{other} vs {base}: predictions of different test rows cannot be paired")
    result = paired_auc_difference(first["label"], np.stack([a["prob"] for _, a, _ in pairs]),
                                   np.stack([b["prob"] for _, _, b in pairs]), first["user"], replicates=args.replicates)
    per_seed = [runs[run_key(host, other, s)]["test_auc"] - runs[run_key(host, base, s)]["test_auc"] for s, _, _ in pairs]
    return {"diff": result.diff, "low": result.low, "high": result.high, "level": result.level,
            "seeds": result.seeds, "replicates": result.replicates, "per_seed": per_seed}


def paired(args: argparse.Namespace, runs: dict[str, dict]) -> dict[str, dict]:
    """Per host: every non-concat fusion against concat (key ``host/fusion``) and iFusion against
    gate (key ``host/ifusion-vs-gate``), paired over the common seeds (see :func:`_paired_pair`;
    pairs without predictions are left out)."""
    results: dict[str, dict] = {}
    for host in args.hosts:
        for fusion in args.fusions:
            if fusion != "concat" and (pair := _paired_pair(args, runs, host, "concat", fusion)) is not None:
                results[f"{host}/{fusion}"] = pair
        if {"gate", "ifusion"} <= set(args.fusions) and (pair := _paired_pair(args, runs, host, "gate", "ifusion")) is not None:
            results[f"{host}/ifusion-vs-gate"] = pair
    return results


def seed_interval(differences: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of per-seed differences (training-seed noise, which the
    user bootstrap over fixed models does not see); ``(nan, nan)`` below two seeds."""
    from scipy.stats import t as student_t  # a dev dependency (scikit-learn's)

    if len(differences) < 2:
        return float("nan"), float("nan")
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    half = float(student_t.ppf(0.5 + level / 2, len(differences) - 1)) * sd / len(differences) ** 0.5
    return mean - half, mean + half


def against_baselines(hosts: list[str], pairs: dict[str, dict]) -> str:
    """iFusion against the layers it would replace, per host: the user-bootstrap intervals (the
    project's rule), the seed-level t-intervals, and how many seeds agree. "better" where every
    bootstrap interval lies above zero; "better, also across seeds" where the seed-level ones do
    too. A sweep without gate gets "-" in its columns and a verdict against concat alone."""
    lines = ["| host | iFusion - concat [bootstrap 95 %] | [seed-level t 95 %] | seeds above | "
             "iFusion - gate [bootstrap 95 %] | [seed-level t 95 %] | seeds above | above max(concat, gate) |",
             "|---|---|---|---|---|---|---|---|"]
    for host in hosts:
        versus = [pairs.get(f"{host}/ifusion"), pairs.get(f"{host}/ifusion-vs-gate")]
        if versus[0] is None:
            continue
        cells, seed_low, present = [], [], [pair for pair in versus if pair is not None]
        for pair in versus:
            if pair is None:
                cells += ["-", "-", "-"]
                continue
            per_seed = pair.get("per_seed", [])
            low, high = seed_interval(per_seed)
            seed_low.append(low)
            cells += [f"{pair['diff']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}]", f"[{low:+.4f}, {high:+.4f}]",
                      f"{sum(d > 0 for d in per_seed)} of {len(per_seed)}"]
        if all(pair["low"] > 0 for pair in present):
            verdict = "better, also across seeds" if all(low > 0 for low in seed_low) else "better (bootstrap); not across seeds"
        else:
            verdict = "worse" if any(pair["high"] < 0 for pair in present) else "within noise"
        if versus[1] is None:
            verdict += " (against concat; gate not run)"
        lines.append(f"| {HOST_NAMES[host]} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def popularity(args: argparse.Namespace) -> dict[str, float]:
    """Popularity-only valid and test AUC of the data the runs use (the data recipe + root)."""
    cmd = [sys.executable, "-m", "ifusion_plugin.data.popularity"]
    if args.data == "synthetic":
        import yaml

        recipe = yaml.safe_load((ROOT / "recipes" / "common" / "synthetic.yaml").read_text())
        cmd += ["--data", recipe["class_path"]] + [f"--data.init_args.{k}={v}" for k, v in recipe.get("init_args", {}).items()]
    else:
        cmd += ["--config", str(ROOT / "recipes" / "data" / f"{args.data}.yaml")]
    if args.data_root:
        cmd += ["--data.init_args.root", args.data_root]
    cmd += [o for o in args.extra if o.startswith("--data.")]
    if args.quick:
        cmd += [o for o in QUICK_OPTIONS if o.startswith("--data.")]
    written = run_cli(cmd, args.cwd, "popularity baseline", Path(logs_dir(args)) / "popularity.metrics.json")
    return {split: float(written[split]) for split in ("valid", "test")}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def table(runs: dict[str, dict], hosts: list[str], fusions: list[str], seeds: list[int],
          paired_results: Optional[dict[str, dict]] = None) -> str:
    cells = {}
    for host in hosts:
        for fusion in fusions:
            rows = [runs[run_key(host, fusion, s)] for s in seeds if run_key(host, fusion, s) in runs]
            if rows:
                cells[host, fusion] = rows
    base = cells.get(("avgpool", "concat"))
    base_auc = statistics.fmean(r["test_auc"] for r in base) if base else None
    lines = [
        "| host | fusion | seeds | test AUC | paired diff vs concat [95 % CI] | test GAUC | test logloss | RelaImpr vs AvgPoolDNN + concat | val AUC | train samples/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (host, fusion), rows in cells.items():
        auc, auc_sd = mean_std([r["test_auc"] for r in rows])
        gauc, gauc_sd = mean_std([r["test_gauc"] for r in rows])
        ll, ll_sd = mean_std([r["test_logloss"] for r in rows])
        val = statistics.fmean(r.get("val_auc", float("nan")) for r in rows)
        speed = statistics.fmean(r.get("train_samples_per_s", float("nan")) for r in rows)
        # RelaImpr is defined against a base better than chance only.
        rel = "-" if base_auc is None or base_auc <= 0.5 else f"{rela_impr(auc, base_auc):+.2f} %"
        pair = (paired_results or {}).get(f"{host}/{fusion}")
        if fusion == "concat":
            pair_text = "(base)"
        elif pair is None:
            pair_text = "-"
        else:
            verdict = "better" if pair["low"] > 0 else ("worse" if pair["high"] < 0 else "within noise")
            pair_text = f"{pair['diff']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}] {verdict} ({pair['seeds']} seeds)"
        lines.append(
            f"| {HOST_NAMES[host]} | {fusion} | {len(rows)} | {auc:.4f} +- {auc_sd:.4f} | {pair_text} | {gauc:.4f} +- {gauc_sd:.4f} "
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
    parser.add_argument("--predictions", help="directory of the runs' test predictions (default <out>/../../out/predictions-<name>)")
    parser.add_argument("--logs", help="logs and checkpoints of the runs (default benchmarks/out/logs-<name>; not committed)")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates of the paired intervals")
    parser.add_argument("--report", action="store_true", help="rebuild table.md from the raw results in --out; run nothing")
    parser.add_argument("extra", nargs="*", help="further CLI options for every run, after --")
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.hosts, args.fusions, args.seeds = "synthetic", ["avgpool", "twin"], ["concat", "ifusion"], [0, 1]
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / ("out" if args.quick else "results") / f"quality-{args.data}")
    if args.logs is None:
        args.logs = str(ROOT / "benchmarks" / "out" / f"logs-{Path(args.out).name}")
    if args.predictions is None:
        args.predictions = str(ROOT / "benchmarks" / "out" / f"predictions-{Path(args.out).name}")
    return args


def popularity_line(values: dict[str, float]) -> str:
    test = values.get("test")
    if test is None:
        return "Popularity-only test AUC: not measured"
    flag = max(test, 1 - test) > POPULARITY_FLAG
    note = (f" (outside [{1 - POPULARITY_FLAG:.2f}, {POPULARITY_FLAG:.2f}]: this set measures popularity, not personalisation)"
            if flag else "")
    return f"Popularity-only test AUC: {test:.4f}{note}"


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.report:
        runs = load_runs(out / "runs.jsonl")
        if not runs:
            raise SystemExit(f"--report: no runs in {out / 'runs.jsonl'}")
        args.hosts = [h for h in HOSTS if any(r["host"] == h for r in runs.values())]
        args.fusions = [f for f in FUSIONS if any(r["fusion"] == f for r in runs.values())]
        args.seeds = sorted({r["seed"] for r in runs.values()})
        args.data = next(iter(runs.values()))["data"]
    else:
        runs = sweep(args)
    pairs_path, popularity_path = out / "paired.json", out / "popularity.json"
    computed = paired(args, runs)
    if computed or not pairs_path.exists():
        pairs_path.write_text(json.dumps(computed, indent=1) + "\n")
    pairs = json.loads(pairs_path.read_text())
    if not args.report and not popularity_path.exists():
        popularity_path.write_text(json.dumps(popularity(args), indent=1) + "\n")
    pop = json.loads(popularity_path.read_text()) if popularity_path.exists() else {}
    text = table(runs, args.hosts, args.fusions, args.seeds, pairs)
    if any(key.endswith("/ifusion") for key in pairs):
        text += "\n\niFusion against the layers it would replace (paired, same test rows):\n\n" + against_baselines(args.hosts, pairs)
    commits = sorted({r.get("commit", "?") for r in runs.values()})
    header = (f"Data: {args.data}; seeds {args.seeds}; one epoch; commit(s) {', '.join(commits)}; "
              f"{time.strftime('%Y-%m-%d')}\n{popularity_line(pop)}\n\n")
    (out / "table.md").write_text(header + text + "\n")
    print("\n" + header + text)


if __name__ == "__main__":
    main()
