"""FuxiCTR's TWIN written again in plain torch, morphed one part at a time towards our TWIN.

The question it answers: where is the gap between our TWIN and FuxiCTR's on the peer split?
``--model reference`` follows FuxiCTR 2.3.10's LongCTR TWIN at the peer's settings (embedding 32
for user, item and category; target = [item, cate]; a short branch of multi-head target
attention over the latest 19 behaviours; a long branch scoring all 200 behaviours per head and
attending over each head's top 50; query/key/value/output projections without bias; a
[256, 128, 64] ReLU head over [user, target, short, long]; Xavier-normal linear weights, zero
biases, N(0, 1e-4) embeddings), ``--changes`` swaps parts of it for ours one at a time, and
``--model ours`` trains our own host with concat in the very same loop, at host step s16's
settings (sessions target-pooled with positions, no transformer layer, N(0, 1e-4) embeddings,
Xavier linear layers); ``--ours mean_sessions no_positions`` gives today's
``recipes/common/peer-host.yaml``. Both read the batches of
``TableDataModule(long_len=200, long_includes_short=True, num_sessions=4, session_len=5)`` and
train as the peer does: Adam lr 1e-3, gradient norm clipped at 10, batch 1024 (``--batch-size``),
one epoch. The architecture is read from FuxiCTR's source; the code is ours. The reference is
not a host: it has no fusion slot.

    python ../shared/benchmarks/ml1m_peer_split.py --out /tmp/peer/pop --negatives popularity
    python -m benchmarks.peer_twin_reference --data-root /tmp/peer/pop --seeds 0 1 2
    python -m benchmarks.peer_twin_reference --data-root /tmp/peer/pop --changes head_projection --seeds 0 1 2
    python -m benchmarks.peer_twin_reference --data-root /tmp/peer/pop --model ours --ours fusion_torch_init --seeds 0 1 2

Each run appends ``{"model", "changes", "seed", "val_auc", "test_auc", "train_samples_per_s",
"threads", "commit", "date"}`` to ``<out>/reference.jsonl``; ``--report`` rewrites
``<out>/reference.md`` from it (mean +- sample std over seeds). Runs use one intra-op thread by
default (the float sums depend on the thread count). One-epoch AUCs
are chaotic in the seed (the reference's std over seeds is 0.017): compare means over seeds,
never single runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from benchmarks.host_steps import spread
from benchmarks.quality import commit
from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.data import TableDataModule
from ifusion_plugin.fusion import ConcatFusion
from ifusion_plugin.fusion.contract import masked_mean
from ifusion_plugin.hosts import DIN, SIM, TWIN, AvgPoolDNN

ROOT = Path(__file__).resolve().parents[1]
EMBED, ATTENTION, HEADS, SHORT, TOP_K = 32, 64, 2, 19, 50

#: One part of the reference replaced by ours (each measured alone, then all together).
CHANGES = {
    "shared_topk": "one top-k for both heads, ranked by the mean of their scores (our CP-GSU)",
    "esu_form": "query/value projections with biases and no output projection (our ESU's defaults)",
    "short_sessions": "the short branch: target-pooled 4 x 5 sessions with positions, averaged (our sessions)",
    "head_projection": "the head reads Linear_64([long, short]) instead of both side by side (our concat layer)",
    "mean_pooling": "no attention: both branches are masked means of their behaviours (an AvgPoolDNN of the reference's form)",
}
#: Options of ``--model ours``.
OURS = {
    "fusion_torch_init": "the concat projection with PyTorch's default initialisation (before s16)",
    "fusion_identity": "no concat projection: the head reads [h_long, pooled sessions] side by side",
    "no_positions": "no positional embedding on the session behaviours",
    "mean_sessions": "sessions mean-pooled (session_pooling=mean) instead of target-pooled",
}
HOSTS = {"twin": TWIN, "sim": SIM, "avgpool": AvgPoolDNN, "din": DIN}


class TargetAttention(nn.Module):
    """Multi-head target attention with bias-free Q/K/V/O projections; optional top-k per head.

    ``esu_form`` gives query/value biases and drops ``W_o`` (our ESU's defaults).
    """

    def __init__(self, dim: int = 2 * EMBED, attention_dim: int = ATTENTION, heads: int = HEADS, esu_form: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, attention_dim // heads
        self.q = nn.Linear(dim, attention_dim, bias=esu_form)
        self.k = nn.Linear(dim, attention_dim, bias=False)
        self.v = nn.Linear(dim, attention_dim, bias=esu_form)
        self.o: Optional[nn.Linear] = None if esu_form else nn.Linear(attention_dim, dim, bias=False)
        self.out_dim = attention_dim if esu_form else dim

    def forward(self, target: Tensor, sequence: Tensor, mask: Tensor, top_k: Optional[int] = None, shared: bool = False) -> Tensor:
        """``target (B, d)``, ``sequence (B, L, d)``, ``mask (B, L)`` -> ``(B, out_dim)``."""
        batch = target.shape[0]
        split = lambda x: x.view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        query, key, value = split(self.q(target)), split(self.k(sequence)), split(self.v(sequence))
        scores = (query @ key.transpose(-1, -2)) / self.head_dim ** 0.5  # (B, h, 1, L)
        scores = scores.masked_fill(~mask.view(batch, 1, 1, -1), -1e9)
        if top_k is not None:
            k = min(top_k, scores.shape[-1])
            if shared:  # one ranking for every head, as our CP-GSU
                _, index = scores.mean(1, keepdim=True).topk(k, dim=-1)
                index = index.expand(-1, self.heads, -1, -1)
                scores = scores.gather(-1, index)
            else:
                scores, index = scores.topk(k, dim=-1)
            value = value.gather(2, index.transpose(-1, -2).expand(-1, -1, -1, value.shape[-1]))
        pooled = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, -1)
        return pooled if self.o is None else self.o(pooled)


class ReferenceTWIN(nn.Module):
    """FuxiCTR's TWIN over a :class:`CTRBatch` with ``changes`` (keys of :data:`CHANGES`); logits ``(B,)``."""

    def __init__(self, spec: FeatureSpec, changes: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.changes = changes
        dim = 2 * EMBED
        esu_form = "esu_form" in changes
        self.item = nn.Embedding(spec.num_items, EMBED, padding_idx=0)
        self.cate = nn.Embedding(spec.num_cates, EMBED, padding_idx=0)
        self.user = nn.Embedding(spec.num_users, EMBED, padding_idx=0)
        self.long = TargetAttention(esu_form=esu_form)
        if "mean_pooling" in changes:
            if changes - {"mean_pooling"}:
                raise ValueError(f"--changes mean_pooling replaces both branches; it combines with nothing, got {sorted(changes)}")
            self.long.out_dim = dim
            short_dim = dim
        elif "short_sessions" in changes:
            self.session_query = nn.Linear(dim, dim)
            self.positions = nn.Parameter(torch.zeros(spec.session_len, dim))
            short_dim = dim
        else:
            self.short = TargetAttention(esu_form=esu_form)
            short_dim = self.short.out_dim
        if "head_projection" in changes:
            self.projection = nn.Linear(self.long.out_dim + short_dim, 64)
            head_in = EMBED + dim + 64
        else:
            head_in = EMBED + dim + short_dim + self.long.out_dim
        self.head = nn.Sequential(nn.Linear(head_in, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
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

    def _sessions(self, batch: CTRBatch, target: Tensor, features) -> Tensor:
        behaviours = features(batch.session_items, batch.session_cates) + self.positions  # (B, K, N, d)
        query = self.session_query(target)[:, None, None, :]
        scores = (behaviours * query).sum(-1) / math.sqrt(behaviours.shape[-1])
        mask = batch.session_item_mask
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), -1) * mask
        sessions = (weights.unsqueeze(-1) * behaviours).sum(2)  # (B, K, d)
        present = batch.session_mask.to(sessions.dtype).unsqueeze(-1)
        return (sessions * present).sum(1) / present.sum(1).clamp_min(1)

    def forward(self, batch: CTRBatch) -> Tensor:
        features = lambda items, cates: torch.cat([self.item(items), self.cate(cates)], dim=-1)
        target = features(batch.target_item, batch.target_cate)
        history, mask = features(batch.long_items, batch.long_cates), batch.long_mask
        if "mean_pooling" in self.changes:
            return self.head(torch.cat([self.user(batch.user), target, masked_mean(history[:, -SHORT:], mask[:, -SHORT:]),
                                        masked_mean(history, mask)], dim=-1)).squeeze(-1)
        if "short_sessions" in self.changes:
            short = self._sessions(batch, target, features)
        else:
            short = self.short(target, history[:, -SHORT:], mask[:, -SHORT:])
        long = self.long(target, history, mask, top_k=TOP_K, shared="shared_topk" in self.changes)
        if "head_projection" in self.changes:
            parts = [self.user(batch.user), target, self.projection(torch.cat([long, short], -1))]
        else:
            parts = [self.user(batch.user), target, short, long]
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)


class _IdentityConcat(ConcatFusion):
    """Concat without the projection: ``fused = [h_long, mean of sessions]``."""

    def __init__(self, long_dim: int, session_dim: int) -> None:
        # linear_init="torch" draws the (unused) projection as the measured runs did, so a seed
        # gives the same model.
        super().__init__(long_dim, session_dim, long_dim + session_dim, linear_init="torch")
        self.projection = nn.Identity()


class OurHost(nn.Module):
    """One of our hosts with concat at host step s16's settings plus ``options`` (keys of
    :data:`OURS`), returning logits ``(B,)``."""

    def __init__(self, spec: FeatureSpec, host: str, options: frozenset[str] = frozenset()) -> None:
        super().__init__()
        settings: dict = {"session_pooling": "target", "session_layers": 0, "embedding_std": 1e-4, "linear_init": "xavier"}
        if "no_positions" in options:
            settings["session_positions"] = False
        if "mean_sessions" in options:
            settings["session_pooling"] = "mean"
        fusion = ConcatFusion
        if "fusion_identity" in options:
            fusion = _IdentityConcat
        elif "fusion_torch_init" in options:
            fusion = lambda long_dim, session_dim: ConcatFusion(long_dim, session_dim, linear_init="torch")
        self.host = HOSTS[host](spec, fusion=fusion, **settings)

    def forward(self, batch: CTRBatch) -> Tensor:
        return self.host(batch).logits


def evaluate(model: nn.Module, loader) -> float:
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for batch in loader:
            probs.append(torch.sigmoid(model(batch)))
            labels.append(batch.label.long())
    return float(binary_auroc(torch.cat(probs), torch.cat(labels)))


def run(data_root: str, seed: int, model_name: str, changes: frozenset[str], host: str, batch_size: int = 1024) -> dict[str, float]:
    torch.manual_seed(seed)
    data = TableDataModule(root=data_root, long_len=200, long_includes_short=True, num_sessions=4, session_len=5,
                           batch_size=batch_size, eval_batch_size=1024)
    model: nn.Module = (
        ReferenceTWIN(data.feature_spec, changes) if model_name == "reference" else OurHost(data.feature_spec, host, changes)
    )
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


def report(rows: list[dict]) -> str:
    """The markdown table of ``reference.jsonl``: one line per (model, changes, batch, threads),
    runs of the same line averaged (mean +- sample std over seeds) whichever commit ran them
    (the commits are listed; seeds added later by a commit that left the numerics alone pool)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["model"], tuple(row.get("changes", [])), row.get("batch_size", 1024), row.get("threads", "default"))
        groups.setdefault(key, []).append(row)
    lines = ["| model | changes | batch | threads | commit(s) | seeds | val AUC | test AUC | train samples/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (model, changes, batch_size, threads), runs in groups.items():
        described = "; ".join({**CHANGES, **OURS}[c] for c in changes) or "none"
        heads = ", ".join(dict.fromkeys(r["commit"] for r in runs))
        lines.append(
            f"| {model} | {described} | {batch_size} | {threads} | {heads} | {', '.join(str(r['seed']) for r in runs)} | "
            f"{spread([r['val_auc'] for r in runs])} | {spread([r['test_auc'] for r in runs])} | "
            f"{statistics.mean(r['train_samples_per_s'] for r in runs):,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_twin_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="the peer split (ml1m_peer_split.py --negatives popularity); needed unless --report")
    parser.add_argument("--model", choices=["reference", "ours"], default="reference")
    parser.add_argument("--changes", nargs="*", default=[], choices=sorted(CHANGES), help="parts of the reference replaced by ours")
    parser.add_argument("--ours", nargs="*", default=[], choices=sorted(OURS), help="options of --model ours")
    parser.add_argument("--host", choices=sorted(HOSTS), default="twin", help="the host of --model ours")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--batch-size", type=int, default=1024, help="training batch (the peer's: 1024, one epoch = 202 steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (results depend on it)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host-steps"))
    parser.add_argument("--report", action="store_true", help="only rebuild <out>/reference.md from <out>/reference.jsonl")
    args = parser.parse_args(argv)
    results = Path(args.out) / "reference.jsonl"
    if args.report:
        if not results.is_file():
            parser.error(f"--report: {results} does not exist; run without --report first")
        table = report([json.loads(line) for line in results.read_text().splitlines() if line.strip()])
        (Path(args.out) / "reference.md").write_text(table)
        print(table, end="")
        return
    if args.model == "reference" and args.ours:
        parser.error("--ours applies to --model ours; the reference takes --changes")
    if not args.data_root:
        parser.error("--data-root is required (the directory ml1m_peer_split.py --negatives popularity wrote)")
    if args.batch_size <= 0:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    if args.model == "ours" and args.changes:
        parser.error("--changes applies to --model reference; our host takes --ours")
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    head = commit()
    changes = frozenset(args.changes if args.model == "reference" else args.ours)
    for seed in args.seeds:
        name = "FuxiCTR TWIN re-implemented on our loader" if args.model == "reference" else f"our {args.host} + concat"
        row = {"model": name, "changes": sorted(changes), "seed": seed, "threads": args.threads, "batch_size": args.batch_size,
               "commit": head, "date": time.strftime("%Y-%m-%d"),
               **run(args.data_root, seed, args.model, changes, args.host, args.batch_size)}
        with open(results, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
