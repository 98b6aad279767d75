"""Replace a CTR model's concat fusion by InterestFusion: one line, plain PyTorch.

Synthetic data with a planted structure where fusion matters: each user has a long-term
preference (seen through a noisy long-history summary ``h_long``) and a short-term interest
that drifts from session to session (seen through noisy per-session vectors). A click depends
on the target item's match with both the long-term preference and the *latest* drift.

Run: ``python examples/replace_concat.py`` (under a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from ifusion_plugin.fusion import ConcatFusion, FusionLayer, InterestFusion

LATENT, LONG_DIM, SESSION_DIM, ITEM_DIM, K = 8, 16, 12, 8, 4


def make_data(n: int, generator: torch.Generator, maps: dict[str, Tensor]) -> dict[str, Tensor]:
    """Users with a planted long-term preference ``u`` and a random-walk drift ``d_1..d_{K+1}``."""
    u = torch.randn(n, LATENT, generator=generator)
    drift = [torch.randn(n, LATENT, generator=generator)]
    for _ in range(K):
        drift.append(0.8 * drift[-1] + 0.6 * torch.randn(n, LATENT, generator=generator))
    h_long = u @ maps["long"] + 0.3 * torch.randn(n, LONG_DIM, generator=generator)
    sessions = torch.stack([d @ maps["session"] for d in drift[:K]], dim=1)
    sessions = sessions + 0.3 * torch.randn(n, K, SESSION_DIM, generator=generator)
    mask = torch.rand(n, K, generator=generator) > 0.15
    item = torch.randn(n, ITEM_DIM, generator=generator)
    item_latent = item @ maps["item"]
    # The click depends on the long-term preference and on the next (unobserved) drift step.
    score = 1.2 * (item_latent * u).sum(-1) / LATENT**0.5 + 1.2 * (item_latent * drift[K]).sum(-1) / LATENT**0.5
    label = (torch.rand(n, generator=generator) < torch.sigmoid(score)).float()
    return {"h_long": h_long, "h_sessions": sessions, "session_mask": mask, "item": item, "label": label}


class CTRModel(nn.Module):
    """A small CTR model: fusion of the user interests, then an MLP head with the target item."""

    def __init__(self, fusion: FusionLayer, fusion_dim: int) -> None:
        super().__init__()
        self.fusion = fusion
        self.head = nn.Sequential(nn.Linear(fusion_dim + ITEM_DIM, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = self.fusion(batch["h_long"], batch["h_sessions"], batch["session_mask"])
        logit = self.head(torch.cat([out.fused, batch["item"]], dim=-1)).squeeze(-1)
        return logit, out.total_loss()


def auc(scores: Tensor, labels: Tensor) -> float:
    """Rank-based ROC AUC (Mann-Whitney U), ties given the average rank."""
    order = scores.argsort()
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        ends = counts.cumsum(0).double()
        mean_rank = ends - (counts.double() - 1) / 2
        ranks[order] = mean_rank[inverse]
    pos = labels.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_and_eval(fusion: FusionLayer, fusion_dim: int, train: dict, test: dict, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = CTRModel(fusion, fusion_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = train["label"].shape[0]
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(steps):
        model.train()
        idx = torch.randint(0, n, (256,))
        batch = {k: v[idx] for k, v in train.items()}
        logit, aux = model(batch)
        loss = loss_fn(logit, batch["label"]) + aux
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logit, _ = model(test)
    return auc(logit, test["label"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # One thread: small matrices gain nothing from more, and shared cores punish spinning.
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(args.seed)
    maps = {
        "long": torch.randn(LATENT, LONG_DIM, generator=g) / LATENT**0.5,
        "session": torch.randn(LATENT, SESSION_DIM, generator=g) / LATENT**0.5,
        "item": torch.randn(ITEM_DIM, LATENT, generator=g) / ITEM_DIM**0.5,
    }
    train, test = make_data(20000, g, maps), make_data(5000, g, maps)
    fusion_dim = 32

    start = time.time()
    concat_auc = train_and_eval(ConcatFusion(LONG_DIM, SESSION_DIM, fusion_dim), fusion_dim, train, test, args.steps, args.seed)
    print(f"ConcatFusion   test AUC: {concat_auc:.4f}  ({time.time() - start:.1f}s)")

    start = time.time()
    # The one-line replacement: same arguments, different class. Two options differ from the
    # defaults, for speed: a short schedule (T=100) and smaller hidden widths.
    fusion = InterestFusion(
        LONG_DIM, SESSION_DIM, fusion_dim, num_train_steps=100, denoiser_hidden_dim=64, guidance_hidden_dim=64,
    )
    ifusion_auc = train_and_eval(fusion, fusion_dim, train, test, args.steps, args.seed)
    print(f"InterestFusion test AUC: {ifusion_auc:.4f}  ({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
