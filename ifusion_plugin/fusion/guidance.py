"""Guidance encoders: one guidance vector per session (paper eqs. 7, 9, 10).

Both encoders are causal: the vector of session ``k`` depends only on present sessions
``1..k``, so conditioning on a prefix of sessions (the evolution loss) sees no future.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GuidanceEncoder", "CoreTransientEncoder", "SingleEncoder", "masked_attention", "mlp"]

GuidanceKind = Literal["none", "cfg", "dcfg"]


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> GELU -> Dropout -> Linear``."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


def masked_attention(query: Tensor, key: Tensor, value: Tensor, allowed: Tensor, num_heads: int) -> Tensor:
    """Multi-head scaled dot-product attention with a boolean mask.

    ``F.scaled_dot_product_attention`` over the heads (not ``nn.MultiheadAttention``, whose mask
    cannot differ per row and head-split the same way); the mask may be any (B, Q, N) pattern,
    and the graph exports to ``torch.export`` and ONNX with the eager output (tests/test_serving).

    Args:
        query: tensor of shape (B, Q, D).
        key, value: tensors of shape (B, N, D).
        allowed: bool tensor of shape (B, Q, N); every query row must allow at least one key.
        num_heads: heads; must divide D.

    Returns:
        Tensor of shape (B, Q, D).
    """
    b, q, d = query.shape
    n = key.shape[1]
    hd = d // num_heads
    qh = query.reshape(b, q, num_heads, hd).transpose(1, 2)
    kh = key.reshape(b, n, num_heads, hd).transpose(1, 2)
    vh = value.reshape(b, n, num_heads, hd).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed.unsqueeze(1))  # True: may attend
    return out.transpose(1, 2).reshape(b, q, d)


class CoreTransientEncoder(nn.Module):
    """DCFG encoders: core preference (low-pass) and transient fluctuation (high-pass).

    Core (eq. 9): shared encoder per session, causal running mean over the present sessions
    seen so far, then an MLP with strong dropout. Transient (eq. 10): each session queries the
    present sessions seen so far (itself included) by attention, then an MLP with weak dropout.

    Args:
        dim: width of the session vectors and of the guidance vectors.
        hidden_dim: hidden width of the MLPs.
        num_heads: attention heads of the transient branch; must divide ``dim``.
        core_dropout: dropout of the core MLP (strong regularisation: the low-pass branch).
        transient_dropout: dropout of the transient MLP (weak).

    Call arguments:
        sessions: tensor of shape (B, K, dim), projected sessions, masked ones zeroed.
        mask: bool tensor of shape (B, K).

    Returns:
        ``(g_cp, g_tf)``, tensors of shape (B, K, dim).
    """

    def __init__(self, dim: int, hidden_dim: int, num_heads: int, core_dropout: float, transient_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.core_encoder = mlp(dim, hidden_dim, dim)
        self.core_head = mlp(dim, hidden_dim, dim, core_dropout)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.transient_head = mlp(dim, hidden_dim, dim, transient_dropout)

    def forward(self, sessions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = mask.to(sessions.dtype).unsqueeze(-1)
        encoded = self.core_encoder(sessions) * weights
        running = encoded.cumsum(dim=1) / weights.cumsum(dim=1).clamp_min(1.0)
        g_cp = self.core_head(running)

        k = sessions.shape[1]
        causal = torch.ones(k, k, dtype=torch.bool, device=sessions.device).tril()
        # The diagonal is always allowed so an absent session (whose vector is never used) still
        # has a key and its softmax stays finite.
        eye = torch.eye(k, dtype=torch.bool, device=sessions.device)
        allowed = causal.unsqueeze(0) & (mask.unsqueeze(1) | eye.unsqueeze(0))
        attended = masked_attention(self.query(sessions), self.key(sessions), self.value(sessions), allowed, self.num_heads)
        g_tf = self.transient_head(attended + sessions)
        return g_cp, g_tf


class SingleEncoder(nn.Module):
    """Single guidance encoder (eq. 7): a per-session MLP over the causal running mean.

    Call arguments and return value as :class:`CoreTransientEncoder`, but one tensor
    ``g`` of shape (B, K, dim).
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.encoder = mlp(2 * dim, hidden_dim, dim, dropout)

    def forward(self, sessions: Tensor, mask: Tensor) -> Tensor:
        weights = mask.to(sessions.dtype).unsqueeze(-1)
        running = (sessions * weights).cumsum(dim=1) / weights.cumsum(dim=1).clamp_min(1.0)
        return self.encoder(torch.cat([sessions, running], dim=-1))


class GuidanceEncoder(nn.Module):
    """Guidance vectors and their learned null vectors for ``"none"``, ``"cfg"`` or ``"dcfg"``.

    Args:
        kind: ``"dcfg"`` (two branches), ``"cfg"`` or ``"none"`` (one branch; ``"none"`` uses it
            as a plain condition without null vectors or guidance dropout).
        dim, hidden_dim, num_heads, core_dropout, transient_dropout: see
            :class:`CoreTransientEncoder`; a single encoder uses ``transient_dropout``.

    Call arguments:
        sessions: tensor of shape (B, K, dim); mask: bool tensor of shape (B, K).

    Returns:
        A list of one (``cfg``, ``none``) or two (``dcfg``: core, transient) tensors of shape
        (B, K, dim).
    """

    def __init__(
        self,
        kind: GuidanceKind,
        dim: int,
        hidden_dim: int,
        num_heads: int,
        core_dropout: float,
        transient_dropout: float,
    ) -> None:
        super().__init__()
        self.kind = kind
        if kind == "dcfg":
            self.encoder: nn.Module = CoreTransientEncoder(dim, hidden_dim, num_heads, core_dropout, transient_dropout)
            self.null = nn.Parameter(torch.randn(2, dim) * 0.02)
        else:
            self.encoder = SingleEncoder(dim, hidden_dim, transient_dropout)
            self.null = nn.Parameter(torch.randn(1, dim) * 0.02)

    @property
    def num_branches(self) -> int:
        return 2 if self.kind == "dcfg" else 1

    def forward(self, sessions: Tensor, mask: Tensor) -> list[Tensor]:
        out = self.encoder(sessions, mask)
        return list(out) if isinstance(out, tuple) else [out]
