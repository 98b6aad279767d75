"""The fusion contract, shared by every fusion layer: shapes and error messages."""

from __future__ import annotations

import pytest
import torch

from ifusion_plugin.fusion import AttentionFusion, ConcatFusion, GateFusion, InterestFusion

LONG, SESS, FUSE = 6, 5, 8


def _make(cls):
    if cls is InterestFusion:
        return cls(LONG, SESS, FUSE, num_heads=2, num_train_steps=20, denoiser_hidden_dim=16, guidance_hidden_dim=16)
    if cls is AttentionFusion:
        return cls(LONG, SESS, FUSE, num_heads=2)
    return cls(LONG, SESS, FUSE)


CLASSES = [ConcatFusion, GateFusion, AttentionFusion, InterestFusion]


@pytest.fixture(params=CLASSES, ids=lambda c: c.__name__)
def layer(request):
    torch.manual_seed(0)
    return _make(request.param)


def _inputs(b=3, k=4):
    return torch.randn(b, LONG), torch.randn(b, k, SESS)


@pytest.mark.parametrize("training", [True, False])
def test_output_shape_and_dtype(layer, training):
    layer.train(training)
    h_long, h_sessions = _inputs()
    out = layer(h_long, h_sessions)
    assert out.fused.shape == (3, FUSE)
    assert out.fused.dtype == torch.float32
    for k in (1, 2, 7):
        assert layer(*_inputs(k=k)).fused.shape == (3, FUSE)


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.randn(3, LONG, 1), torch.randn(3, 4, SESS)), "h_long must have shape"),
        ((torch.randn(3, LONG), torch.randn(3, SESS)), "h_sessions must have shape"),
        ((torch.randn(3, LONG + 1), torch.randn(3, 4, SESS)), "differs from the configured long_dim"),
        ((torch.randn(3, LONG), torch.randn(3, 4, SESS + 1)), "differs from the configured session_dim"),
        ((torch.randn(3, LONG), torch.randn(2, 4, SESS)), "h_sessions must have batch size 3"),
        ((torch.randn(3, LONG), torch.randn(3, 4, SESS), torch.ones(3, 4)), "session_mask must be a bool tensor"),
        ((torch.randn(3, LONG), torch.randn(3, 4, SESS), torch.ones(3, 5, dtype=torch.bool)), "session_mask must have shape"),
        ((torch.randn(3, LONG), torch.randn(3, 4, SESS), None, torch.ones(3)), "long_mask must be a bool tensor"),
        ((torch.randn(3, LONG), torch.randn(3, 4, SESS), None, torch.ones(2, dtype=torch.bool)), "long_mask must have shape"),
        ((torch.full((3, LONG), float("nan")), torch.randn(3, 4, SESS)), "h_long must be finite"),
        ((torch.randn(3, LONG), torch.full((3, 4, SESS), float("inf"))), "h_sessions must be finite"),
        ((torch.randn(3, LONG).long(), torch.randn(3, 4, SESS)), "h_long must be a floating-point"),
    ],
)
def test_errors(layer, args, message):
    with pytest.raises(ValueError, match=message):
        layer(*args)


def test_validation_off_skips_checks(layer):
    layer.validate_inputs = False
    layer.eval()
    # A NaN passes straight through when the checks are off (it is the caller's choice).
    out = layer(torch.full((2, LONG), float("nan")), torch.randn(2, 3, SESS))
    assert out.fused.shape == (2, FUSE)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_dims(cls, bad):
    with pytest.raises(ValueError, match="must be a positive int"):
        cls(bad, SESS, FUSE)


@pytest.mark.parametrize("cls", [ConcatFusion, GateFusion])
def test_baseline_linear_init(cls):
    """Xavier-normal weights and zero biases by default; PyTorch's own with linear_init='torch'."""
    torch.manual_seed(0)
    xavier = cls(96, 160, 64)
    linears = [m for m in xavier.modules() if isinstance(m, torch.nn.Linear)]
    assert linears, "a baseline without linear layers would make this test vacuous"
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        expected = (2.0 / (fan_in + fan_out)) ** 0.5
        assert abs(layer.weight.std().item() - expected) < 0.1 * expected
        assert torch.count_nonzero(layer.bias) == 0
    torch.manual_seed(0)
    default = cls(96, 160, 64, linear_init="torch")
    for layer in (m for m in default.modules() if isinstance(m, torch.nn.Linear)):
        fan_in = layer.weight.shape[1]
        assert abs(layer.weight.std().item() - (3.0 * fan_in) ** -0.5) < 0.1 * (3.0 * fan_in) ** -0.5
        assert torch.count_nonzero(layer.bias) > 0
    with pytest.raises(ValueError, match="linear_init must be 'xavier' or 'torch', got 'kaiming'"):
        cls(96, 160, 64, linear_init="kaiming")


def test_concat_without_projection_is_the_plain_concatenation():
    fusion = ConcatFusion(6, 4, fusion_dim=None)
    assert fusion.fusion_dim == 10 and fusion.projection is None and not list(fusion.parameters())
    h_long, h_sessions = torch.randn(3, 6), torch.randn(3, 2, 4)
    session_mask = torch.tensor([[True, True], [True, False], [False, False]])
    long_mask = torch.tensor([True, False, True])
    fused = fusion(h_long, h_sessions, session_mask=session_mask, long_mask=long_mask).fused
    assert torch.equal(fused[0], torch.cat([h_long[0], h_sessions[0].mean(0)]))
    assert torch.equal(fused[1], torch.cat([torch.zeros(6), h_sessions[1, 0]]))  # no long history: zeros
    assert torch.equal(fused[2], torch.cat([h_long[2], torch.zeros(4)]))  # no session: zeros
    with pytest.raises(ValueError, match="long_dim must be a positive int, got 0"):
        ConcatFusion(0, 4, fusion_dim=None)
