"""``python -m ifusion_plugin.cli export``: a trained checkpoint to serving files.

    python -m ifusion_plugin.cli export --ckpt logs/lightning_logs/version_0/checkpoints/best.ckpt \
        --out_dir export/twin [--format pt2 onnx] [--overwrite]

Writes ``model.pt2`` (``torch.export`` program), ``model.onnx`` (torch's dynamo ONNX exporter),
``request.pt2`` / ``request.onnx`` (the request form: one user against C candidates, the user's
side computed once; see :class:`~ifusion_plugin.serving.RequestServingModel`),
``vocab/`` (the training vocabularies: raw id -> index, so that a server can send the ids its
logs spell; see :class:`~ifusion_plugin.serving_bundle.ServingBundle`) and ``serving.json``
(input names, dtypes and shapes with ``B`` the dynamic batch, the feature spec, how a raw
history becomes inputs, the checkpoint, the measured parity of each file against the eager
model at batch sizes 1 and 37, the tolerance and ``passed``). The vocabularies come from the
run's data: the ``config.yaml`` that ``fit`` saved beside ``checkpoints/``, or ``--config``.
Existing files are never replaced without ``--overwrite``. The files are exported and checked in a staging directory and renamed only when
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

from .run_config import run_config_of
from .serving import RequestServingModel, Servable, ServingModel, export_onnx, export_program, load_onnx, load_program

__all__ = ["main", "serving_model_from_checkpoint"]

PARITY_BATCH_SIZES = (1, 37)
#: The directory of the vocabularies inside an export.
VOCAB_DIR = "vocab"
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


def max_difference(model: Servable, runner: Callable[..., Tensor], seeds: Sequence[int] = (1, 2)) -> float:
    """Largest absolute probability difference between ``runner`` and eager ``model`` over
    random inputs at the batch sizes (or numbers of candidates) of ``PARITY_BATCH_SIZES``."""
    worst = 0.0
    with torch.no_grad():
        for batch_size, seed in zip(PARITY_BATCH_SIZES, seeds):
            inputs = model.example_inputs(batch_size, seed=seed)
            worst = max(worst, (runner(*inputs) - model(*inputs)).abs().max().item())
    return worst


def _request_vs_rows(request_model: RequestServingModel, model: ServingModel) -> float:
    """Largest |request form - row form| (eager) over random requests of 1 and 37 candidates."""
    worst = 0.0
    with torch.no_grad():
        for count, seed in zip(PARITY_BATCH_SIZES, (3, 4)):
            inputs = request_model.example_inputs(count, seed=seed)
            worst = max(worst, (request_model(*inputs) - model(*request_model.rows_of(inputs))).abs().max().item())
    return worst


def _input_description(model: Servable) -> list[dict[str, object]]:
    """Name, dtype and shape of each input; ``B`` (rows) or ``C`` (candidates) marks the dynamic dimension."""
    example = model.example_inputs(2)
    shapes = model.dynamic_shapes()
    optional = iter(shapes.get("optional", ()))
    described = []
    for name, t in zip(model.input_names, example):
        dims = shapes[name] if name in shapes else next(optional)
        dynamic = "C" if isinstance(model, RequestServingModel) else "B"
        shape = [dynamic if dims and i in dims else int(size) for i, size in enumerate(t.shape)]
        described.append({"name": name, "dtype": str(t.dtype).replace("torch.", ""), "shape": shape})
    return described


def _write_vocabularies(model: ServingModel, config: str, directory: str) -> dict:
    """Write the run's vocabularies to ``directory``; returns the request features (a dict).

    Raises:
        ValueError: the config's data does not have the checkpoint's vocabulary sizes.
    """
    from .run_config import datamodule_from_config

    datamodule = datamodule_from_config(config)
    spec = datamodule.feature_spec
    if spec != model.spec:
        wrong = {k: (v, getattr(spec, k)) for k, v in dataclasses.asdict(model.spec).items()
                 if getattr(spec, k) != (tuple(v) if isinstance(v, list) else v)}
        raise ValueError(f"--config {config}: its data does not match the checkpoint's model (model vs data): "
                         + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in wrong.items()))
    datamodule.vocabularies().save(directory)
    return datamodule.request_features().to_dict()


def _replace_directory(staged: str, final: str) -> None:
    """Move the directory ``staged`` to ``final``, replacing what is there (the old one is renamed
    away first, then removed: ``final`` never holds a mix of both)."""
    if os.path.exists(final):
        old = f"{staged}.old"
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)


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
    parser.add_argument("--config", default=None,
                        help="the run's config, for its vocabularies (default: config.yaml beside the checkpoint's "
                             "checkpoints/ directory, as fit writes it)")
    args = parser.parse_args(argv)

    model = serving_model_from_checkpoint(args.ckpt)
    request_model = RequestServingModel(model.host, model.spec)
    # Per format the row form (model.*) and the request form (request.*); parity keys alike.
    targets = {fmt: os.path.join(args.out_dir, f"model.{fmt}") for fmt in args.format}
    targets.update({f"request.{fmt}": os.path.join(args.out_dir, f"request.{fmt}") for fmt in args.format})
    manifest_path = os.path.join(args.out_dir, "serving.json")
    vocab_path = os.path.join(args.out_dir, VOCAB_DIR)
    for path in [*targets.values(), manifest_path, vocab_path]:
        if os.path.exists(path) and not args.overwrite:
            parser.error(f"{path} exists; pass --overwrite to replace it")
    config = args.config or run_config_of(args.ckpt)

    # Exported and checked in a staging directory; only a passing export is renamed to the
    # final names, so a server watching out_dir never picks up files that failed parity.
    os.makedirs(args.out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=args.out_dir)
    try:
        staged = {fmt: os.path.join(staging, os.path.basename(path)) for fmt, path in targets.items()}
        parity: dict[str, float] = {}
        for key, path in staged.items():
            servable = request_model if key.startswith("request.") else model
            if path.endswith(".pt2"):
                export_program(servable, path)
                parity[key] = max_difference(servable, load_program(path))
            else:
                export_onnx(servable, path)
                parity[key] = max_difference(servable, load_onnx(path))
        request_vs_rows = _request_vs_rows(request_model, model)
        features = None
        if config is not None:
            features = _write_vocabularies(model, config, os.path.join(staging, VOCAB_DIR))
        else:
            print(f"no vocabularies exported: no config.yaml beside {args.ckpt}; pass --config <the fit's config> "
                  "to serve raw ids", file=sys.stderr)
        failed = [fmt for fmt, diff in parity.items() if not diff <= args.tolerance]
        if not request_vs_rows <= args.tolerance:
            failed.append("request form vs rows")
        manifest = {
            "checkpoint": os.path.abspath(args.ckpt),
            "files": {fmt: os.path.basename(targets[fmt]) for fmt in args.format},
            "inputs": _input_description(model),
            "output": {"name": "prob", "dtype": "float32", "shape": ["B"]},
            "request_files": {fmt: os.path.basename(targets[f"request.{fmt}"]) for fmt in args.format},
            "request_inputs": _input_description(request_model),
            "request_output": {"name": "prob", "dtype": "float32", "shape": ["C"]},
            "request_vs_rows_max_abs_diff": request_vs_rows,
            "feature_spec": dataclasses.asdict(model.spec),
            "vocabularies": VOCAB_DIR if features is not None else None,
            "features": features,
            "host": type(model.host).__name__,
            "fusion": type(getattr(model.host, "fusion", None)).__name__,
            "parity_max_abs_diff": parity,
            "parity_batch_sizes": list(PARITY_BATCH_SIZES),
            "tolerance": args.tolerance,
            "passed": not failed,
        }
        for fmt in parity:
            print(f"{fmt:12s} max |exported - eager| = {parity[fmt]:.2e} (tolerance {args.tolerance:g})")
        print(f"{'request form':12s} max |request - rows| = {request_vs_rows:.2e} (eager, tolerance {args.tolerance:g})")
        if failed:
            rejected = os.path.join(args.out_dir, REJECTED_MANIFEST)
            _write_json(manifest, rejected)
            print(f"parity above --tolerance {args.tolerance:g}: {', '.join(failed)}; nothing exported "
                  f"(the record is in {rejected})", file=sys.stderr)
            return 1
        for fmt, path in targets.items():
            os.replace(staged[fmt], path)
            print(f"      {path}")
        if features is not None:
            _replace_directory(os.path.join(staging, VOCAB_DIR), vocab_path)
            print(f"      {vocab_path}{os.sep}")
        elif os.path.exists(vocab_path):
            # A stale vocab/ from an earlier export would pair with this model: remove it.
            shutil.rmtree(vocab_path)
        _write_json(manifest, manifest_path)
        print(f"      {manifest_path}")
        stale = os.path.join(args.out_dir, REJECTED_MANIFEST)
        if os.path.exists(stale):
            os.remove(stale)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return 0
