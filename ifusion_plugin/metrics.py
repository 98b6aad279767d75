"""CTR metrics: AUC, group AUC (GAUC), log loss and RelaImpr.

``GroupAUC`` and ``LogLoss`` are torchmetrics ``Metric`` s, so Lightning accumulates them over
an epoch and syncs them across processes (DDP) before ``compute``. ``GroupAUC`` keeps every
prediction (its states are lists reduced by ``cat``), because a per-user AUC cannot be built
from per-batch partial sums; ``LogLoss`` is torchmetrics' ``MeanMetric`` of per-sample losses. AUC itself is torchmetrics'
``BinaryAUROC`` and is re-exported here so a task imports all its metrics from one place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

__all__ = ["BinaryAUROC", "GroupAUC", "LogLoss", "group_auc", "log_loss", "rela_impr"]


def _check_inputs(preds: Tensor, target: Tensor, groups: Tensor | None = None) -> None:
    """Raise ``ValueError`` naming the argument when shapes or values are not as documented."""
    if preds.dim() != 1:
        raise ValueError(f"preds must have shape (N,), got {tuple(preds.shape)}")
    if target.shape != preds.shape:
        raise ValueError(f"target must have shape {tuple(preds.shape)} like preds, got {tuple(target.shape)}")
    if groups is not None and groups.shape != preds.shape:
        raise ValueError(f"groups must have shape {tuple(preds.shape)} like preds, got {tuple(groups.shape)}")
    if not preds.is_floating_point():
        raise ValueError(f"preds must be a floating-point tensor, got dtype {preds.dtype}")
    if target.numel() and not bool(((target == 0) | (target == 1)).all()):
        raise ValueError("target must contain only 0 and 1")


def group_auc(preds: Tensor, target: Tensor, groups: Tensor) -> Tensor:
    """Impression-weighted mean of the per-group ROC AUC (GAUC, Zhou et al. 2018, eq. 5).

    ``GAUC = sum_u n_u * AUC_u / sum_u n_u`` over the groups (users) that have both a positive
    and a negative sample; the others have no AUC and are skipped, as in the DIN paper. Ties in
    ``preds`` count one half (the Mann-Whitney statistic with average ranks), which is what
    ``sklearn.metrics.roc_auc_score`` computes. Fully vectorised: one sort, no loop over groups.

    Args:
        preds: tensor of shape ``(N,)``, scores (probabilities or logits: only their order matters).
        target: tensor of shape ``(N,)`` with values in {0, 1}.
        groups: integer tensor of shape ``(N,)``, the group (user) of each sample.

    Returns:
        Scalar float tensor; NaN when no group has both classes.

    Example:
        >>> preds = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.8])
        >>> target = torch.tensor([0, 1, 1, 0, 0])
        >>> groups = torch.tensor([7, 7, 8, 8, 8])
        >>> round(float(group_auc(preds, target, groups)), 4)  # (2 * 1.0 + 3 * 0.5) / 5
        0.7
    """
    if preds.numel() == 0:
        return torch.tensor(float("nan"), device=preds.device)
    # float64: rank sums of millions of samples lose precision in float32.
    preds = preds.detach().to(torch.float64)
    target = target.detach().to(torch.float64)
    groups = groups.detach().long()
    # Sort by score, then stably by group: samples come grouped by user, scores ascending.
    by_score = torch.argsort(preds, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]
    g, p, y = groups[order], preds[order], target[order]
    n = g.numel()

    new_group = torch.ones(n, dtype=torch.bool, device=g.device)
    new_group[1:] = g[1:] != g[:-1]
    group_id = torch.cumsum(new_group.long(), 0) - 1
    num_groups = int(group_id[-1]) + 1
    counts = torch.zeros(num_groups, dtype=torch.float64, device=g.device).index_add_(0, group_id, torch.ones_like(p))
    starts = torch.nonzero(new_group).squeeze(1)
    rank = torch.arange(n, device=g.device, dtype=torch.float64) - starts[group_id].to(torch.float64) + 1.0

    # Tied scores inside a group share the mean of their ranks.
    new_tie = new_group.clone()
    new_tie[1:] |= p[1:] != p[:-1]
    tie_id = torch.cumsum(new_tie.long(), 0) - 1
    num_ties = int(tie_id[-1]) + 1
    tie_sum = torch.zeros(num_ties, dtype=torch.float64, device=g.device).index_add_(0, tie_id, rank)
    tie_count = torch.zeros(num_ties, dtype=torch.float64, device=g.device).index_add_(0, tie_id, torch.ones_like(p))
    rank = (tie_sum / tie_count)[tie_id]

    positives = torch.zeros(num_groups, dtype=torch.float64, device=g.device).index_add_(0, group_id, y)
    negatives = counts - positives
    positive_rank_sum = torch.zeros(num_groups, dtype=torch.float64, device=g.device).index_add_(0, group_id, rank * y)
    valid = (positives > 0) & (negatives > 0)
    if not bool(valid.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=g.device)
    auc = (positive_rank_sum[valid] - positives[valid] * (positives[valid] + 1) / 2) / (positives[valid] * negatives[valid])
    weights = counts[valid]
    return (auc * weights).sum() / weights.sum()


def log_loss(preds: Tensor, target: Tensor, *, from_logits: bool = False, eps: float = 1e-7) -> Tensor:
    """Mean binary cross-entropy.

    Args:
        preds: tensor of shape ``(N,)``, probabilities, or logits when ``from_logits``.
        target: tensor of shape ``(N,)`` with values in {0, 1}.
        from_logits: ``preds`` are logits; the loss is then computed stably from them.
        eps: probabilities are clipped to ``[eps, 1 - eps]`` (ignored with ``from_logits``).

    Returns:
        Scalar float tensor.
    """
    return _log_losses(preds, target, from_logits=from_logits, eps=eps).sum() / max(preds.numel(), 1)


def _log_losses(preds: Tensor, target: Tensor, *, from_logits: bool, eps: float) -> Tensor:
    """Per-sample binary cross-entropy in float64, shape ``(N,)``."""
    preds = preds.detach().to(torch.float64)
    target = target.detach().to(torch.float64)
    if from_logits:
        return torch.nn.functional.binary_cross_entropy_with_logits(preds, target, reduction="none")
    probs = preds.clamp(eps, 1.0 - eps)
    return -(target * probs.log() + (1.0 - target) * (1.0 - probs).log())


def rela_impr(auc: float, base_auc: float) -> float:
    """Relative improvement over a base model, in percent (eq. 20 of the iFusion paper).

    ``RelaImpr = ((AUC - 0.5) / (AUC_base - 0.5) - 1) * 100``: the improvement of the part of
    the AUC above random guessing, as in DIN (Zhou et al. 2018).

    Args:
        auc: AUC (or GAUC) of the measured model.
        base_auc: AUC of the base model; must be above 0.5.

    Raises:
        ValueError: ``base_auc`` is not above 0.5 (the ratio would be undefined or flip sign).

    Example:
        >>> round(rela_impr(0.76, 0.75), 6)
        4.0
    """
    if not base_auc > 0.5:
        raise ValueError(f"base_auc must be above 0.5, got {base_auc}")
    return ((float(auc) - 0.5) / (float(base_auc) - 0.5) - 1.0) * 100.0


class GroupAUC(Metric):
    """Group AUC (GAUC) accumulated over batches; see :func:`group_auc`.

    States are the concatenated predictions, targets and group ids (``dist_reduce_fx="cat"``),
    so the metric is exact under DDP: each user's samples may sit on different processes.

    Args:
        validate_args: check shapes and label values on every ``update`` (costs one reduction).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Call arguments (``update``):
        preds: tensor of shape ``(N,)``, scores.
        target: tensor of shape ``(N,)`` with values in {0, 1}.
        groups: integer tensor of shape ``(N,)``, e.g. the user ids.

    Returns (``compute``):
        Scalar float64 tensor; NaN when no group has both classes.

    Example:
        >>> metric = GroupAUC()
        >>> metric.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]), torch.tensor([7, 7]))
        >>> metric.update(torch.tensor([0.3, 0.2, 0.8]), torch.tensor([1, 0, 0]), torch.tensor([8, 8, 8]))
        >>> round(float(metric.compute()), 4)
        0.7
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    preds: list[Tensor]
    target: list[Tensor]
    groups: list[Tensor]

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        if self.validate_args:
            _check_inputs(preds, target, groups)
        self.preds.append(preds.detach())
        self.target.append(target.detach())
        self.groups.append(groups.detach())

    def compute(self) -> Tensor:
        if isinstance(self.preds, list) and not self.preds:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        return group_auc(dim_zero_cat(self.preds), dim_zero_cat(self.target), dim_zero_cat(self.groups))


class LogLoss(MeanMetric):
    """Mean binary cross-entropy (log loss) accumulated over batches; see :func:`log_loss`.

    torchmetrics' :class:`~torchmetrics.aggregation.MeanMetric` does the accumulation (a
    weighted sum and a count, reduced with ``sum`` under DDP, no samples kept), in float64 so
    that millions of small terms add up exactly enough.

    Args:
        from_logits: ``update`` receives logits instead of probabilities (numerically stable).
        eps: probability clipping when not ``from_logits``.
        validate_args: check shapes and label values on every ``update``.
        kwargs: passed to :class:`torchmetrics.aggregation.MeanMetric`.

    Call arguments (``update``):
        preds: tensor of shape ``(N,)``.
        target: tensor of shape ``(N,)`` with values in {0, 1}.

    Returns (``compute``):
        Scalar float64 tensor (NaN before any update).

    Example:
        >>> metric = LogLoss()
        >>> metric.update(torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
        >>> round(float(metric.compute()), 4)
        0.6931
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, from_logits: bool = False, eps: float = 1e-7, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        self.from_logits = from_logits
        self.eps = eps
        self.validate_args = validate_args
        self.set_dtype(torch.float64)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if self.validate_args:
            _check_inputs(preds, target)
        super().update(_log_losses(preds, target, from_logits=self.from_logits, eps=self.eps).to(self.mean_value.device))
