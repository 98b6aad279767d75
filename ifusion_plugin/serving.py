"""Serving export: a trained host as a function of plain id tensors, saved with ``torch.export``
and as ONNX.

A serving stack feeds tensors, not :class:`~ifusion_plugin.batch.CTRBatch` objects, and wants
probabilities, not logits. :class:`ServingModel` is that function; :func:`export_program` and
:func:`export_onnx` write it with a dynamic batch dimension (every other dimension is fixed by
the :class:`~ifusion_plugin.batch.FeatureSpec`). The fusion layer runs its eval path, i.e.
iFusion's ``sampling_steps`` reverse steps.

Depends on torch alone; ONNX export needs the ``serving`` extra (onnx, onnxscript) and running
the ``.onnx`` file needs onnxruntime.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

from .batch import FIRST_ID, CTRBatch, FeatureSpec

__all__ = ["ServingModel", "example_inputs", "export_program", "export_onnx", "input_names", "load_program", "optional_input_names", "dynamic_shapes"]

#: Inputs of every serving model, in call order; ``context`` follows when the spec has context
#: columns, then ``session_behaviors`` when it has behaviour types.
BASE_INPUT_NAMES: tuple[str, ...] = (
    "user",
    "target_item",
    "target_cate",
    "long_items",
    "long_cates",
    "session_items",
    "session_cates",
)


def input_names(spec: FeatureSpec) -> tuple[str, ...]:
    """The serving inputs of a model over ``spec``, in call order."""
    return BASE_INPUT_NAMES + optional_input_names(spec)


def optional_input_names(spec: FeatureSpec) -> tuple[str, ...]:
    """The inputs after :data:`BASE_INPUT_NAMES` that ``spec`` asks for, in call order."""
    return (("context",) if spec.context_cardinalities else ()) + (("session_behaviors",) if spec.num_behaviors else ())


def example_inputs(spec: FeatureSpec, batch_size: int = 8, seed: int = 0) -> tuple[Tensor, ...]:
    """Random in-vocabulary inputs for ``spec`` (in :func:`input_names` order), batch
    ``batch_size``, histories front-padded to random lengths; deterministic by ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def ids(high: int, *shape: int) -> Tensor:
        return torch.randint(FIRST_ID, max(high, FIRST_ID + 1), shape, generator=g)

    def padded(values: Tensor) -> Tensor:
        length = values.shape[-1]
        keep = torch.randint(0, length + 1, values.shape[:-1] + (1,), generator=g)
        return values * (torch.arange(length) >= length - keep)

    long_items = padded(ids(spec.num_items, batch_size, spec.long_len))
    session_items = padded(ids(spec.num_items, batch_size, spec.num_sessions, spec.session_len))
    cate = lambda items: (items % max(spec.num_cates - FIRST_ID, 1) + FIRST_ID) * (items > 0)  # noqa: E731
    values = {
        "user": ids(spec.num_users, batch_size),
        "target_item": ids(spec.num_items, batch_size),
        "target_cate": ids(spec.num_cates, batch_size),
        "long_items": long_items,
        "long_cates": cate(long_items),
        "session_items": session_items,
        "session_cates": cate(session_items),
    }
    if spec.context_cardinalities:
        values["context"] = torch.stack([ids(c, batch_size) for c in spec.context_cardinalities], dim=1)
    if spec.num_behaviors:
        values["session_behaviors"] = ids(spec.num_behaviors, *session_items.shape) * (session_items > 0)
    return tuple(values[name] for name in input_names(spec))


class ServingModel(nn.Module):
    """A host CTR model in eval mode as ``(ids...) -> click probability``.

    Args:
        host: a host (``forward(CTRBatch) -> HostOutput``), e.g. ``task.host``. It is put in
            eval mode.
        spec: the host's :class:`FeatureSpec` (sequence shapes, vocabulary sizes).

    Call arguments (long tensors, ids as in :class:`CTRBatch`: 0 padding, 1 out-of-vocabulary):
        user, target_item, target_cate: shape (B,).
        long_items, long_cates: shape (B, spec.long_len).
        session_items, session_cates: shape (B, spec.num_sessions, spec.session_len).
        *optional: the inputs of :func:`optional_input_names`, in that order: ``context`` of
            shape (B, len(spec.context_cardinalities)) when the spec has context columns, then
            ``session_behaviors`` of shape (B, K, N) when it has behaviour types.

    Returns:
        Click probabilities, float tensor of shape (B,).
    """

    def __init__(self, host: nn.Module, spec: FeatureSpec) -> None:
        super().__init__()
        self.host = host.eval()
        self.spec = spec

    @property
    def input_names(self) -> tuple[str, ...]:
        return input_names(self.spec)

    def forward(
        self,
        user: Tensor,
        target_item: Tensor,
        target_cate: Tensor,
        long_items: Tensor,
        long_cates: Tensor,
        session_items: Tensor,
        session_cates: Tensor,
        *optional: Tensor,
    ) -> Tensor:
        names = optional_input_names(self.spec)
        if len(optional) != len(names):
            raise ValueError(
                f"expected {len(names)} input(s) after session_cates ({', '.join(names) or 'none'}: the spec has "
                f"context_cardinalities={self.spec.context_cardinalities}, num_behaviors={self.spec.num_behaviors}), "
                f"got {len(optional)}"
            )
        extra = dict(zip(names, optional))
        batch = CTRBatch(
            user=user,
            target_item=target_item,
            target_cate=target_cate,
            long_items=long_items,
            long_cates=long_cates,
            session_items=session_items,
            session_cates=session_cates,
            label=torch.zeros_like(user),
            context=extra.get("context"),
            session_behaviors=extra.get("session_behaviors"),
        )
        return torch.sigmoid(self.host(batch).logits.float())

    def inputs_from_batch(self, batch: CTRBatch) -> tuple[Tensor, ...]:
        """The call arguments taken from a data batch (the label is dropped)."""
        return tuple(getattr(batch, name) for name in self.input_names)

    def example_inputs(self, batch_size: int = 8, seed: int = 0) -> tuple[Tensor, ...]:
        """Random in-vocabulary inputs of batch ``batch_size``, with padding in the sequences."""
        return example_inputs(self.spec, batch_size, seed)


def dynamic_shapes(model: ServingModel) -> dict[str, object]:
    """Dynamic batch dimension of every input, keyed as ``forward``'s parameters (the optional
    inputs are its ``*optional`` tuple)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    shapes: dict[str, object] = {name: {0: batch} for name in BASE_INPUT_NAMES}
    optional = optional_input_names(model.spec)
    if optional:  # torch.export rejects the key of an empty *optional
        shapes["optional"] = tuple({0: batch} for _ in optional)
    return shapes


def _partial(path: str) -> str:
    """The temporary name a file is written under before its atomic rename to ``path``."""
    base, ext = os.path.splitext(path)
    return f"{base}.partial{ext}"


def _check_target(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def export_program(
    model: ServingModel, path: str, example: Optional[tuple[Tensor, ...]] = None, *, overwrite: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` ``model`` with a dynamic batch dimension and save it to ``path`` (``.pt2``).

    Args:
        model: the serving model.
        path: output file; an existing file is kept unless ``overwrite``.
        example: example inputs (default: ``model.example_inputs()``); their batch size must be
            at least 2 so that the batch dimension stays symbolic.

    Returns:
        The exported program (``.module()`` runs it).
    """
    _check_target(path, overwrite)
    example = model.example_inputs() if example is None else example
    if example[0].shape[0] < 2:
        raise ValueError(f"example batch size must be at least 2 to export a dynamic batch, got {example[0].shape[0]}")
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=dynamic_shapes(model))
    # Written next to the target, then renamed: a failed save never leaves a truncated file.
    partial = _partial(path)
    torch.export.save(program, partial)
    os.replace(partial, path)
    return program


def load_program(path: str) -> nn.Module:
    """A saved ``.pt2`` program as a callable module ``(ids...) -> probabilities``."""
    return torch.export.load(path).module()


def export_onnx(
    model: ServingModel, path: str, example: Optional[tuple[Tensor, ...]] = None, *, overwrite: bool = False
) -> None:
    """Export ``model`` to ONNX at ``path`` through torch's dynamo exporter (dynamic batch).

    Input names are ``model.input_names``, the output is ``prob``. Needs onnx and onnxscript.
    """
    _check_target(path, overwrite)
    example = model.example_inputs() if example is None else example
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            dynamic_shapes=dynamic_shapes(model),
            input_names=list(model.input_names),
            output_names=["prob"],
            verbose=False,
        )
    partial = _partial(path)
    onnx_program.save(partial)
    os.replace(partial, path)
