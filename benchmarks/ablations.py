"""The paper's ablations (figures 3 and 4, appendix I) and the DESIGN.md readings, on one host.

Two kinds of rows, both on the validation split (defaults are chosen there, never on test):

- trained variants: one ``python -m ifusion_plugin.cli fit`` run per variant and seed, the
  host's iFusion recipe plus the variant's fusion (or data) options; each finished run is
  appended to ``<out>/runs.jsonl`` at once, so an interrupted sweep resumes where it stopped;
- served variants: trained checkpoints re-evaluated with other serving settings and no
  retraining (sampling steps 1..8 for the cosine and linear schedules and without the
  consistency loss, a gamma_cp x gamma_tf grid, the start step ``t_start``), plus two
  measurements: the mean |cos(g_cp, g_tf)| of the guidance with and without the
  disentanglement loss, and how much the output moves when ``h_long`` is swapped for another
  user's (the DESIGN.md "trap").

Outputs: ``<out>/ablations.md`` (tables), ``<out>/served.json`` and the plots
``<out>/fig_*.png``.

    python -m benchmarks.ablations --host twin --seeds 0 1 2     # MovieLens-1M
    python -m benchmarks.ablations --quick                        # CI: tiny synthetic runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml

from benchmarks.evaluation import evaluate, load_task, recipe_datamodule, split_batches
from benchmarks.quality import (
    HOST_NAMES,
    HOSTS,
    METRICS,
    QUICK_OPTIONS,
    ROOT,
    cli_fit_command,
    load_runs,
    run_cli,
    run_key,
)
from benchmarks.zero_data import guidance_cosine
from ifusion_plugin.batch import CTRBatch
from ifusion_plugin.task import CTRTask

FUSION = "--model.init_args.host.init_args.fusion.init_args."
DATA = "--data.init_args."

#: name -> (fusion options, data options). "default" is the recipe as shipped.
TRAINED: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    # Figure 3a: guidance. CFG at scale 1 serves the conditional output it trains.
    "guidance=none": ({"guidance": "none"}, {}),
    "guidance=cfg": ({"guidance": "cfg", "gamma_cp": 1.0}, {}),
    # Figure 3b: autoregressive vs non-autoregressive injection of the sessions.
    "denoiser=marn_attention": ({"denoiser": "marn_attention"}, {}),
    "denoiser=nar_mlp": ({"denoiser": "nar_mlp"}, {}),
    "denoiser=nar_attention": ({"denoiser": "nar_attention"}, {}),
    # Figure 3c and the auxiliary losses of eq. 18.
    "consistency off": ({"consistency_weight": 0.0}, {}),
    "disentangle off": ({"disentangle_weight": 0.0}, {}),
    "evolution off": ({"evolution_weight": 0.0}, {}),
    # Figure 4a: the schedule (its sampling steps are served below).
    "schedule=linear": ({"schedule": "linear"}, {}),
    # The readings DESIGN.md asks to measure, and our own change.
    "task_step=mean": ({"task_step": "mean"}, {}),
    "gammas 2/1 (paper), algorithm1 training": ({"gamma_cp": 2.0, "gamma_tf": 1.0}, {}),
    "gammas 2/1 (paper), eq. 14 in training": ({"gamma_cp": 2.0, "gamma_tf": 1.0, "train_combination": "inference"}, {}),
    "concat_skip off (the paper's literal output)": ({"concat_skip": False}, {}),
    # Cost: the hidden widths of the guidance and denoiser MLPs (128 by default).
    "hidden 64": ({"denoiser_hidden_dim": 64, "guidance_hidden_dim": 64}, {}),
    # Figure 4b: number of sessions K over the same 20 short-term behaviours, AR vs NAR.
    **{
        f"K={k}, {denoiser}": ({"denoiser": denoiser}, {"num_sessions": k, "session_len": 20 // k})
        for k in (1, 2, 10)
        for denoiser in ("marn", "nar_mlp")
    },
}
#: Variants equal to another one (same options): K = 4 sessions of 5 is the data recipe's default.
ALIASES = {"K=4, marn": "default", "K=4, nar_mlp": "denoiser=nar_mlp"}
QUICK_TRAINED = ["default", "guidance=none", "consistency off", "schedule=linear", "disentangle off",
                 "K=2, marn", "K=2, nar_mlp", "denoiser=nar_mlp"]

STEPS = list(range(1, 9))
GAMMAS = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 2.0]
T_STARTS: list[Optional[int]] = [None, 10, 100, 300, 600]


def option_list(prefix: str, options: dict[str, Any]) -> list[str]:
    return [f"{prefix}{name}={json.dumps(value) if isinstance(value, bool) else value}" for name, value in options.items()]


def fit_command(args: argparse.Namespace, variant: str, seed: int) -> list[str]:
    fusion_options, data_options = TRAINED[variant]
    safe = "".join(c if c.isalnum() else "_" for c in variant)
    cmd = cli_fit_command(args, args.host, seed, f"{safe}-seed{seed}", run_test=False)
    return cmd + option_list(FUSION, fusion_options) + option_list(DATA, data_options)


def train(args: argparse.Namespace, variants: list[str]) -> dict[str, dict]:
    """Run every (variant, seed) not yet in runs.jsonl (none with ``--report-only``); returns all runs by key."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    runs = load_runs(path)
    for seed in [] if args.report_only else args.seeds:
        for variant in variants:
            key = run_key(args.host, variant, seed)
            if key in runs:
                continue
            start = time.time()
            cmd = fit_command(args, variant, seed)
            written = run_cli(cmd, args.cwd, key, Path(args.out, "logs") / f"{key.replace('/', '-')}.metrics.json")
            metrics = {name: written[name] for name in METRICS if name in written}
            if "val_auc" not in metrics:
                raise RuntimeError(f"{key}: no val_auc in the CLI's metrics")
            checkpoints = sorted(Path(args.out, "logs").glob(f"{cmd[cmd.index('--trainer.logger.init_args.name') + 1]}/version_*/checkpoints/last.ckpt"))
            row = {"host": args.host, "fusion": variant, "seed": seed, "data": args.data, "wall_s": time.time() - start,
                   "command": " ".join(cmd[1:]), "checkpoint": str(checkpoints[-1]) if checkpoints else None, **metrics}
            with open(path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            runs[key] = row
            print(f"{key}: val AUC {metrics['val_auc']:.4f} ({row['wall_s']:.0f} s)", flush=True)
    return runs


def timed_evaluate(task: CTRTask, batches: list[CTRBatch], **serving: Any) -> tuple[float, float]:
    """(validation AUC, evaluated samples per second after one warm-up batch) with the given
    serving settings."""
    evaluate(task, batches[:1], **serving)
    start = time.perf_counter()
    auc, _ = evaluate(task, batches, **serving)
    return auc, sum(len(b) for b in batches) / (time.perf_counter() - start)


def swapped_long_change(task: CTRTask, batches: list[CTRBatch]) -> dict[str, float]:
    """Relative change of the fusion output when every row's h_long is another row's.

    ``fused``: the layer's output; ``generated``: the diffusion output alone (``concat_skip``
    bypassed). A value near 0 means the output ignores the long-term interest.
    """
    fusion = task.host.fusion
    totals = {"fused": [0.0, 0.0], "generated": [0.0, 0.0]}
    with torch.no_grad():
        for batch in batches:
            h_long = task.host.fusion_input(batch, task.host.encode_long(batch))  # what the fusion layer reads
            h_sessions = task.host.encode_sessions(batch)
            swapped = h_long.roll(1, dims=0)
            for name in totals:
                # "generated": the diffusion output alone, the skip connection bypassed.
                options = {"concat_skip": False} if name == "generated" and fusion.skip is not None else {}
                a = fusion.sample(h_long, h_sessions, batch.session_mask, batch.has_long, **options)
                b = fusion.sample(swapped, h_sessions, batch.session_mask, batch.has_long, **options)
                totals[name][0] += float((a - b).norm(dim=-1).sum())
                totals[name][1] += float(a.norm(dim=-1).sum())
    return {name: change / max(norm, 1e-12) for name, (change, norm) in totals.items()}


def serve(args: argparse.Namespace, runs: dict[str, dict]) -> dict[str, Any]:
    """The served variants of every seed's checkpoints; cached in served.json."""
    path = Path(args.out) / "served.json"
    served: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    datamodule = None
    batches: list[CTRBatch] = []
    steps = STEPS[:2] if args.quick else STEPS
    gammas = GAMMAS[1:3] if args.quick else GAMMAS
    t_starts = T_STARTS[:2] if args.quick else T_STARTS
    for seed in [] if args.report_only else args.seeds:
        key = str(seed)
        if key in served:
            continue
        if datamodule is None:
            quick = {name[len(DATA):]: yaml.safe_load(value) for name, _, value in (o.partition("=") for o in QUICK_OPTIONS)
                     if name.startswith(DATA)} if args.quick else {}
            datamodule = recipe_datamodule(args.data, args.data_root, args.cwd, **quick)
            batches = split_batches(datamodule, "valid")

        def load(variant: str) -> Optional[CTRTask]:
            row = runs.get(run_key(args.host, variant, seed))
            if row is None or not row.get("checkpoint"):
                return None
            return load_task(row["checkpoint"])

        result: dict[str, Any] = {"steps": {}, "gamma_grid": [], "t_start": [], "cosine": {}, "swapped_long": {}}
        for variant in ("default", "schedule=linear", "consistency off"):
            task = load(variant)
            if task is None:
                continue
            rows = []
            for s in steps:
                auc, speed = timed_evaluate(task, batches, sampling_steps=s)
                rows.append({"steps": s, "val_auc": auc, "samples_per_s": speed})
            result["steps"][variant] = rows
            if variant == "default":
                for gamma_cp in gammas:
                    for gamma_tf in gammas:
                        if gamma_cp + gamma_tf == 0:
                            continue
                        auc = evaluate(task, batches, sampling_steps=1, gamma_cp=gamma_cp, gamma_tf=gamma_tf)[0]
                        result["gamma_grid"].append({"gamma_cp": gamma_cp, "gamma_tf": gamma_tf, "val_auc": auc})
                for t_start in t_starts:
                    auc = evaluate(task, batches, sampling_steps=1, t_start=t_start)[0]
                    result["t_start"].append({"t_start": t_start, "val_auc": auc})
        for variant in ("default", "disentangle off"):
            task = load(variant)
            if task is not None:
                result["cosine"][variant] = guidance_cosine(task, batches)
        for variant in ("default", "concat_skip off (the paper's literal output)"):
            task = load(variant)
            if task is not None:
                result["swapped_long"][variant] = swapped_long_change(task, batches)
        served[key] = result
        path.write_text(json.dumps(served, indent=1))
        print(f"served variants of seed {seed} done", flush=True)
    return served


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


def trained_table(args: argparse.Namespace, runs: dict[str, dict], variants: list[str]) -> str:
    base = [runs[k]["val_auc"] for k in (run_key(args.host, "default", s) for s in args.seeds) if k in runs]
    lines = ["| variant | seeds | val AUC | val AUC - default (mean) | train samples/s |", "|---|---|---|---|---|"]
    for variant in variants:
        rows = [runs[k] for k in (run_key(args.host, variant, s) for s in args.seeds) if k in runs]
        if not rows:
            continue
        aucs = [r["val_auc"] for r in rows]
        delta = statistics.fmean(aucs) - statistics.fmean(base) if base else float("nan")
        speed = statistics.fmean(r.get("train_samples_per_s", float("nan")) for r in rows)
        lines.append(f"| {variant} | {len(rows)} | {_mean_std(aucs)} | {delta:+.4f} | {speed:,.0f} |")
    return "\n".join(lines)


def _collect(served: dict[str, Any], seeds: list[int], pick: Callable[[dict], list[tuple[Any, float]]]) -> dict[Any, list[float]]:
    values: dict[Any, list[float]] = {}
    for seed in seeds:
        for label, value in pick(served.get(str(seed), {})):
            values.setdefault(label, []).append(value)
    return values


def served_tables(served: dict[str, Any], seeds: list[int]) -> str:
    parts = []
    steps = _collect(served, seeds, lambda r: [((v, row["steps"]), row["val_auc"]) for v, rows in r.get("steps", {}).items() for row in rows])
    speed = _collect(served, seeds, lambda r: [((v, row["steps"]), row["samples_per_s"]) for v, rows in r.get("steps", {}).items() for row in rows])
    if steps:
        parts.append("Sampling steps S (served; one training per schedule):\n\n| trained variant | S | val AUC | eval samples/s |\n|---|---|---|---|")
        for (variant, s), aucs in steps.items():
            parts.append(f"| {variant} | {s} | {_mean_std(aucs)} | {statistics.fmean(speed[variant, s]):,.0f} |")
    grid = _collect(served, seeds, lambda r: [((g["gamma_cp"], g["gamma_tf"]), g["val_auc"]) for g in r.get("gamma_grid", [])])
    if grid:
        parts.append("\nGuidance scales (served, default checkpoint; training used 2/3, 1/3):\n\n| gamma_cp | gamma_tf | val AUC |\n|---|---|---|")
        parts += [f"| {cp:.3g} | {tf:.3g} | {_mean_std(a)} |" for (cp, tf), a in grid.items()]
    starts = _collect(served, seeds, lambda r: [(row["t_start"], row["val_auc"]) for row in r.get("t_start", [])])
    if starts:
        parts.append("\nStart step (served, default checkpoint; None = Algorithm 2, clean h_long at t = T):\n\n| t_start | val AUC |\n|---|---|")
        parts += [f"| {t} | {_mean_std(a)} |" for t, a in starts.items()]
    cos = _collect(served, seeds, lambda r: [(v, c) for v, c in r.get("cosine", {}).items() if c is not None])
    if cos:
        parts.append("\nDisentanglement: mean |cos(g_cp, g_tf)| over present validation sessions:\n\n| trained variant | mean abs cos |\n|---|---|")
        parts += [f"| {v} | {_mean_std(c)} |" for v, c in cos.items()]
    swap = _collect(served, seeds, lambda r: [((v, part), x) for v, d in r.get("swapped_long", {}).items() for part, x in d.items()])
    if swap:
        parts.append("\nThe DESIGN.md trap: relative change of the output when h_long is another user's "
                     "(||f(h_long') - f(h_long)|| / ||f(h_long)||, validation):\n\n| trained variant | output | relative change |\n|---|---|---|")
        parts += [f"| {v} | {part} | {_mean_std(x)} |" for (v, part), x in swap.items()]
    return "\n".join(parts)


def _save_line_plot(fig: Any, ax: Any, path: Path, xlabel: str, title: str) -> Path:
    """Label a validation-AUC line plot, write it to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("val AUC")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(args: argparse.Namespace, runs: dict[str, dict], served: dict[str, Any], variants: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    written = []

    def mean_of(variant: str) -> Optional[float]:
        aucs = [runs[k]["val_auc"] for k in (run_key(args.host, variant, s) for s in args.seeds) if k in runs]
        return statistics.fmean(aucs) if aucs else None

    groups = [("guidance", ["guidance=none", "guidance=cfg", "default"], ["none", "CFG", "DCFG"]),
              ("denoiser", ["denoiser=nar_mlp", "denoiser=nar_attention", "default", "denoiser=marn_attention"],
               ["NAR-MLP", "NAR-attn", "MARN", "MARN-attn"]),
              ("aux losses", ["default", "consistency off", "disentangle off", "evolution off"],
               ["all", "no cons.", "no dist.", "no evol."])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (title, names, labels) in zip(axes, groups):
        pairs = [(label, mean_of(n)) for n, label in zip(names, labels) if mean_of(n) is not None]
        if pairs:
            ax.bar([p[0] for p in pairs], [p[1] for p in pairs], color="tab:blue")
            low = min(p[1] for p in pairs)
            ax.set_ylim(low - 0.01, max(p[1] for p in pairs) + 0.005)
        ax.set_title(title)
        ax.set_ylabel("val AUC")
    fig.suptitle(f"{HOST_NAMES[args.host]} + iFusion, {args.data}: components (mean over seeds {args.seeds})")
    fig.tight_layout()
    written.append(out / "fig_components.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    steps = _collect(served, args.seeds, lambda r: [((v, row["steps"]), row["val_auc"]) for v, rows in r.get("steps", {}).items() for row in rows])
    if steps:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for variant in dict.fromkeys(v for v, _ in steps):
            xs = sorted(s for v, s in steps if v == variant)
            label = {"default": "cosine (default)", "schedule=linear": "linear",
                     "consistency off": "cosine, no consistency loss"}.get(variant, variant)
            ax.plot(xs, [statistics.fmean(steps[variant, s]) for s in xs], marker="o", label=label)
        written.append(_save_line_plot(fig, ax, out / "fig_steps.png", "sampling steps S", "Sampling steps x schedule (served)"))

    ks = sorted({int(v.split(",")[0][2:]) for v in variants if v.startswith("K=")} | {4})
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for denoiser, label in (("marn", "MARN (AR)"), ("nar_mlp", "NAR-MLP")):
        points = [(k, mean_of(ALIASES.get(f"K={k}, {denoiser}", f"K={k}, {denoiser}"))) for k in ks]
        points = [(k, v) for k, v in points if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    written.append(_save_line_plot(fig, ax, out / "fig_sessions.png", "number of sessions K (20 short-term behaviours)", "AR vs NAR over K"))

    grid = _collect(served, args.seeds, lambda r: [((g["gamma_cp"], g["gamma_tf"]), g["val_auc"]) for g in r.get("gamma_grid", [])])
    if grid:
        cps = sorted({cp for cp, _ in grid})
        tfs = sorted({tf for _, tf in grid})
        values = [[statistics.fmean(grid[cp, tf]) if (cp, tf) in grid else float("nan") for tf in tfs] for cp in cps]
        fig, ax = plt.subplots(figsize=(5, 4))
        image = ax.imshow(values, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(tfs)), [f"{v:.2g}" for v in tfs])
        ax.set_yticks(range(len(cps)), [f"{v:.2g}" for v in cps])
        ax.set_xlabel("gamma_tf")
        ax.set_ylabel("gamma_cp")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="white")
        fig.colorbar(image, label="val AUC")
        ax.set_title("Guidance scales (served)")
        fig.tight_layout()
        written.append(out / "fig_gamma_grid.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablations", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="movielens-1m", help="a recipes/data/<name>.yaml, or synthetic")
    parser.add_argument("--data-root", help="override the data recipe's root")
    parser.add_argument("--host", choices=HOSTS, default="twin")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(TRAINED), help="trained variants (default: all)")
    parser.add_argument("--out", help="directory of runs.jsonl, served.json, ablations.md and plots "
                        "(default benchmarks/out/ablations-<data>-<host>)")
    parser.add_argument("--cwd", default=str(ROOT), help="working directory of the runs (data paths are relative to it)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the served evaluations")
    parser.add_argument("--report-only", action="store_true",
                        help="train and serve nothing: tables and plots from the runs already in --out (missing seeds are left out)")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic runs of a few variants: checks the harness (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.seeds = "synthetic", [0]
        args.variants = args.variants or QUICK_TRAINED
    args.variants = args.variants or list(TRAINED)
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "out" / f"ablations-{args.data}-{args.host}")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = train(args, args.variants)
    served = serve(args, runs)
    header = f"{HOST_NAMES[args.host]} + iFusion on {args.data}; seeds {args.seeds}; one epoch; validation split; {time.strftime('%Y-%m-%d')}\n\n"
    text = header + trained_table(args, runs, args.variants) + "\n\n" + served_tables(served, args.seeds) + "\n"
    written = plots(args, runs, served, args.variants)
    (Path(args.out) / "ablations.md").write_text(text)
    print("\n" + text + "\nplots: " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
