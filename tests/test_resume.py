"""A run killed mid-epoch (SIGKILL) and resumed from its last checkpoint ends exactly where an
uninterrupted run ends: same step, same weights, same optimizer state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ifusion_plugin.data import SyntheticDataModule

SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from resume_fit import CHECKPOINT_EVERY, DATA_OPTIONS, MAX_EPOCHS  # noqa: E402

from ifusion_plugin.task import CTRTask  # noqa: E402


def fit(out: Path, cache: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPTS / "resume_fit.py"), str(out), cache, *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def assert_same_state(a: dict, b: dict) -> None:
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], list):
            assert len(a[key]) == len(b[key])
            for x, y in zip(a[key], b[key]):
                assert_same_state(x, y) if isinstance(x, dict) else None
        else:
            assert a[key] == b[key], key


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [8, 37])  # mid-epoch 1 (steps 1-25), mid-epoch 2
def test_killed_run_resumes_exactly(tmp_path, kill_at) -> None:
    resumes_exactly(tmp_path, kill_at, "cpu")


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_killed_run_resumes_exactly_on_gpu(tmp_path) -> None:
    """On a GPU iFusion draws from the device's CUDA generator: its state travels too."""
    resumes_exactly(tmp_path, 8, "gpu")


def test_generator_states_per_process_and_their_mismatch_warning(tmp_path) -> None:
    """Every process's states are saved; a resume takes its own rank's, and says when it cannot."""
    from types import SimpleNamespace

    from ifusion_plugin.task import CTRTask
    from resume_fit import make_task

    task: CTRTask = make_task(SyntheticDataModule(cache_dir=str(tmp_path), **DATA_OPTIONS).feature_spec)
    checkpoint: dict = {}
    torch.manual_seed(3)
    task.on_save_checkpoint(checkpoint)
    assert list(checkpoint[CTRTask._RNG_KEY][0]) == ["cpu"]  # CPU model: no CUDA state
    expected = torch.rand(4)
    for states, world, warns in (([checkpoint[CTRTask._RNG_KEY][0]], 1, False),
                                 ([{"cpu": torch.get_rng_state()}, checkpoint[CTRTask._RNG_KEY][0]], 2, False),
                                 ([checkpoint[CTRTask._RNG_KEY][0]], 2, True)):
        rank = 1 if len(states) == 2 else 0
        task.on_load_checkpoint({CTRTask._RNG_KEY: states})
        task._trainer = SimpleNamespace(world_size=world, global_rank=rank)  # type: ignore[assignment]
        torch.manual_seed(99)
        if warns:
            with pytest.warns(UserWarning, match="from a checkpoint written by 1"):
                task.on_train_batch_start(None, 0)  # type: ignore[arg-type]
        else:
            task.on_train_batch_start(None, 0)  # type: ignore[arg-type]
        assert torch.equal(torch.rand(4), expected)
    # A checkpoint from before CUDA states (the CPU state under its old key) still resumes.
    task.on_load_checkpoint({CTRTask._LEGACY_RNG_KEY: checkpoint[CTRTask._RNG_KEY][0]["cpu"]})
    task._trainer = SimpleNamespace(world_size=1, global_rank=0)  # type: ignore[assignment]
    task.on_train_batch_start(None, 0)  # type: ignore[arg-type]
    assert torch.equal(torch.rand(4), expected)


def resumes_exactly(tmp_path: Path, kill_at: int, accelerator: str) -> None:
    cache = str(tmp_path / "cache")
    data = SyntheticDataModule(cache_dir=cache, **DATA_OPTIONS)
    data.prepare_data()
    steps_per_epoch = -(-len(data.split("train")) // DATA_OPTIONS["batch_size"])
    assert kill_at % CHECKPOINT_EVERY != 0 and kill_at < MAX_EPOCHS * steps_per_epoch

    reference = fit(tmp_path / "reference", cache, "--accelerator", accelerator)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = fit(tmp_path / "crash", cache, "--kill-at", str(kill_at), "--accelerator", accelerator)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "crash" / "final.pt").exists()
    last = tmp_path / "crash" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # checkpoints hold only weights_only-safe data
    assert ("cuda" in saved[CTRTask._RNG_KEY][0]) == (accelerator == "gpu")
    assert saved["global_step"] == kill_at // CHECKPOINT_EVERY * CHECKPOINT_EVERY

    resumed = fit(tmp_path / "crash", cache, "--resume", str(last), "--accelerator", accelerator)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    got = torch.load(tmp_path / "crash" / "final.pt", weights_only=True)
    assert got["step"] == want["step"] == MAX_EPOCHS * steps_per_epoch
    assert_same_state(want["model"], got["model"])
    assert_same_state(want["optimizer"], got["optimizer"])
