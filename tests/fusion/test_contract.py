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
