"""The Lightning task: trains any host CTR model with BCE plus its fusion layer's auxiliary losses.

``CTRTask`` knows nothing about a particular host, fusion layer or dataset: the host is a
constructor argument (a factory ``spec -> nn.Module`` that LightningCLI builds from YAML, or an
already-built module), the data arrive as :class:`~ifusion_plugin.batch.CTRBatch`.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from .batch import CTRBatch, FeatureSpec
from .metrics import BinaryAUROC, GroupAUC, LogLoss

__all__ = ["CTRTask", "HostFactory"]

#: What ``CTRTask`` accepts as ``host``: a callable building the host from the dataset's
#: :class:`FeatureSpec` (a host class such as ``TWIN`` itself, or a ``functools.partial`` of one;
#: LightningCLI makes one from ``class_path`` + ``init_args`` without ``spec``).
HostFactory = Callable[[FeatureSpec], nn.Module]

_EVAL_STAGES = ("val", "test")

# The spec is saved in every checkpoint's hyperparameters (the CLI links it in), and torch.load
# defaults to weights_only=True: allow this plain frozen dataclass of ints so `test --ckpt_path`
# and `load_from_checkpoint` work without weights_only=False.
torch.serialization.add_safe_globals([FeatureSpec])


class CTRTask(pl.LightningModule):
    """Binary click prediction with a pluggable host.

    Training minimises ``BCE(logits, label) + sum(host aux losses)``; each auxiliary loss is
    logged as ``train_aux_<name>``. Validation and test log ``<stage>_loss`` (BCE),
    ``<stage>_auc``, ``<stage>_gauc`` (per-user AUC weighted by impressions) and
    ``<stage>_logloss``, accumulated over the epoch with torchmetrics and synced across processes.

    Args:
        host: a factory ``spec -> nn.Module`` called with ``feature_spec``, or an ``nn.Module``
            already built (then ``feature_spec`` is not needed). The host's ``forward(batch)``
            returns an object with ``logits`` of shape ``(B,)`` and a ``losses`` dict of
            weighted scalar auxiliary losses (:class:`~ifusion_plugin.hosts.HostOutput`).
        feature_spec: vocabulary sizes and sequence shapes; LightningCLI links it from the
            datamodule's ``feature_spec``.
        lr: Adam learning rate (the paper's 1e-3).
        eps: Adam epsilon (the paper's 1e-7, TensorFlow's default, which the paper's runs used).
        fusion_lr: Adam learning rate of the host's fusion layer (``host.fusion``, whichever
            class it is); ``None`` (default): ``lr`` for every parameter.
        weight_decay: Adam L2 weight decay on every parameter (default 0). The paper's eq. 18
            puts ``beta ||theta||`` on the core-preference branch only; we regularise that
            branch by dropout and pooling instead (docs/fusion.md, "Where this departs from the
            paper").

    Call arguments (``forward``):
        batch: a :class:`CTRBatch`.

    Returns (``forward``):
        The host's output (``logits`` of shape ``(B,)``, ``losses``).

    Example:
        >>> from ifusion_plugin.hosts import DIN
        >>> spec = FeatureSpec(num_users=10, num_items=20, num_cates=5, long_len=8, num_sessions=2, session_len=4)
        >>> task = CTRTask(DIN, feature_spec=spec)
        >>> type(task.host).__name__
        'DIN'

    Raises:
        ValueError: ``host`` is a factory and ``feature_spec`` is missing, or an optimiser
            setting is out of range.
    """

    #: Read by Lightning's ThroughputMonitor (:class:`~ifusion_plugin.callbacks.TrainThroughput`);
    #: not counted per step here: ``benchmarks/speed`` counts the FLOPs per sample.
    flops_per_batch: Optional[int] = None

    def __init__(
        self,
        host: HostFactory,
        feature_spec: Optional[FeatureSpec] = None,
        *,
        lr: float = 1e-3,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
        fusion_lr: Optional[float] = None,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if fusion_lr is not None and not fusion_lr > 0:
            raise ValueError(f"fusion_lr must be None (use lr) or positive, got {fusion_lr}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        if isinstance(host, nn.Module):
            # A built module is stored in the state dict; as a hyperparameter it would be pickled
            # twice and could not be rebuilt from hparams.yaml anyway.
            self.save_hyperparameters(ignore=["host"])
            module = host
        else:
            if feature_spec is None:
                raise ValueError(
                    "feature_spec is required when host is a factory: pass the datamodule's feature_spec "
                    "(the CLI links data.feature_spec to model.feature_spec)"
                )
            # The factory is kept (LightningCLI stores its class_path + init_args instead), so
            # `CTRTask.load_from_checkpoint` rebuilds the same host from the checkpoint alone.
            self.save_hyperparameters()
            module = host(feature_spec)
        if not isinstance(module, nn.Module):
            raise ValueError(f"host must build an nn.Module, got {type(module).__name__}")
        if fusion_lr is not None and not isinstance(getattr(module, "fusion", None), nn.Module):
            raise ValueError(f"fusion_lr needs a host with a fusion layer in its `fusion` attribute (every CTRHost), "
                             f"{type(module).__name__} has none")
        self.host = module
        self.feature_spec = feature_spec
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self.fusion_lr = fusion_lr
        # One set of metrics per stage: validation inside `fit` must not mix with a later test.
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({"auc": BinaryAUROC(), "gauc": GroupAUC(), "logloss": LogLoss(from_logits=True)})
                for stage in _EVAL_STAGES
            }
        )

    def forward(self, batch: CTRBatch) -> Any:
        return self.host(batch)

    def _common_step(self, batch: CTRBatch, stage: str) -> Tensor:
        """Loss of one batch, logged under ``stage`` ("train", "val" or "test")."""
        output = self.host(batch)
        logits = output.logits.float()  # BCE and metrics in float32 under bf16 autocast
        label = batch.label.float()
        bce = nn.functional.binary_cross_entropy_with_logits(logits, label)
        batch_size = len(batch)
        loss = bce
        if stage == "train":
            for name, aux in output.losses.items():
                self.log(f"train_aux_{name}", aux, batch_size=batch_size)
                loss = loss + aux
            self.log("train_bce", bce, batch_size=batch_size)
            self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
            return loss
        # Aux losses are training objectives (empty in eval mode); the eval loss is the BCE.
        self.log(f"{stage}_loss", bce, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
        metrics = self.metrics[stage]
        probs = torch.sigmoid(logits)
        target = label.long()
        metrics["auc"].update(probs, target)
        metrics["gauc"].update(probs, target, batch.user)
        metrics["logloss"].update(logits, target)
        for name, metric in metrics.items():
            # Logging the Metric object lets Lightning compute, sync and reset it per epoch.
            self.log(f"{stage}_{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "auc")
        return bce

    def training_step(self, batch: CTRBatch, batch_idx: int) -> Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: CTRBatch, batch_idx: int) -> Tensor:
        return self._common_step(batch, "val")

    def test_step(self, batch: CTRBatch, batch_idx: int) -> Tensor:
        return self._common_step(batch, "test")

    def predict_step(self, batch: CTRBatch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Click probabilities with the ids they belong to.

        Returns:
            dict with ``user``, ``target_item`` (long tensors of shape ``(B,)``), ``label`` and
            ``prob`` (float tensors of shape ``(B,)``, ``prob`` the sigmoid of the logit), and
            ``row`` (the samples' rows in their split) when the batch carries them.
        """
        probs = torch.sigmoid(self.host(batch).logits.float())
        out = {"user": batch.user, "target_item": batch.target_item, "label": batch.label, "prob": probs}
        if batch.row is not None:
            out["row"] = batch.row
        return out

    # ------------------------------------------------------------------ exact resumption
    # iFusion draws diffusion steps, noises and guidance dropout from torch's default generator
    # of the model's device: the CPU one, and on a GPU that device's CUDA generator. Every
    # process's states go into every checkpoint (gathered: under DDP each rank draws its own
    # numbers) and each process puts its own back just before the first batch a resumed run
    # trains, so a run restarted mid-epoch repeats the uninterrupted run exactly (the loaders'
    # positions are restored by Lightning, see CTRDataModule).
    _RNG_KEY = "ifusion_rng_states"
    _LEGACY_RNG_KEY = "ifusion_torch_rng_state"  # checkpoints before CUDA states: the CPU state alone

    def _rng_state(self) -> dict[str, Tensor]:
        """This process's generator states: ``cpu``, and ``cuda`` when the model is on a GPU."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        local = self._rng_state()
        states = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # Lightning builds the checkpoint on every rank and rank 0 writes it.
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, {k: v.cpu() for k, v in local.items()})
            states = gathered
        checkpoint[self._RNG_KEY] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(self._RNG_KEY)
        if states is None and checkpoint.get(self._LEGACY_RNG_KEY) is not None:
            states = [{"cpu": checkpoint[self._LEGACY_RNG_KEY]}]
        self._pending_rng_states = states

    def on_train_batch_start(self, batch: CTRBatch, batch_idx: int) -> None:
        # Here, not in on_load_checkpoint: between the two, Lightning creates data loader
        # iterators (each draws a seed from the global generator) and may run validation.
        states = getattr(self, "_pending_rng_states", None)
        if states is None:
            return
        self._pending_rng_states = None
        rank, world = self.global_rank, self.trainer.world_size
        if len(states) != world:
            warnings.warn(
                f"resuming with {world} process(es) from a checkpoint written by {len(states)}: the random streams "
                "of the diffusion (steps, noises, guidance dropout) continue from rank 0's state, so the run will "
                "not repeat the uninterrupted one exactly",
                UserWarning,
                stacklevel=2,
            )
        state = states[rank if rank < len(states) else 0]
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        elif "cuda" in state or self.device.type == "cuda":
            warnings.warn(
                f"the checkpoint's generator states are for {'a GPU' if 'cuda' in state else 'the CPU'} and this run "
                f"is on {self.device.type}: the diffusion's random stream starts afresh, so the run will not repeat "
                "the uninterrupted one exactly",
                UserWarning,
                stacklevel=2,
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.fusion_lr is None:
            return torch.optim.Adam(self.parameters(), lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        fusion = list(self.host.fusion.parameters())
        in_fusion = {id(p) for p in fusion}
        groups = [{"params": [p for p in self.parameters() if id(p) not in in_fusion]},
                  {"params": fusion, "lr": self.fusion_lr}]
        return torch.optim.Adam(groups, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)

