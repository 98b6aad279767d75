"""FuxiCTR's TWIN, written again in plain torch and trained on our loader's batches.

The question it answers: is the gap between our TWIN and FuxiCTR's on the peer split in our
model, or in the data and training path? This model follows FuxiCTR 2.3.10's LongCTR TWIN at
the peer's settings (embedding 32 for user, item and category; target = [item, cate]; a short
branch of multi-head target attention over the latest 19 behaviours; a long branch scoring all
200 behaviours per head and attending over each head's top 50; query/key/value/output
projections without bias; a [256, 128, 64] ReLU head over [user, target, short, long];
Xavier-normal linear weights, zero biases, N(0, 1e-4) embeddings; Adam lr 1e-3; gradient norm
clipped at 10; batch 1024; one epoch), but reads the batches of
``TableDataModule(long_len=200, long_includes_short=True)``, the loader our hosts train on.
The architecture is read from FuxiCTR's source; the code is ours. Not a host: no fusion slot.

    python ../shared/benchmarks/ml1m_peer_split.py --out /tmp/peer/pop --negatives popularity
    python -m benchmarks.peer_twin_reference --data-root /tmp/peer/pop --seeds 0 1 2

Each seed appends ``{"seed", "val_auc", "test_auc", "train_samples_per_s", ...}`` to
``<out>/reference.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from benchmarks.quality import commit
from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.data import TableDataModule

ROOT = Path(__file__).resolve().parents[1]
EMBED, ATTENTION, HEADS, SHORT, TOP_K = 32, 64, 2, 19, 50


class TargetAttention(nn.Module):
    """Multi-head target attention with bias-free Q/K/V/O projections; optional per-head top-k."""

    def __init__(self, dim: int = 2 * EMBED, attention_dim: int = ATTENTION, heads: int = HEADS) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, attention_dim // heads
        self.q, self.k = nn.Linear(dim, attention_dim, bias=False), nn.Linear(dim, attention_dim, bias=False)
        self.v, self.o = nn.Linear(dim, attention_dim, bias=False), nn.Linear(attention_dim, dim, bias=False)

    def forward(self, target: Tensor, sequence: Tensor, mask: Tensor, top_k: Optional[int] = None) -> Tensor:
        """``target (B, d)``, ``sequence (B, L, d)``, ``mask (B, L)`` -> ``(B, d)``."""
        batch = target.shape[0]
        split = lambda x: x.view(batch, -1, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        query, key, value = split(self.q(target)), split(self.k(sequence)), split(self.v(sequence))
        scores = (query @ key.transpose(-1, -2)) / self.head_dim ** 0.5  # (B, h, 1, L)
        scores = scores.masked_fill(~mask.view(batch, 1, 1, -1), -1e9)
        if top_k is not None:
            scores, index = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
            value = value.gather(2, index.transpose(-1, -2).expand(-1, -1, -1, value.shape[-1]))
        pooled = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, -1)
        return self.o(pooled)


class ReferenceTWIN(nn.Module):
    """FuxiCTR's TWIN over a :class:`CTRBatch`; returns logits of shape ``(B,)``."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.item = nn.Embedding(spec.num_items, EMBED, padding_idx=0)
        self.cate = nn.Embedding(spec.num_cates, EMBED, padding_idx=0)
        self.user = nn.Embedding(spec.num_users, EMBED, padding_idx=0)
        self.short, self.long = TargetAttention(), TargetAttention()
        self.head = nn.Sequential(nn.Linear(EMBED + 3 * 2 * EMBED, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                  nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embedding in (self.item, self.cate, self.user):
            nn.init.normal_(embedding.weight, std=1e-4)
            with torch.no_grad():
                embedding.weight[0].zero_()

    def forward(self, batch: CTRBatch) -> Tensor:
        features = lambda items, cates: torch.cat([self.item(items), self.cate(cates)], dim=-1)  # noqa: E731
        target = features(batch.target_item, batch.target_cate)
        history, mask = features(batch.long_items, batch.long_cates), batch.long_mask
        short = self.short(target, history[:, -SHORT:], mask[:, -SHORT:])
        long = self.long(target, history, mask, top_k=TOP_K)
        return self.head(torch.cat([self.user(batch.user), target, short, long], dim=-1)).squeeze(-1)


def evaluate(model: nn.Module, loader) -> float:
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for batch in loader:
            probs.append(torch.sigmoid(model(batch)))
            labels.append(batch.label.long())
    return float(binary_auroc(torch.cat(probs), torch.cat(labels)))


def run(data_root: str, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    data = TableDataModule(root=data_root, long_len=200, long_includes_short=True, num_sessions=4, session_len=5,
                           batch_size=1024, eval_batch_size=1024)
    model = ReferenceTWIN(data.feature_spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start, samples = time.perf_counter(), 0
    for batch in data.train_dataloader():
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        samples += len(batch)
    seconds = time.perf_counter() - start
    return {"val_auc": evaluate(model, data.val_dataloader()), "test_auc": evaluate(model, data.test_dataloader()),
            "train_samples_per_s": samples / seconds, "train_epoch_s": seconds}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_twin_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="the peer split (ml1m_peer_split.py --negatives popularity)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host-steps"))
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    head = commit()
    for seed in args.seeds:
        row = {"model": "FuxiCTR TWIN re-implemented on our loader", "seed": seed, "commit": head,
               "date": time.strftime("%Y-%m-%d"), **run(args.data_root, seed)}
        with open(Path(args.out) / "reference.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
