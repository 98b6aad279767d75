"""Validation AUC of a trained host + InterestFusion checkpoint under other serving settings.

Re-evaluates one checkpoint on the validation split (never test) with the serving-time knobs
of InterestFusion changed one at a time: the guidance scales and the start step ``t_start``.
Nothing is retrained, so the rows differ only by how the same weights are served; this is how
the defaults of the recipes were chosen (BENCHMARKS.md).

    python -m ifusion_plugin.cli fit --config recipes/twin.yaml --config recipes/data/movielens-1m.yaml
    python benchmarks/fusion_eval_knobs.py --ckpt logs/lightning_logs/version_0/checkpoints/<best>.ckpt \
        --data-root ../shared/data/movielens-1m
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch
from torchmetrics.functional.classification import binary_auroc

from ifusion_plugin.data import MovieLens1MDataModule
from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.task import CTRTask


def set_knobs(fusion: InterestFusion, gamma_cp: float, gamma_tf: float, t_start: Optional[int]) -> None:
    fusion.gamma_cp, fusion.gamma_tf, fusion.t_start = gamma_cp, gamma_tf, t_start
    top = fusion.schedule.num_steps if t_start is None else t_start
    fusion.sampler = fusion.schedule.respace(fusion.sampling_steps, start_step=top - 1)


def evaluate(task: CTRTask, batches: list) -> tuple[float, float]:
    """(AUC, logloss) over ``batches``."""
    probs, labels = [], []
    with torch.no_grad():
        for batch in batches:
            probs.append(torch.sigmoid(task(batch).logits))
            labels.append(batch.label)
    p, y = torch.cat(probs), torch.cat(labels).float()
    logloss = torch.nn.functional.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y).item()
    return binary_auroc(p, y.long()).item(), logloss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint of a CTRTask whose host uses InterestFusion")
    parser.add_argument("--data-root", default="../shared/data/movielens-1m")
    parser.add_argument("--cache-dir", default=None, help="dataset cache (default: $IFUSION_CACHE_DIR or ~/.cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--t-start", type=int, nargs="*", default=[10, 100, 300, 600])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = CTRTask.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    fusion = task.host.fusion
    if not isinstance(fusion, InterestFusion):
        raise ValueError(f"--ckpt must hold a host with InterestFusion, got {type(fusion).__name__}")
    data = MovieLens1MDataModule(root=args.data_root, cache_dir=args.cache_dir, eval_batch_size=2048)
    data.setup("validate")
    batches = list(data.val_dataloader())

    trained = (fusion.gamma_cp, fusion.gamma_tf, fusion.t_start)
    ratio_sum_one = (2.0 / 3.0, 1.0 / 3.0)
    rows: list[tuple[str, float, float, Optional[int]]] = [
        ("as trained", trained[0], trained[1], trained[2]),
        ("paper scales 2.0 / 1.0", 2.0, 1.0, trained[2]),
        ("scales 2/3 / 1/3 (sum 1)", *ratio_sum_one, trained[2]),
    ]
    rows += [(f"t_start={t}, trained scales", trained[0], trained[1], t) for t in args.t_start]
    print(f"checkpoint: {args.ckpt}\n")
    print("| serving setting | gamma_cp | gamma_tf | t_start | val AUC | val logloss |")
    print("|---|---|---|---|---|---|")
    for label, gamma_cp, gamma_tf, t_start in rows:
        set_knobs(fusion, gamma_cp, gamma_tf, t_start)
        auc, logloss = evaluate(task, batches)
        print(f"| {label} | {gamma_cp:.3g} | {gamma_tf:.3g} | {t_start} | {auc:.4f} | {logloss:.4f} |", flush=True)
    set_knobs(fusion, *trained)


if __name__ == "__main__":
    main()
