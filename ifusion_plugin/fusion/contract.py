"""The fusion contract: what every fusion layer takes and returns.

A host model (DIN, SIM, TWIN, or a user's own) computes a long-term interest vector and one
vector per short-term session, and hands both to a fusion layer.  Every fusion layer in this
package (``ConcatFusion``, ``GateFusion``, ``AttentionFusion``, ``InterestFusion``) is built
with the same leading constructor arguments and returns the same output type, so replacing one
by another is a change of class name and nothing else.

This module depends on torch alone: no hosts, data or Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["FusionOutput", "FusionLayer", "FusionFactory", "masked_mean"]


@dataclass
class FusionOutput:
    """What a fusion layer returns.

    Attributes:
        fused: tensor of shape ``(B, fusion_dim)``, the fused user interest that the host's head
            concatenates with its other features.
        losses: named scalar auxiliary losses, **already multiplied by their weights**, so a
            host's training step adds ``sum(losses.values())`` to its own loss. Empty in eval
            mode and for layers without auxiliary objectives.
    """

    fused: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)

    def total_loss(self) -> Tensor:
        """Sum of the auxiliary losses, a zero scalar on ``fused``'s device when there are none."""
        if not self.losses:
            return self.fused.new_zeros(())
        return torch.stack(list(self.losses.values())).sum()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over dimension 1 of the positions where ``mask`` is True.

    Args:
        values: tensor of shape ``(B, K, D)``.
        mask: bool tensor of shape ``(B, K)``.

    Returns:
        Tensor of shape ``(B, D)``; rows whose mask is all False give zeros (not NaN).
    """
    weights = mask.to(values.dtype).unsqueeze(-1)
    total = (values * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp_min(1.0)
    return total / count


class FusionLayer(nn.Module):
    """Base class of every fusion layer: common constructor arguments and input checks.

    Args:
        long_dim: width ``d_L`` of the long-term interest ``h_long``.
        session_dim: width ``d_S`` of each session vector in ``h_sessions`` (may differ from
            ``long_dim``).
        fusion_dim: width of the fused output.
        validate_inputs: check ranks, shapes, dtypes and finiteness of every input and raise a
            ``ValueError`` naming the argument. The checks are cheap (one reduction for
            finiteness) and are skipped while tracing for export; turn them off to save even that.

    Call arguments (``forward``):
        h_long: tensor of shape ``(B, long_dim)``.
        h_sessions: tensor of shape ``(B, K, session_dim)``, sessions oldest first. ``K`` may
            change from call to call.
        session_mask: optional bool tensor of shape ``(B, K)``, True where a session exists.
            ``None`` means every session exists. Rows with no session are legal.
        long_mask: optional bool tensor of shape ``(B,)``, False where the user has no
            long-term history. ``None`` means every row has one.

    Returns:
        :class:`FusionOutput` with ``fused`` of shape ``(B, fusion_dim)``.
    """

    def __init__(
        self,
        long_dim: int,
        session_dim: int,
        fusion_dim: int = 64,
        *,
        validate_inputs: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("long_dim", long_dim), ("session_dim", session_dim), ("fusion_dim", fusion_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.long_dim = long_dim
        self.session_dim = session_dim
        self.fusion_dim = fusion_dim
        self.validate_inputs = validate_inputs

    def _check_inputs(
        self,
        h_long: Tensor,
        h_sessions: Tensor,
        session_mask: Optional[Tensor],
        long_mask: Optional[Tensor],
    ) -> None:
        """Raise ``ValueError`` naming the argument, the expected and the actual shape or value."""
        if not self.validate_inputs or torch.compiler.is_compiling() or torch.jit.is_scripting():
            return
        if not isinstance(h_long, Tensor) or h_long.dim() != 2:
            raise ValueError(f"h_long must have shape (B, long_dim={self.long_dim}), got {_describe(h_long)}")
        if not isinstance(h_sessions, Tensor) or h_sessions.dim() != 3:
            raise ValueError(
                f"h_sessions must have shape (B, K, session_dim={self.session_dim}), got {_describe(h_sessions)}"
            )
        batch = h_long.shape[0]
        if h_long.shape[1] != self.long_dim:
            raise ValueError(
                f"h_long must have shape (B, long_dim={self.long_dim}), got {tuple(h_long.shape)}: "
                f"its last dimension {h_long.shape[1]} differs from the configured long_dim {self.long_dim}"
            )
        if h_sessions.shape[0] != batch:
            raise ValueError(
                f"h_sessions must have batch size {batch} like h_long, got shape {tuple(h_sessions.shape)}"
            )
        if h_sessions.shape[2] != self.session_dim:
            raise ValueError(
                f"h_sessions must have shape (B, K, session_dim={self.session_dim}), got {tuple(h_sessions.shape)}: "
                f"its last dimension {h_sessions.shape[2]} differs from the configured session_dim {self.session_dim}"
            )
        if not h_long.is_floating_point():
            raise ValueError(f"h_long must be a floating-point tensor, got dtype {h_long.dtype}")
        if not h_sessions.is_floating_point():
            raise ValueError(f"h_sessions must be a floating-point tensor, got dtype {h_sessions.dtype}")
        num_sessions = h_sessions.shape[1]
        if session_mask is not None:
            if not isinstance(session_mask, Tensor) or session_mask.dtype != torch.bool:
                raise ValueError(
                    f"session_mask must be a bool tensor of shape ({batch}, {num_sessions}), got {_describe(session_mask)}"
                )
            if tuple(session_mask.shape) != (batch, num_sessions):
                raise ValueError(
                    f"session_mask must have shape ({batch}, {num_sessions}) like h_sessions[:, :, 0], "
                    f"got {tuple(session_mask.shape)}"
                )
        if long_mask is not None:
            if not isinstance(long_mask, Tensor) or long_mask.dtype != torch.bool:
                raise ValueError(f"long_mask must be a bool tensor of shape ({batch},), got {_describe(long_mask)}")
            if tuple(long_mask.shape) != (batch,):
                raise ValueError(f"long_mask must have shape ({batch},), got {tuple(long_mask.shape)}")
        # One fused reduction per tensor: cheap next to any layer that follows.
        for name, tensor in (("h_long", h_long), ("h_sessions", h_sessions)):
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ValueError(f"{name} must be finite, got {bad} NaN or infinite value(s)")

    def forward(
        self,
        h_long: Tensor,
        h_sessions: Tensor,
        session_mask: Optional[Tensor] = None,
        long_mask: Optional[Tensor] = None,
    ) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ request form
    # Serving scores one user against C candidates. What depends on the sessions alone is
    # computed once (prepare_sessions, batch 1) and shared by every candidate (fuse_prepared);
    # the defaults below share nothing and are exact for any layer; layers override them to
    # move work out of the per-candidate path. Eval mode only.

    def prepare_sessions(self, h_sessions: Tensor, session_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """The candidate-independent work on one user's sessions (eval mode).

        Args:
            h_sessions: tensor of shape ``(1, K, session_dim)``.
            session_mask: optional bool tensor of shape ``(1, K)``.

        Returns:
            Named tensors with batch dimension 1, for :meth:`fuse_prepared`.
        """
        if session_mask is None:
            session_mask = torch.ones(h_sessions.shape[:2], dtype=torch.bool, device=h_sessions.device)
        return {"h_sessions": h_sessions, "session_mask": session_mask}

    def fuse_prepared(self, h_long: Tensor, prepared: dict[str, Tensor], long_mask: Optional[Tensor] = None) -> Tensor:
        """``fused`` for C candidates of the user whose sessions :meth:`prepare_sessions` prepared.

        Args:
            h_long: tensor of shape ``(C, long_dim)`` (it may depend on the candidate).
            prepared: what :meth:`prepare_sessions` returned.
            long_mask: optional bool tensor of shape ``(C,)``.

        Returns:
            Tensor of shape ``(C, fusion_dim)``, equal to ``forward``'s ``fused`` on the rows
            ``(h_long[c], sessions)`` in eval mode.
        """
        count = h_long.shape[0]
        h_sessions = prepared["h_sessions"].expand(count, -1, -1)
        return self.forward(h_long, h_sessions, prepared["session_mask"].expand(count, -1), long_mask).fused

    def extra_repr(self) -> str:
        return f"long_dim={self.long_dim}, session_dim={self.session_dim}, fusion_dim={self.fusion_dim}"


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__}"


#: What hosts accept in their ``fusion`` slot: any callable ``(long_dim, session_dim) -> FusionLayer``.
#: A fusion class itself qualifies (``ConcatFusion``), and so does
#: ``functools.partial(InterestFusion, fusion_dim=64, guidance="dcfg")``. LightningCLI builds one
#: from YAML given ``class_path`` and ``init_args`` without the two dimensions.
FusionFactory = Callable[[int, int], FusionLayer]
