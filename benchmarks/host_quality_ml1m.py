"""One-epoch quality check of the hosts on the peer MovieLens-1M split (PEERS.md).

Same protocol as the peer figures: embedding 32, attention_dim 64, 2 heads, top-k 50,
max length 200, head [256, 128, 64], user id embedded, Adam lr 1e-3, batch 1024, one epoch,
seed 2026, 2 threads. Our hosts also read the last 20 behaviours as K = 4 sessions of N = 5
(the peer's "short sequence 20"), fused with ConcatFusion by default.

    python ../shared/benchmarks/ml1m_peer_split.py --out /tmp/ml1m
    python benchmarks/host_quality_ml1m.py --data /tmp/ml1m --hosts DIN SIM TWIN
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.metrics import log_loss, roc_auc_score

from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.hosts import DIN, SIM, TWIN, AvgPoolDNN

L, K, N = 200, 4, 5


def load(path: str) -> dict[str, torch.Tensor]:
    """Parquet columns to tensors in our id convention (0 padding, 1 OOV, known ids from 2)."""
    table = pq.read_table(path).to_pydict()
    rows = len(table["label"])
    long_items = np.zeros((rows, L), dtype=np.int64)
    long_cates = np.zeros((rows, L), dtype=np.int64)
    for r, (items, cates) in enumerate(zip(table["item_history"], table["cate_history"])):
        items, cates = items[-L:], cates[-L:]
        if items:
            long_items[r, L - len(items):] = np.asarray(items) + 1
            long_cates[r, L - len(cates):] = np.asarray(cates) + 1
    # The last K * N behaviours, as K fixed-size sessions (oldest first, front padded).
    sessions_i = long_items[:, -K * N:].reshape(rows, K, N)
    sessions_c = long_cates[:, -K * N:].reshape(rows, K, N)
    return {
        "user": torch.as_tensor(np.asarray(table["user_id"]) + 1),
        "target_item": torch.as_tensor(np.asarray(table["item_id"]) + 1),
        "target_cate": torch.as_tensor(np.asarray(table["cate_id"]) + 1),
        "long_items": torch.as_tensor(long_items),
        "long_cates": torch.as_tensor(long_cates),
        "session_items": torch.as_tensor(sessions_i),
        "session_cates": torch.as_tensor(sessions_c),
        "label": torch.as_tensor(np.asarray(table["label"], dtype=np.float32)),
    }


def batches(data: dict[str, torch.Tensor], size: int, order: torch.Tensor):
    for start in range(0, len(order), size):
        index = order[start : start + size]
        yield CTRBatch(**{k: v[index] for k, v in data.items()})


@torch.no_grad()
def evaluate(host: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
    host.eval()
    order = torch.arange(len(data["label"]))
    probs = torch.cat([torch.sigmoid(host(b).logits) for b in batches(data, 4096, order)]).numpy()
    labels = data["label"].numpy()
    users = data["user"].numpy()
    # gAUC: per-user AUC weighted by the user's sample count, users with both labels only.
    total, weight = 0.0, 0
    for u in np.unique(users):
        sel = users == u
        if 0 < labels[sel].sum() < sel.sum():
            total += roc_auc_score(labels[sel], probs[sel]) * sel.sum()
            weight += sel.sum()
    return {"auc": roc_auc_score(labels, probs), "gauc": total / weight, "logloss": log_loss(labels, probs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/ml1m")
    parser.add_argument("--hosts", nargs="*", default=["DIN", "SIM", "TWIN"])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, valid, test = (load(f"{args.data}/{s}.parquet") for s in ("train", "valid", "test"))
    spec = FeatureSpec(num_users=6042, num_items=3954, num_cates=20, long_len=L, num_sessions=K, session_len=N)
    builders = {"AvgPoolDNN": AvgPoolDNN, "DIN": DIN, "SIM": SIM, "TWIN": TWIN}
    print("| host | valid AUC | test AUC | test gAUC | test logloss | train samples/s | epoch s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.hosts:
        torch.manual_seed(args.seed)
        host = builders[name](spec)
        optimizer = torch.optim.Adam(host.parameters(), lr=1e-3)
        order = torch.randperm(len(train["label"]), generator=torch.Generator().manual_seed(args.seed))
        host.train()
        start = time.perf_counter()
        for batch in batches(train, 1024, order):
            output = host(batch)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, batch.label)
            loss = loss + sum(output.losses.values(), torch.zeros(()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
        v, t = evaluate(host, valid), evaluate(host, test)
        print(
            f"| {name} | {v['auc']:.4f} | {t['auc']:.4f} | {t['gauc']:.4f} | {t['logloss']:.4f} | "
            f"{len(order) / seconds:,.0f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
