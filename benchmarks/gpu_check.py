"""The GPU check: bf16-mixed training, serving cost ratios and export parity on one CUDA device.

Prepared for the machines the `device` tool lends (one run, under 8 minutes); never needed by CI.
It prints one markdown table and writes the same rows as JSON:

1. a bf16-mixed ``fit`` (one epoch, the MovieLens-1M recipe with the peer-host settings) of
   TWIN + iFusion and TWIN + concat through the CLI in this process: validation and test AUC,
   training samples/s, read from ``trainer.callback_metrics``;
2. the cost ratios of the serving issue on the GPU, TWIN + iFusion against TWIN + concat,
   interleaved, median of ``--repeats`` after warm-up, under bf16 autocast: rows (B = 2048) and
   the request form (1 user x 512 candidates), eager and ``torch.compile``d;
3. export parity on the GPU: ``torch.export`` of the row and request forms (fp32) against the
   eager model.

    python -m benchmarks.gpu_check --data-root ../shared/data/movielens-1m --json gpu_check.json
    python -m pytest tests/test_resume.py -k gpu          # the CUDA resume test, same machine
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
FIT_RECIPES = {"TWIN + iFusion": "twin.yaml", "TWIN + concat": "twin_concat.yaml"}


def require_cuda() -> torch.device:
    """The CUDA device, or exit with a one-line reason (this check is for GPU machines only)."""
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_check needs a CUDA device (torch.cuda.is_available() is False); "
                         "it is run on a lent GPU machine, never in CI")
    return torch.device("cuda")


def fit_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One bf16-mixed epoch per recipe through the CLI, metrics from ``callback_metrics``."""
    from ifusion_plugin.cli import main as cli_main

    rows = []
    for name, recipe in FIT_RECIPES.items():
        argv = ["fit", "--config", str(ROOT / "recipes" / recipe), "--config", str(ROOT / "recipes" / "data" / "movielens-1m.yaml"),
                "--config", str(ROOT / "recipes" / "common" / "peer-host.yaml"), "--trainer.accelerator=gpu",
                "--trainer.devices=1", "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1", "--run_test=true",
                f"--trainer.default_root_dir={args.out_dir}/{recipe.removesuffix('.yaml')}", "--seed_everything=0"]
        if args.data_root:
            argv.append(f"--data.init_args.root={args.data_root}")
        start = time.perf_counter()
        cli = cli_main(argv)
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        rows.append({"part": "fit bf16-mixed", "model": name, "val_auc": metrics.get("val_auc"),
                     "test_auc": metrics.get("test_auc"), "train_samples_per_s": metrics.get("train_samples_per_s"),
                     "wall_s": time.perf_counter() - start,
                     "finite": all(v == v for v in metrics.values())})
    return rows


def _timed(runners: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each runner, interleaved, with CUDA synchronised around every call."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for name, run in runners.items():
                torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                torch.cuda.synchronize()
                if r >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cost_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Rows (B) and request (1 x C) ratios, iFusion against concat, bf16 autocast, eager and compiled."""
    from ifusion_plugin.fusion import ConcatFusion, InterestFusion
    from ifusion_plugin.hosts import TWIN
    from ifusion_plugin.serving import RequestServingModel, ServingModel

    from benchmarks.speed import ML1M_SPEC

    fusions = {"concat": ConcatFusion, "iFusion S=1": functools.partial(InterestFusion, sampling_steps=1)}
    hosts = {name: TWIN(ML1M_SPEC, fusion=fusion).to(device).eval() for name, fusion in fusions.items()}
    rows_inputs = tuple(t.to(device) for t in ServingModel(hosts["concat"], ML1M_SPEC).example_inputs(args.batch, seed=1))
    request_probe = RequestServingModel(hosts["concat"], ML1M_SPEC)
    request_inputs = tuple(t.to(device) for t in request_probe.example_inputs(args.candidates, seed=2))
    out = []
    for mode in ("eager", "compile"):
        runners: dict[str, Callable[[], object]] = {}
        for name, host in hosts.items():
            row_model, request_model = ServingModel(host, ML1M_SPEC), RequestServingModel(host, ML1M_SPEC)
            if mode == "compile":
                row_model, request_model = torch.compile(row_model), torch.compile(request_model)

            def autocast(model: Callable[..., Any], inputs: tuple) -> Callable[[], object]:
                def run() -> object:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return model(*inputs)
                return run

            runners[f"rows {name}"] = autocast(row_model, rows_inputs)
            runners[f"request {name}"] = autocast(request_model, request_inputs)
        medians = _timed(runners, args.repeats, args.warmup)
        for form, size in (("rows", f"B={args.batch}"), ("request", f"1x{args.candidates}")):
            base = medians[f"{form} concat"]
            for name in hosts:
                seconds = medians[f"{form} {name}"]
                out.append({"part": f"cost bf16 {mode}", "model": f"TWIN + {name}, {form} {size}", "ms": seconds * 1e3,
                            "vs_concat": seconds / base})
    return out


def export_rows(device: torch.device) -> list[dict[str, Any]]:
    """torch.export of the row and request forms on the GPU (fp32) against the eager model."""
    from ifusion_plugin.fusion import InterestFusion
    from ifusion_plugin.hosts import TWIN
    from ifusion_plugin.serving import RequestServingModel, ServingModel

    from benchmarks.speed import ML1M_SPEC

    host = TWIN(ML1M_SPEC, fusion=InterestFusion).to(device).eval()
    out = []
    for form, model, sizes in (("rows", ServingModel(host, ML1M_SPEC), (2, 37)),
                               ("request", RequestServingModel(host, ML1M_SPEC), (2, 37))):
        example = tuple(t.to(device) for t in model.example_inputs(sizes[0], seed=0))
        with torch.no_grad():
            program = torch.export.export(model, example, dynamic_shapes=model.dynamic_shapes()).module()
            worst = 0.0
            for size in sizes[1:]:
                inputs = tuple(t.to(device) for t in model.example_inputs(size, seed=size))
                worst = max(worst, (program(*inputs) - model(*inputs)).abs().max().item())
        out.append({"part": "export parity (fp32, GPU)", "model": f"TWIN + iFusion, {form}", "max_abs_diff": worst})
    return out


def markdown(rows: list[dict[str, Any]], device_name: str) -> str:
    """One table over every part."""
    lines = [f"GPU check on {device_name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}", "",
             "| part | model | val AUC | test AUC | train samples/s | ms | vs concat | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value: Optional[float] = row.get(key)
        return "" if value is None else format(value, fmt)

    for row in rows:
        lines.append(f"| {row['part']} | {row['model']} | {cell(row, 'val_auc', '.4f')} | {cell(row, 'test_auc', '.4f')} | "
                     f"{cell(row, 'train_samples_per_s', ',.0f')} | {cell(row, 'ms', '.3f')} | {cell(row, 'vs_concat', '.3f')} | "
                     f"{cell(row, 'max_abs_diff', '.1e')} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="MovieLens-1M directory (default: the recipe's)")
    parser.add_argument("--out-dir", default="gpu_check_runs", help="run directories of the two fits")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--candidates", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-fit", action="store_true", help="only the cost and export parts")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    device = require_cuda()
    rows: list[dict[str, Any]] = []
    if not args.skip_fit:
        rows += fit_rows(args)
    rows += cost_rows(args, device)
    rows += export_rows(device)
    print(markdown(rows, torch.cuda.get_device_name(device)), flush=True)
    if args.json:
        with contextlib.suppress(FileNotFoundError):
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(device), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
