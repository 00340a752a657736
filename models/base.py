"""Shared training base for every model family: the LightningModule around a family's plain network.

Families (models/mlp.py, models/cnn.py, ...) hand a plain nn.Module to `TaskModule`, which adds the loss
(models/losses.py), the metrics (models/metrics.py), optimisers and schedules (models/optim.py); `dlp train`
builds them through `models.build(cfg, spec)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import lr_scheduler as lrs
from torchmetrics import MetricCollection

from models.errors import ModelError
from models.losses import make_loss
from models.metrics import make_metrics
from models.optim import make_optimizer, make_scheduler


class Spec(Protocol):
    """What a model needs to know about its data (datamodules.base.DataSpec satisfies it)."""
    task: str                       # "classification" | "regression"
    num_classes: int                # 0 for regression
    input_shape: tuple              # (n_features,) or (C, H, W)
    class_weights: Optional[Sequence[float]]


def _plain(value: Any) -> Any:
    """Checkpoint-safe copy: numpy/tensor values become Python ones, so torch.load(weights_only=True) works."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.tolist() if hasattr(value, "tolist") else value


# ---------------------------------------------------------------------------------------------- module

class TaskModule(L.LightningModule):
    """Loss, L1/L2, metrics, optimiser and schedule around a family's plain network.

    Logs `{train,val,test}/loss`, classification acc/precision/recall/f1/auroc/log_loss, regression
    mse/rmse/mae/r2, and `train/lr`; train/loss is the data term (no L1), comparable with val/loss.
    """

    def __init__(self, net: nn.Module, spec: Spec, cfg: DictConfig):
        super().__init__()
        self.net = net
        self.spec = spec
        self.cfg = cfg
        self.classification = spec.task == "classification"
        self.target_scale = getattr(spec, "target_scale", None)
        self.horizon = int(getattr(spec, "horizon", 0) or 0)   # > 0: outputs and targets are (N, horizon)
        self.criterion = make_loss(cfg.loss, spec)
        self.l1 = float(cfg.optim.l1)
        self.monitor_metric = cfg.monitor.metric
        self.monitor_mode = cfg.monitor.mode
        metrics = make_metrics(spec)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # the epoch's per-step losses, batch sizes and hits for train/loss and train/acc, reduced once at its end:
        # no host sync per step and two small kernels (cheaper than updating running sums in place)
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._hits: list[torch.Tensor] = []
        self._first_step = 0   # the global step the epoch's first batch trains at (where a NaN loss is reported)
        self._plateau_replay: Optional[float] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for classification, values (N,) for regression, (N, horizon) for forecasts."""
        out = self.net(x)
        return out if self.classification or self.horizon else out.squeeze(-1)

    def decay_split(self) -> tuple[list, list]:
        """(weights, the rest): matrices and kernels get L1/L2; biases, norm and PReLU parameters do not."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        return decay, no_decay

    def l1_penalty(self) -> torch.Tensor:
        return self.l1 * sum(p.abs().sum() for p in self.decay_split()[0])

    # -- steps

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = self.criterion(out, y)
        self._losses.append(loss.detach())
        self._sizes.append(y.shape[0])
        if self.classification:
            self._hits.append(out.detach().argmax(1) == y)
        return loss + self.l1_penalty() if self.l1 > 0 else loss

    def on_train_epoch_start(self) -> None:
        self._losses, self._sizes, self._hits = [], [], []
        self._first_step = self.global_step
        self._replay_plateau_step()
        # the rate the epoch trains at; epoch-wise schedulers step after on_train_epoch_end
        self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), sync_dist=True)

    def on_train_epoch_end(self) -> None:
        if not self._losses:
            return
        losses = torch.stack(self._losses)
        sizes = losses.new_tensor(self._sizes)
        hits = torch.cat(self._hits).sum().to(losses.dtype) if self._hits else losses.new_zeros(())
        sums = torch.stack([losses @ sizes, hits, sizes.sum()])
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # sums, not means, across ranks
        if not torch.isfinite(sums[0]):  # the same sums on every rank: all of them stop here, together
            raise self._diverged(losses, float(sums[0]))
        logs = {"train/loss": sums[0] / sums[2]}
        if self.classification:
            logs["train/acc"] = sums[1] / sums[2]
        self.log_dict(logs, sync_dist=True)  # equal on every rank by now; sync_dist only quiets Lightning
        self._losses, self._sizes, self._hits = [], [], []

    def _diverged(self, losses: torch.Tensor, total: float) -> ModelError:
        """The error of an epoch whose train/loss is NaN or inf: where it first went so (1-based epoch, as the
        epoch lines print it; the global step) and the fixes. Without it the run trains on to a FINISHED nothing."""
        bad = torch.nonzero(~torch.isfinite(losses)).flatten()
        where, value = f"epoch {self.current_epoch + 1}", total
        if len(bad):  # this rank's first bad batch (none here when only another rank's went bad)
            batch = int(bad[0])
            value = float(losses[batch])
            where += f" (step {self._first_step + batch // max(1, int(self.trainer.accumulate_grad_batches))})"
        return ModelError(f"train/loss is {value} at {where}: lower optim.lr, enable trainer.gradient_clip_val "
                          "(e.g. 1.0), or check the data for extreme values")

    def _eval_step(self, batch: Any, split: str, metrics: MetricCollection) -> None:
        x, y = batch
        out = self(x)
        self.log(f"{split}/loss", self.criterion(out, y), batch_size=y.shape[0], sync_dist=True)
        if self.classification:
            metrics.update(out.float().softmax(-1), y)
        else:  # forecasts: every (window, step) pair is one prediction
            out, y = out.float().reshape(-1), y.float().reshape(-1)
            if self.target_scale is not None:  # report errors in the target's own units
                mean, std = self.target_scale
                out, y = out * std + mean, y * std + mean
            metrics.update(out, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        # torchmetrics has already synced the values; sync_dist only averages equal numbers (and quiets Lightning)
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities (N, num_classes) or regression values (N,)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self(x)
        if self.classification:
            return out.softmax(-1)
        return out if self.target_scale is None else out * self.target_scale[1] + self.target_scale[0]

    # -- optimisation

    def configure_optimizers(self) -> Any:
        optim, sched = self.cfg.optim, self.cfg.sched
        decay, no_decay = self.decay_split()
        groups = [{"params": decay, "weight_decay": optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        opt = make_optimizer(optim, [g for g in groups if g["params"]])
        total = self.trainer.estimated_stepping_batches if sched.name == "onecycle" else None
        scheduler = make_scheduler(sched, opt, self.cfg.trainer.max_epochs, total,
                                   self.monitor_metric, self.monitor_mode)
        return opt if scheduler is None else {"optimizer": opt, "lr_scheduler": scheduler}

    def _replay_plateau_step(self) -> None:
        # Lightning steps ReduceLROnPlateau after the end-of-epoch checkpoint is written and skips that step on
        # resume (the metric is not in the checkpoint); replay it with the value saved alongside.
        value, self._plateau_replay = self._plateau_replay, None
        if value is None:
            return
        for config in self.trainer.lr_scheduler_configs:
            plateau = config.scheduler
            if isinstance(plateau, lrs.ReduceLROnPlateau) and plateau.last_epoch == self.current_epoch - 1:
                plateau.step(value)

    # -- checkpoint

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store cfg and spec as plain data, so `models.load_checkpoint` needs nothing but the file."""
        cfg = OmegaConf.to_container(self.cfg, resolve=True) if isinstance(self.cfg, DictConfig) else self.cfg
        spec = dataclasses.asdict(self.spec) if dataclasses.is_dataclass(self.spec) else dict(vars(self.spec))
        checkpoint["dlp_cfg"] = _plain(cfg)
        checkpoint["dlp_spec"] = _plain(spec)
        value = self.trainer.callback_metrics.get(self.monitor_metric)
        if value is not None:
            checkpoint["dlp_monitor_value"] = float(value)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_replay = checkpoint.get("dlp_monitor_value")
