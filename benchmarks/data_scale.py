"""Data at scale: how fast a prepared sample table of N rows becomes the training cache, what it
costs on disk and in memory, and whether the loader keeps up with TWIN's training step.

Generates N rows in the table format (docs/table.md; Parquet shards per split, integer ids,
histories of lognormal length with median ``--median-history``), then in a fresh process
builds the ``TableDataModule`` cache (vocabularies + encoding) and reads one training epoch
prefix. Reports against the targets of the data issue (issue 12 item 3):

- rows/s to prepare in one process (target >= 200,000),
- bytes per row of the cache on disk (target <= 800),
- peak RSS of the preparing process (target <= 4 GiB),
- loader samples/s against TWIN + concat's training samples/s on the same batch (target >= 3x).

With ``--cold`` it also reads the shuffled batches right after dropping the page cache (Linux,
root), once in a single-row shuffle and once in a block shuffle (``--shuffle-block-rows``): what
an epoch costs when the cache is larger than memory and every read goes to the disk.

    python -m benchmarks.data_scale --rows 2000000 --out /tmp/data_scale      # the issue's size
    python -m benchmarks.data_scale --rows 20000 --out /tmp/ds --quick          # seconds (CI)
    python -m benchmarks.data_scale --rows 2000000 --out /tmp/ds --cold         # + cold-cache reads
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGETS = {"prepare_rows_per_s": 200_000, "disk_bytes_per_row": 800, "peak_rss_gib": 4.0, "loader_vs_twin": 3.0}


def write_table(root: Path, rows: int, median_history: int, items: int, users: int, seed: int = 0,
                rows_per_shard: int = 250_000) -> None:
    """``root/{train,valid,test}/part-*.parquet``: 90 / 5 / 5 % of ``rows`` rows."""
    rng = np.random.default_rng(seed)
    for split, share in (("train", 0.9), ("valid", 0.05), ("test", 0.05)):
        count = max(1, int(rows * share))
        (root / split).mkdir(parents=True, exist_ok=True)
        for shard, start in enumerate(range(0, count, rows_per_shard)):
            n = min(rows_per_shard, count - start)
            lengths = np.minimum(rng.lognormal(np.log(median_history), 0.6, n).astype(np.int64), 4 * median_history)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            history = rng.zipf(1.3, int(offsets[-1])) % items
            table = pa.table({
                "user_id": rng.integers(0, users, n),
                "item_id": rng.zipf(1.3, n) % items,
                "label": rng.integers(0, 2, n),
                "item_history": pa.ListArray.from_arrays(pa.array(offsets), pa.array(history)),
                "cate_id": rng.integers(0, 100, n),
                "cate_history": pa.ListArray.from_arrays(pa.array(offsets), pa.array(history % 100)),
            })
            pq.write_table(table, root / split / f"part-{shard:05d}.parquet")


def drop_page_cache() -> None:
    """Evict the page cache (Linux, root), so that the next reads of the cache go to the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as error:
        raise SystemExit(f"--cold: cannot drop the page cache ({error}); it needs root on Linux") from None


def loader_rate(data: Any, batches: int, cold: bool = False) -> float:
    """Training samples/s of ``data``'s loader over ``batches`` batches after the first."""
    if cold:
        drop_page_cache()
    loader = iter(data.train_dataloader())
    next(loader)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(loader))
        except StopIteration:
            break
    return seen / max(time.perf_counter() - start, 1e-9)


def prepare(root: str, cache: str, batch_size: int, batches: int, id_encoding: str = "vocabulary",
            cold: bool = False, block_rows: int = 4096, stream_rows: Optional[int] = None) -> dict[str, float]:
    """In this (fresh) process: build the cache, then time ``batches`` training batches (and
    with ``cold`` the same from a dropped page cache, in single-row and ``block_rows`` order).
    ``stream_rows``: rows per read batch of the build, hence per chunk of the cache."""
    from ifusion_plugin.data import TableDataModule, table

    if stream_rows is not None:
        table.STREAM_ROWS = stream_rows

    data = TableDataModule(root, long_len=100, num_sessions=4, session_len=5, cache_dir=cache, batch_size=batch_size,
                           id_encoding=id_encoding)
    # The floor: one pass that only decodes the Parquet (the build makes two with vocabularies).
    start, read_rows = time.perf_counter(), 0
    for shard in sorted(Path(root).rglob("*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=65536):
            read_rows += batch.num_rows
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    data.prepare_data()
    prepare_s = time.perf_counter() - start
    rows = sum(len(data.split(split)) for split in ("train", "valid", "test"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    data.setup("fit")
    measured = {"loader_samples_per_s": loader_rate(data, batches)}
    if cold:
        measured["loader_cold_rows_samples_per_s"] = loader_rate(data, batches, cold=True)
        data.shuffle_block_rows = block_rows
        measured["loader_cold_blocks_samples_per_s"] = loader_rate(data, batches, cold=True)
        measured["shuffle_block_rows"] = block_rows
        measured["shuffle_window_blocks"] = data.shuffle_window_blocks
    disk = sum(f.stat().st_size for f in Path(data.cache_path).rglob("*") if f.is_file())
    return {"rows": rows, "prepare_s": prepare_s, "prepare_rows_per_s": rows / prepare_s, "peak_rss_gib": peak,
            "parquet_read_rows_per_s": read_rows / read_s, "disk_bytes_per_row": disk / rows,
            "train_chunks": data.split("train").table.column(0).num_chunks, **measured}


def twin_samples_per_s(batch_size: int, steps: int) -> float:
    """TWIN + concat training samples/s on random batches of the same shapes (benchmarks.speed)."""
    from benchmarks.speed import ML1M_SPEC, Variant, build_host, random_batch
    import torch

    from ifusion_plugin.fusion import ConcatFusion

    host = build_host("TWIN", Variant("concat", ConcatFusion), ML1M_SPEC, quick=False).train()
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-3)
    batch = random_batch(ML1M_SPEC, batch_size)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(host(batch).logits, batch.label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch_size / float(np.median(times))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--median-history", type=int, default=100)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--out", required=True, help="working directory (the table and the cache; replaced)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="few loader batches and TWIN steps (CI checks the harness)")
    parser.add_argument("--id-encoding", choices=("vocabulary", "hash"), default="vocabulary",
                        help="TableDataModule's id_encoding (hash: no vocabulary pass, 2^20 buckets)")
    parser.add_argument("--cold", action="store_true",
                        help="also read the batches from a dropped page cache, row and block shuffle (Linux, root)")
    parser.add_argument("--shuffle-block-rows", type=int, default=4096, help="the block shuffle's block (with --cold)")
    parser.add_argument("--stream-rows", type=int, default=None,
                        help="rows per read batch of the build, hence per cache chunk (default table.STREAM_ROWS, 65,536): "
                             "smaller gives a small table the chunk count of a large one")
    parser.add_argument("--json", default=None)
    parser.add_argument("--prepare-only", nargs=2, metavar=("ROOT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_only:
        print(json.dumps(prepare(*args.prepare_only, args.batch_size, args.batches, args.id_encoding, args.cold,
                                 args.shuffle_block_rows, args.stream_rows)))
        return 0
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    write_table(out / "table", args.rows, args.median_history, args.items, args.users)
    generate_s = time.perf_counter() - start
    # A fresh process: its peak RSS is the preparation's own.
    result = subprocess.run([sys.executable, "-m", "benchmarks.data_scale", "--out", args.out, "--batch-size", str(args.batch_size),
                             "--batches", str(5 if args.quick else args.batches), "--id-encoding", args.id_encoding,
                             "--shuffle-block-rows", str(args.shuffle_block_rows), *(["--cold"] if args.cold else []),
                             *(["--stream-rows", str(args.stream_rows)] if args.stream_rows else []),
                             "--prepare-only", str(out / "table"), str(out / "cache")],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"preparing the table failed:\n{result.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    measured["generate_s"] = generate_s
    from benchmarks.quality import commit

    measured["commit"] = commit()
    measured["date"] = time.strftime("%Y-%m-%d")
    measured["id_encoding"] = args.id_encoding
    measured["stream_rows"] = args.stream_rows
    measured["twin_train_samples_per_s"] = twin_samples_per_s(args.batch_size, 3 if args.quick else 20)
    measured["loader_vs_twin"] = measured["loader_samples_per_s"] / measured["twin_train_samples_per_s"]
    print(f"# data_scale: {measured['rows']:,} rows, median history {args.median_history}, id_encoding {args.id_encoding}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| measure | value | target | met |\n|---|---|---|---|")
    for key, target in TARGETS.items():
        value = measured[key]
        met = value <= target if key in ("disk_bytes_per_row", "peak_rss_gib") else value >= target
        print(f"| {key} | {value:,.2f} | {'<=' if key in ('disk_bytes_per_row', 'peak_rss_gib') else '>='} {target:,} | "
              f"{'met' if met else 'not met'} |")
    print(f"\nprepare {measured['prepare_s']:.1f} s; Parquet decoding alone {measured['parquet_read_rows_per_s']:,.0f} rows/s "
          f"(one pass; the build makes two, one with hashed ids); loader {measured['loader_samples_per_s']:,.0f} samples/s; "
          f"TWIN + concat training {measured['twin_train_samples_per_s']:,.0f} samples/s")
    if args.cold:
        twin = measured["twin_train_samples_per_s"]
        rows_cold, blocks_cold = measured["loader_cold_rows_samples_per_s"], measured["loader_cold_blocks_samples_per_s"]
        print(f"from a dropped page cache: single-row shuffle {rows_cold:,.0f} samples/s ({rows_cold / twin:.1f}x TWIN), "
              f"block shuffle ({args.shuffle_block_rows} rows x {measured['shuffle_window_blocks']} blocks) "
              f"{blocks_cold:,.0f} samples/s ({blocks_cold / twin:.1f}x TWIN)")
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
