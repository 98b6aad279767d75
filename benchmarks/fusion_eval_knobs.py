"""AUC of trained host + InterestFusion checkpoints under other serving settings.

``--ckpt``: one checkpoint on the validation split of the data its run trained on (the
``config.yaml`` that ``fit`` saved beside its checkpoints), with the serving-time knobs of
InterestFusion changed one at a time (the guidance scales, the start step ``t_start``).
``--runs``: every iFusion checkpoint of a quality sweep (``<out>/runs.jsonl``, the checkpoints
under ``--logs``, by default ``benchmarks/out/logs-<name of out>`` as the sweep wrote them)
served with each ``t_start`` x ``sampling_steps``, mean +- std over seeds per host, on
``--split valid`` (where defaults are chosen) or ``--split test`` (to report a chosen default).
Nothing is retrained, so the rows differ only by how the same weights are served; this is how
the serving defaults were chosen (BENCHMARKS.md).

    python -m benchmarks.fusion_eval_knobs --ckpt logs/lightning_logs/version_0/checkpoints/<best>.ckpt
    python -m benchmarks.fusion_eval_knobs --runs benchmarks/out/quality-movielens-1m/runs.jsonl \
        --t-start 10 100 300 --sampling-steps 1 2 --split valid
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Optional

import torch

from benchmarks.evaluation import (
    best_checkpoint,
    checkpoint_datamodule,
    evaluate,
    load_task,
    recipe_datamodule,
    run_datamodule,
    split_batches,
)
from ifusion_plugin.fusion import InterestFusion

ROOT = Path(__file__).resolve().parents[1]


def serve_grid(args: argparse.Namespace) -> None:
    """Every iFusion checkpoint of a quality sweep (``--runs``) served with each (``t_start``,
    ``sampling_steps``) on ``--split``: AUC mean +- std over the seeds, per host."""
    runs = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line.strip()]
    runs = [r for r in runs if r["fusion"] == "ifusion"]
    if not runs:
        raise SystemExit(f"no iFusion runs in {args.runs}")
    # The sweep's checkpoints, found as benchmarks.fusion_contribution finds them.
    logs = Path(args.logs) if args.logs else ROOT / "benchmarks" / "out" / f"logs-{Path(args.runs).parent.name}"
    checkpoints = [best_checkpoint(logs, f"{r['host']}-ifusion-seed{r['seed']}") for r in runs]
    cache = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    # The data of the sweep's own resolved config when it kept one (every option its runs used),
    # else the --data recipe.
    config = Path(args.runs).parent / "configs" / f"{runs[0]['host']}-ifusion-seed{runs[0]['seed']}.yaml"
    data = (run_datamodule(config, args.data_root, eval_batch_size=2048, **cache) if config.exists()
            else recipe_datamodule(args.data, args.data_root, eval_batch_size=2048, **cache))
    batches = split_batches(data, args.split)
    settings = [(t, s) for s in args.sampling_steps for t in [None, *args.t_start]]
    results: dict[tuple[str, Optional[int], int], list[float]] = {}
    for run, checkpoint in zip(runs, checkpoints):
        task = load_task(checkpoint)
        for t_start, steps in settings:  # the trained scales
            results.setdefault((run["host"], t_start, steps), []).append(evaluate(task, batches, t_start=t_start, sampling_steps=steps)[0])
    print(f"{args.split} AUC of the iFusion checkpoints in {args.runs} (mean +- std over seeds)\n")
    print("| host | t_start | S | seeds | AUC | vs t_start None, same S |\n|---|---|---|---|---|---|")
    for (host, t_start, steps), aucs in results.items():
        base = statistics.fmean(results[host, None, steps])
        std = statistics.stdev(aucs) if len(aucs) > 1 else float("nan")
        print(f"| {host} | {t_start} | {steps} | {len(aucs)} | {statistics.fmean(aucs):.4f} +- {std:.4f} | "
              f"{statistics.fmean(aucs) - base:+.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fusion_eval_knobs", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint of a CTRTask whose host uses InterestFusion")
    source.add_argument("--runs", help="runs.jsonl of `python -m benchmarks.quality`: every iFusion checkpoint in it")
    parser.add_argument("--logs", help="with --runs: the sweep's logs and checkpoints (default benchmarks/out/logs-<name of the runs' directory>)")
    parser.add_argument("--data", default="movielens-1m", help="with --runs, for a sweep without configs/: the data recipe it used (recipes/data/<name>.yaml)")
    parser.add_argument("--data-root", default=None, help="override the data's root (--ckpt: its run's config.yaml names the data)")
    parser.add_argument("--cache-dir", default=None, help="dataset cache (default: $IFUSION_CACHE_DIR or ~/.cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--t-start", type=int, nargs="*", default=[10, 100, 300, 600])
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[1], help="with --runs: S values to serve")
    parser.add_argument("--split", choices=("valid", "test"), default="valid", help="with --runs: the split scored")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.runs:
        serve_grid(args)
        return

    task = load_task(args.ckpt)
    fusion = task.host.fusion
    if not isinstance(fusion, InterestFusion):
        raise ValueError(f"--ckpt must hold a host with InterestFusion, got {type(fusion).__name__}")
    # The data the run trained on, from the config.yaml fit saved beside its checkpoints.
    data = checkpoint_datamodule(args.ckpt, args.data_root, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    batches = split_batches(data, "valid")

    trained = (fusion.gamma_cp, fusion.gamma_tf, fusion.t_start)
    ratio_sum_one = (2.0 / 3.0, 1.0 / 3.0)
    rows: list[tuple[str, float, float, Optional[int]]] = [
        ("as trained", trained[0], trained[1], trained[2]),
        ("paper scales 2.0 / 1.0", 2.0, 1.0, trained[2]),
        ("scales 2/3 / 1/3 (sum 1)", *ratio_sum_one, trained[2]),
    ]
    rows += [(f"t_start={t}, trained scales", trained[0], trained[1], t) for t in args.t_start]
    print(f"checkpoint: {args.ckpt}\n")
    print("| serving setting | gamma_cp | gamma_tf | t_start | val AUC | val logloss |")
    print("|---|---|---|---|---|---|")
    for label, gamma_cp, gamma_tf, t_start in rows:
        auc, logloss = evaluate(task, batches, gamma_cp=gamma_cp, gamma_tf=gamma_tf, t_start=t_start)
        print(f"| {label} | {gamma_cp:.3g} | {gamma_tf:.3g} | {t_start} | {auc:.4f} | {logloss:.4f} |", flush=True)


if __name__ == "__main__":
    main()
