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
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .batch import FIRST_ID, CTRBatch, FeatureSpec

__all__ = ["ServingModel", "RequestServingModel", "request_input_names", "example_inputs", "export_program", "export_onnx", "input_names", "load_program", "load_onnx", "optional_input_names", "dynamic_shapes"]

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


class _HostServing(nn.Module):
    """What both serving forms share: the host in eval mode, its spec, the optional inputs."""

    def __init__(self, host: nn.Module, spec: FeatureSpec) -> None:
        super().__init__()
        self.host = host.eval()
        self.spec = spec

    def _optional(self, optional: tuple[Tensor, ...], after: str) -> dict[str, Tensor]:
        """The optional inputs by name; raises ``ValueError`` when their number is not the spec's."""
        names = optional_input_names(self.spec)
        if len(optional) != len(names):
            raise ValueError(
                f"expected {len(names)} input(s) after {after} ({', '.join(names) or 'none'}: the spec has "
                f"context_cardinalities={self.spec.context_cardinalities}, num_behaviors={self.spec.num_behaviors}), "
                f"got {len(optional)}"
            )
        return dict(zip(names, optional))


class ServingModel(_HostServing):
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
        extra = self._optional(optional, "session_cates")
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


    def dynamic_shapes(self) -> dict[str, object]:
        """Dynamic batch dimension of every input, keyed as ``forward``'s parameters (the
        optional inputs are its ``*optional`` tuple)."""
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        shapes: dict[str, object] = {name: {0: batch} for name in BASE_INPUT_NAMES}
        optional = optional_input_names(self.spec)
        if optional:  # torch.export rejects the key of an empty *optional
            shapes["optional"] = tuple({0: batch} for _ in optional)
        return shapes

    @staticmethod
    def dynamic_size(example: tuple[Tensor, ...]) -> int:
        """The size of the dynamic dimension in ``example`` (the batch)."""
        return int(example[0].shape[0])


#: Inputs of every request-form model, in call order; ``context`` and ``session_behaviors``
#: follow as in :data:`BASE_INPUT_NAMES`.
REQUEST_INPUT_NAMES: tuple[str, ...] = (
    "user",
    "long_items",
    "long_cates",
    "session_items",
    "session_cates",
    "target_item",
    "target_cate",
)


def request_input_names(spec: FeatureSpec) -> tuple[str, ...]:
    """The request-form inputs of a model over ``spec``, in call order."""
    return REQUEST_INPUT_NAMES + optional_input_names(spec)


class RequestServingModel(_HostServing):
    """A host in eval mode scoring one user against C candidates: the request form.

    The user's side (sessions, the fusion layer's session work, the user's sequence where the
    host allows, the user and context embeddings) is computed once; see
    :meth:`~ifusion_plugin.hosts.CTRHost.request_logits`. Probabilities equal
    :class:`ServingModel`'s on the C rows ``(user, candidate)`` up to float rounding.

    Call arguments (long tensors, ids as in :class:`CTRBatch`):
        user: shape (1,).
        long_items, long_cates: shape (1, spec.long_len).
        session_items, session_cates: shape (1, spec.num_sessions, spec.session_len).
        target_item, target_cate: shape (C,), the candidates.
        *optional: ``context`` of shape (1, len(spec.context_cardinalities)) and
            ``session_behaviors`` of shape (1, K, N), as :func:`optional_input_names` says.

    Returns:
        Click probabilities, float tensor of shape (C,).
    """

    @property
    def input_names(self) -> tuple[str, ...]:
        return request_input_names(self.spec)

    def forward(
        self,
        user: Tensor,
        long_items: Tensor,
        long_cates: Tensor,
        session_items: Tensor,
        session_cates: Tensor,
        target_item: Tensor,
        target_cate: Tensor,
        *optional: Tensor,
    ) -> Tensor:
        extra = self._optional(optional, "target_cate")
        one_user = CTRBatch(
            user=user, target_item=user, target_cate=user, long_items=long_items, long_cates=long_cates,
            session_items=session_items, session_cates=session_cates, label=torch.zeros_like(user),
            context=extra.get("context"), session_behaviors=extra.get("session_behaviors"),
        )
        return torch.sigmoid(self.host.request_logits(one_user, target_item, target_cate).float())

    def example_inputs(self, num_candidates: int = 8, seed: int = 0) -> tuple[Tensor, ...]:
        """Random inputs: one user (with padding in the sequences) and ``num_candidates`` candidates."""
        rows = dict(zip(input_names(self.spec), example_inputs(self.spec, max(num_candidates, 1), seed)))
        values = {name: value[:1] for name, value in rows.items()}
        values["target_item"], values["target_cate"] = rows["target_item"][:num_candidates], rows["target_cate"][:num_candidates]
        return tuple(values[name] for name in self.input_names)

    def rows_of(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The same request as :class:`ServingModel` inputs: the user repeated for every candidate."""
        values = dict(zip(self.input_names, inputs))
        count = values["target_item"].shape[0]
        return tuple(values[name] if name in ("target_item", "target_cate") else values[name].expand(count, *values[name].shape[1:])
                     for name in input_names(self.spec))

    def dynamic_shapes(self) -> dict[str, object]:
        """The candidate dimension is dynamic; the user's inputs have batch 1."""
        candidates = torch.export.Dim("candidates", min=1, max=1 << 20)
        # {} (no dynamic dimension), not None: the ONNX exporter turns a tuple of None into a list.
        shapes: dict[str, object] = {name: {} for name in REQUEST_INPUT_NAMES}
        shapes["target_item"] = shapes["target_cate"] = {0: candidates}
        if optional_input_names(self.spec):
            shapes["optional"] = tuple({} for _ in optional_input_names(self.spec))
        return shapes

    @staticmethod
    def dynamic_size(example: tuple[Tensor, ...]) -> int:
        """The number of candidates in ``example``."""
        return int(example[REQUEST_INPUT_NAMES.index("target_item")].shape[0])


Servable = Union[ServingModel, RequestServingModel]


def dynamic_shapes(model: Servable) -> dict[str, object]:
    """The dynamic dimensions of ``model``'s inputs (the batch, or the candidates)."""
    return model.dynamic_shapes()


def _partial(path: str) -> str:
    """The temporary name a file is written under before its atomic rename to ``path``."""
    base, ext = os.path.splitext(path)
    return f"{base}.partial{ext}"


def _check_target(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def export_program(
    model: Servable, path: str, example: Optional[tuple[Tensor, ...]] = None, *, overwrite: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` ``model`` with a dynamic batch dimension and save it to ``path`` (``.pt2``).

    Args:
        model: the serving model.
        path: output file; an existing file is kept unless ``overwrite``.
        example: example inputs (default: ``model.example_inputs()``); their batch (or number of
            candidates) must be at least 2 so that the dimension stays symbolic.

    Returns:
        The exported program (``.module()`` runs it).
    """
    _check_target(path, overwrite)
    example = model.example_inputs() if example is None else example
    if model.dynamic_size(example) < 2:
        raise ValueError(f"example batch size must be at least 2 to export a dynamic batch, got {model.dynamic_size(example)}")
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


def load_onnx(path: str, *, threads: Optional[int] = None, spin: bool = True) -> Callable[..., Tensor]:
    """A saved ``.onnx`` model as a callable ``(ids...) -> probabilities`` on onnxruntime's CPU
    provider (tensors in, tensor out). Needs onnxruntime.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: onnxruntime's default, one per core).
        spin: whether idle threads spin between calls (onnxruntime's default); ``False`` leaves
            the cores to other work in the same process, e.g. models timed beside it.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, inputs)})[0])

    return run


def export_onnx(
    model: Servable, path: str, example: Optional[tuple[Tensor, ...]] = None, *, overwrite: bool = False
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
