"""Memory of the memory-mapped Arrow cache: one pass over a training split.

Reports the process's anonymous resident memory (what the data really costs in RAM) and its
file-backed resident memory (pages of the memory-mapped cache, reclaimable page cache) after
loading the cache and after one full pass of the training loader, and the split's size on disk
per million samples. Linux only (reads /proc/self/status).

    python benchmarks/data_memory.py --data-root ../shared/data/movielens-1m
"""

from __future__ import annotations

import argparse
import os
import time

from ifusion_plugin.data import MovieLens1MDataModule


def resident_gib() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of this process in GiB."""
    status = open("/proc/self/status").read()

    def field(name: str) -> float:
        return int(status.split(name + ":")[1].split()[0]) / 2**20

    return field("RssAnon"), field("RssFile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/movielens-1m")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    data = MovieLens1MDataModule(root=args.data_root, cache_dir=args.cache_dir, batch_size=args.batch_size)
    data.prepare_data()
    before = resident_gib()
    data.setup("fit")
    loaded = resident_gib()
    start, samples = time.perf_counter(), 0
    for batch in data.train_dataloader():
        samples += len(batch)
    seconds = time.perf_counter() - start
    after = resident_gib()
    split_dir = os.path.join(data.cache_path, "train")
    disk = sum(os.path.getsize(os.path.join(split_dir, f)) for f in os.listdir(split_dir))
    per_million = disk / samples * 1e6 / 2**30
    print(f"train samples: {samples:,}; one loader pass: {seconds:.1f} s")
    print("| moment | anonymous RSS GiB | file-backed RSS GiB |\n|---|---|---|")
    for label, (anon, file) in (("before setup", before), ("cache opened", loaded), ("after one pass", after)):
        print(f"| {label} | {anon:.3f} | {file:.3f} |")
    print(f"train split on disk: {disk / 2**20:.0f} MiB = {per_million:.2f} GiB per million samples "
          f"(long_len={data.feature_spec.long_len}, K={data.feature_spec.num_sessions}, N={data.feature_spec.session_len})")


if __name__ == "__main__":
    main()
