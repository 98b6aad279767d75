"""InterestFusion: training and sampling paths, guidance, masks, zero data, export."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ifusion_plugin.fusion.interest_fusion as interest_module
from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.fusion.losses import consistency_loss, disentangle_loss, evolution_loss, last_present_index
from ifusion_plugin.fusion.schedule import respaced_steps

LONG, SESS, FUSE = 7, 5, 8
GUIDANCE = ["none", "cfg", "dcfg"]
DENOISERS = ["marn", "marn_attention", "nar_mlp", "nar_attention"]


def make(fresh: bool = False, **kwargs) -> InterestFusion:
    """A small InterestFusion whose ``fused`` is the diffusion output itself (``concat_skip``
    off unless asked for). Unless ``fresh``, the zero-initialised parts are randomised: a fresh
    denoiser is the identity on ``x_t`` and a fresh skip gate hides the generation, which would
    make the guidance (and every test about it) invisible in the output."""
    torch.manual_seed(0)
    base = dict(num_heads=2, num_train_steps=20, denoiser_hidden_dim=16, guidance_hidden_dim=16, concat_skip=False)
    base.update(kwargs)
    m = InterestFusion(LONG, SESS, FUSE, **base)
    if not fresh:
        torch.nn.init.normal_(m.denoiser.out[1].weight, std=0.3)
        torch.nn.init.normal_(m.denoiser.out[1].bias, std=0.3)
        if m.skip is not None:
            torch.nn.init.normal_(m.skip_gate, std=0.5)
    return m


def inputs(b=4, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    h_long = torch.randn(b, LONG, generator=g)
    h_sessions = torch.randn(b, k, SESS, generator=g)
    mask = torch.rand(b, k, generator=g) > 0.3
    mask[0] = True
    return h_long, h_sessions, mask


@pytest.mark.parametrize("guidance", GUIDANCE)
@pytest.mark.parametrize("denoiser", DENOISERS)
@pytest.mark.parametrize("training", [True, False])
def test_shapes_all_options(guidance, denoiser, training):
    m = make(guidance=guidance, denoiser=denoiser, long_condition=True, train_combination="inference").train(training)
    for k in (1, 4, 2):
        h_long, h_sessions, mask = inputs(k=k)
        out = m(h_long, h_sessions, mask, torch.tensor([True, False, True, True]))
        assert out.fused.shape == (4, FUSE) and out.fused.dtype == torch.float32
        assert torch.isfinite(out.fused).all()
        if training:
            expected = {"evolution", "consistency"} | ({"disentangle"} if guidance == "dcfg" else set())
            assert set(out.losses) == expected
            assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
        else:
            assert out.losses == {}


@settings(max_examples=15, deadline=None)
@given(
    b=st.integers(1, 5),
    k=st.integers(0, 4),
    sampling_steps=st.integers(1, 3),
    schedule=st.sampled_from(["cosine", "linear"]),
    t_start=st.one_of(st.none(), st.integers(3, 20)),
    task_step=st.sampled_from(["t1", "mean"]),
    seed=st.integers(0, 100),
)
def test_property_shapes(b, k, sampling_steps, schedule, t_start, task_step, seed):
    m = make(sampling_steps=sampling_steps, schedule=schedule, t_start=t_start, task_step=task_step)
    g = torch.Generator().manual_seed(seed)
    h_long, h_sessions = torch.randn(b, LONG, generator=g), torch.randn(b, k, SESS, generator=g)
    mask = torch.rand(b, k, generator=g) > 0.5
    for training in (True, False):
        out = m.train(training)(h_long, h_sessions, mask)
        assert out.fused.shape == (b, FUSE) and torch.isfinite(out.fused).all()


@pytest.mark.parametrize("concat_skip", [False, True])
@pytest.mark.parametrize("denoiser", DENOISERS)
def test_gradients_reach_every_parameter(denoiser, concat_skip):
    m = make(
        denoiser=denoiser, long_condition=True, p_drop_cp=0.5, p_drop_tf=0.5, disentangle_mode="inner_product", concat_skip=concat_skip
    ).train()
    torch.manual_seed(3)
    h_long, h_sessions, mask = inputs(b=16, k=4)
    long_mask = torch.ones(16, dtype=torch.bool)
    long_mask[1] = False
    out = m(h_long, h_sessions, mask, long_mask)
    (out.fused.pow(2).sum() + out.total_loss()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_null_vectors_get_no_grad_without_dropout_or_empty_rows():
    # Justification for the exception: with p_drop = 0, the algorithm1 combination and every row
    # holding a session, the null vectors are never used in training, so they rightly get no grad.
    m = make(p_drop_cp=0.0, p_drop_tf=0.0, train_combination="algorithm1").train()
    h_long, h_sessions, _ = inputs()
    out = m(h_long, h_sessions)
    (out.fused.sum() + out.total_loss()).backward()
    # (torch.where routes an all-zero gradient to them.)
    assert m.encoder.null.grad is None or not m.encoder.null.grad.any()
    # The inference combination (eq. 14 in training) uses them in every step when the
    # unconditional weight 1 - gamma_cp - gamma_tf is not zero.
    m2 = make(p_drop_cp=0.0, p_drop_tf=0.0, train_combination="inference", gamma_cp=2.0, gamma_tf=1.0).train()
    out = m2(h_long, h_sessions)
    out.fused.sum().backward()
    assert m2.encoder.null.grad is not None and m2.encoder.null.grad.abs().sum() > 0


@pytest.mark.parametrize("guidance", ["cfg", "dcfg"])
def test_guidance_dropout_one_uses_null_vectors(guidance):
    m = make(guidance=guidance, p_drop_cp=1.0, p_drop_tf=1.0, p_drop_long=0.0).train()
    h_long, h_sessions, mask = inputs()
    other = torch.randn_like(h_sessions) * 3
    torch.manual_seed(5)
    a = m(h_long, h_sessions, mask).fused
    torch.manual_seed(5)
    b = m(h_long, other, torch.ones_like(mask)).fused
    assert torch.equal(a, b)
    # Sanity: the same seed with p_drop = 0 does depend on the sessions.
    m0 = make(guidance=guidance, p_drop_cp=0.0, p_drop_tf=0.0, p_drop_long=0.0).train()
    torch.manual_seed(5)
    c = m0(h_long, h_sessions, mask).fused
    torch.manual_seed(5)
    d = m0(h_long, other, torch.ones_like(mask)).fused
    assert not torch.allclose(c, d)


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_s1_output_is_guided_x0_prediction(denoiser):
    m = make(denoiser=denoiser, gamma_cp=2.0, gamma_tf=1.0).eval()
    h_long, h_sessions, _ = inputs()
    with torch.no_grad():
        fused = m(h_long, h_sessions).fused
        x0 = m.long_projection(h_long)
        sessions = m.session_projection(h_sessions)
        mask = torch.ones(4, 3, dtype=torch.bool)
        g_cp, g_tf = m.encoder(sessions, mask)
        t = torch.full((4,), 19)
        f_cp = m.denoiser(x0, t, g_cp, mask)
        f_tf = m.denoiser(x0, t, g_tf, mask)
        first = torch.zeros_like(mask)
        first[:, 0] = True
        f_u = m.denoiser(x0, t, m.encoder.null[0].expand_as(g_cp), first)
        want = f_u + 2.0 * (f_cp - f_u) + 1.0 * (f_tf - f_u)
    assert torch.allclose(fused, want, atol=1e-6)


@pytest.mark.parametrize("t_start", [None, 12])
def test_respaced_sampling_equals_explicit_loop(t_start):
    S, T = 4, 20
    m = make(sampling_steps=S, t_start=t_start, schedule="linear").eval()
    h_long, h_sessions, mask = inputs()
    with torch.no_grad():
        fused = m(h_long, h_sessions, mask).fused
        x0 = m.long_projection(h_long)
        sessions, mask2 = m._sessions(h_sessions, mask)
        branches = m._branches(m.encoder(sessions, mask2), mask2, None)
        betas = [1e-4 * 50 + (0.02 * 50 - 1e-4 * 50) * i / (T - 1) for i in range(T)]
        abar = [math.prod(1 - b for b in betas[: i + 1]) for i in range(T)]
        top = T if t_start is None else t_start
        x = x0 if t_start is None else math.sqrt(abar[top - 1]) * x0
        kept = respaced_steps(top, S)
        for j in reversed(range(len(kept))):
            f = m._guided(x, torch.full((4,), kept[j]), branches, None, "inference")[0]
            a_t = abar[kept[j]]
            a_prev = abar[kept[j - 1]] if j > 0 else 1.0
            beta = 1 - a_t / a_prev
            x = math.sqrt(a_prev) * beta / (1 - a_t) * f + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x
    assert torch.allclose(fused, x, atol=1e-5)


def test_eval_determinism_and_stochastic_seed():
    h_long, h_sessions, mask = inputs()
    m = make(sampling_steps=3).eval()
    assert torch.equal(m(h_long, h_sessions, mask).fused, m(h_long, h_sessions, mask).fused)
    s1 = make(sampling_steps=3, stochastic_sampling=True, sampling_seed=1).eval()
    a = s1(h_long, h_sessions, mask).fused
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(a, s1(h_long, h_sessions, mask).fused)
    s2 = make(sampling_steps=3, stochastic_sampling=True, sampling_seed=2).eval()
    assert not torch.allclose(a, s2(h_long, h_sessions, mask).fused)
    assert not torch.allclose(a, m(h_long, h_sessions, mask).fused)


@pytest.mark.parametrize("denoiser", DENOISERS)
@pytest.mark.parametrize("guidance", GUIDANCE)
@pytest.mark.parametrize("training", [True, False])
def test_masked_sessions_have_no_influence(denoiser, guidance, training):
    m = make(denoiser=denoiser, guidance=guidance, sampling_steps=2).train(training)
    h_long, h_sessions, mask = inputs(b=5, k=4)
    mask[1, :] = False
    perturbed = torch.where(mask.unsqueeze(-1), h_sessions, torch.randn_like(h_sessions) * 10)
    torch.manual_seed(9)
    a = m(h_long, h_sessions, mask)
    torch.manual_seed(9)
    b = m(h_long, perturbed, mask)
    assert torch.allclose(a.fused, b.fused, atol=1e-6)
    for key in a.losses:
        assert torch.allclose(a.losses[key], b.losses[key], atol=1e-6)


@pytest.mark.parametrize("name, fn", [("evolution", "evolution_loss"), ("disentangle", "disentangle_loss"), ("consistency", "consistency_loss")])
def test_zero_weight_skips_loss(monkeypatch, name, fn):
    def boom(*args, **kwargs):
        raise AssertionError(f"{fn} computed at weight 0")

    monkeypatch.setattr(interest_module, fn, boom)
    m = make(**{f"{name}_weight": 0.0}).train()
    out = m(*inputs())
    assert name not in out.losses
    assert len(out.losses) == 2
    # And the loss is computed when its weight is positive.
    with pytest.raises(AssertionError, match="computed at weight 0"):
        make(**{f"{name}_weight": 0.5}).train()(*inputs())


def test_losses_are_weighted():
    h = inputs()
    torch.manual_seed(0)
    a = make(consistency_weight=1.0).train()(*h).losses["consistency"]
    torch.manual_seed(0)
    b = make(consistency_weight=3.0).train()(*h).losses["consistency"]
    assert torch.allclose(3 * a, b)


def test_task_step_mean_differs_from_t1():
    h = inputs()
    torch.manual_seed(0)
    a = make(task_step="t1").train()(*h).fused
    torch.manual_seed(0)
    b = make(task_step="mean").train()(*h).fused
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("task_noise, top", [("full", 20), ("serving", 3)])
def test_task_noise_draws_t1_from_the_served_levels(task_noise, top):
    m = make(t_start=3, task_noise=task_noise, evolution_weight=0.0, num_train_steps=20).train()
    seen = []
    handle = m.denoiser.register_forward_hook(lambda mod, args, out: seen.append(args[1].clone()))
    torch.manual_seed(0)
    for _ in range(20):
        m(*inputs(b=8))
    handle.remove()
    # One batched call per forward: (cp, tf) passes x (t1 rows, t2 rows).
    t = torch.stack(seen).reshape(20, 2, 2, 8)
    t1, t2 = t[:, :, 0], t[:, :, 1]
    assert int(t1.max()) < top and int(t1.max()) >= top - 3  # the whole allowed range is used
    assert int(t2.max()) >= 10  # t2 keeps the full range either way


def test_task_noise_serving_needs_t_start():
    with pytest.raises(ValueError, match="task_noise='serving' needs t_start"):
        make(task_noise="serving")


def test_task_noise_serving_with_consistency_warns_of_divergence():
    with pytest.warns(UserWarning, match="diverged on MovieLens-1M"):
        make(t_start=3, task_noise="serving", num_train_steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(t_start=3, task_noise="serving", num_train_steps=20, consistency_weight=0.0)
        make(t_start=3, task_noise="serving", num_train_steps=20, consistency_mode="cosine")


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_without_consistency_the_t2_pass_is_skipped_and_t1_is_unchanged(denoiser):
    """consistency_weight=0 runs the denoiser on the t1 half alone; the output, the other
    losses and every later random draw are those of the run that computes t2 too."""
    h = inputs(b=5)
    with_t2, without = make(denoiser=denoiser).train(), make(denoiser=denoiser, consistency_weight=0.0).train()
    rows = []
    guided = without._guided
    without._guided = lambda x_t, *args, **kwargs: rows.append(x_t.shape[0]) or guided(x_t, *args, **kwargs)  # type: ignore[method-assign]
    torch.manual_seed(4)
    a = with_t2(*h)
    after_a = torch.rand(3)
    torch.manual_seed(4)
    b = without(*h)
    after_b = torch.rand(3)
    torch.testing.assert_close(b.fused, a.fused, rtol=0, atol=1e-6)
    assert set(b.losses) == set(a.losses) - {"consistency"}
    for name in b.losses:
        torch.testing.assert_close(b.losses[name], a.losses[name], rtol=0, atol=1e-6)
    assert torch.equal(after_a, after_b)
    assert rows and all(r == 5 for r in rows)  # x_t of the t1 half only (10 rows with t2)


def test_cosine_consistency_is_scale_free_and_mse_is_not():
    output, target = torch.randn(5, 8), torch.randn(5, 8)
    want = (1 - torch.nn.functional.cosine_similarity(output, target, dim=-1)).mean()
    torch.testing.assert_close(consistency_loss(output, target, "cosine"), want)
    # Scaling the target (what the diverged runs did) leaves the cosine form unchanged.
    torch.testing.assert_close(consistency_loss(output, 1e6 * target, "cosine"), want)
    torch.testing.assert_close(consistency_loss(output, target), (output - target).pow(2).mean())
    assert consistency_loss(output, 1e3 * target) > 1e5
    with pytest.raises(ValueError, match="consistency_mode must be 'mse' or 'cosine', got 'l1'"):
        consistency_loss(output, target, "l1")  # type: ignore[arg-type]


def test_consistency_mode_reaches_the_loss(monkeypatch):
    seen = []
    monkeypatch.setattr(interest_module, "consistency_loss", lambda o, t, mode: seen.append(mode) or (o - t).pow(2).mean())
    make(consistency_mode="cosine").train()(*inputs())
    assert seen == ["cosine"]


def test_denoise_loss_pulls_x0_hat_to_the_detached_clean_start(monkeypatch):
    """denoise_weight adds w * mse(x0_hat at t1, x0) with x0 (the projected h_long) detached;
    it changes no output, and without it the losses are the paper's."""
    h = inputs(b=5)
    # p_drop_long 0: x0 is then the projection itself, recomputed below.
    plain, denoised = make(p_drop_long=0.0).train(), make(denoise_weight=0.5, p_drop_long=0.0).train()
    torch.manual_seed(4)
    a = plain(*h)
    torch.manual_seed(4)
    b = denoised(*h)
    torch.testing.assert_close(b.fused, a.fused, rtol=0, atol=0)
    assert "denoise" not in a.losses and set(b.losses) == set(a.losses) | {"denoise"}
    x0 = denoised._start(h[0], None)
    torch.testing.assert_close(b.losses["denoise"], 0.5 * (b.fused - x0).pow(2).mean())
    # The target is detached: the loss trains the denoiser, never the host towards x0_hat.
    seen = []
    real = interest_module.consistency_loss
    monkeypatch.setattr(interest_module, "consistency_loss",
                        lambda o, t, mode: seen.append((o.requires_grad, t.requires_grad)) or real(o, t, mode))
    denoised(*h)
    assert seen[-1] == (True, False)


def test_evolution_skips_rows_with_fewer_than_two_sessions():
    pred, target = torch.randn(3, 4), torch.randn(3, 4)
    valid = torch.tensor([True, False, False])
    want = 1 - torch.nn.functional.cosine_similarity(pred[:1], target[:1])
    assert torch.allclose(evolution_loss(pred, target, valid), want.squeeze())
    assert evolution_loss(pred, target, torch.zeros(3, dtype=torch.bool)) == 0
    m = make().train()
    h_long, h_sessions, _ = inputs(k=3)
    one_session = torch.zeros(4, 3, dtype=torch.bool)
    one_session[:, 1] = True
    assert m(h_long, h_sessions, one_session).losses["evolution"] == 0


def test_disentangle_modes():
    g_cp = torch.tensor([[[1.0, 0.0], [2.0, 2.0]]])
    g_tf = torch.tensor([[[0.0, 3.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True]])
    assert torch.allclose(disentangle_loss(g_cp, g_tf, mask, "cosine"), torch.tensor(0.5))
    assert torch.allclose(disentangle_loss(g_cp, g_tf, mask, "inner_product"), torch.tensor(8.0))
    assert torch.allclose(disentangle_loss(g_cp, g_tf, torch.tensor([[True, False]]), "cosine"), torch.tensor(0.0))


@pytest.mark.parametrize("training", [True, False])
def test_zero_data_rows(training):
    m = make(sampling_steps=2).train(training)
    h_long, h_sessions, mask = inputs(b=4, k=3)
    mask[2] = False
    long_mask = torch.tensor([True, False, True, False])
    torch.manual_seed(4)
    out = m(h_long, h_sessions, mask, long_mask)
    assert torch.isfinite(out.fused).all()
    assert all(torch.isfinite(v) for v in out.losses.values())
    if not training:
        # Missing long-term history: the start is the learned prior, whatever h_long holds.
        other = m(torch.randn_like(h_long) * 5, h_sessions, mask, long_mask).fused
        assert torch.allclose(out.fused[~long_mask], other[~long_mask])
        assert not torch.allclose(out.fused[long_mask], other[long_mask])
        # No sessions: the unconditional generation, whatever the session values are.
        third = m(h_long, torch.randn_like(h_sessions) * 5, mask, long_mask).fused
        assert torch.allclose(out.fused[2], third[2])


def test_no_sessions_at_all_and_empty_k():
    m = make().eval()
    h_long = torch.randn(3, LONG)
    a = m(h_long, torch.randn(3, 2, SESS), torch.zeros(3, 2, dtype=torch.bool)).fused
    b = m(h_long, torch.zeros(3, 0, SESS)).fused
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_fresh_denoiser_is_the_identity_on_x_t(denoiser):
    m = make(fresh=True, denoiser=denoiser)
    x_t, g = torch.randn(5, FUSE), torch.randn(5, 3, FUSE)
    out = m.denoiser(x_t, torch.randint(0, 20, (5,)), g, torch.ones(5, 3, dtype=torch.bool))
    torch.testing.assert_close(out, x_t)


@pytest.mark.parametrize("S", [1, 3])
def test_denoiser_called_once_per_step(S):
    m = make(sampling_steps=S, gamma_cp=2.0, gamma_tf=1.0).eval()
    calls = []
    handle = m.denoiser.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    m(*inputs(b=4))
    handle.remove()
    # Three passes (uncond, cp, tf) batched into one call of 3 * B rows per step.
    assert calls == [12] * S


def test_unconditional_pass_skipped_when_its_weight_is_zero(monkeypatch):
    h = inputs(b=4)
    m = make(gamma_cp=0.6666667, gamma_tf=0.3333333).eval()
    calls = []
    handle = m.denoiser.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    skipped = m(*h).fused
    assert calls == [8]  # cp and tf only
    # Same value as eq. 14 with the unconditional pass (weight 1 - 2/3 - 1/3 = 0).
    monkeypatch.setattr(interest_module, "_UNCOND_WEIGHT_TOLERANCE", -1.0)
    full = m(*h).fused
    handle.remove()
    assert calls == [8, 12]
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-5)


def test_guidance_vectors():
    m = make().train()
    h_sessions = torch.randn(2, 3, SESS)
    g_cp, g_tf = m.guidance_vectors(h_sessions)
    assert g_cp.shape == g_tf.shape == (2, 3, FUSE)
    again = m.guidance_vectors(h_sessions)
    assert torch.equal(g_cp, again[0]) and m.training  # dropout off, mode restored
    with pytest.raises(ValueError, match="needs guidance='dcfg'"):
        make(guidance="cfg").guidance_vectors(h_sessions)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sampling_steps=1),
        dict(sampling_steps=3, t_start=10, denoiser="marn_attention", long_condition=True),
        dict(guidance="cfg", denoiser="nar_attention"),
        dict(guidance="none", denoiser="nar_mlp", schedule="linear"),
    ],
)
def test_export_parity(kwargs):
    m = make(**kwargs).eval()
    h_long, h_sessions, mask = inputs(b=3, k=4)
    long_mask = torch.tensor([True, False, True])
    batch = torch.export.Dim("batch", min=2, max=1024)
    ep = torch.export.export(
        m, (h_long, h_sessions, mask, long_mask), dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: batch})
    )
    h_long, h_sessions, mask = inputs(b=6, k=4, seed=7)
    long_mask = torch.tensor([True, False, True, True, False, True])
    got = ep.module()(h_long, h_sessions, mask, long_mask)
    want = m(h_long, h_sessions, mask, long_mask)
    assert got.fused.shape == (6, FUSE)
    assert (got.fused - want.fused).abs().max() <= 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schedule="sigmoid"), "schedule must be one of"),
        (dict(guidance="classifier"), "guidance must be one of"),
        (dict(denoiser="unet"), "denoiser must be one of"),
        (dict(train_combination="sum"), "train_combination must be one of"),
        (dict(disentangle_mode="l1"), "disentangle_mode must be one of"),
        (dict(task_step="t2"), "task_step must be one of"),
        (dict(task_noise="low"), "task_noise must be one of"),
        (dict(consistency_mode="l2"), "consistency_mode must be one of"),
        (dict(num_train_steps=0), "num_train_steps must be a positive int"),
        (dict(sampling_steps=0), "sampling_steps must be a positive int"),
        (dict(sampling_steps=21), "sampling_steps must be at most 20"),
        (dict(t_start=5, sampling_steps=6), "sampling_steps must be at most 5"),
        (dict(t_start=0), "t_start must be None or an int"),
        (dict(t_start=21), "t_start must be None or an int"),
        (dict(p_drop_cp=1.5), "p_drop_cp must be a probability"),
        (dict(p_drop_tf=-0.1), "p_drop_tf must be a probability"),
        (dict(core_dropout=2.0), "core_dropout must be a probability"),
        (dict(gamma_cp=-1.0), "gamma_cp must be a non-negative"),
        (dict(evolution_weight=-1.0), "evolution_weight must be a non-negative"),
        (dict(denoise_weight=-0.1), "denoise_weight must be a non-negative"),
        (dict(gate_init=float("nan")), "gate_init must be a finite number"),
        (dict(gate_init=0.5, concat_skip=False), "gate_init=0.5 needs concat_skip=True"),
        (dict(num_heads=3), "num_heads must be a positive divisor"),
        (dict(gamma_cp=0.0, gamma_tf=0.0), "gamma_cp \\+ gamma_tf must be positive"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_consistency_targets_detached_t1_output(monkeypatch):
    seen = {}

    def capture(output, target, mode):
        seen["output_grad"], seen["target_grad"] = output.requires_grad, target.requires_grad
        return (output - target).pow(2).mean()

    monkeypatch.setattr(interest_module, "consistency_loss", capture)
    make(task_step="t1").train()(*inputs())
    assert seen == {"output_grad": True, "target_grad": False}


@pytest.mark.parametrize("training", [True, False])
def test_concat_skip_starts_as_the_concat_fusion(training):
    m = make(fresh=True, concat_skip=True).train(training)
    h_long, h_sessions, mask = inputs()
    long_mask = torch.tensor([True, False, True, True])
    out = m(h_long, h_sessions, mask, long_mask)
    # The gate starts at zero: the layer is exactly the ConcatFusion it holds.
    torch.testing.assert_close(out.fused, m.skip(h_long, h_sessions, mask, long_mask).fused, rtol=0, atol=0)
    if training:
        assert set(out.losses) == {"evolution", "consistency", "disentangle"}


def test_gate_init_sets_the_starting_gate():
    m = make(fresh=True, concat_skip=True, gate_init=0.25).eval()
    assert torch.equal(m.skip_gate.detach(), torch.full((FUSE,), 0.25))
    h_long, h_sessions, mask = inputs()
    # A fresh layer now adds a quarter of the generated interest to its concat part.
    full = m(h_long, h_sessions, mask).fused
    linear = m.skip(h_long, h_sessions, mask, None).fused
    with m.serving(generated_scale=0.0):
        torch.testing.assert_close(m(h_long, h_sessions, mask).fused, linear)
    assert not torch.allclose(full, linear)


@pytest.mark.parametrize("training", [True, False])
def test_concat_skip_adds_the_gated_generation(training):
    m = make(concat_skip=True).train(training)
    h = inputs()
    torch.manual_seed(2)
    fused = m(*h).fused
    skip, m.skip = m.skip, None
    torch.manual_seed(2)
    generated = m(*h).fused
    m.skip = skip
    torch.testing.assert_close(fused, skip(*h).fused + m.skip_gate * generated)


@pytest.mark.parametrize("denoiser", ["marn", "marn_attention"])
@pytest.mark.parametrize("combination", ["algorithm1", "inference"])
def test_evolution_prediction_read_from_the_chain_equals_a_separate_pass(denoiser, combination):
    # MARN's output conditioned on the sessions before the last present one is a state of the
    # full chain; reading it there must give what a second pass over the shortened mask gives.
    m = make(denoiser=denoiser, train_combination=combination, gamma_cp=2.0, gamma_tf=1.0, long_condition=True)
    torch.manual_seed(1)
    x_t, t, sessions = torch.randn(6, FUSE), torch.randint(0, 20, (6,)), torch.randn(6, 4, FUSE)
    mask = torch.rand(6, 4) > 0.3
    mask[0], mask[1] = True, torch.tensor([False, False, True, False])
    guidance = m.encoder(sessions, mask)
    keep = [torch.rand(6) > 0.3, torch.rand(6) > 0.3]
    last = last_present_index(mask)
    full, prefix = m._guided(x_t, t, m._branches(guidance, mask, keep), x_t, combination, stop=last)
    shortened = mask & (torch.arange(4).unsqueeze(0) != last.unsqueeze(1))
    separate = m._guided(x_t, t, m._branches(guidance, shortened, keep), x_t, combination)[0]
    valid = mask.sum(dim=1) >= 2
    torch.testing.assert_close(prefix[valid], separate[valid], rtol=0, atol=1e-6)
    torch.testing.assert_close(full, m._guided(x_t, t, m._branches(guidance, mask, keep), x_t, combination)[0])


@pytest.mark.parametrize("guidance", ["cfg", "dcfg"])
def test_default_scales_serve_the_combination_trained_with(guidance, recwarn):
    """With the default scales the eval combination (eq. 7 / 14) equals the training one
    (Algorithm 1): no unconditional pass is mixed in at serving that training never saw."""
    m = make(guidance=guidance).eval()
    assert not [w for w in recwarn if "extrapolates" in str(w.message)]
    h_long, h_sessions, mask = inputs()
    with torch.no_grad():
        x0 = m.long_projection(h_long)
        sessions, smask = m._sessions(h_sessions, mask)
        branches = m._branches(m.encoder(sessions, smask), smask, None)
        t = torch.full((4,), 7)
        served, _ = m._guided(x0, t, branches, None, "inference")
        trained, _ = m._guided(x0, t, branches, None, "algorithm1")
    torch.testing.assert_close(served, trained)


@pytest.mark.parametrize("options", [dict(guidance="cfg", gamma_cp=2.0 / 3.0), dict(guidance="dcfg", gamma_cp=2.0, gamma_tf=1.0)])
def test_scales_that_extrapolate_at_serving_warn(options):
    with pytest.warns(UserWarning, match="serving extrapolates"):
        make(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(**options, train_combination="inference")  # trains on what is served: no warning


def test_serving_settings_at_call_time_equal_a_module_built_with_them() -> None:
    """`sample(..., **settings)` and `with serving(...)` give what a layer constructed with those
    settings gives on the same weights; the constructor values come back after the block."""
    torch.manual_seed(0)
    trained = InterestFusion(24, 16, 32, num_heads=4).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    h_long, h_sessions = torch.randn(5, 24), torch.randn(5, 3, 16)
    settings = dict(t_start=200, sampling_steps=3, gamma_cp=2.0, gamma_tf=1.0, stochastic_sampling=True, sampling_seed=4)
    with pytest.warns(UserWarning, match="extrapolates"):
        built = InterestFusion(24, 16, 32, num_heads=4, **settings).eval()
    built.load_state_dict(trained.state_dict())
    with torch.no_grad():
        expected = built(h_long, h_sessions).fused
        default = trained(h_long, h_sessions).fused
        torch.testing.assert_close(trained.sample(h_long, h_sessions, **settings), expected)
        with trained.serving(**settings) as active:
            assert active.t_start == 200 and trained.serving_settings.sampling_steps == 3
            torch.testing.assert_close(trained(h_long, h_sessions).fused, expected)
        assert trained.serving_settings.t_start is None and trained.serving_settings.sampling_steps == 1
        torch.testing.assert_close(trained(h_long, h_sessions).fused, default)
        assert not torch.allclose(expected, default)
        # The generated interest removed leaves the skip's concat; bypassing the skip leaves it alone.
        torch.testing.assert_close(trained.sample(h_long, h_sessions, generated_scale=0.0), trained.skip(h_long, h_sessions).fused)
        generated = trained.sample(h_long, h_sessions, concat_skip=False)
        torch.testing.assert_close(default, trained.skip(h_long, h_sessions).fused + trained.skip_gate * generated)
    with pytest.raises(ValueError, match=r"unknown serving setting\(s\) \['t_strat'\]; valid: \['sampling_steps', 't_start'"):
        trained.sample(h_long, h_sessions, t_strat=10)
    with pytest.raises(ValueError, match=r"sampling_steps must be at most 2 \(the start step\), got 3"):
        trained.sample(h_long, h_sessions, t_start=2, sampling_steps=3)
    with pytest.raises(ValueError, match="this layer has concat_skip=False"):
        InterestFusion(24, 16, 32, num_heads=4, concat_skip=False).sample(h_long, h_sessions, generated_scale=0.0)
    assert trained.serving_settings.t_start is None  # a failed call changes nothing
