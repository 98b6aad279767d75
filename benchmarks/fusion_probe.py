"""Where iFusion's quality goes: probe fusion layers of growing depth on one host, in one process.

Each probe replaces the fusion layer of the same host (embeddings, long-term encoder, session
encoder and head unchanged) and is trained for one epoch with a plain Adam loop (the task's:
BCE plus the layer's weighted auxiliary losses, lr 1e-3, eps 1e-7), then scored on the
validation split. The probes separate what the diffusion adds (noise, auxiliary losses) from
what the depth of the session path costs:

- ``concat``: ``Linear([h_long, mean(sessions)])`` (``ConcatFusion``);
- ``mlp``: ``MLP([h_long, mean(sessions)])``;
- ``proj_mlp``: ``P_L h_long + MLP([P_L h_long, P_S mean(sessions)])``, the projections and
  residual of iFusion's start, no per-session layer;
- ``session_mlp``: as ``proj_mlp`` with a per-session MLP before the mean (as iFusion's
  guidance encoders have);
- ``ifusion_paper_t0``: ``InterestFusion(concat_skip=False)`` with its CTR output trained and
  served at ``t = 0`` (``t_start=1, task_noise="serving"``) and no auxiliary losses: the
  architecture without the diffusion;
- ``ifusion_paper``: ``InterestFusion(concat_skip=False)``, the paper's literal output;
- ``ifusion``: ``InterestFusion()`` as shipped (concat skip with a zero-initialised gate).

    python -m benchmarks.fusion_probe --data-root ../shared/data/movielens-1m --seeds 0 1
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from ifusion_plugin.data import CTRDataModule, MovieLens1MDataModule
from ifusion_plugin.fusion import ConcatFusion, InterestFusion
from ifusion_plugin.fusion.contract import FusionFactory, FusionLayer, FusionOutput, masked_mean
from ifusion_plugin.hosts import DIN, SIM, TWIN, AvgPoolDNN


def _present(h_sessions: Tensor, session_mask: Optional[Tensor]) -> Tensor:
    return torch.ones(h_sessions.shape[:2], dtype=torch.bool) if session_mask is None else session_mask


def _mlp(in_dim: int, out_dim: int, hidden_dim: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class MLPFusion(FusionLayer):
    """``MLP([h_long, mean of present sessions])``."""

    def __init__(self, long_dim: int, session_dim: int, fusion_dim: int = 64) -> None:
        super().__init__(long_dim, session_dim, fusion_dim)
        self.net = _mlp(long_dim + session_dim, fusion_dim)

    def forward(self, h_long: Tensor, h_sessions: Tensor, session_mask: Optional[Tensor] = None,
                long_mask: Optional[Tensor] = None) -> FusionOutput:
        pooled = masked_mean(h_sessions, _present(h_sessions, session_mask))
        return FusionOutput(fused=self.net(torch.cat([h_long, pooled], dim=-1)))


class ProjectedMLPFusion(FusionLayer):
    """``P_L h_long + MLP([P_L h_long, mean(E(P_S s_k))])``; ``E`` an MLP or the identity."""

    def __init__(self, long_dim: int, session_dim: int, fusion_dim: int = 64, *, session_mlp: bool = False) -> None:
        super().__init__(long_dim, session_dim, fusion_dim)
        self.long_projection = nn.Linear(long_dim, fusion_dim)
        self.session_projection = nn.Linear(session_dim, fusion_dim)
        self.session_encoder = _mlp(fusion_dim, fusion_dim) if session_mlp else nn.Identity()
        self.block = _mlp(2 * fusion_dim, fusion_dim)

    def forward(self, h_long: Tensor, h_sessions: Tensor, session_mask: Optional[Tensor] = None,
                long_mask: Optional[Tensor] = None) -> FusionOutput:
        x0 = self.long_projection(h_long)
        encoded = self.session_encoder(self.session_projection(h_sessions))
        pooled = masked_mean(encoded, _present(h_sessions, session_mask))
        return FusionOutput(fused=x0 + self.block(torch.cat([x0, pooled], dim=-1)))


PROBES: dict[str, FusionFactory] = {
    "concat": ConcatFusion,
    "mlp": MLPFusion,
    "proj_mlp": ProjectedMLPFusion,
    "session_mlp": functools.partial(ProjectedMLPFusion, session_mlp=True),
    "ifusion_paper_t0": functools.partial(InterestFusion, concat_skip=False, t_start=1, task_noise="serving",
                                          evolution_weight=0.0, consistency_weight=0.0, disentangle_weight=0.0),
    "ifusion_paper": functools.partial(InterestFusion, concat_skip=False),
    "ifusion": InterestFusion,
}
HOSTS: dict[str, Callable[..., nn.Module]] = {"avgpool": AvgPoolDNN, "din": DIN, "sim": SIM, "twin": TWIN}


def train_and_score(datamodule: CTRDataModule, host: str, probe: str, seed: int) -> dict[str, float]:
    """One epoch of ``host`` with the ``probe`` fusion; validation AUC and the last-quarter train BCE."""
    torch.manual_seed(seed)
    model = HOSTS[host](datamodule.feature_spec, fusion=PROBES[probe])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    model.train()
    losses = []
    start = time.perf_counter()
    for batch in datamodule.train_dataloader():
        output = model(batch)
        bce = nn.functional.binary_cross_entropy_with_logits(output.logits, batch.label.float())
        loss = bce + sum(output.losses.values(), torch.zeros(()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(bce.item())
    seconds = time.perf_counter() - start
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            probs.append(torch.sigmoid(model(batch).logits))
            labels.append(batch.label)
    tail = losses[3 * len(losses) // 4:]
    return {"val_auc": binary_auroc(torch.cat(probs), torch.cat(labels).long()).item(),
            "train_bce_last_quarter": statistics.fmean(tail), "train_s": seconds}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fusion_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/movielens-1m")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--host", choices=sorted(HOSTS), default="twin")
    parser.add_argument("--probes", nargs="+", choices=list(PROBES), default=list(PROBES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    datamodule = MovieLens1MDataModule(root=args.data_root, cache_dir=args.cache_dir, batch_size=256, eval_batch_size=2048)
    datamodule.setup("fit")
    results: dict[str, list[dict[str, float]]] = {}
    for probe in args.probes:
        for seed in args.seeds:
            row = train_and_score(datamodule, args.host, probe, seed)
            results.setdefault(probe, []).append(row)
            print(f"{probe} seed {seed}: val AUC {row['val_auc']:.4f}, train BCE (last quarter) "
                  f"{row['train_bce_last_quarter']:.4f}, {row['train_s']:.0f} s", flush=True)
    print("\n| probe | seeds | val AUC per seed | mean | train BCE, last quarter (mean) |\n|---|---|---|---|---|")
    for probe, rows in results.items():
        aucs = [r["val_auc"] for r in rows]
        print(f"| {probe} | {len(rows)} | {' / '.join(f'{a:.4f}' for a in aucs)} | {statistics.fmean(aucs):.4f} | "
              f"{statistics.fmean(r['train_bce_last_quarter'] for r in rows):.4f} |")


if __name__ == "__main__":
    main()
