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

from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.paired import paired_auc_difference
from ifusion_plugin.run_config import datamodule_from_config
from ifusion_plugin.task import CTRTask

ROOT = Path(__file__).resolve().parents[1]
HOST_NAMES = {"avgpool": "AvgPoolDNN", "din": "DIN", "sim": "SIM", "twin": "TWIN"}


def best_checkpoint(logs: Path, host: str, seed: int) -> Path:
    """The best (not ``last``) checkpoint of one run of the sweep."""
    found = sorted(p for p in (logs / f"{host}-ifusion-seed{seed}").rglob("checkpoints/*.ckpt") if p.name != "last.ckpt")
    if len(found) != 1:
        raise FileNotFoundError(f"expected one best checkpoint of {host}/ifusion/seed {seed} under {logs}, found {found}")
    return found[0]


def datamodule_of(config: Path, data_root: Optional[str] = None):
    """The datamodule of a run's resolved config (``<out>/configs/*.yaml``, every option the run
    used), relative roots resolved from the repository (the runs' working directory)."""
    overrides = {"eval_batch_size": 2048, **({"root": data_root} if data_root else {})}
    datamodule = datamodule_from_config(str(config), cwd=str(ROOT), overrides=overrides)
    datamodule.setup("validate")
    return datamodule


def scores(task: CTRTask, batches: list, zero_gate: bool) -> np.ndarray:
    """Click probabilities ``(n,)`` over ``batches``; with ``zero_gate`` the generated interest is
    removed (``generated_scale=0``: ``fused`` is the skip's concat alone)."""
    fusion = task.host.fusion
    if not isinstance(fusion, InterestFusion) or fusion.skip is None:
        raise ValueError("the checkpoint's fusion is not an InterestFusion with concat_skip")
    with torch.no_grad(), fusion.serving(generated_scale=0.0 if zero_gate else 1.0):
        return torch.cat([torch.sigmoid(task(batch).logits) for batch in batches]).numpy()


def measure(args: argparse.Namespace) -> dict[str, dict]:
    runs = [json.loads(line) for line in (Path(args.out) / "runs.jsonl").read_text().splitlines() if line.strip()]
    runs = sorted((r for r in runs if r["fusion"] == "ifusion"), key=lambda r: (r["host"], r["seed"]))
    if not runs:
        raise SystemExit(f"no iFusion runs in {Path(args.out) / 'runs.jsonl'}")
    first = runs[0]
    data = datamodule_of(Path(args.out) / "configs" / f"{first['host']}-ifusion-seed{first['seed']}.yaml", args.data_root)
    batches = list(data.test_dataloader() if args.split == "test" else data.val_dataloader())
    labels = torch.cat([b.label for b in batches]).numpy()
    users = torch.cat([b.user for b in batches]).numpy()
    results: dict[str, dict] = {}
    for host in dict.fromkeys(r["host"] for r in runs):
        kept, zeroed, gates, seeds = [], [], [], []
        for run in (r for r in runs if r["host"] == host):
            task = CTRTask.load_from_checkpoint(best_checkpoint(Path(args.logs), host, run["seed"]), map_location="cpu").eval()
            kept.append(scores(task, batches, zero_gate=False))
            zeroed.append(scores(task, batches, zero_gate=True))
            gates.append(task.host.fusion.skip_gate.abs().mean().item())
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
