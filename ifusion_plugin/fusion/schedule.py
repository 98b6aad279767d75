"""Noise schedules of the diffusion over the fused interest (paper section 3, eq. 19).

Steps are indexed from 0 in code: index ``i`` is the paper's step ``t = i + 1``, so index
``T - 1`` is the noisiest step ``t = T`` and index 0 steps to ``x_0``.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["NoiseSchedule", "extract", "linear_betas", "cosine_betas", "respaced_steps"]

ScheduleKind = Literal["linear", "cosine"]


def linear_betas(num_steps: int) -> Tensor:
    """Betas of the DDPM linear schedule scaled to ``num_steps`` (float64 tensor of shape (T,))."""
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008) -> Tensor:
    """Betas of the improved-DDPM cosine schedule (float64 tensor of shape (T,)), clipped to 0.999."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0.0, 0.999)


def respaced_steps(num_steps: int, sampling_steps: int) -> list[int]:
    """``sampling_steps`` step indices evenly spaced in ``[0, num_steps - 1]``, ascending.

    The noisiest index ``num_steps - 1`` is always kept, so one sampling step is a single
    jump from the start step straight to ``x_0``.
    """
    if not 1 <= sampling_steps <= num_steps:
        raise ValueError(f"sampling_steps must be in [1, {num_steps}], got {sampling_steps}")
    if sampling_steps == 1:
        return [num_steps - 1]
    stride = (num_steps - 1) / (sampling_steps - 1)
    return sorted({int(round(i * stride)) for i in range(sampling_steps)})


def extract(a: Tensor, t: Tensor, shape: Sequence[int]) -> Tensor:
    """Gather ``a[t]`` and reshape to broadcast against ``shape``.

    Args:
        a: tensor of shape (T,).
        t: long tensor of shape (B,).
        shape: the shape ``(B, ...)`` to broadcast against.

    Returns:
        Tensor of shape ``(B, 1, ..., 1)`` with ``len(shape)`` dimensions.
    """
    out = a.gather(0, t)
    return out.reshape(t.shape[0], *((1,) * (len(shape) - 1)))


class NoiseSchedule(nn.Module):
    """A discrete variance schedule with closed-form forward and posterior steps.

    Everything is computed in float64 and stored as float32 buffers so ``.to(device)`` and
    checkpoints carry it.

    Args:
        num_steps: number of diffusion steps ``T``.
        kind: ``"cosine"`` (paper default) or ``"linear"``.
        betas: explicit betas (tensor of shape (T,)); overrides ``kind``. Used by respacing.
        timestep_map: original step index of each step (long tensor of shape (T,)); the
            denoiser is always fed original indices so a respaced schedule reuses its training.

    Example:
        >>> sched = NoiseSchedule(100, "cosine")
        >>> sched.q_sample(torch.zeros(2, 4), torch.tensor([0, 99]), torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_steps: int = 1000,
        kind: ScheduleKind = "cosine",
        *,
        betas: Optional[Tensor] = None,
        timestep_map: Optional[Tensor] = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        if kind not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {kind!r}")
        if betas is None:
            betas = linear_betas(num_steps) if kind == "linear" else cosine_betas(num_steps)
        betas = betas.to(torch.float64)
        if betas.shape != (num_steps,):
            raise ValueError(f"betas must have shape ({num_steps},), got {tuple(betas.shape)}")
        self.num_steps = num_steps
        self.kind = kind
        self._betas64 = betas.clone()
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        if timestep_map is None:
            timestep_map = torch.arange(num_steps)

        def reg(name: str, value: Tensor) -> None:
            self.register_buffer(name, value.to(torch.float32), persistent=False)

        reg("betas", betas)
        reg("alphas_cumprod", alphas_cumprod)
        reg("alphas_cumprod_prev", alphas_cumprod_prev)
        reg("sqrt_alphas_cumprod", alphas_cumprod.sqrt())
        reg("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt())
        reg("posterior_variance", posterior_variance)
        # eq. 19: x_{t-1} = coef1 * x0_hat + coef2 * x_t + sqrt(beta_tilde) z
        reg("posterior_mean_coef1", alphas_cumprod_prev.sqrt() * betas / (1.0 - alphas_cumprod))
        reg("posterior_mean_coef2", alphas.sqrt() * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.register_buffer("timestep_map", timestep_map.to(torch.long), persistent=False)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Closed-form forward step ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        Args:
            x0, noise: tensors of shape (B, D).
            t: long tensor of shape (B,), step indices in ``[0, T)``.

        Returns:
            Tensor of shape (B, D).
        """
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def posterior_step(self, x0_hat: Tensor, x_t: Tensor, t: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """One reverse step of eq. 19.

        Args:
            x0_hat, x_t: tensors of shape (B, D).
            t: long tensor of shape (B,), step indices in ``[0, T)`` of this schedule.
            noise: ``z``, tensor of shape (B, D), or None for ``z = 0``.

        Returns:
            ``x_{t-1}``, tensor of shape (B, D).
        """
        out = extract(self.posterior_mean_coef1, t, x_t.shape) * x0_hat + extract(
            self.posterior_mean_coef2, t, x_t.shape
        ) * x_t
        if noise is not None:
            out = out + extract(self.posterior_variance, t, x_t.shape).sqrt() * noise
        return out

    def respace(self, sampling_steps: int, start_step: Optional[int] = None) -> "NoiseSchedule":
        """The schedule restricted to ``sampling_steps`` evenly spaced steps (improved-DDPM respacing).

        Betas are recomputed from ``alphas_cumprod`` of the kept steps so each kept step jumps
        exactly as far as the skipped ones together.

        Args:
            sampling_steps: number of steps ``S`` kept.
            start_step: the noisiest index kept (default ``T - 1``); steps above it are dropped.
        """
        top = self.num_steps - 1 if start_step is None else start_step
        if not 0 <= top < self.num_steps:
            raise ValueError(f"start_step must be in [0, {self.num_steps - 1}], got {start_step}")
        kept = respaced_steps(top + 1, sampling_steps)
        # The float64 copy, not the float32 buffer, so respaced coefficients lose no precision.
        abar = torch.cumprod(1.0 - self._betas64, dim=0)
        new_betas, last = [], 1.0
        for i in kept:
            new_betas.append(1.0 - abar[i] / last)
            last = abar[i]
        return NoiseSchedule(
            len(kept),
            self.kind,
            betas=torch.stack(new_betas),
            timestep_map=self.timestep_map[torch.tensor(kept)],
        )

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, kind={self.kind!r}"
