"""``python -m ifusion_plugin.cli export``: a trained checkpoint to serving files.

    python -m ifusion_plugin.cli export --ckpt logs/lightning_logs/version_0/checkpoints/best.ckpt \
        --out_dir export/twin [--format pt2 onnx] [--overwrite]

Writes ``model.pt2`` (``torch.export`` program), ``model.onnx`` (torch's dynamo ONNX exporter)
and ``serving.json`` (input names, dtypes and shapes with ``B`` the dynamic batch, the feature
spec, the checkpoint, and the measured parity of each file against the eager model at batch
sizes 1 and 37). Existing files are never replaced without ``--overwrite``. Exits non-zero when
an exported file differs from eager by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .serving import ServingModel, export_onnx, export_program, load_program

__all__ = ["main", "serving_model_from_checkpoint"]

PARITY_BATCH_SIZES = (1, 37)


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

    parity: dict[str, float] = {}
    if "pt2" in targets:
        export_program(model, targets["pt2"], overwrite=args.overwrite)
        parity["pt2"] = max_difference(model, load_program(targets["pt2"]))
    if "onnx" in targets:
        export_onnx(model, targets["onnx"], overwrite=args.overwrite)
        parity["onnx"] = max_difference(model, _onnx_runner(targets["onnx"]))

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
    }
    partial = f"{manifest_path}.partial"
    with open(partial, "w") as handle:
        json.dump(manifest, handle, indent=2)
    os.replace(partial, manifest_path)
    for fmt, path in targets.items():
        print(f"{fmt:5s} {path}  max |exported - eager| = {parity[fmt]:.2e}")
    print(f"      {manifest_path}")
    failed = [fmt for fmt, diff in parity.items() if not diff <= args.tolerance]
    if failed:
        print(f"parity above --tolerance {args.tolerance:g}: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
