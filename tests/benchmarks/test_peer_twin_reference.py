"""The FuxiCTR TWIN reference and its one-part-at-a-time changes: every variant runs on a batch
of our layout, the options refuse to mix, and the table averages runs of the same variant."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from benchmarks import peer_twin_reference as reference
from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.data import SyntheticDataModule

SPEC = FeatureSpec(num_users=26, num_items=42, num_cates=10, long_len=30, num_sessions=4, session_len=5)


@functools.lru_cache(maxsize=1)
def _data() -> SyntheticDataModule:
    # Built on first use, not at collection: other tests' collection stays fast.
    return SyntheticDataModule(num_users=24, num_items=40, num_cates=8, history_len=36, train_per_user=2, long_len=30,
                               num_sessions=4, session_len=5, long_includes_short=True, batch_size=8)


def make_batch(spec: FeatureSpec, batch_size: int) -> CTRBatch:
    """A training batch of the synthetic source, in our loader's layout."""
    data = _data()
    assert data.feature_spec == spec and batch_size == 8
    return next(iter(data.train_dataloader()))


@pytest.mark.parametrize(
    "changes",
    [(), ("shared_topk",), ("esu_form",), ("short_sessions",), ("head_projection",), ("mean_pooling",),
     ("esu_form", "head_projection", "shared_topk", "short_sessions")],
)
def test_reference_variants_give_finite_logits_and_learn(changes) -> None:
    torch.manual_seed(0)
    model = reference.ReferenceTWIN(SPEC, frozenset(changes))
    batch = make_batch(SPEC, batch_size=8)
    logits = model(batch)
    assert logits.shape == (8,) and torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.label)
    loss.backward()
    # The item embedding learns through every variant.
    assert float(model.item.weight.grad.abs().sum()) > 0


def test_shared_topk_keeps_one_set_for_both_heads() -> None:
    torch.manual_seed(0)
    attention = reference.TargetAttention(dim=8, attention_dim=8, heads=2)
    target, sequence = torch.randn(3, 8), torch.randn(3, 12, 8)
    mask = torch.ones(3, 12, dtype=torch.bool)
    # With top_k >= L, per-head and shared selections keep every position: the same output.
    assert torch.allclose(attention(target, sequence, mask, top_k=12), attention(target, sequence, mask, top_k=12, shared=True),
                          atol=1e-6)
    assert not torch.allclose(attention(target, sequence, mask, top_k=3), attention(target, sequence, mask, top_k=12))


def test_mean_pooling_combines_with_nothing() -> None:
    with pytest.raises(ValueError, match="mean_pooling replaces both branches"):
        reference.ReferenceTWIN(SPEC, frozenset({"mean_pooling", "esu_form"}))


def test_our_host_options() -> None:
    torch.manual_seed(0)
    batch = make_batch(SPEC, batch_size=8)
    for options in ((), ("fusion_torch_init",), ("fusion_identity", "no_positions")):
        model = reference.OurHost(SPEC, "twin", frozenset(options))
        assert model(batch).shape == (8,)
    identity = reference.OurHost(SPEC, "avgpool", frozenset({"fusion_identity"}))
    assert identity.host.fusion.fusion_dim == 2 * identity.host.item_dim  # [h_long, sessions] side by side
    assert identity.host.session_encoder.position is not None
    assert reference.OurHost(SPEC, "twin", frozenset({"no_positions"})).host.session_encoder.position is None


def test_cli_refuses_mixed_options(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        reference.main(["--data-root", str(tmp_path), "--ours", "fusion_identity"])
    assert "--ours applies to --model ours" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reference.main(["--data-root", str(tmp_path), "--model", "ours", "--changes", "esu_form"])
    assert "--changes applies to --model reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reference.main(["--data-root", str(tmp_path), "--report", "--out", str(tmp_path)])
    assert "reference.jsonl does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reference.main(["--seeds", "0"])
    assert "--data-root is required" in capsys.readouterr().err


def test_report_averages_runs_of_one_variant(tmp_path) -> None:
    rows = [{"model": "our twin + concat", "changes": ["fusion_identity"], "seed": seed, "threads": 1, "batch_size": 256,
             "commit": "abc", "val_auc": val, "test_auc": val - 0.01, "train_samples_per_s": 100.0}
            for seed, val in ((0, 0.70), (1, 0.72))]
    rows[1]["commit"] = "def"  # a seed added by a later commit pools with the others
    rows.append({"model": "FuxiCTR TWIN re-implemented on our loader", "seed": 0, "commit": "old", "val_auc": 0.75,
                 "test_auc": 0.74, "train_samples_per_s": 50.0})
    (tmp_path / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference.main(["--report", "--out", str(tmp_path)])
    text = (tmp_path / "reference.md").read_text()
    assert "| 256 | 1 | abc, def | 0, 1 | 0.7100 +- 0.0141 | 0.7000 +- 0.0141 | 100 |" in text
    # A row of an older script (no changes, threads or batch recorded) is its own line.
    assert "| none | 1024 | default | old | 0 | 0.7500 | 0.7400 | 50 |" in text
