"""CTRTask: construction, loss decrease on a learnable toy problem, logging, predict."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ifusion_plugin.batch import CTRBatch, FeatureSpec
from ifusion_plugin.hosts import DIN, HostOutput
from ifusion_plugin.task import CTRTask

SPEC = FeatureSpec(num_users=12, num_items=30, num_cates=6, long_len=8, num_sessions=2, session_len=3)


class ToyDataset(Dataset):
    """Clicks that depend on the target item alone (even ids are clicked), so a model learns them."""

    def __init__(self, size: int, spec: FeatureSpec, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.user = torch.randint(2, spec.num_users, (size,), generator=g)
        self.item = torch.randint(2, spec.num_items, (size,), generator=g)
        self.cate = self.item % (spec.num_cates - 2) + 2
        self.long_items = torch.randint(0, spec.num_items, (size, spec.long_len), generator=g)
        self.session_items = torch.randint(0, spec.num_items, (size, spec.num_sessions, spec.session_len), generator=g)
        self.label = (self.item % 2 == 0).float()

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "user": self.user[i],
            "target_item": self.item[i],
            "target_cate": self.cate[i],
            "long_items": self.long_items[i],
            "long_cates": self.long_items[i] % 4,
            "session_items": self.session_items[i],
            "session_cates": self.session_items[i] % 4,
            "label": self.label[i],
        }


def collate(rows: list[dict[str, Tensor]]) -> CTRBatch:
    return CTRBatch.from_columns({key: torch.stack([row[key] for row in rows]) for key in rows[0]})


class ToyDataModule(pl.LightningDataModule):
    """A datamodule with a ``feature_spec`` like ``CTRDataModule``'s, for tests only."""

    def __init__(self, size: int = 256, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.size = size
        self.batch_size = batch_size
        self.seed = seed

    @property
    def feature_spec(self) -> FeatureSpec:
        return SPEC

    def _loader(self, seed: int, shuffle: bool) -> DataLoader:
        return DataLoader(ToyDataset(self.size, SPEC, seed), batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.seed, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.seed + 1, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.seed + 2, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.seed + 2, False)


class TinyHost(nn.Module):
    """Logit from the target item's embedding, plus a weighted auxiliary loss like a fusion layer's."""

    def __init__(self, spec: FeatureSpec, aux_weight: float = 0.01) -> None:
        super().__init__()
        self.embedding = nn.Embedding(spec.num_items, 1)
        self.aux_weight = aux_weight

    def forward(self, batch: CTRBatch) -> HostOutput:
        logits = self.embedding(batch.target_item).squeeze(-1)
        losses = {"l2": self.aux_weight * self.embedding.weight.pow(2).mean()} if self.training else {}
        return HostOutput(logits=logits, losses=losses)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def test_factory_needs_feature_spec() -> None:
    with pytest.raises(ValueError, match="feature_spec"):
        CTRTask(TinyHost)


@pytest.mark.parametrize("name, value", [("lr", 0.0), ("eps", -1.0), ("weight_decay", -0.1), ("fusion_lr", 0.0)])
def test_rejects_bad_optimiser_settings(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        CTRTask(TinyHost, SPEC, **{name: value})


def test_paper_optimiser_defaults() -> None:
    optimiser = CTRTask(TinyHost, SPEC).configure_optimizers()
    assert isinstance(optimiser, torch.optim.Adam)
    group = optimiser.param_groups[0]
    assert (group["lr"], group["eps"], group["weight_decay"]) == (1e-3, 1e-7, 0.0)


def test_fusion_lr_puts_the_fusion_layer_in_its_own_group() -> None:
    from ifusion_plugin.fusion import InterestFusion
    from ifusion_plugin.hosts import AvgPoolDNN

    task = CTRTask(functools.partial(AvgPoolDNN, fusion=InterestFusion), SPEC, fusion_lr=3e-3)
    rest, fusion = task.configure_optimizers().param_groups
    assert (rest["lr"], fusion["lr"]) == (1e-3, 3e-3)
    assert {id(p) for p in fusion["params"]} == {id(p) for p in task.host.fusion.parameters()}
    # Every parameter in exactly one group.
    assert sorted(map(id, rest["params"] + fusion["params"])) == sorted(map(id, task.parameters()))
    with pytest.raises(ValueError, match="fusion_lr needs a host with a fusion layer"):
        CTRTask(torch.nn.Linear(2, 1), fusion_lr=1e-3)


def test_accepts_built_module_and_factory() -> None:
    built = TinyHost(SPEC)
    task = CTRTask(built)
    assert task.host is built
    assert "host" not in task.hparams
    from_factory = CTRTask(functools.partial(TinyHost, aux_weight=0.5), SPEC)
    assert from_factory.host.aux_weight == 0.5
    assert from_factory.hparams["feature_spec"] == SPEC


def _mean_bce(task: CTRTask, loader: DataLoader) -> float:
    task.eval()
    with torch.no_grad():
        losses = [nn.functional.binary_cross_entropy_with_logits(task(b).logits, b.label) for b in loader]
    return float(torch.stack(losses).mean())


@pytest.mark.parametrize("host", [functools.partial(TinyHost, aux_weight=0.01), functools.partial(DIN, embed_dim=4, head_dims=(8,))], ids=["tiny", "din"])
def test_training_decreases_loss_and_logs(tmp_path, host) -> None:
    torch.manual_seed(0)
    data = ToyDataModule(size=256, batch_size=32)
    task = CTRTask(host, data.feature_spec, lr=0.05)
    before = _mean_bce(task, data.val_dataloader())
    task.train()
    trainer = _trainer(tmp_path, max_epochs=5)
    trainer.fit(task, datamodule=data)
    after = _mean_bce(task, data.val_dataloader())
    assert after < 0.7 * before
    metrics = trainer.callback_metrics
    for name in ("train_loss", "train_bce", "val_loss", "val_auc", "val_gauc", "val_logloss"):
        assert name in metrics, name
    assert float(metrics["val_auc"]) > 0.9
    # The eval log loss from the metric equals the mean BCE of the logged loss (equal batches).
    assert float(metrics["val_logloss"]) == pytest.approx(float(metrics["val_loss"]), rel=1e-5)
    if isinstance(task.host, TinyHost):
        assert "train_aux_l2" in metrics
        assert float(metrics["train_loss"]) > float(metrics["train_bce"])


def test_test_and_predict(tmp_path) -> None:
    data = ToyDataModule(size=64, batch_size=16)
    task = CTRTask(TinyHost, data.feature_spec)
    trainer = _trainer(tmp_path)
    (results,) = trainer.test(task, datamodule=data, verbose=False)
    assert set(results) >= {"test_loss", "test_auc", "test_gauc", "test_logloss"}
    predictions = trainer.predict(task, datamodule=data)
    assert predictions is not None
    first = predictions[0]
    batch = next(iter(data.predict_dataloader()))
    assert torch.equal(first["user"], batch.user) and torch.equal(first["target_item"], batch.target_item)
    expected = torch.sigmoid(task.host.embedding(batch.target_item).squeeze(-1))
    torch.testing.assert_close(first["prob"], expected)
    assert bool(((first["prob"] > 0) & (first["prob"] < 1)).all())


def test_checkpoint_round_trip(tmp_path) -> None:
    data = ToyDataModule(size=64, batch_size=16)
    task = CTRTask(functools.partial(DIN, embed_dim=4, head_dims=(8,)), data.feature_spec)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    restored = CTRTask.load_from_checkpoint(path, weights_only=False)
    batch = next(iter(data.test_dataloader()))
    task.eval()
    restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(batch).logits, task(batch).logits)
