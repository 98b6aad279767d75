"""Fit DIN + iFusion on cached synthetic data, checkpointing every few steps; optionally kill
the process (SIGKILL, no clean-up) at a given step, or resume from a checkpoint.

Run by tests/test_resume.py:

    python tests/scripts/resume_fit.py OUT CACHE_DIR [--kill-at STEP] [--resume CKPT] [--accelerator gpu]

Writes ``OUT/final.pt``: the model and optimizer state dicts and the global step at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ifusion_plugin.data import SyntheticDataModule
from ifusion_plugin.fusion import InterestFusion
from ifusion_plugin.hosts import DIN
from ifusion_plugin.task import CTRTask

DATA_OPTIONS = dict(num_users=40, num_items=60, history_len=30, train_per_user=5, long_len=20, batch_size=8)
MAX_EPOCHS = 2
CHECKPOINT_EVERY = 5


def make_task(spec) -> CTRTask:
    """DIN + a small iFusion. A built host (not a factory) keeps the checkpoint's
    hyperparameters weights_only-safe, like the CLI's class_path configs."""
    fusion = functools.partial(InterestFusion, fusion_dim=8, num_heads=2, denoiser_hidden_dim=16, guidance_hidden_dim=16)
    return CTRTask(DIN(spec, embed_dim=8, head_dims=(16,), fusion=fusion))


class KillAt(pl.Callback):
    """SIGKILL the process at the end of training step ``step`` (a crash: nothing is flushed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("cache_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--accelerator", default="cpu", help="cpu, or gpu for the CUDA resume test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0)
    data = SyntheticDataModule(cache_dir=args.cache_dir, **DATA_OPTIONS)
    task = make_task(data.feature_spec)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=os.path.join(args.out, "checkpoints"), every_n_train_steps=CHECKPOINT_EVERY,
                        save_top_k=-1, save_last=True)
    ]
    if args.kill_at is not None:
        callbacks.insert(0, KillAt(args.kill_at))
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, max_epochs=MAX_EPOCHS, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=args.out,
                         num_sanity_val_steps=2)
    trainer.fit(task, datamodule=data, ckpt_path=args.resume)
    optimizer = trainer.optimizers[0]
    torch.save({"model": task.state_dict(), "optimizer": optimizer.state_dict(), "step": trainer.global_step},
               os.path.join(args.out, "final.pt"))


if __name__ == "__main__":
    main()
