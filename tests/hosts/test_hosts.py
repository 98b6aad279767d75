"""Tests of the host models: shapes, gradients, masking, retrieval, options."""

from __future__ import annotations

import functools
from typing import Optional

import pytest
import torch
from torch import Tensor

from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.fusion import AttentionFusion, ConcatFusion, FusionLayer, FusionOutput, GateFusion
from ifusion_plugin.hosts import DIN, SIM, TWIN, AvgPoolDNN, CTRHost, HostOutput
from ifusion_plugin.hosts.layers import ActivationUnitAttention, MultiHeadTargetAttention, SessionEncoder, masked_topk

try:  # written in parallel; tested here when present
    from ifusion_plugin.fusion.interest_fusion import InterestFusion
except ImportError:  # pragma: no cover - depends on the tree
    InterestFusion = None

SPEC = FeatureSpec(num_users=30, num_items=60, num_cates=8, long_len=12, num_sessions=3, session_len=4)
SMALL = dict(embed_dim=8, head_dims=(16,), session_feedforward_dim=16)
HOSTS = {
    "AvgPoolDNN": lambda spec, **kw: AvgPoolDNN(spec, **SMALL, **kw),
    "DIN": lambda spec, **kw: DIN(spec, **SMALL, attention_hidden_dims=(8,), **kw),
    "SIM-soft": lambda spec, **kw: SIM(spec, **SMALL, top_k=5, attention_dim=8, **kw),
    "SIM-hard": lambda spec, **kw: SIM(spec, **SMALL, search="hard", top_k=5, attention_dim=8, **kw),
    "TWIN": lambda spec, **kw: TWIN(spec, **SMALL, top_k=5, attention_dim=8, **kw),
}
FUSIONS = {
    "concat": functools.partial(ConcatFusion, fusion_dim=8),
    "gate": functools.partial(GateFusion, fusion_dim=8),
    "attention": functools.partial(AttentionFusion, fusion_dim=8, num_heads=2),
}
if InterestFusion is not None:
    FUSIONS["interest"] = functools.partial(InterestFusion, fusion_dim=8)


def make_batch(spec: FeatureSpec = SPEC, batch_size: int = 8, seed: int = 0) -> CTRBatch:
    """Random batch with front padding; row 0 has no long history, row 1 no session, row 2 neither."""
    g = torch.Generator().manual_seed(seed)
    L, K, N = spec.long_len, spec.num_sessions, spec.session_len

    def ids(high: int, *shape: int) -> Tensor:
        return torch.randint(2, high, shape, generator=g)

    long_len = torch.randint(1, L + 1, (batch_size, 1), generator=g)
    long_len[0] = long_len[2] = 0
    long_pad = torch.arange(L) < (L - long_len)
    session_len = torch.randint(0, N + 1, (batch_size, K, 1), generator=g)
    session_len[1] = session_len[2] = 0
    session_pad = torch.arange(N) < (N - session_len)
    context = None
    if spec.context_cardinalities:
        context = torch.stack([torch.randint(2, c, (batch_size,), generator=g) for c in spec.context_cardinalities], 1)
    return CTRBatch(
        user=ids(spec.num_users, batch_size),
        target_item=ids(spec.num_items, batch_size),
        target_cate=ids(spec.num_cates, batch_size),
        long_items=ids(spec.num_items, batch_size, L).masked_fill(long_pad, 0),
        long_cates=ids(spec.num_cates, batch_size, L).masked_fill(long_pad, 0),
        session_items=ids(spec.num_items, batch_size, K, N).masked_fill(session_pad, 0),
        session_cates=ids(spec.num_cates, batch_size, K, N).masked_fill(session_pad, 0),
        label=torch.randint(0, 2, (batch_size,), generator=g).float(),
        context=context,
    )


@pytest.mark.parametrize("fusion_name", list(FUSIONS))
@pytest.mark.parametrize("host_name", list(HOSTS))
def test_logits_finite_and_gradients_reach_every_parameter(host_name: str, fusion_name: str) -> None:
    torch.manual_seed(0)
    host = HOSTS[host_name](SPEC, fusion=FUSIONS[fusion_name])
    batch = make_batch()
    output = host(batch)
    assert isinstance(output, HostOutput)
    assert output.logits.shape == (len(batch),)
    assert torch.isfinite(output.logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, batch.label)
    loss = loss + sum(output.losses.values(), torch.zeros(()))
    loss.backward()
    # The fusion layer's own parameters are its author's contract (some may be idle in one
    # step, e.g. a guidance branch); every host parameter must receive a gradient.
    missing = [n for n, p in host.named_parameters() if not n.startswith("fusion.") and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in host.parameters() if p.grad is not None)
    for name in ("item_embedding", "cate_embedding", "user_embedding"):
        assert getattr(host, name).weight.grad.abs().sum() > 0, name


class _LossyFusion(FusionLayer):
    """Concat fusion that reports one weighted auxiliary loss, to follow it through the host."""

    def __init__(self, long_dim: int, session_dim: int, fusion_dim: int = 8) -> None:
        super().__init__(long_dim, session_dim, fusion_dim)
        self.inner = ConcatFusion(long_dim, session_dim, fusion_dim)
        self.seen: dict[str, Optional[Tensor]] = {}

    def forward(self, h_long: Tensor, h_sessions: Tensor, session_mask: Optional[Tensor] = None, long_mask: Optional[Tensor] = None) -> FusionOutput:
        self.seen = {"h_long": h_long, "h_sessions": h_sessions, "session_mask": session_mask, "long_mask": long_mask}
        fused = self.inner(h_long, h_sessions, session_mask, long_mask).fused
        return FusionOutput(fused=fused, losses={"aux": 0.5 * fused.pow(2).mean()})


@pytest.mark.parametrize("host_name", list(HOSTS))
def test_fusion_losses_and_masks_pass_through(host_name: str) -> None:
    host = HOSTS[host_name](SPEC, fusion=_LossyFusion)
    batch = make_batch()
    output = host(batch)
    assert set(output.losses) == {"aux"} and output.losses["aux"].requires_grad
    seen = host.fusion.seen
    assert torch.equal(seen["long_mask"], batch.has_long) and torch.equal(seen["session_mask"], batch.session_mask)
    assert seen["h_long"].shape == (len(batch), host.long_dim)
    assert seen["h_sessions"].shape == (len(batch), SPEC.num_sessions, host.session_dim)
    # Rows without long history encode to zeros; missing sessions to zeros; nothing is NaN.
    assert torch.equal(seen["h_long"][[0, 2]], torch.zeros_like(seen["h_long"][[0, 2]]))
    assert torch.equal(seen["h_sessions"][~batch.session_mask], torch.zeros_like(seen["h_sessions"][~batch.session_mask]))
    assert torch.isfinite(seen["h_sessions"]).all() and torch.isfinite(seen["h_long"]).all()


@pytest.mark.skipif(InterestFusion is None, reason="InterestFusion not in the tree yet")
def test_interest_fusion_losses_reach_host_output() -> None:
    host = HOSTS["TWIN"](SPEC, fusion=FUSIONS["interest"])
    host.train()
    output = host(make_batch())
    # The named losses, each a finite scalar whose gradient reaches the fusion layer's weights.
    assert set(output.losses) == {"evolution", "disentangle", "consistency"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in output.losses.values())
    sum(output.losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in host.fusion.parameters())
    host.eval()
    with torch.no_grad():
        assert torch.isfinite(host(make_batch()).logits).all()


@pytest.mark.parametrize("host_name", list(HOSTS))
def test_padded_positions_have_no_influence(host_name: str) -> None:
    """Presence is decided by the item id: garbage categories and scrambled items elsewhere in
    padded slots (item id 0) must not move any logit."""
    torch.manual_seed(0)
    host = HOSTS[host_name](SPEC).eval()
    batch = make_batch()
    g = torch.Generator().manual_seed(1)
    noisy = batch.slice(slice(None))
    noisy.long_cates = torch.where(batch.long_mask, batch.long_cates, torch.randint(2, SPEC.num_cates, batch.long_cates.shape, generator=g))
    noisy.session_cates = torch.where(
        batch.session_item_mask, batch.session_cates, torch.randint(2, SPEC.num_cates, batch.session_cates.shape, generator=g)
    )
    with torch.no_grad():
        torch.testing.assert_close(host(noisy).logits, host(batch).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("host_name", list(HOSTS))
def test_rows_are_independent(host_name: str) -> None:
    host = HOSTS[host_name](SPEC).eval()
    batch = make_batch()
    with torch.no_grad():
        full = host(batch).logits
        alone = torch.cat([host(batch.slice(slice(i, i + 1))).logits for i in range(len(batch))])
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-6)


def test_din_decomposed_attention_equals_concat_formulation() -> None:
    torch.manual_seed(0)
    unit = ActivationUnitAttention(6, (5, 3), activation="prelu").double()
    query, keys = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 9, 6, dtype=torch.float64)
    torch.testing.assert_close(unit.scores(query, keys), unit.naive_scores(query, keys))


def test_esu_folded_attention_equals_textbook_form() -> None:
    torch.manual_seed(0)
    esu = MultiHeadTargetAttention(6, 10, attention_dim=8, num_heads=2).double()
    query, keys = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 7, 10, dtype=torch.float64)
    mask = torch.rand(5, 7) > 0.4
    mask[0] = True
    mask[1] = False
    out = esu(query, keys, mask)
    torch.testing.assert_close(out[2:], esu.naive_forward(query, keys, mask)[2:])
    torch.testing.assert_close(out[0], esu.naive_forward(query, keys, mask)[0])
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # no position: zeros, not NaN


def test_masked_topk_clamps_and_reports_missing() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[True, False, True, True], [False, False, False, True]])
    index, kept = masked_topk(scores, mask, k=10)
    assert index.shape == kept.shape == (2, 4)
    assert set(index[0][kept[0]].tolist()) == {0, 2, 3}
    assert index[1][kept[1]].tolist() == [3]
    index, kept = masked_topk(scores, mask, k=2)
    assert set(index[0].tolist()) == {2, 3} and kept[0].all()


def _hand_batch(long_items: list[int], long_cates: list[int], target_item: int, target_cate: int) -> CTRBatch:
    L = len(long_items)
    return CTRBatch(
        user=torch.tensor([2]),
        target_item=torch.tensor([target_item]),
        target_cate=torch.tensor([target_cate]),
        long_items=torch.tensor([long_items]),
        long_cates=torch.tensor([long_cates]),
        session_items=torch.full((1, SPEC.num_sessions, SPEC.session_len), 2),
        session_cates=torch.full((1, SPEC.num_sessions, SPEC.session_len), 2),
        label=torch.ones(1),
    )


def test_sim_hard_search_keeps_most_recent_same_category() -> None:
    host = SIM(SPEC, **SMALL, search="hard", top_k=3, attention_dim=8)
    #            pad pad  0  1  2  3  4  5  6  7  8  9   (positions 2..11)
    cates = [0, 0, 5, 3, 5, 5, 4, 5, 3, 5, 2, 2]
    items = [0, 0] + list(range(10, 20))
    index, kept = host.retrieve(_hand_batch(items, cates, target_item=40, target_cate=5))
    assert sorted(index[0][kept[0]].tolist()) == [5, 7, 9]
    index, kept = SIM(SPEC, **SMALL, search="hard", top_k=50, attention_dim=8).retrieve(
        _hand_batch(items, cates, target_item=40, target_cate=5)
    )
    assert index.shape == (1, SPEC.long_len)  # top_k clamped to L
    assert sorted(index[0][kept[0]].tolist()) == [2, 4, 5, 7, 9]


def test_sim_soft_search_ranks_by_inner_product() -> None:
    host = SIM(SPEC, **SMALL, top_k=2, attention_dim=8)
    with torch.no_grad():
        host.item_embedding.weight.zero_()
        host.cate_embedding.weight.zero_()
        host.item_embedding.weight[40] = 1.0  # the target
        for item, scale in ((10, 0.1), (11, 3.0), (12, -5.0), (13, 2.0), (14, 0.5)):
            host.item_embedding.weight[item] = scale
    items = [0] * 7 + [10, 11, 12, 13, 14]
    index, kept = host.retrieve(_hand_batch(items, [0] * 7 + [2] * 5, target_item=40, target_cate=2))
    assert sorted(index[0].tolist()) == [8, 10] and kept.all()
    # Padded positions are never retrieved even when their score would win.
    index, kept = SIM(SPEC, **SMALL, top_k=10, attention_dim=8).retrieve(_hand_batch(items, [2] * 12, 40, 2))
    assert set(index[0][kept[0]].tolist()) == set(range(7, 12)) and int(kept.sum()) == 5


def test_twin_cp_gsu_ranks_with_the_esu_parameters() -> None:
    torch.manual_seed(0)
    host = TWIN(SPEC, **SMALL, top_k=3, attention_dim=8)
    batch = make_batch()
    rows = batch.has_long
    target, behaviours = host.embed_target(batch), host.embed_long(batch)
    expected = masked_topk(host.esu.scores(target, behaviours).mean(-1), batch.long_mask, 3)
    index, kept = host.retrieve(batch)
    assert torch.equal(kept, expected[1])
    assert torch.equal(index.sort(1).values[rows], expected[0].sort(1).values[rows])
    # The ESU's query/key projections steer the retrieval: changing them changes what is kept.
    with torch.no_grad():
        host.esu.key_projection.weight.copy_(torch.randn_like(host.esu.key_projection.weight))
    new_index, _ = host.retrieve(batch)
    assert not torch.equal(new_index.sort(1).values[rows], index.sort(1).values[rows])
    # The ESU output is the multi-head attention over exactly the retrieved behaviours.
    with torch.no_grad():
        chosen = behaviours.gather(1, new_index.unsqueeze(-1).expand(-1, -1, behaviours.shape[-1]))
        torch.testing.assert_close(host.encode_long(batch), host.esu(target, chosen, kept))


def test_twin_first_head_scoring() -> None:
    torch.manual_seed(0)
    host = TWIN(SPEC, **SMALL, top_k=3, attention_dim=8, cp_scoring="first_head")
    batch = make_batch()
    scores = host.esu.scores(host.embed_target(batch), host.embed_long(batch))[..., 0]
    index, kept = host.retrieve(batch)
    ref_index, ref_kept = masked_topk(scores, batch.long_mask, 3)
    assert torch.equal(kept, ref_kept)
    assert torch.equal(index.sort(1).values[batch.has_long], ref_index.sort(1).values[batch.has_long])


def test_session_encoder_empty_sessions_give_zeros_and_finite_gradients() -> None:
    torch.manual_seed(0)
    encoder = SessionEncoder(8, 4, num_heads=2, feedforward_dim=16)
    behaviours = torch.randn(2, 3, 4, 8, requires_grad=True)
    mask = torch.tensor([[[False] * 4, [False, True, True, True], [True] * 4], [[False] * 4] * 3])
    pooled = encoder(behaviours, mask)
    assert pooled.shape == (2, 3, 8)
    assert torch.equal(pooled[0, 0], torch.zeros(8)) and torch.equal(pooled[1], torch.zeros(3, 8))
    pooled.sum().backward()
    assert torch.isfinite(behaviours.grad).all()
    assert torch.equal(behaviours.grad[1], torch.zeros_like(behaviours.grad[1]))


def test_session_target_pooling_is_candidate_aware_and_ignores_padding() -> None:
    torch.manual_seed(0)
    encoder = SessionEncoder(8, 4, num_heads=2, feedforward_dim=16, pooling="target")
    behaviours = torch.randn(2, 3, 4, 8)
    mask = torch.tensor([[[False] * 4, [False, True, True, True], [True] * 4], [[True, True, False, False]] * 3])
    target = torch.randn(2, 8)
    pooled = encoder(behaviours, mask, target)
    assert pooled.shape == (2, 3, 8) and torch.equal(pooled[0, 0], torch.zeros(8))
    # Another candidate moves the session vectors (mean pooling would not).
    assert not torch.allclose(pooled[:, 1:], encoder(behaviours, mask, torch.randn(2, 8))[:, 1:])
    # Padded behaviours have no influence.
    scrambled = torch.where(mask.unsqueeze(-1), behaviours, torch.randn_like(behaviours) * 10)
    torch.testing.assert_close(encoder(scrambled, mask, target), pooled)
    # A one-behaviour session's weight is 1 on it: the vector is that behaviour's encoding.
    one = torch.zeros_like(mask)
    one[:, :, 0] = True
    mean_encoder = SessionEncoder(8, 4, num_heads=2, feedforward_dim=16, pooling="mean")
    mean_encoder.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("target_query")})
    torch.testing.assert_close(encoder(behaviours, one, target), mean_encoder(behaviours, one))
    with pytest.raises(ValueError, match="needs the candidate"):
        encoder(behaviours, mask)


@pytest.mark.parametrize("host_name", list(HOSTS))
def test_hosts_with_target_session_pooling(host_name: str) -> None:
    torch.manual_seed(0)
    host = HOSTS[host_name](SPEC, session_pooling="target")
    batch = make_batch()
    output = host(batch)
    assert torch.isfinite(output.logits).all()
    output.logits.sum().backward()
    assert host.session_encoder.target_query.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("host_name", list(HOSTS))
def test_hosts_with_peer_session_options(host_name: str) -> None:
    # FuxiCTR's short branch: no transformer layer, multi-head target attention, no positions.
    torch.manual_seed(0)
    host = HOSTS[host_name](SPEC, session_layers=0, session_pooling="attention", session_positions=False)
    assert len(host.session_encoder.layers) == 0 and host.session_encoder.position is None
    batch = make_batch()
    output = host(batch)
    assert torch.isfinite(output.logits).all()
    output.logits.sum().backward()
    assert host.session_encoder.target_attention.query_projection.weight.grad.abs().sum() > 0
    # The session vectors depend on the candidate: another target, other session vectors.
    with torch.no_grad():
        sessions = host.encode_sessions(batch)
        batch.target_item = batch.target_item.roll(1)
        assert not torch.equal(sessions, host.encode_sessions(batch))


def test_attention_pooling_of_an_empty_session_is_zero_and_layers_stack() -> None:
    torch.manual_seed(0)
    encoder = SessionEncoder(8, 4, num_heads=2, feedforward_dim=16, num_layers=2, pooling="attention")
    assert len(encoder.layers) == 2
    behaviours, mask = torch.randn(3, 2, 4, 8), torch.ones(3, 2, 4, dtype=torch.bool)
    mask[0, 0] = False
    out = encoder(behaviours, mask, torch.randn(3, 8))
    assert out.shape == (3, 2, 8) and torch.isfinite(out).all()
    assert out[0, 0].abs().sum() == 0 and out[0, 1].abs().sum() > 0


def test_linear_init_and_embedding_std_leave_the_fusion_layer_alone() -> None:
    torch.manual_seed(0)
    xavier = TWIN(
        SPEC, linear_init="xavier", embedding_std=1e-4, fusion=functools.partial(ConcatFusion, fusion_dim=8, linear_init="torch")
    )
    assert all(float(m.bias.abs().sum()) == 0 for m in xavier.head.modules() if isinstance(m, torch.nn.Linear))
    assert float(xavier.esu.query_projection.bias.abs().sum()) == 0
    # The fusion layer keeps its own initialisation (here PyTorch's: non-zero biases).
    assert float(xavier.fusion.projection.bias.abs().sum()) > 0
    assert float(xavier.item_embedding.weight[1:].std()) == pytest.approx(1e-4, rel=0.2)
    assert float(xavier.item_embedding.weight[0].abs().sum()) == 0


def test_context_features_and_head_sees_long() -> None:
    spec = FeatureSpec(30, 60, 8, long_len=12, num_sessions=3, session_len=4, context_cardinalities=(5, 7))
    host = HOSTS["DIN"](spec, head_sees_long=True)
    assert len(host.context_embeddings) == 2
    # fused (64, ConcatFusion default) + target (16) + user (8) + 2 contexts (16) + h_long (16)
    assert host.head.net[0].in_features == 64 + 16 + 8 + 16 + 16
    batch = make_batch(spec)
    assert torch.isfinite(host(batch).logits).all()
    batch.context = None
    with pytest.raises(ValueError, match="batch.context"):
        host(batch)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: SIM(SPEC, top_k=0), "top_k"),
        (lambda: SIM(SPEC, top_k=-3), "top_k"),
        (lambda: TWIN(SPEC, top_k=0), "top_k"),
        (lambda: SIM(SPEC, search="fuzzy"), "search"),
        (lambda: TWIN(SPEC, cp_scoring="max"), "cp_scoring"),
        (lambda: TWIN(SPEC, attention_dim=64, num_heads=3), "num_heads"),
        (lambda: SIM(SPEC, attention_dim=0), "attention_dim"),
        (lambda: DIN(SPEC, embed_dim=0), "embed_dim"),
        (lambda: DIN(SPEC, head_dims=()), "head_dims"),
        (lambda: DIN(SPEC, attention_hidden_dims=(0,)), "attention_hidden_dims"),
        (lambda: DIN(SPEC, attention_activation="tanh"), "attention_activation"),
        (lambda: AvgPoolDNN(SPEC, session_heads=3), "session_heads"),
        (lambda: TWIN(SPEC, session_pooling="max"), "session_pooling"),
        (lambda: TWIN(SPEC, session_layers=-1), "session_layers"),
        (lambda: TWIN(SPEC, embedding_std=0.0), "embedding_std"),
        (lambda: TWIN(SPEC, linear_init="kaiming"), "linear_init"),
        (lambda: AvgPoolDNN(SPEC, head_dropout=1.0), "head_dropout"),
        (lambda: AvgPoolDNN(SPEC, fusion=42), "fusion"),
        (lambda: AvgPoolDNN(SPEC, fusion=lambda long_dim, session_dim: torch.nn.Linear(2, 2)), "fusion"),
    ],
)
def test_bad_options_raise_naming_the_argument(build, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        build()


class _RecordingConcat(ConcatFusion):
    """A concat that records what the host built it with and fed it."""

    def __init__(self, long_dim: int, session_dim: int) -> None:
        super().__init__(long_dim, session_dim, fusion_dim=8)
        self.built_with, self.fed = (long_dim, session_dim), []

    def forward(self, h_long, h_sessions, session_mask=None, long_mask=None):
        self.fed.append((tuple(h_long.shape), tuple(h_sessions.shape), tuple(session_mask.shape)))
        return super().forward(h_long, h_sessions, session_mask, long_mask)


@pytest.mark.parametrize("host_name", list(HOSTS))
def test_every_host_feeds_its_fusion_slot_the_contract_shapes(host_name: str) -> None:
    """Each host builds its fusion as ``fusion(long_dim, session_dim)`` and calls it once per
    forward with ``h_long (B, long_dim)``, ``h_sessions (B, K, session_dim)`` and a ``(B, K)``
    mask; the head reads the fused output (a host bypassing the slot fails here)."""
    host = HOSTS[host_name](SPEC, fusion=_RecordingConcat).eval()
    assert isinstance(host, CTRHost) and host.fusion.built_with == (host.long_dim, host.session_dim)
    batch = make_batch()
    with torch.no_grad():
        logits = host(batch).logits
    B, K = batch.user.shape[0], SPEC.num_sessions
    assert host.fusion.fed == [((B, host.long_dim), (B, K, host.session_dim), (B, K))]
    assert logits.shape == (B,)
    with torch.no_grad():
        host.fusion.projection.weight.zero_()
        host.fusion.projection.bias.fill_(3.0)
        assert not torch.allclose(host(batch).logits, logits)


@pytest.mark.parametrize("host_name", ["DIN", "SIM-soft", "SIM-hard", "TWIN"])
def test_fusion_long_mean_fuses_the_user_level_mean_and_heads_the_host_interest(host_name: str) -> None:
    """``fusion_long="mean"``: the fusion slot is built for and fed the masked mean of the long
    sequence; the host's own (target-aware) h_long reaches the head."""
    host = HOSTS[host_name](SPEC, fusion=_RecordingConcat, fusion_long="mean", head_sees_long=True).eval()
    assert host.fusion.built_with == (host.item_dim, host.session_dim) and host.fusion_long_dim == host.item_dim
    assert host.head.net[0].in_features == 8 + host.item_dim + host.embed_dim + host.long_dim
    batch = make_batch()
    seen = {}
    forward = host.fusion.forward
    host.fusion.forward = lambda h_long, *a, **k: seen.setdefault("h_long", h_long) is None or forward(h_long, *a, **k)  # type: ignore[method-assign]
    with torch.no_grad():
        logits = host(batch).logits
        features = host.embed_long(batch)
    mask = batch.long_mask.unsqueeze(-1).float()
    expected = (features * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    torch.testing.assert_close(seen["h_long"], expected)
    assert torch.equal(seen["h_long"][0], torch.zeros(host.item_dim))  # row 0 has no history
    assert logits.shape == (batch.user.shape[0],) and torch.isfinite(logits).all()


def test_fusion_long_options_are_checked() -> None:
    with pytest.raises(ValueError, match="fusion_long must be 'host' or 'mean', got 'max'"):
        TWIN(SPEC, fusion_long="max")
    with pytest.raises(ValueError, match="TWIN's own long-term interest .* set head_sees_long=true"):
        TWIN(SPEC, fusion_long="mean")
    # AvgPoolDNN's h_long is the mean: the option changes nothing and needs nothing.
    host = AvgPoolDNN(SPEC, **SMALL, fusion=_RecordingConcat, fusion_long="mean")
    assert host.fusion.built_with == (host.item_dim, host.session_dim)


@pytest.mark.parametrize("output_projection", [False, True])
def test_target_attention_without_bias_matches_its_textbook_form(output_projection: bool) -> None:
    torch.manual_seed(0)
    layer = MultiHeadTargetAttention(8, 6, attention_dim=8, num_heads=2, bias=False, output_projection=output_projection)
    assert layer.query_projection.bias is None and layer.value_projection.bias is None
    assert (layer.output_projection is not None) == output_projection
    query, keys = torch.randn(4, 8), torch.randn(4, 5, 6)
    mask = torch.rand(4, 5) > 0.3
    mask[0] = False
    torch.testing.assert_close(layer(query, keys, mask), layer.naive_forward(query, keys, mask))
    assert layer(query, keys, mask)[0].abs().sum() == 0


def test_sim_and_twin_take_the_peer_attention_form() -> None:
    for build in (HOSTS["SIM-soft"], HOSTS["TWIN"]):
        host = build(SPEC, attention_bias=False, attention_output=True)
        assert host.esu.query_projection.bias is None and host.esu.output_projection is not None
        assert torch.isfinite(host(make_batch()).logits).all()


@pytest.mark.parametrize("name", list(HOSTS))
def test_plain_concat_gives_the_head_both_interests(name: str) -> None:
    """ConcatFusion(fusion_dim=None): the head reads [h_long, pooled sessions] at their full width."""
    host = HOSTS[name](SPEC, fusion=functools.partial(ConcatFusion, fusion_dim=None))
    assert host.fusion.fusion_dim == host.long_dim + host.session_dim
    assert host.head.net[0].in_features == host.long_dim + host.session_dim + host.item_dim + host.embed_dim
    output = host(make_batch())
    assert output.logits.shape == (8,) and torch.isfinite(output.logits).all()
