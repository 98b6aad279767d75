"""How much of an iFusion result is the generated interest: every iFusion checkpoint of a
quality sweep scored on a split as trained and with its skip gate zeroed (``fused`` = the concat
part alone, ``x0_hat`` removed), the paired AUC change over the seeds with a user-bootstrap 95 %
interval, and the mean gate magnitude ``mean |gate|``.

    python -m benchmarks.fusion_contribution --out benchmarks/results/main-ml1m
    python -m benchmarks.fusion_contribution --out benchmarks/results/main-ml1m --report   # table only

Reads ``<out>/runs.jsonl`` and the runs' checkpoints under ``--logs`` (default
``benchmarks/out/logs-<name of out>``); writes ``<out>/contribution.json``. Nothing is
retrained: the two scores differ only in the gate, on the same rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from benchmarks.evaluation import (
    best_checkpoint,
    labels_of,
    load_task,
    probabilities,
    run_datamodule,
    split_batches,
)
from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.paired import paired_auc_difference

ROOT = Path(__file__).resolve().parents[1]
HOST_NAMES = {"avgpool": "AvgPoolDNN", "din": "DIN", "sim": "SIM", "twin": "TWIN"}


def measure(args: argparse.Namespace) -> dict[str, dict]:
    runs = [json.loads(line) for line in (Path(args.out) / "runs.jsonl").read_text().splitlines() if line.strip()]
    runs = sorted((r for r in runs if r["fusion"] == "ifusion"), key=lambda r: (r["host"], r["seed"]))
    if not runs:
        raise SystemExit(f"no iFusion runs in {Path(args.out) / 'runs.jsonl'}")
    first = runs[0]
    data = run_datamodule(Path(args.out) / "configs" / f"{first['host']}-ifusion-seed{first['seed']}.yaml", args.data_root)
    batches = split_batches(data, args.split)
    labels = labels_of(batches)
    users = torch.cat([b.user for b in batches]).numpy()
    results: dict[str, dict] = {}
    for host in dict.fromkeys(r["host"] for r in runs):
        kept, zeroed, gates, seeds = [], [], [], []
        for run in (r for r in runs if r["host"] == host):
            task = load_task(best_checkpoint(Path(args.logs), f"{host}-ifusion-seed{run['seed']}"))
            fusion = task.host.fusion
            if not isinstance(fusion, InterestFusion) or fusion.skip is None:
                raise ValueError(f"{host} seed {run['seed']}: the checkpoint's fusion is not an InterestFusion with concat_skip")
            kept.append(probabilities(task, batches))
            # generated_scale=0: fused is the skip's concat alone, x0_hat removed.
            zeroed.append(probabilities(task, batches, generated_scale=0.0))
            gates.append(fusion.skip_gate.abs().mean().item())
            seeds.append(run["seed"])
        pair = paired_auc_difference(labels, np.stack(kept), np.stack(zeroed), users, replicates=args.replicates)
        results[host] = {"split": args.split, "seeds": seeds, "zeroed_minus_kept": pair.diff, "low": pair.low,
                         "high": pair.high, "mean_abs_gate": float(np.mean(gates)), "mean_abs_gate_per_seed": gates}
        print(f"{host}: zeroing x0_hat {pair.diff:+.4f} [{pair.low:+.4f}, {pair.high:+.4f}], mean |gate| {np.mean(gates):.3f}",
              flush=True)
    return results


def table(results: dict[str, dict]) -> str:
    lines = ["| host | seeds | AUC change with x0_hat zeroed [95 % CI] | mean abs gate |", "|---|---|---|---|"]
    for host, r in results.items():
        lines.append(f"| {HOST_NAMES.get(host, host)} | {len(r['seeds'])} | {r['zeroed_minus_kept']:+.4f} "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['mean_abs_gate']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fusion_contribution", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a quality sweep's results directory (its runs.jsonl)")
    parser.add_argument("--logs", help="the sweep's logs and checkpoints (default benchmarks/out/logs-<name of --out>)")
    parser.add_argument("--data-root", help="override the data recipe's root")
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="print the table of <out>/contribution.json; run nothing")
    args = parser.parse_args(argv)
    path = Path(args.out) / "contribution.json"
    if not args.report:
        args.logs = args.logs or str(ROOT / "benchmarks" / "out" / f"logs-{Path(args.out).name}")
        torch.set_num_threads(args.threads)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(measure(args), indent=1) + "\n")
        partial.replace(path)
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
