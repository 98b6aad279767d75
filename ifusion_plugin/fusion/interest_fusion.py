"""iFusion: interest fusion as guided diffusion from the long-term interest (paper sections 3-4).

The projected long-term interest ``h_long`` is ``x_0`` of a diffusion; the sessions guide the
reverse process through core-preference and transient-fluctuation guidance (DCFG), injected
session by session by the MARN denoiser. See docs/fusion.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Optional

import torch
from torch import Tensor, nn

from .baselines import ConcatFusion
from .contract import FusionLayer, FusionOutput
from .denoisers import MARN, build_denoiser
from .guidance import GuidanceEncoder
from .losses import consistency_loss, disentangle_loss, evolution_loss, last_present_index
from .schedule import NoiseSchedule

__all__ = ["InterestFusion", "ServingSettings"]

# |1 - gamma_cp - gamma_tf| below this counts as zero: YAML users write 0.6666667 and 0.3333333.
_UNCOND_WEIGHT_TOLERANCE = 1e-6

# torch.export needs FusionOutput as a pytree to return it; registered once, here, so the
# contract module stays unchanged.
try:
    torch.export.register_dataclass(FusionOutput, serialized_type_name="ifusion_plugin.fusion.FusionOutput")
except ValueError:  # already registered (module reloaded)
    pass


def _choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def _probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class ServingSettings:
    """What iFusion's eval path may change at call time (its constructor values are the defaults).

    Attributes:
        sampling_steps: reverse steps ``S``.
        t_start: ``None`` (Algorithm 2, from ``t = T``) or the step serving starts from.
        gamma_cp, gamma_tf: guidance scales (``cfg`` uses ``gamma_cp``).
        stochastic_sampling: draw ``z`` (seeded by ``sampling_seed``) instead of ``z = 0``.
        sampling_seed: seed of the evaluation generator.
        generated_scale: multiplies the generated interest in ``fused = concat + gate * x0_hat``
            (``0`` removes it: what it adds is then measurable; needs ``concat_skip``).
        concat_skip: ``False`` returns the generated interest alone, bypassing the skip.
    """

    sampling_steps: int
    t_start: Optional[int]
    gamma_cp: float
    gamma_tf: float
    stochastic_sampling: bool = False
    sampling_seed: int = 0
    generated_scale: float = 1.0
    concat_skip: bool = True


def _check_serving(settings: ServingSettings, num_train_steps: int, has_skip: bool) -> None:
    """Raise ``ValueError`` naming the setting, its value and what it may be."""
    _positive_int("sampling_steps", settings.sampling_steps)
    t_start = settings.t_start
    if t_start is not None and (isinstance(t_start, bool) or not isinstance(t_start, int) or not 1 <= t_start <= num_train_steps):
        raise ValueError(f"t_start must be None or an int in [1, num_train_steps={num_train_steps}], got {t_start!r}")
    top = num_train_steps if t_start is None else t_start
    if settings.sampling_steps > top:
        raise ValueError(f"sampling_steps must be at most {top} (the start step), got {settings.sampling_steps}")
    for name in ("gamma_cp", "gamma_tf", "generated_scale"):
        _non_negative(name, getattr(settings, name))
    if not isinstance(settings.sampling_seed, int) or isinstance(settings.sampling_seed, bool):
        raise ValueError(f"sampling_seed must be an int, got {settings.sampling_seed!r}")
    if not has_skip and (not settings.concat_skip or settings.generated_scale != 1.0):
        raise ValueError("concat_skip and generated_scale act on the skip connection; this layer has concat_skip=False")


class InterestFusion(FusionLayer):
    """iFusion interest fusion, a drop-in replacement for :class:`ConcatFusion`.

    Training (``module.training``), Algorithm 1: per example two steps ``t1, t2`` and two
    noises; ``x_t`` from the closed-form forward process; the guided x0-prediction at both
    steps. The generated interest ``x0_hat`` is the output at ``t1`` (or the mean of both,
    ``task_step="mean"``); ``losses`` holds the weighted auxiliary losses ``"evolution"``,
    ``"disentangle"``, ``"consistency"`` (and ``"denoise"``, not in the paper) whose weight is
    positive (consistency pulls the t2 output to the detached t1 output). With MARN the
    evolution prediction (conditioned on the sessions before the last one) is read from the task
    chain itself, not from a second pass.
    The t2 pass runs only when something reads it (``consistency_weight > 0`` or
    ``task_step="mean"``); without it training costs about half the denoiser work.

    Evaluation, Algorithm 2: start from the projected ``h_long`` at ``t = T`` (or from it
    noised to ``t_start``), then ``sampling_steps`` reverse steps of eq. 19 with the guided
    prediction of eq. 14. ``z = 0`` by default, so evaluation is deterministic; with
    ``stochastic_sampling`` ``z`` is drawn from a generator reseeded with ``sampling_seed`` at
    every call. ``losses`` is empty.

    Output: ``fused = ConcatFusion(h_long, h_sessions) + gate * x0_hat`` with a per-dimension
    ``gate`` initialised to zero (``concat_skip=True``, the default), else ``fused = x0_hat``.

    Zero data: a row with ``long_mask`` False starts from a learned population prior vector
    (trained on those rows and on a random ``p_drop_long`` fraction of rows); a row without any
    present session is guided by the null vectors, i.e. it gets the unconditional generation.

    Args:
        long_dim, session_dim, fusion_dim, validate_inputs: see :class:`FusionLayer`.
        schedule: noise schedule, ``"cosine"`` or ``"linear"``.
        num_train_steps: diffusion steps ``T``.
        sampling_steps: reverse steps ``S`` at evaluation (the T-step schedule is respaced).
        t_start: None for Algorithm 2 (clean ``h_long`` at ``t = T``); an int in ``[1, T]`` to
            start from ``sqrt(abar) h_long`` at that step (plus noise when sampling stochastically).
        stochastic_sampling: draw ``z`` in eq. 19 at evaluation (seeded) instead of ``z = 0``.
        sampling_seed: seed of the evaluation generator.
        guidance: ``"dcfg"`` (core + transient, eq. 14), ``"cfg"`` (one encoder, eq. 7, scale
            ``gamma_cp``) or ``"none"`` (one encoder as a plain condition: no null vectors, no
            guidance dropout, one pass).
        p_drop_cp, p_drop_tf: per-example probability of replacing the core / transient
            guidance by its null vector in training (``cfg`` uses ``p_drop_cp``).
        gamma_cp, gamma_tf: guidance scales (``cfg`` uses ``gamma_cp`` alone). The defaults
            (``None``) serve the combination the model was trained with: ``dcfg`` keeps the
            paper's 2 : 1 ratio with ``gamma_cp + gamma_tf = 1`` (eq. 14 then equals the
            Algorithm 1 combination and the unconditional pass, weight ``1 - gamma_cp -
            gamma_tf``, is skipped); ``cfg`` gets ``gamma_cp = 1``. Scales whose sum is not 1
            extrapolate at serving beyond what ``train_combination='algorithm1'`` trained, and
            a ``UserWarning`` says so (the paper's 2.0 / 1.0 do; measured in BENCHMARKS.md:
            lower validation AUC on MovieLens-1M).
        train_combination: ``"algorithm1"`` (weights ``gamma_j / (gamma_cp + gamma_tf)``) or
            ``"inference"`` (eq. 14 in training as well).
        denoiser: ``"marn"``, ``"marn_attention"``, ``"nar_mlp"`` or ``"nar_attention"``.
        denoiser_hidden_dim, guidance_hidden_dim: hidden widths of the MLPs.
        num_heads: attention heads; must divide ``fusion_dim``.
        core_dropout: dropout of the core-preference MLP (strong: the low-pass branch).
        transient_dropout: dropout of the transient MLP and of the single ``cfg`` encoder.
        evolution_weight, disentangle_weight, consistency_weight: weights of the auxiliary
            losses; 0 skips a loss entirely. The disentanglement loss needs ``dcfg``.
        disentangle_mode: ``"cosine"`` (squared cosine) or ``"inner_product"`` (paper's raw form).
        consistency_mode: ``"mse"`` (eq. 15's squared distance) or ``"cosine"`` (``1 - cos``:
            scale-free, so it cannot grow with the scale of the output it chases).
        denoise_weight: weight of a denoising objective the paper does not have: the mean squared
            distance of the t1 output ``x0_hat`` to the clean start ``x0`` it was noised from
            (the projected ``h_long``, detached: the loss trains the denoiser, never the host
            towards it), as x0-prediction diffusion models train. 0 (default) leaves it out.
        task_step: ``"t1"`` or ``"mean"``, which training output is ``fused``.
        task_noise: ``"full"`` draws ``t1`` from all ``T`` steps (Algorithm 1); ``"serving"``
            from ``[0, t_start)``, the noise levels evaluation starts from, so the CTR loss
            trains the head on outputs like the served ones (``t2`` keeps the full range).
            Not safe with ``consistency_weight > 0`` and ``consistency_mode="mse"``: on
            MovieLens-1M with DIN, SIM and TWIN that loss grew without bound (to 1e6-1e18) and
            the model fell to AUC 0.5 (BENCHMARKS.md, "iFusion variants").
        long_condition: also feed the projected ``h_long`` to the denoiser as a condition.
        p_drop_long: training fraction of rows whose ``h_long`` is replaced by the prior.
        concat_skip: ``fused = ConcatFusion(h_long, h_sessions) + gate * x0_hat`` with a learned
            per-dimension ``gate`` initialised to zero: the layer starts as the concat fusion it
            replaces and learns how much of the generated interest to add (a skip connection
            around the diffusion, as in ReZero / ControlNet). ``False``: ``fused = x0_hat``, the
            paper's literal output. Measured in BENCHMARKS.md.
        gate_init: the initial value of every entry of that gate (default 0: the layer starts as
            concat); a positive value lets the generated interest reach the head from the first
            step. Needs ``concat_skip``.

    Call arguments:
        h_long: tensor of shape (B, long_dim).
        h_sessions: tensor of shape (B, K, session_dim), oldest first; K may vary by call.
        session_mask: optional bool tensor of shape (B, K).
        long_mask: optional bool tensor of shape (B,).

    Returns:
        :class:`FusionOutput` with ``fused`` of shape (B, fusion_dim).

    Example:
        >>> fusion = InterestFusion(long_dim=32, session_dim=16, fusion_dim=8, num_heads=2).eval()
        >>> fusion(torch.randn(4, 32), torch.randn(4, 3, 16)).fused.shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        long_dim: int,
        session_dim: int,
        fusion_dim: int = 64,
        *,
        schedule: Literal["cosine", "linear"] = "cosine",
        num_train_steps: int = 1000,
        sampling_steps: int = 1,
        t_start: Optional[int] = None,
        stochastic_sampling: bool = False,
        sampling_seed: int = 0,
        guidance: Literal["none", "cfg", "dcfg"] = "dcfg",
        p_drop_cp: float = 0.1,
        p_drop_tf: float = 0.1,
        gamma_cp: Optional[float] = None,
        gamma_tf: Optional[float] = None,
        train_combination: Literal["algorithm1", "inference"] = "algorithm1",
        denoiser: Literal["marn", "marn_attention", "nar_mlp", "nar_attention"] = "marn",
        denoiser_hidden_dim: int = 128,
        guidance_hidden_dim: int = 128,
        num_heads: int = 4,
        core_dropout: float = 0.3,
        transient_dropout: float = 0.05,
        evolution_weight: float = 0.1,
        disentangle_weight: float = 0.01,
        disentangle_mode: Literal["cosine", "inner_product"] = "cosine",
        consistency_weight: float = 0.1,
        consistency_mode: Literal["mse", "cosine"] = "mse",
        denoise_weight: float = 0.0,
        task_step: Literal["t1", "mean"] = "t1",
        task_noise: Literal["full", "serving"] = "full",
        long_condition: bool = False,
        p_drop_long: float = 0.05,
        concat_skip: bool = True,
        gate_init: float = 0.0,
        validate_inputs: bool = True,
    ) -> None:
        super().__init__(long_dim, session_dim, fusion_dim, validate_inputs=validate_inputs)
        _choice("schedule", schedule, ("cosine", "linear"))
        _choice("guidance", guidance, ("none", "cfg", "dcfg"))
        _choice("train_combination", train_combination, ("algorithm1", "inference"))
        _choice("denoiser", denoiser, ("marn", "marn_attention", "nar_mlp", "nar_attention"))
        _choice("disentangle_mode", disentangle_mode, ("cosine", "inner_product"))
        _choice("task_step", task_step, ("t1", "mean"))
        _choice("task_noise", task_noise, ("full", "serving"))
        _choice("consistency_mode", consistency_mode, ("mse", "cosine"))
        if task_noise == "serving" and t_start is None:
            raise ValueError("task_noise='serving' needs t_start (the served noise level), got t_start=None")
        if task_noise == "serving" and consistency_weight > 0 and consistency_mode == "mse":
            warnings.warn("task_noise='serving' with consistency_weight > 0 diverged on MovieLens-1M (the mean squared "
                          "consistency loss grew without bound, AUC fell to 0.5 on 3 hosts of 4); set "
                          "consistency_mode='cosine' or consistency_weight=0, or keep task_noise='full'",
                          UserWarning, stacklevel=2)
        _positive_int("num_train_steps", num_train_steps)
        _positive_int("sampling_steps", sampling_steps)
        _positive_int("denoiser_hidden_dim", denoiser_hidden_dim)
        _positive_int("guidance_hidden_dim", guidance_hidden_dim)
        _positive_int("num_heads", num_heads)
        if fusion_dim % num_heads != 0:
            raise ValueError(f"num_heads must be a positive divisor of fusion_dim={fusion_dim}, got {num_heads}")
        if t_start is not None:
            if isinstance(t_start, bool) or not isinstance(t_start, int) or not 1 <= t_start <= num_train_steps:
                raise ValueError(f"t_start must be None or an int in [1, num_train_steps={num_train_steps}], got {t_start!r}")
        top = num_train_steps if t_start is None else t_start
        if sampling_steps > top:
            raise ValueError(f"sampling_steps must be at most {top} (the start step), got {sampling_steps}")
        for name, p in (("p_drop_cp", p_drop_cp), ("p_drop_tf", p_drop_tf), ("p_drop_long", p_drop_long),
                        ("core_dropout", core_dropout), ("transient_dropout", transient_dropout)):
            _probability(name, p)
        # Defaults that serve the combination trained with: the weights sum to 1 (dcfg keeps the
        # paper's 2 : 1 ratio; cfg's single scale is 1, the conditional output itself).
        if gamma_cp is None:
            gamma_cp = 2.0 / 3.0 if guidance == "dcfg" else 1.0
        if gamma_tf is None:
            gamma_tf = 1.0 / 3.0 if guidance == "dcfg" else 0.0
        for name, w in (("gamma_cp", gamma_cp), ("gamma_tf", gamma_tf), ("evolution_weight", evolution_weight),
                        ("disentangle_weight", disentangle_weight), ("consistency_weight", consistency_weight),
                        ("denoise_weight", denoise_weight)):
            _non_negative(name, w)
        if not isinstance(gate_init, (int, float)) or isinstance(gate_init, bool) or not math.isfinite(gate_init):
            raise ValueError(f"gate_init must be a finite number, got {gate_init!r}")
        if gate_init != 0 and not concat_skip:
            raise ValueError(f"gate_init={gate_init} needs concat_skip=True: without the skip there is no gate")
        if guidance == "dcfg" and gamma_cp + gamma_tf <= 0:
            raise ValueError("gamma_cp + gamma_tf must be positive with guidance='dcfg'")
        if not isinstance(sampling_seed, int) or isinstance(sampling_seed, bool):
            raise ValueError(f"sampling_seed must be an int, got {sampling_seed!r}")
        active = {"cfg": gamma_cp, "dcfg": gamma_cp + gamma_tf}.get(guidance)
        if active is not None and train_combination == "algorithm1" and abs(1.0 - active) > _UNCOND_WEIGHT_TOLERANCE:
            # Not an error: the paper serves 2.0 / 1.0. But never silent.
            warnings.warn(
                f"guidance={guidance!r} with scales summing to {active:g} (not 1): serving extrapolates "
                f"with weight {1.0 - active:+g} on the unconditional pass, while training used the conditional "
                "combination (train_combination='algorithm1'); train_combination='inference' trains on what is served",
                UserWarning,
                stacklevel=2,
            )

        self.guidance = guidance
        self.t_start = t_start
        self.sampling_steps = sampling_steps
        self.stochastic_sampling = stochastic_sampling
        self.sampling_seed = sampling_seed
        self.p_drop_cp = float(p_drop_cp)
        self.p_drop_tf = float(p_drop_tf)
        self.p_drop_long = float(p_drop_long)
        self.gamma_cp = float(gamma_cp)
        self.gamma_tf = float(gamma_tf)
        self.train_combination = train_combination
        self.evolution_weight = float(evolution_weight)
        self.disentangle_weight = float(disentangle_weight)
        self.disentangle_mode = disentangle_mode
        self.consistency_weight = float(consistency_weight)
        self.consistency_mode = consistency_mode
        self.denoise_weight = float(denoise_weight)
        self.task_step = task_step
        self.task_noise = task_noise
        self.long_condition = long_condition

        self.long_projection = nn.Linear(long_dim, fusion_dim)
        self.session_projection = nn.Linear(session_dim, fusion_dim)
        # Population prior: the start vector of users without long-term history (theorem 3).
        self.long_prior = nn.Parameter(torch.zeros(fusion_dim))
        self.schedule = NoiseSchedule(num_train_steps, schedule)
        self.sampler = self.schedule.respace(sampling_steps, start_step=top - 1)
        self.encoder = GuidanceEncoder(guidance, fusion_dim, guidance_hidden_dim, num_heads, core_dropout, transient_dropout)
        self.denoiser = build_denoiser(denoiser, fusion_dim, denoiser_hidden_dim, num_heads, long_condition)
        self.skip: Optional[ConcatFusion] = None
        if concat_skip:
            self.skip = ConcatFusion(long_dim, session_dim, fusion_dim, validate_inputs=False)
            self.skip_gate = nn.Parameter(torch.full((fusion_dim,), float(gate_init)))
        # Set by serving(...) for its block; the constructor values otherwise.
        self._override: Optional[ServingSettings] = None
        self._samplers: dict[tuple, NoiseSchedule] = {}

    # ------------------------------------------------------------------ serving settings
    @property
    def serving_settings(self) -> ServingSettings:
        """The eval-path settings in force: the constructor values, or those of an enclosing
        :meth:`serving` block."""
        if self._override is not None:
            return self._override
        return ServingSettings(self.sampling_steps, self.t_start, self.gamma_cp, self.gamma_tf,
                               self.stochastic_sampling, self.sampling_seed, 1.0, self.skip is not None)

    def resolve_serving(self, **overrides: Any) -> ServingSettings:
        """:attr:`serving_settings` with ``overrides`` (names of :class:`ServingSettings`), checked.

        Raises:
            ValueError: an unknown name (the valid ones listed) or an invalid value.
        """
        names = [f.name for f in dataclasses.fields(ServingSettings)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"unknown serving setting(s) {unknown}; valid: {names}")
        settings = dataclasses.replace(self.serving_settings, **overrides)
        _check_serving(settings, self.schedule.num_steps, self.skip is not None)
        return settings

    @contextlib.contextmanager
    def serving(self, **overrides: Any) -> Iterator[ServingSettings]:
        """Within the block the eval path (``forward`` in eval mode, the request form) uses
        ``overrides`` of :class:`ServingSettings`: evaluate a trained layer at other settings
        through its host, as lucidrains' ``cond_scale``, without touching the module::

            with fusion.serving(t_start=100, gamma_cp=2.0, gamma_tf=1.0):
                logits = host(batch).logits
        """
        previous = self._override
        self._override = self.resolve_serving(**overrides)
        try:
            yield self._override
        finally:
            self._override = previous

    def sample(
        self,
        h_long: Tensor,
        h_sessions: Tensor,
        session_mask: Optional[Tensor] = None,
        long_mask: Optional[Tensor] = None,
        **overrides: Any,
    ) -> Tensor:
        """The eval path (Algorithm 2, then the skip) with settings chosen at call time.

        Args:
            h_long, h_sessions, session_mask, long_mask: as ``forward``.
            **overrides: any of :class:`ServingSettings` (``sampling_steps``, ``t_start``,
                ``gamma_cp``, ``gamma_tf``, ``stochastic_sampling``, ``sampling_seed``,
                ``generated_scale``, ``concat_skip``); the rest keep their constructor values.

        Returns:
            ``fused``, tensor of shape (B, fusion_dim).
        """
        with self.serving(**overrides):
            was_training = self.training
            self.eval()
            try:
                return self.forward(h_long, h_sessions, session_mask, long_mask).fused
            finally:
                self.train(was_training)

    def _sampler(self, settings: ServingSettings, device: torch.device) -> NoiseSchedule:
        """The respaced schedule of ``settings`` (the registered one for the constructor values)."""
        if settings.sampling_steps == self.sampling_steps and settings.t_start == self.t_start:
            return self.sampler
        key = (settings.sampling_steps, settings.t_start, str(device))
        if key not in self._samplers:
            top = self.schedule.num_steps if settings.t_start is None else settings.t_start
            self._samplers[key] = self.schedule.respace(settings.sampling_steps, start_step=top - 1).to(device)
        return self._samplers[key]

    def _output(self, linear: Optional[Tensor], generated: Tensor, settings: ServingSettings) -> Tensor:
        """``fused`` from the skip's linear part and the generated interest (eval path)."""
        if linear is None or not settings.concat_skip:
            return generated
        return linear + (settings.generated_scale * self.skip_gate.to(linear.dtype)) * generated

    # ------------------------------------------------------------------ pieces
    def _start(self, h_long: Tensor, long_mask: Optional[Tensor]) -> Tensor:
        """x_0: projected h_long, the learned prior where it is missing (or dropped in training)."""
        x0 = self.long_projection(h_long)
        use_prior = None if long_mask is None else ~long_mask
        if self.training and self.p_drop_long > 0:
            dropped = torch.rand(h_long.shape[0], device=h_long.device) < self.p_drop_long
            use_prior = dropped if use_prior is None else use_prior | dropped
        if use_prior is None:
            return x0
        return torch.where(use_prior.unsqueeze(-1), self.long_prior.to(x0.dtype).expand_as(x0), x0)

    def _sessions(self, h_sessions: Tensor, session_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Projected sessions (B, K', d) with masked ones zeroed, and the mask (B, K'); K' = max(K, 1)."""
        if session_mask is None:
            session_mask = torch.ones(h_sessions.shape[:2], dtype=torch.bool, device=h_sessions.device)
        if h_sessions.shape[1] == 0:
            # One absent slot keeps every shape non-empty; the row then takes the null guidance.
            h_sessions = h_sessions.new_zeros(h_sessions.shape[0], 1, h_sessions.shape[2])
            session_mask = session_mask.new_zeros(session_mask.shape[0], 1)
        # Zeroing (not just masking) keeps a masked session's values out of every sum.
        sessions = self.session_projection(h_sessions) * session_mask.unsqueeze(-1).to(h_sessions.dtype)
        return sessions, session_mask

    def _null_inputs(self, branch: int, like: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The unconditional input: the null vector in slot 0 only, (B, K, d) and (B, K)."""
        guidance = self.encoder.null[branch].to(like.dtype).expand_as(like)
        first = torch.zeros_like(mask)
        first[:, 0] = True
        return guidance, first

    def _branches(self, guidance: list[Tensor], mask: Tensor, keep: Optional[list[Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Per branch (guidance (B, K, d), mask (B, K)); dropped or session-less rows take the null input."""
        if self.guidance == "none":
            return [(guidance[0], mask)]
        has_any = mask.any(dim=1)
        out = []
        for j, g in enumerate(guidance):
            conditional = has_any if keep is None else has_any & keep[j]
            null_g, null_m = self._null_inputs(j, g, mask)
            c = conditional.view(-1, 1)
            # Logical ops, not torch.where, for the bool mask: ONNX Runtime has no bool Where.
            out.append((torch.where(c.unsqueeze(-1), g, null_g), (mask & c) | (null_m & ~c)))
        return out

    def _guided(
        self,
        x_t: Tensor,
        t: Tensor,
        branches: list[tuple[Tensor, Tensor]],
        cond: Optional[Tensor],
        combination: str,
        stop: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """The guided x0-prediction (B, d), all denoiser passes batched into one call.

        With ``stop`` (long (B,), MARN only) also the guided prediction conditioned on the
        sessions before ``stop``, read from the same chain (see ``MARN.forward_with_prefix``);
        otherwise None in its place.
        """
        passes, gammas, use_uncond, uncond_weight = self._passes(branches, combination)
        n, batch = len(passes), x_t.shape[0]
        if n == 1:
            args = (x_t, t, passes[0][0], passes[0][1], cond)
        else:
            args = (
                x_t.repeat(n, 1),
                t.repeat(n),
                torch.cat([g for g, _ in passes], dim=0),
                torch.cat([m for _, m in passes], dim=0),
                None if cond is None else cond.repeat(n, 1),
            )
        if stop is None:
            return self._combine(self.denoiser(*args), n, batch, gammas, combination, use_uncond, uncond_weight), None
        assert isinstance(self.denoiser, MARN)
        stacked, prefix = self.denoiser.forward_with_prefix(*args, stop.repeat(n))
        return (
            self._combine(stacked, n, batch, gammas, combination, use_uncond, uncond_weight),
            self._combine(prefix, n, batch, gammas, combination, use_uncond, uncond_weight),
        )

    def _gammas(self, branches: int) -> tuple[float, ...]:
        """The guidance scales of ``branches`` branches: the settings in force (eval) or the
        constructor's (training's Algorithm 1 combination)."""
        settings = self.serving_settings if not self.training else None
        gammas = (self.gamma_cp, self.gamma_tf) if settings is None else (settings.gamma_cp, settings.gamma_tf)
        return gammas[:branches]

    def _passes(
        self, branches: list[tuple[Tensor, Tensor]], combination: str
    ) -> tuple[list[tuple[Tensor, Tensor]], tuple[float, ...], bool, float]:
        """The denoiser passes of one guided prediction: ``(passes, gammas, use_uncond, uncond_weight)``."""
        passes = list(branches)
        gammas = self._gammas(len(branches))
        # eq. 14 rewritten as (1 - sum gamma) f_uncond + sum_j gamma_j f_j: the unconditional
        # pass is needed only when its weight is not zero.
        uncond_weight = 1.0 - sum(gammas)
        use_uncond = (
            self.guidance != "none" and combination == "inference" and abs(uncond_weight) > _UNCOND_WEIGHT_TOLERANCE
        )
        if use_uncond:
            passes.append(self._null_inputs(0, branches[0][0], branches[0][1]))
        return passes, gammas, use_uncond, uncond_weight

    def _combine(
        self, stacked: Tensor, n: int, batch: int, gammas: tuple[float, ...], combination: str, use_uncond: bool, uncond_weight: float
    ) -> Tensor:
        """The n passes stacked as (n * B, d) combined into one (B, d) prediction."""
        if self.guidance == "none":
            return stacked
        # reshape, not chunk: chunk of a symbolic batch specialises it under torch.export.
        out = stacked.reshape(n, batch, stacked.shape[-1]).unbind(0)
        if combination == "inference":
            guided = sum(gamma * f for gamma, f in zip(gammas, out))
            return guided + uncond_weight * out[-1] if use_uncond else guided
        if len(out) == 1:
            return out[0]
        total = sum(gammas)
        return sum((gamma / total) * f for gamma, f in zip(gammas, out))

    # ------------------------------------------------------------------ public
    def guidance_vectors(self, h_sessions: Tensor, session_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Core and transient guidance vectors with dropout off (for disentanglement measurements).

        Args:
            h_sessions: tensor of shape (B, K, session_dim).
            session_mask: optional bool tensor of shape (B, K).

        Returns:
            ``(g_cp, g_tf)``, tensors of shape (B, K, fusion_dim); absent sessions' rows are
            meaningless.
        """
        if self.guidance != "dcfg":
            raise ValueError(f"guidance_vectors needs guidance='dcfg', this layer has guidance={self.guidance!r}")
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            sessions, mask = self._sessions(h_sessions, session_mask)
            g_cp, g_tf = self.encoder(sessions, mask)
        finally:
            self.encoder.train(was_training)
        return g_cp[:, : h_sessions.shape[1]], g_tf[:, : h_sessions.shape[1]]

    def forward(
        self,
        h_long: Tensor,
        h_sessions: Tensor,
        session_mask: Optional[Tensor] = None,
        long_mask: Optional[Tensor] = None,
    ) -> FusionOutput:
        self._check_inputs(h_long, h_sessions, session_mask, long_mask)
        x0 = self._start(h_long, long_mask)
        sessions, mask = self._sessions(h_sessions, session_mask)
        guidance = self.encoder(sessions, mask)
        cond = x0 if self.long_condition else None
        if self.training:
            out = self._train_forward(x0, sessions, mask, guidance, cond)
            if self.skip is not None:
                linear = self.skip(h_long, h_sessions, session_mask, long_mask).fused
                out.fused = linear + self.skip_gate.to(linear.dtype) * out.fused
            return out
        settings = self.serving_settings
        generated = self._sample(x0, mask, guidance, cond)
        linear = None
        if self.skip is not None and settings.concat_skip:
            linear = self.skip(h_long, h_sessions, session_mask, long_mask).fused
        return FusionOutput(fused=self._output(linear, generated, settings))

    def _train_forward(self, x0: Tensor, sessions: Tensor, mask: Tensor, guidance: list[Tensor], cond: Optional[Tensor]) -> FusionOutput:
        batch, device = x0.shape[0], x0.device
        keep = None
        if self.guidance != "none":
            probs = (self.p_drop_cp, self.p_drop_tf)[: len(guidance)]
            keep = [torch.rand(batch, device=device) >= p for p in probs]
        branches = self._branches(guidance, mask, keep)
        num_steps = self.schedule.num_steps
        t = torch.randint(0, num_steps, (2 * batch,), device=device)
        if self.task_noise == "serving":
            # t1 (the CE output) at the noise levels evaluation starts from: [0, t_start).
            t = torch.cat([torch.randint(0, self.t_start, (batch,), device=device), t[batch:]])
        noise = torch.randn(2 * batch, x0.shape[1], device=device, dtype=x0.dtype)
        # The t2 output feeds only the consistency loss and task_step="mean": without them the
        # denoiser runs on the t1 half alone. Both halves are drawn either way, so the t1 half
        # (and every later random draw) is the same as with t2.
        steps = 2 if self.consistency_weight > 0 or self.task_step == "mean" else 1
        t, noise = t[: steps * batch], noise[: steps * batch]
        x_t = self.schedule.q_sample(x0.repeat(steps, 1), t, noise)
        last = last_present_index(mask)
        # MARN gives the evolution prediction from its own chain (no second pass).
        from_chain = self.evolution_weight > 0 and isinstance(self.denoiser, MARN)
        # t1 and t2 in one batched pass.
        both, prefix = self._guided(
            x_t,
            t,
            [(g.repeat(steps, 1, 1), m.repeat(steps, 1)) for g, m in branches],
            None if cond is None else cond.repeat(steps, 1),
            self.train_combination,
            stop=last.repeat(steps) if from_chain else None,
        )
        out_t1 = both[:batch]
        out_t2 = both[batch:] if steps == 2 else None
        fused = out_t1 if out_t2 is None or self.task_step == "t1" else 0.5 * (out_t1 + out_t2)

        losses: dict[str, Tensor] = {}
        if self.evolution_weight > 0:
            valid = mask.sum(dim=1) >= 2
            if prefix is not None:
                predicted = prefix[:batch]
            else:
                evo_mask = mask & (torch.arange(mask.shape[1], device=device).unsqueeze(0) != last.unsqueeze(1))
                evo_branches = self._branches(guidance, evo_mask, keep)
                predicted = self._guided(x_t[:batch], t[:batch], evo_branches, cond, self.train_combination)[0]
            # Detached target: the session encoder should not move to chase the prediction.
            target = sessions.gather(1, last.view(-1, 1, 1).expand(-1, 1, sessions.shape[2])).squeeze(1).detach()
            losses["evolution"] = self.evolution_weight * evolution_loss(predicted, target, valid)
        if self.disentangle_weight > 0 and self.guidance == "dcfg":
            losses["disentangle"] = self.disentangle_weight * disentangle_loss(guidance[0], guidance[1], mask, self.disentangle_mode)
        if out_t2 is not None and self.consistency_weight > 0:
            # The t1 output is the target (detached): it is what the CE loss trains, and pulling
            # it towards the t2 output too lets both collapse to a constant (measured on
            # examples/replace_concat.py: test AUC 0.51 against 0.69 without the loss).
            losses["consistency"] = self.consistency_weight * consistency_loss(out_t2, out_t1.detach(), self.consistency_mode)
        if self.denoise_weight > 0:
            losses["denoise"] = self.denoise_weight * consistency_loss(out_t1, x0.detach(), "mse")
        return FusionOutput(fused=fused, losses=losses)

    def _sample(self, x0: Tensor, mask: Tensor, guidance: list[Tensor], cond: Optional[Tensor]) -> Tensor:
        """Algorithm 2 over the respaced schedule; returns (B, d)."""
        branches = self._branches(guidance, mask, None)
        settings = self.serving_settings
        sampler = self._sampler(settings, x0.device)

        def predict(x: Tensor, local: Tensor, step: int) -> Tensor:
            return self._guided(x, sampler.timestep_map[local], branches, cond, "inference")[0]

        return self._reverse(x0, predict, settings, sampler)

    def _reverse(
        self, x0: Tensor, predict: Callable[[Tensor, Tensor, int], Tensor], settings: ServingSettings, sampler: NoiseSchedule
    ) -> Tensor:
        """The reverse steps of ``sampler`` from ``x0`` (B, d) (noised to ``settings.t_start``
        when set), with ``predict(x, local_step (B,), local_step as an int) -> x0_hat``; (B, d)."""
        batch = x0.shape[0]
        generator: Optional[torch.Generator] = None
        if settings.stochastic_sampling:
            generator = torch.Generator(device=x0.device)
            generator.manual_seed(settings.sampling_seed)
        x = x0
        if settings.t_start is not None:
            start = torch.full((batch,), settings.t_start - 1, dtype=torch.long, device=x0.device)
            start_noise = (
                torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                if generator is not None
                else torch.zeros_like(x0)
            )
            x = self.schedule.q_sample(x0, start, start_noise)
        for i in reversed(range(sampler.num_steps)):
            local = torch.full((batch,), i, dtype=torch.long, device=x0.device)
            x0_hat = predict(x, local, i)
            z = None
            if generator is not None and i > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = sampler.posterior_step(x0_hat, x, local, z)
        return x

    # ------------------------------------------------------------------ request form
    def prepare_sessions(self, h_sessions: Tensor, session_mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Once per user (eval mode): the projected sessions, the DCFG guidance and its null
        substitutions, every denoiser term that does not read ``x_t`` at every serving step
        (unless ``long_condition``, whose time term reads the candidate's ``h_long``), and the
        skip connection's session term.

        Raises:
            RuntimeError: in training mode (the request form serves the eval path).
        """
        if self.training:
            raise RuntimeError("prepare_sessions serves the eval path; call .eval() first")
        sessions, mask = self._sessions(h_sessions, session_mask)
        branches = self._branches(self.encoder(sessions, mask), mask, None)
        passes = self._passes(branches, "inference")[0]
        sampler = self._sampler(self.serving_settings, h_sessions.device)
        prepared: dict[str, Tensor] = {}
        for j, (g, m) in enumerate(passes):
            prepared[f"guidance.{j}"], prepared[f"mask.{j}"] = g, m
            if self.long_condition:
                continue
            for i in range(sampler.num_steps):
                t = sampler.timestep_map[torch.full((g.shape[0],), i, dtype=torch.long, device=g.device)]
                for name, value in self.denoiser.precompute(t, g, m).items():
                    prepared[f"step.{i}.{j}.{name}"] = value
        if self.skip is not None and self.serving_settings.concat_skip:
            prepared.update({f"skip.{k}": v for k, v in self.skip.prepare_sessions(h_sessions, session_mask).items()})
        return prepared

    def fuse_prepared(self, h_long: Tensor, prepared: dict[str, Tensor], long_mask: Optional[Tensor] = None) -> Tensor:
        """Per candidate: ``x0`` from ``h_long``, the MARN chain (or the other denoiser's
        ``x_t`` part) at each serving step, the combination and the skip; (C, fusion_dim)."""
        if self.training:
            raise RuntimeError("fuse_prepared serves the eval path; call .eval() first")
        count = h_long.shape[0]
        x0 = self._start(h_long, long_mask)
        passes = []
        j = 0
        while f"guidance.{j}" in prepared:
            passes.append((prepared[f"guidance.{j}"].expand(count, -1, -1), prepared[f"mask.{j}"].expand(count, -1)))
            j += 1
        gammas = self._gammas(1 if self.guidance in ("none", "cfg") else 2)
        uncond_weight = 1.0 - sum(gammas)
        use_uncond = len(passes) > len(gammas)
        settings = self.serving_settings
        sampler = self._sampler(settings, h_long.device)

        def predict(x: Tensor, local: Tensor, step: int) -> Tensor:
            if self.long_condition:
                t = sampler.timestep_map[local]
                outs = [self.denoiser(x, t, g, m, x0) for g, m in passes]
            else:
                outs = []
                for j, (g, m) in enumerate(passes):
                    prefix = f"step.{step}.{j}."
                    terms = {k[len(prefix):]: v.expand(count, *v.shape[1:]) for k, v in prepared.items() if k.startswith(prefix)}
                    outs.append(self.denoiser.forward_precomputed(x, terms, g, m))
            stacked = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
            return self._combine(stacked, len(outs), count, gammas, "inference", use_uncond, uncond_weight)

        generated = self._reverse(x0, predict, settings, sampler)
        linear = None
        if self.skip is not None and settings.concat_skip:
            skip_prepared = {k[len("skip."):]: v for k, v in prepared.items() if k.startswith("skip.")}
            linear = self.skip.fuse_prepared(h_long, skip_prepared, long_mask)
        return self._output(linear, generated, settings)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, guidance={self.guidance!r}, T={self.schedule.num_steps}, "
            f"S={self.sampling_steps}, t_start={self.t_start}, concat_skip={self.skip is not None}"
        )
