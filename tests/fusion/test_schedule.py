"""NoiseSchedule against independent float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from ifusion_plugin.fusion.schedule import NoiseSchedule, extract, respaced_steps


def _ref_abar(kind, T):
    if kind == "linear":
        scale = 1000.0 / T
        betas = [scale * 1e-4 + (scale * 0.02 - scale * 1e-4) * i / (T - 1) for i in range(T)]
    else:
        f = [math.cos(((i / T) + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
        betas = [min(1 - f[i + 1] / f[i], 0.999) for i in range(T)]
    abar, out = 1.0, []
    for b in betas:
        abar *= 1 - b
        out.append(abar)
    return betas, out


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_buffers_float32_and_match_reference(kind):
    sched = NoiseSchedule(50, kind)
    betas, abar = _ref_abar(kind, 50)
    assert sched.alphas_cumprod.dtype == torch.float32
    assert torch.allclose(sched.alphas_cumprod.double(), torch.tensor(abar, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(sched.betas.double(), torch.tensor(betas, dtype=torch.float64), atol=1e-6)
    assert "alphas_cumprod" in dict(sched.named_buffers())


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_step_matches_float64_reference(kind):
    torch.manual_seed(0)
    T = 40
    sched = NoiseSchedule(T, kind)
    betas, abar = _ref_abar(kind, T)
    x0, xt, z = torch.randn(3, 3, 4, dtype=torch.float64).unbind(0)
    t = torch.tensor([0, 17, T - 1])
    got = sched.posterior_step(x0.float(), xt.float(), t, z.float()).double()
    for row, ti in enumerate(t.tolist()):
        b = betas[ti]
        a_bar = abar[ti]
        a_prev = abar[ti - 1] if ti > 0 else 1.0
        c1 = math.sqrt(a_prev) * b / (1 - a_bar)
        c2 = math.sqrt(1 - b) * (1 - a_prev) / (1 - a_bar)
        var = b * (1 - a_prev) / (1 - a_bar)
        want = c1 * x0[row] + c2 * xt[row] + math.sqrt(var) * z[row]
        assert torch.allclose(got[row], want, atol=1e-5), (kind, ti)


def test_q_sample_closed_form():
    sched = NoiseSchedule(30, "cosine")
    _, abar = _ref_abar("cosine", 30)
    x0, eps = torch.randn(2, 2, 3).unbind(0)
    t = torch.tensor([3, 29])
    got = sched.q_sample(x0, t, eps)
    for row, ti in enumerate(t.tolist()):
        want = math.sqrt(abar[ti]) * x0[row] + math.sqrt(1 - abar[ti]) * eps[row]
        assert torch.allclose(got[row], want, atol=1e-6)


def test_extract_shape():
    a = torch.arange(10.0)
    out = extract(a, torch.tensor([1, 4]), (2, 3, 5))
    assert out.shape == (2, 1, 1) and out.flatten().tolist() == [1.0, 4.0]


@pytest.mark.parametrize("S", [1, 2, 5, 50])
def test_respacing_keeps_alphas_cumprod_of_kept_steps(S):
    sched = NoiseSchedule(50, "cosine")
    sub = sched.respace(S)
    kept = respaced_steps(50, S)
    assert len(kept) == S and kept[-1] == 49
    assert sub.timestep_map.tolist() == kept
    assert torch.allclose(sub.alphas_cumprod, sched.alphas_cumprod[kept], atol=1e-6)


def test_respacing_from_start_step_and_single_step_is_x0():
    sched = NoiseSchedule(50, "linear")
    sub = sched.respace(1, start_step=19)
    assert sub.timestep_map.tolist() == [19]
    # One step from the start goes straight to the prediction: coef1 = 1, coef2 = 0, var = 0.
    assert torch.allclose(sub.posterior_mean_coef1, torch.ones(1))
    assert torch.allclose(sub.posterior_mean_coef2, torch.zeros(1), atol=1e-7)
    assert torch.allclose(sub.posterior_variance, torch.zeros(1))


@pytest.mark.parametrize("kwargs, message", [(dict(num_steps=0), "num_steps"), (dict(kind="sigmoid"), "schedule must be")])
def test_bad_schedule_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(**{"num_steps": 10, **kwargs})


def test_bad_respacing():
    with pytest.raises(ValueError, match="sampling_steps must be in"):
        NoiseSchedule(10).respace(11)
    with pytest.raises(ValueError, match="start_step must be in"):
        NoiseSchedule(10).respace(1, start_step=10)
