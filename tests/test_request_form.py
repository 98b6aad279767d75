"""The request form: one user against C candidates, the user's side computed once, equal to the
row form on the same rows; every fusion layer's prepared path equals its forward."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from ifusion_plugin.batch import FeatureSpec
from ifusion_plugin.fusion import AttentionFusion, ConcatFusion, GateFusion, InterestFusion
from ifusion_plugin.hosts import DIN, SIM, TWIN, AvgPoolDNN
from ifusion_plugin.serving import RequestServingModel, ServingModel, export_program, load_program

SPEC = FeatureSpec(num_users=30, num_items=60, num_cates=8, long_len=12, num_sessions=3, session_len=4,
                   context_cardinalities=(5,), num_behaviors=4)
FUSIONS = {
    "concat": ConcatFusion,
    "gate": GateFusion,
    "ifusion": functools.partial(InterestFusion, fusion_dim=16, num_heads=2),
}


def perturbed(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised parts included), so that no term is a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return module.eval()


@pytest.mark.parametrize("fusion_long", ["host", "mean"])
@pytest.mark.parametrize("pooling", ["mean", "target"])
@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("host_class", [AvgPoolDNN, DIN, SIM, TWIN], ids=lambda c: c.__name__)
def test_request_form_equals_the_row_form(host_class, fusion: str, pooling: str, fusion_long: str) -> None:
    torch.manual_seed(0)
    host = perturbed(host_class(SPEC, embed_dim=8, fusion=FUSIONS[fusion], session_pooling=pooling, head_dims=(16,),
                                fusion_long=fusion_long, head_sees_long=fusion_long == "mean"))
    request = RequestServingModel(host, SPEC)
    inputs = request.example_inputs(9, seed=3)
    with torch.no_grad():
        scored = request(*inputs)
        rows = ServingModel(host, SPEC)(*request.rows_of(inputs))
    assert scored.shape == (9,) and scored.std() > 1e-3  # the candidates really differ
    torch.testing.assert_close(scored, rows, rtol=0, atol=1e-5)


IFUSION_OPTIONS = [
    {}, {"guidance": "cfg"}, {"guidance": "none"}, {"gamma_cp": 2.0, "gamma_tf": 1.0}, {"long_condition": True},
    {"denoiser": "marn_attention"}, {"denoiser": "nar_mlp"}, {"denoiser": "nar_attention"}, {"sampling_steps": 3},
    {"t_start": 100, "sampling_steps": 2, "stochastic_sampling": True}, {"concat_skip": False},
]


@pytest.mark.parametrize("options", IFUSION_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_interest_fusion_prepared_path_equals_forward(options: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 2/1 scales warn by design
        fusion = perturbed(InterestFusion(24, 16, 32, num_heads=4, **options), scale=0.1)
    h_sessions, h_long = torch.randn(1, 4, 16), torch.randn(7, 24)
    long_mask = torch.tensor([True] * 6 + [False])
    for session_mask in (torch.tensor([[False, True, True, True]]), torch.zeros(1, 4, dtype=torch.bool)):
        with torch.no_grad():
            rows = fusion(h_long, h_sessions.expand(7, -1, -1), session_mask.expand(7, -1), long_mask).fused
            prepared = fusion.fuse_prepared(h_long, fusion.prepare_sessions(h_sessions, session_mask), long_mask)
        torch.testing.assert_close(prepared, rows, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="serves the eval path"):
        fusion.train().prepare_sessions(h_sessions)


@pytest.mark.parametrize("layer", [ConcatFusion(24, 16, 32), ConcatFusion(24, 16, None), GateFusion(24, 16, 32), AttentionFusion(24, 16, 32)],
                         ids=["concat", "concat-plain", "gate", "attention"])
def test_baseline_prepared_path_equals_forward(layer) -> None:
    layer = perturbed(layer)
    h_sessions, h_long = torch.randn(1, 3, 16), torch.randn(5, 24)
    mask, long_mask = torch.tensor([[True, False, True]]), torch.tensor([True, False, True, True, True])
    with torch.no_grad():
        rows = layer(h_long, h_sessions.expand(5, -1, -1), mask.expand(5, -1), long_mask).fused
        torch.testing.assert_close(layer.fuse_prepared(h_long, layer.prepare_sessions(h_sessions, mask), long_mask), rows,
                                   rtol=1e-6, atol=1e-6)  # the same sums in another order: float32 round-off only


def test_request_form_encodes_the_user_side_once() -> None:
    """With mean pooling the sessions and the fusion layer's session work run once per request
    (batch 1), never per candidate; TWIN embeds the long sequence once."""
    host = perturbed(TWIN(SPEC, embed_dim=8, fusion=FUSIONS["ifusion"], head_dims=(16,)))
    request = RequestServingModel(host, SPEC)
    batches: dict[str, list[int]] = {"sessions": [], "guidance": [], "long": []}
    host.session_encoder.register_forward_hook(lambda m, args, out: batches["sessions"].append(out.shape[0]))
    host.fusion.encoder.register_forward_hook(lambda m, args, out: batches["guidance"].append(args[0].shape[0]))
    embed_long = host.embed_long
    host.embed_long = lambda batch: batches["long"].append(batch.long_items.shape[0]) or embed_long(batch)  # type: ignore[method-assign]
    with torch.no_grad():
        request(*request.example_inputs(40))
    assert batches == {"sessions": [1], "guidance": [1], "long": [1]}


@pytest.mark.parametrize("host_class", [DIN, SIM, TWIN], ids=lambda c: c.__name__)
def test_user_level_fusion_runs_once_per_request(host_class) -> None:
    """With ``fusion_long="mean"`` (and mean-pooled sessions) nothing the fusion layer reads
    depends on the candidate: iFusion's chain runs on one row, whatever the candidate count."""
    host = perturbed(host_class(SPEC, embed_dim=8, fusion=FUSIONS["ifusion"], head_dims=(16,), fusion_long="mean",
                                head_sees_long=True))
    request = RequestServingModel(host, SPEC)
    rows: list[int] = []
    fuse_prepared = host.fusion.fuse_prepared
    host.fusion.fuse_prepared = lambda h_long, *a, **k: rows.append(h_long.shape[0]) or fuse_prepared(h_long, *a, **k)  # type: ignore[method-assign]
    with torch.no_grad():
        scored = request(*request.example_inputs(40))
    assert rows == [1] and scored.shape == (40,) and scored.std() > 1e-3


def test_request_program_has_a_dynamic_number_of_candidates(tmp_path) -> None:
    host = perturbed(TWIN(SPEC, embed_dim=8, fusion=FUSIONS["ifusion"], head_dims=(16,)))
    request = RequestServingModel(host, SPEC)
    export_program(request, str(tmp_path / "request.pt2"))
    program = load_program(str(tmp_path / "request.pt2"))
    for count in (1, 37, 300):
        inputs = request.example_inputs(count, seed=count)
        with torch.no_grad():
            torch.testing.assert_close(program(*inputs), request(*inputs), rtol=0, atol=1e-5)


def test_request_form_rejects_more_than_one_user() -> None:
    host = TWIN(SPEC, embed_dim=8, head_dims=(16,)).eval()
    request = RequestServingModel(host, SPEC)
    inputs = list(request.example_inputs(4))
    inputs[0] = inputs[0].expand(2)
    with pytest.raises(ValueError, match=r"scores one user: user.user must have shape \(1,\), got \(2,\)"):
        request(*inputs)
    inputs = list(request.example_inputs(4))
    inputs[6] = inputs[6][:3]
    with pytest.raises(ValueError, match=r"target_item and target_cate must both have shape \(C,\), got \(4,\) and \(3,\)"):
        request(*inputs)
