"""One change at a time: how our hosts move towards FuxiCTR's on the peer split.

Each step adds one host or trainer option to the step it builds on, trains one epoch
through the CLI (``recipes/<host>_concat.yaml`` on ``recipes/data/ml1m-peer.yaml``) and records the
validation AUC; test is run too but the steps are chosen on validation. Results are appended to
``<out>/runs.jsonl`` as each run ends (an interrupted sweep resumes) and the table is rewritten to
``<out>/table.md``; ``--report`` only rebuilds the table from the runs file.

    python ../shared/benchmarks/ml1m_peer_split.py --out /tmp/peer/pop --negatives popularity
    python -m benchmarks.host_steps --data-root /tmp/peer/pop --hosts twin --seeds 0
    python -m benchmarks.host_steps --report --out benchmarks/results/host-steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks.quality import HOST_NAMES, METRICS, ROOT, commit, run_cli

HOST = "--model.init_args.host.init_args."
FUSION = f"{HOST}fusion.init_args."
# (name, the step it builds on, what changes, CLI options it adds). A step keeps every option of
# its base chain; a change that lost validation AUC is kept as a row but not built upon.
STEPS: list[tuple[str, str | None, str, list[str]]] = [
    # s0 pins the concat projection to PyTorch's initialisation, the default until s16 measured Xavier's.
    ("s0", None, "recipes as shipped before this change (sessions: transformer + mean pooling)", [f"{FUSION}linear_init=torch"]),
    ("s1", "s0", "sessions pooled by target attention (candidate-aware short-term branch)", [f"{HOST}session_pooling=target"]),
    ("s2", "s1", "no transformer layer in the session encoder (FuxiCTR attends over raw behaviours)", [f"{HOST}session_layers=0"]),
    ("s3", "s2", "embeddings initialised N(0, 1e-4) (FuxiCTR's default)", [f"{HOST}embedding_std=0.0001"]),
    ("s4", "s3", "gradient norm clipped at 10 (FuxiCTR's default)", ["--trainer.gradient_clip_val=10"]),
    ("s5", "s1", "s1 + embeddings N(0, 1e-4), transformer kept", [f"{HOST}embedding_std=0.0001"]),
    ("s6", "s3", "one session of the latest 20 behaviours (one softmax over all of them, as FuxiCTR's short branch)",
     ["--data.init_args.num_sessions=1", "--data.init_args.session_len=20"]),
    ("s7", "s3", "the head also sees h_long beside the fused vector (FuxiCTR's head sees both interests)", [f"{HOST}head_sees_long=true"]),
    ("s8", "s3", "sessions pooled by multi-head target attention with query/key/value projections (FuxiCTR's form)",
     [f"{HOST}session_pooling=attention"]),
    ("s9", "s8", "no positional embedding on the session behaviours (FuxiCTR's target attention has none)",
     [f"{HOST}session_positions=false"]),
    ("s10", "s9", "one session of the latest 20 behaviours: FuxiCTR's short branch (multi-head target attention over them)",
     ["--data.init_args.num_sessions=1", "--data.init_args.session_len=20"]),
    ("s11", "s3", "Xavier-normal weights and zero biases in the host's linear layers (FuxiCTR's initialisation)",
     [f"{HOST}linear_init=xavier"]),
    ("s12", "s11", "the one-layer session transformer back (the paper's short-term encoder), Xavier-initialised",
     [f"{HOST}session_layers=1"]),
    ("s13", "s11", "FuxiCTR's short branch on s11: multi-head target attention with projections over one session of the "
     "latest 20 behaviours, no positions", [f"{HOST}session_pooling=attention", f"{HOST}session_positions=false",
                                            "--data.init_args.num_sessions=1", "--data.init_args.session_len=20"]),
    ("s14", "s11", "s11 with multi-head target attention pooling (projections, no positions) in each of the 4 sessions",
     [f"{HOST}session_pooling=attention", f"{HOST}session_positions=false"]),
    ("s15", "s11", "the ESU without query/value biases and with an output projection (FuxiCTR's attention layer)",
     [f"{HOST}attention_bias=false", f"{HOST}attention_output=true"]),
    ("s16", "s11", "the concat layer's projection Xavier-initialised (FuxiCTR's and Keras' dense init; now ConcatFusion's default)",
     [f"{FUSION}linear_init=xavier"]),
    ("s17", "s16", "sessions mean-pooled, no positional embedding (the reference loop measured +0.027 for TWIN, 3 seeds)",
     [f"{HOST}session_pooling=mean", f"{HOST}session_positions=false"]),
    ("s18", "s17", "gradient norm clipped at 10 (FuxiCTR's default; the reference loop clips): the same run, the clip never acts", ["--trainer.gradient_clip_val=10"]),
    ("s19", "s17", "Adam epsilon 1e-8 (PyTorch's and FuxiCTR's default; the recipes use 1e-7)", ["--model.init_args.eps=1e-8"]),
]
NAMES = [name for name, _, _, _ in STEPS]


def step_options(step: str) -> list[str]:
    """The CLI options of ``step``: those of its base chain, then its own."""
    if step not in NAMES:
        raise ValueError(f"--steps: unknown step {step!r}; valid: {NAMES}")
    _, base, _, added = STEPS[NAMES.index(step)]
    return (step_options(base) if base else []) + added


def command(args: argparse.Namespace, host: str, step: str, seed: int) -> list[str]:
    name = f"{host}-{step}-seed{seed}"
    logs = args.logs
    return [
        sys.executable, "-m", "ifusion_plugin.cli", "fit",
        "--config", str(ROOT / "recipes" / f"{host}_concat.yaml"),
        "--config", str(ROOT / "recipes" / "data" / "ml1m-peer.yaml"),
        "--data.init_args.root", args.data_root, "--run_test", "true", "--seed_everything", str(seed),
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", logs,
        "--trainer.logger.init_args.name", name, "--trainer.default_root_dir", logs,
    ] + step_options(step)


def load_runs(path: Path) -> dict[tuple[str, str, int], dict]:
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                runs[row["host"], row["step"], row["seed"]] = row
    return runs


def sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    runs = load_runs(path)
    for seed in args.seeds:
        for host in args.hosts:
            for step in args.steps:
                if (host, step, seed) in runs:
                    continue
                cmd = command(args, host, step, seed)
                start = time.time()
                written = run_cli(cmd, ROOT, f"{host}/{step}/{seed}", out / "logs" / f"{host}-{step}-seed{seed}.metrics.json")
                metrics = {name: written[name] for name in METRICS if name in written}
                if "val_auc" not in metrics:
                    raise RuntimeError(f"{host}/{step}/{seed}: no val_auc in the CLI's metrics")
                row = {"host": host, "step": step, "seed": seed, "wall_s": round(time.time() - start, 1), "commit": commit(),
                       "command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""), **metrics}
                with open(path, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                runs[host, step, seed] = row
                print(f"{host}/{step}/{seed}: val AUC {metrics['val_auc']:.4f} ({row['wall_s']:.0f} s)", flush=True)


def spread(values: list[float]) -> str:
    """``mean`` for one value, ``mean +- sample std`` for several."""
    mean = statistics.fmean(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} +- {statistics.stdev(values):.4f}"


def table(runs: dict[tuple[str, str, int], dict]) -> str:
    lines = ["| host | step | built on | what changes | seeds | val AUC | test AUC (reported, not chosen on) | train samples/s |", "|---|---|---|---|---|---|---|---|"]
    for host in HOST_NAMES:
        for name, base, what, _ in STEPS:
            rows = [row for (h, s, _), row in sorted(runs.items()) if h == host and s == name]
            if not rows:
                continue
            speed = statistics.fmean(r["train_samples_per_s"] for r in rows)
            lines.append(f"| {HOST_NAMES[host]} | {name} | {base or '-'} | {what} | {len(rows)} | {spread([r['val_auc'] for r in rows])} "
                         f"| {spread([r['test_auc'] for r in rows])} | {speed:,.0f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host_steps", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/ml1m-peer-popularity", help="the peer split (popularity negatives)")
    parser.add_argument("--hosts", nargs="+", choices=sorted(HOST_NAMES), default=["din", "sim", "twin"])
    parser.add_argument("--steps", nargs="+", default=NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host-steps"))
    parser.add_argument("--logs", default="/tmp/ifusion-host-steps", help="logs and checkpoints (not committed)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table from <out>/runs.jsonl")
    args = parser.parse_args(argv)
    for step in args.steps:
        step_options(step)
    if not args.report:
        sweep(args)
    text = table(load_runs(Path(args.out) / "runs.jsonl"))
    (Path(args.out) / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
