"""``python -m ifusion_plugin.cli export``: a trained checkpoint to serving files.

    python -m ifusion_plugin.cli export --ckpt logs/lightning_logs/version_0/checkpoints/best.ckpt \
        --out_dir export/twin [--format pt2 onnx] [--overwrite]

Writes ``model.pt2`` (``torch.export`` program), ``model.onnx`` (torch's dynamo ONNX exporter)
and ``serving.json`` (input names, dtypes and shapes with ``B`` the dynamic batch, the feature
spec, the checkpoint, the measured parity of each file against the eager model at batch sizes
1 and 37, the tolerance and ``passed``). Existing files are never replaced without
``--overwrite``. The files are exported and checked in a staging directory and renamed only when
every one is within ``--tolerance``: a failing export exits non-zero, leaves no model file under
the final names (a previous export stays as it was) and writes its record to
``serving.rejected.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .serving import ServingModel, export_onnx, export_program, load_program

__all__ = ["main", "serving_model_from_checkpoint"]

PARITY_BATCH_SIZES = (1, 37)
#: Written instead of ``serving.json`` when an export fails its parity check (no model files are).
REJECTED_MANIFEST = "serving.rejected.json"


def serving_model_from_checkpoint(path: str) -> ServingModel:
    """The :class:`ServingModel` of a :class:`~ifusion_plugin.task.CTRTask` checkpoint (CPU)."""
    from .task import CTRTask  # Lightning is needed to read the checkpoint, not to serve

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt: no such file: {path}")
    task = CTRTask.load_from_checkpoint(path, map_location="cpu")
    spec = getattr(task.host, "spec", None) or task.feature_spec
    if spec is None:
        raise ValueError(f"--ckpt: {path} holds no feature spec (neither the host nor the task has one)")
    return ServingModel(task.host, spec).eval()


def _onnx_runner(path: str) -> Callable[..., Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])

    return run


def max_difference(model: ServingModel, runner: Callable[..., Tensor], seeds: Sequence[int] = (1, 2)) -> float:
    """Largest absolute probability difference between ``runner`` and eager ``model`` over
    random inputs at the batch sizes of ``PARITY_BATCH_SIZES``."""
    worst = 0.0
    with torch.no_grad():
        for batch_size, seed in zip(PARITY_BATCH_SIZES, seeds):
            inputs = model.example_inputs(batch_size, seed=seed)
            worst = max(worst, (runner(*inputs) - model(*inputs)).abs().max().item())
    return worst


def _input_description(model: ServingModel) -> list[dict[str, object]]:
    example = model.example_inputs(2)
    return [
        {"name": name, "dtype": str(t.dtype).replace("torch.", ""), "shape": ["B", *t.shape[1:]]}
        for name, t in zip(model.input_names, example)
    ]


def _write_json(payload: dict, path: str) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(partial, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ifusion_plugin.cli export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by fit (CTRTask)")
    parser.add_argument("--out_dir", default="export", help="output directory (default: export)")
    parser.add_argument("--format", nargs="+", choices=("pt2", "onnx"), default=["pt2", "onnx"])
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --out_dir")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted |exported - eager| probability")
    args = parser.parse_args(argv)

    model = serving_model_from_checkpoint(args.ckpt)
    targets = {fmt: os.path.join(args.out_dir, f"model.{fmt}") for fmt in args.format}
    manifest_path = os.path.join(args.out_dir, "serving.json")
    for path in [*targets.values(), manifest_path]:
        if os.path.exists(path) and not args.overwrite:
            parser.error(f"{path} exists; pass --overwrite to replace it")

    # Exported and checked in a staging directory; only a passing export is renamed to the
    # final names, so a server watching out_dir never picks up files that failed parity.
    os.makedirs(args.out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=args.out_dir)
    try:
        staged = {fmt: os.path.join(staging, os.path.basename(path)) for fmt, path in targets.items()}
        parity: dict[str, float] = {}
        if "pt2" in staged:
            export_program(model, staged["pt2"])
            parity["pt2"] = max_difference(model, load_program(staged["pt2"]))
        if "onnx" in staged:
            export_onnx(model, staged["onnx"])
            parity["onnx"] = max_difference(model, _onnx_runner(staged["onnx"]))
        failed = [fmt for fmt, diff in parity.items() if not diff <= args.tolerance]
        manifest = {
            "checkpoint": os.path.abspath(args.ckpt),
            "files": {fmt: os.path.basename(path) for fmt, path in targets.items()},
            "inputs": _input_description(model),
            "output": {"name": "prob", "dtype": "float32", "shape": ["B"]},
            "feature_spec": dataclasses.asdict(model.spec),
            "host": type(model.host).__name__,
            "fusion": type(getattr(model.host, "fusion", None)).__name__,
            "parity_max_abs_diff": parity,
            "parity_batch_sizes": list(PARITY_BATCH_SIZES),
            "tolerance": args.tolerance,
            "passed": not failed,
        }
        for fmt in parity:
            print(f"{fmt:5s} max |exported - eager| = {parity[fmt]:.2e} (tolerance {args.tolerance:g})")
        if failed:
            rejected = os.path.join(args.out_dir, REJECTED_MANIFEST)
            _write_json(manifest, rejected)
            print(f"parity above --tolerance {args.tolerance:g}: {', '.join(failed)}; nothing exported "
                  f"(the record is in {rejected})", file=sys.stderr)
            return 1
        for fmt, path in targets.items():
            os.replace(staged[fmt], path)
            print(f"      {path}")
        _write_json(manifest, manifest_path)
        print(f"      {manifest_path}")
        stale = os.path.join(args.out_dir, REJECTED_MANIFEST)
        if os.path.exists(stale):
            os.remove(stale)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return 0
