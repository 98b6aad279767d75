"""Auxiliary losses of eq. 18 (unweighted; :class:`InterestFusion` multiplies by the weights)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["evolution_loss", "disentangle_loss", "consistency_loss", "last_present_index", "DisentangleMode", "ConsistencyMode"]

DisentangleMode = Literal["cosine", "inner_product"]
ConsistencyMode = Literal["mse", "cosine"]


def last_present_index(mask: Tensor) -> Tensor:
    """Index of the last True per row: bool (B, K) -> long (B,); 0 for rows without any."""
    k = mask.shape[1]
    positions = torch.arange(k, device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.zeros_like(positions)).amax(dim=1)


def evolution_loss(predicted: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean cosine distance ``1 - cos(predicted, target)`` over the valid rows.

    Args:
        predicted: output conditioned on sessions ``1..K-1``, tensor of shape (B, D).
        target: the encoded last present session ``K``, tensor of shape (B, D).
        valid: bool tensor of shape (B,), rows with at least two present sessions.

    Returns:
        Scalar; zero (still in the graph) when no row is valid.
    """
    distance = 1.0 - F.cosine_similarity(predicted, target, dim=-1)
    weights = valid.to(distance.dtype)
    return (distance * weights).sum() / weights.sum().clamp_min(1.0)


def disentangle_loss(g_cp: Tensor, g_tf: Tensor, mask: Tensor, mode: DisentangleMode = "cosine") -> Tensor:
    """Per-session decorrelation of the two guidance vectors, averaged over present sessions.

    ``"cosine"``: squared cosine similarity (scale-free, cannot be won by shrinking norms).
    ``"inner_product"``: the paper's raw ``||g_cp^T g_tf||^2``.

    Args:
        g_cp, g_tf: tensors of shape (B, K, D).
        mask: bool tensor of shape (B, K).

    Returns:
        Scalar.
    """
    if mode == "cosine":
        per_session = F.cosine_similarity(g_cp, g_tf, dim=-1) ** 2
    elif mode == "inner_product":
        per_session = (g_cp * g_tf).sum(dim=-1) ** 2
    else:
        raise ValueError(f"disentangle_mode must be 'cosine' or 'inner_product', got {mode!r}")
    weights = mask.to(per_session.dtype)
    return (per_session * weights).sum() / weights.sum().clamp_min(1.0)


def consistency_loss(output: Tensor, target: Tensor, mode: ConsistencyMode = "mse") -> Tensor:
    """Distance of ``output`` to ``target`` averaged over rows (eq. 15); inputs (B, D).

    ``"mse"``: ``||output - target||^2 / D``, the paper's form; nothing bounds it when the
    target's scale grows. ``"cosine"``: ``1 - cos(output, target)``, scale-free, in ``[0, 2]``.

    :class:`InterestFusion` passes the t2 output and the detached t1 (task) output.
    """
    if mode == "mse":
        return (output - target).pow(2).mean()
    if mode == "cosine":
        return (1.0 - F.cosine_similarity(output, target, dim=-1)).mean()
    raise ValueError(f"consistency_mode must be 'mse' or 'cosine', got {mode!r}")
