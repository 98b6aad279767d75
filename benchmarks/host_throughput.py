"""Training throughput of each host with ConcatFusion: forward + backward + Adam step.

Synthetic batch in the peer benchmark's shape (PEERS.md: embedding 32, attention_dim 64,
2 heads, top-k 50, L = 200, DNN [256, 128, 64], user id embedded, batch 1024), plus K = 4
sessions of N = 5 behaviours. Vocabulary sizes are MovieLens-1M's. Prints a Markdown table of
train samples/s (median and fastest of the timed steps).

    python benchmarks/host_throughput.py --threads 2 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.hosts import DIN, SIM, TWIN, AvgPoolDNN


def make_batch(spec: FeatureSpec, batch_size: int, generator: torch.Generator) -> CTRBatch:
    def ids(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(2, high, shape, generator=generator)

    long_items = ids(spec.num_items, batch_size, spec.long_len)
    # Front padding of random length, as in real data (some rows short, a few empty).
    lengths = torch.randint(0, spec.long_len + 1, (batch_size, 1), generator=generator)
    pad = torch.arange(spec.long_len).unsqueeze(0) < (spec.long_len - lengths)
    long_items = long_items.masked_fill(pad, 0)
    long_cates = ids(spec.num_cates, batch_size, spec.long_len).masked_fill(pad, 0)
    shape = (batch_size, spec.num_sessions, spec.session_len)
    return CTRBatch(
        user=ids(spec.num_users, batch_size),
        target_item=ids(spec.num_items, batch_size),
        target_cate=ids(spec.num_cates, batch_size),
        long_items=long_items,
        long_cates=long_cates,
        session_items=ids(spec.num_items, *shape),
        session_cates=ids(spec.num_cates, *shape),
        label=torch.randint(0, 2, (batch_size,), generator=generator).float(),
    )


def measure(host: torch.nn.Module, batch: CTRBatch, steps: int, warmup: int) -> tuple[float, float]:
    """Samples/s of the median and of the fastest timed step."""
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-3)
    host.train()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        output = host(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, batch.label)
        for aux in output.losses.values():
            loss = loss + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times), len(batch) / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--hosts", nargs="*", default=["AvgPoolDNN", "DIN", "SIM", "TWIN"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = FeatureSpec(num_users=6042, num_items=3708, num_cates=20, long_len=200, num_sessions=4, session_len=5)
    batch = make_batch(spec, args.batch_size, torch.Generator().manual_seed(0))
    builders = {
        "AvgPoolDNN": lambda: AvgPoolDNN(spec),
        "DIN": lambda: DIN(spec),
        "SIM": lambda: SIM(spec, search="soft", top_k=50),
        "TWIN": lambda: TWIN(spec, top_k=50),
    }
    peers = {"DIN": 965, "SIM": 2835, "TWIN": 1924}
    print(f"threads={args.threads} batch={args.batch_size} L={spec.long_len} K={spec.num_sessions} N={spec.session_len}")
    # The fastest step is the least disturbed by other processes on a shared machine; the
    # median shows what a run sees on average.
    print("| host | train samples/s (median) | (fastest step) | FuxiCTR train samples/s (PEERS.md) | median / FuxiCTR |")
    print("|---|---|---|---|---|")
    for name in args.hosts:
        median, best = measure(builders[name](), batch, args.steps, args.warmup)
        peer = peers.get(name)
        ratio = "-" if peer is None else f"{median / peer:.1f}x"
        print(f"| {name} | {median:,.0f} | {best:,.0f} | {'-' if peer is None else f'{peer:,}'} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
