"""Zero-data evaluation (paper appendix N) and guidance disentanglement of trained checkpoints.

For each checkpoint, the test split is scored as it is, with the long-term history removed
(every long-term behaviour set to padding, so ``long_mask`` is False), and with the oldest
``k`` sessions removed for ``k = 1 .. K`` (all sessions removed at ``k = K``). The same trained
weights are used in every row, so iFusion and concat checkpoints of the same host compare
their fallbacks directly. For iFusion checkpoints with DCFG the mean ``|cos(g_cp, g_tf)|``
over the present sessions of the test split is reported too (the disentanglement the paper
never measured).

    python -m benchmarks.zero_data --ckpt concat=PATH_A --ckpt ifusion=PATH_B   # the data of their runs' config.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import torch

from benchmarks.evaluation import (
    checkpoint_datamodule,
    evaluate,
    load_task,
    split_batches,
)
from ifusion_plugin.batch import CTRBatch
from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.task import CTRTask


def without_long(batch: CTRBatch) -> CTRBatch:
    return dataclasses.replace(batch, long_items=torch.zeros_like(batch.long_items),
                               long_cates=torch.zeros_like(batch.long_cates))


def without_oldest_sessions(batch: CTRBatch, k: int) -> CTRBatch:
    items, cates = batch.session_items.clone(), batch.session_cates.clone()
    items[:, :k] = 0
    cates[:, :k] = 0
    return dataclasses.replace(batch, session_items=items, session_cates=cates)


def guidance_cosine(task: CTRTask, batches: list[CTRBatch]) -> Optional[float]:
    """Mean |cos(g_cp, g_tf)| over present sessions, or None when the fusion has no DCFG."""
    fusion = task.host.fusion
    if not isinstance(fusion, InterestFusion) or fusion.guidance != "dcfg":
        return None
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            g_cp, g_tf = fusion.guidance_vectors(task.host.encode_sessions(batch), batch.session_mask)
            cos = torch.nn.functional.cosine_similarity(g_cp, g_tf, dim=-1).abs()
            total += float(cos[batch.session_mask].sum())
            count += int(batch.session_mask.sum())
    return total / max(count, 1)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zero_data", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", required=True, help="NAME=PATH of a CTRTask checkpoint (repeat)")
    parser.add_argument("--data-root", default=None, help="override the data's root (default: the first checkpoint's run config)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = [spec.partition("=") for spec in args.ckpt]
    bad = [f"{name}{sep}{path}" for name, sep, path in specs if not path]
    if bad:
        raise ValueError(f"--ckpt must be NAME=PATH, got {bad}")
    # The data of the first checkpoint's run (the config.yaml fit saved beside it); the
    # checkpoints compared must share it.
    data = checkpoint_datamodule(specs[0][2], args.data_root, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    batches = split_batches(data, "test")
    num_sessions = data.feature_spec.num_sessions

    settings = [("as is", lambda b: b), ("long-term removed", without_long)]
    settings += [(f"oldest {k} of {num_sessions} sessions removed", lambda b, k=k: without_oldest_sessions(b, k))
                 for k in range(1, num_sessions + 1)]
    names = [name for name, _, _ in specs]
    tasks = [load_task(path) for _, _, path in specs]
    print("| test setting | " + " | ".join(f"{n} AUC" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for label, change in settings:
        changed = [change(b) for b in batches]
        print(f"| {label} | " + " | ".join(f"{evaluate(t, changed)[0]:.4f}" for t in tasks) + " |", flush=True)
    cosines = [guidance_cosine(t, batches) for t in tasks]
    print("| mean abs cos(g_cp, g_tf), test | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cosines) + " |")


if __name__ == "__main__":
    main()
