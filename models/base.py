"""Shared training base for every model family: layers, loss, metrics, optimisers and schedules from cfg.

Families (models/mlp.py, models/cnn.py, ...) hand a plain nn.Module to `TaskModule`; `dlp train` builds them
through `models.build(cfg, spec)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.optim import lr_scheduler as lrs
from torchmetrics import Metric, MetricCollection

from models.optim import make_optimizer, make_scheduler
from torchmetrics import classification as C
from torchmetrics import regression as R



class Spec(Protocol):
    """What a model needs to know about its data (datamodules.base.DataSpec satisfies it)."""
    task: str                       # "classification" | "regression"
    num_classes: int                # 0 for regression
    input_shape: tuple              # (n_features,) or (C, H, W)
    class_weights: Optional[Sequence[float]]


# ---------------------------------------------------------------------------------------------- layers

_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "elu": nn.ELU,
                "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
# torch.nn.init gain names; ELU and GELU behave like ReLU for variance purposes.
_GAIN = {"relu": ("relu", 0.0), "leaky_relu": ("leaky_relu", 0.01), "prelu": ("leaky_relu", 0.25),
         "elu": ("relu", 0.0), "gelu": ("relu", 0.0), "tanh": ("tanh", 0.0), "sigmoid": ("sigmoid", 0.0)}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module (PReLU owns a parameter, so never share one instance)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"model.activation={name!r} is unknown; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def make_norm(kind: str, features: int, dims: int = 1) -> nn.Module:
    """none | batch | layer for (N, F) activations (dims=1) or (N, C, H, W) feature maps (dims=2)."""
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm1d(features) if dims == 1 else nn.BatchNorm2d(features)
    if kind == "layer":
        return nn.LayerNorm(features) if dims == 1 else nn.GroupNorm(1, features)
    raise ValueError(f"model.norm={kind!r} is unknown; choose one of none, batch, layer")


def init_weights(module: nn.Module, scheme: str, activation: str = "relu") -> None:
    """Re-initialise every Linear/Conv weight (xavier | kaiming, gain matched to `activation`); zero biases.

    `default` keeps PyTorch's own initialisation.
    """
    if scheme == "default":
        return
    if scheme not in ("xavier", "kaiming"):
        raise ValueError(f"model.init={scheme!r} is unknown; choose one of default, xavier, kaiming")
    nonlinearity, slope = _GAIN[activation]
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(nonlinearity, slope))
            else:
                nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def sequential(*modules: nn.Module) -> nn.Sequential:
    """nn.Sequential without Identity placeholders: each one is a Python call per forward for nothing."""
    return nn.Sequential(*(m for m in modules if not isinstance(m, nn.Identity)))


def output_size(spec: Spec) -> int:
    """Logits per class for classification, `horizon` values for a forecast, else one value for regression."""
    if spec.task == "classification":
        return int(spec.num_classes)
    return int(getattr(spec, "horizon", 0) or 1)


# ---------------------------------------------------------------------------------------------- sequences

def real_lengths(x: torch.Tensor, pad_index: int) -> torch.Tensor:
    """Tokens before the right padding of each (N, L) row, at least 1 so an all-pad row pools without NaN."""
    return (x != pad_index).sum(1).clamp_min(1)


def pool_positions(h: torch.Tensor, lengths: Optional[torch.Tensor], how: str) -> torch.Tensor:
    """(N, L, D) -> (N, D): last | mean | max over the first `lengths` positions (all of them when None).

    Masks instead of slicing, so shapes never depend on tensor values and torch.export keeps a dynamic batch.
    """
    if lengths is None:
        if how == "last":
            return h[:, -1]
        return h.mean(1) if how == "mean" else h.amax(1)
    if how == "last":
        return h.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, h.shape[-1])).squeeze(1)
    real = (torch.arange(h.shape[1], device=h.device) < lengths[:, None]).unsqueeze(-1)   # (N, L, 1)
    if how == "mean":
        return (h * real.to(h.dtype)).sum(1) / lengths[:, None].to(h.dtype)
    if how == "max":
        return h.masked_fill(~real, float("-inf")).amax(1)
    raise ValueError(f"model.pooling={how!r} is unknown here; choose one of last, mean, max")


def naive_forecast(x: torch.Tensor, horizon: int, season: int = 0) -> torch.Tensor:
    """The classical no-skill forecast from windows x (N, lookback, F) whose feature 0 is the target:
    the last value repeated (season=0) or the last `season` values repeated (seasonal naive), (N, horizon).

    Forecasting nets add it to their output (model.residual), so they learn a correction to it.
    """
    if season <= 0:
        return x[:, -1, :1].expand(-1, horizon)
    steps = torch.arange(horizon, device=x.device) % season + (x.shape[1] - season)
    return x[:, steps, 0]


def init_recurrent(rnn: nn.RNNBase) -> None:
    """Orthogonal hidden-to-hidden blocks, zero biases, and forget-gate bias 1 for an LSTM.

    Orthogonal recurrences keep the gradient norm steady across time steps (Saxe et al., 2014); a forget bias
    of 1 makes a fresh LSTM remember by default, so long-range gradients flow from the first step
    (Jozefowicz et al., 2015). Input-to-hidden weights keep PyTorch's initialisation.
    """
    h = rnn.hidden_size
    for name, p in rnn.named_parameters():
        if name.startswith("weight_hh"):
            for gate in p.data.split(h, 0):
                nn.init.orthogonal_(gate)
        elif name.startswith("bias"):
            nn.init.zeros_(p)
            if isinstance(rnn, nn.LSTM) and name.startswith("bias_ih"):
                p.data[h:2 * h] = 1.0   # gate order i, f, g, o; bias_hh's forget slice stays 0, so the sum is 1


# ---------------------------------------------------------------------------------------------- loss

class TaskLoss(nn.Module):
    """The training criterion; class weights are a non-persistent buffer, rebuilt from the spec, not the state dict.

    bce works on the 2-logit output: z1 - z0 is exactly the logit of softmax's p(class 1), so the same
    network, metrics and predict_step serve both losses.
    """

    def __init__(self, name: str, class_weights: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                 huber_delta: float = 1.0):
        super().__init__()
        self.name, self.smoothing, self.delta = name, label_smoothing, huber_delta
        self.register_buffer("weight", class_weights, persistent=False)

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "cross_entropy":
            return F.cross_entropy(out, y, weight=self.weight, label_smoothing=self.smoothing)
        if self.name == "mse":
            return F.mse_loss(out, y)
        if self.name == "huber":
            return F.huber_loss(out, y, delta=self.delta)
        # bce: smoothed targets (1 - e) * y + e / 2, as cross_entropy smooths with K=2
        target = y.to(out.dtype) * (1.0 - self.smoothing) + 0.5 * self.smoothing
        loss = F.binary_cross_entropy_with_logits(out[:, 1] - out[:, 0], target, reduction="none")
        if self.weight is None:
            return loss.mean()
        w = self.weight[y]  # per-sample weight, normalised like cross_entropy's weighted mean
        return (loss * w).sum() / w.sum()


def make_loss(loss_cfg: DictConfig, spec: Spec) -> TaskLoss:
    """Task-aware criterion: cross_entropy | bce (2 classes) for classification, mse | huber for regression."""
    name = loss_cfg.name
    if spec.task == "classification":
        name = "cross_entropy" if name == "auto" else name
        if name not in ("cross_entropy", "bce"):
            raise ValueError(f"loss.name={name} does not fit a classification task; use auto, cross_entropy or bce")
        if name == "bce" and spec.num_classes != 2:
            raise ValueError(f"loss.name=bce needs 2 classes, the data has {spec.num_classes}; use cross_entropy")
        weights = None
        if spec.class_weights is not None:
            weights = torch.as_tensor(list(spec.class_weights), dtype=torch.float32)
        return TaskLoss(name, weights, label_smoothing=loss_cfg.label_smoothing)
    if spec.task == "regression":
        name = "mse" if name == "auto" else name
        if name not in ("mse", "huber"):
            raise ValueError(f"loss.name={name} does not fit a regression task; use auto, mse or huber")
        return TaskLoss(name, huber_delta=loss_cfg.huber_delta)
    raise ValueError(f"data task {spec.task!r} is unknown; expected classification or regression")


# ---------------------------------------------------------------------------------------------- metrics

class LogLoss(Metric):
    """Mean negative log-likelihood of the true class; probabilities clipped at float eps, as sklearn does."""
    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        p = probs.gather(1, target[:, None]).clamp_min(torch.finfo(probs.dtype).eps)
        self.total += -p.log().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class PositiveClassAUROC(C.BinaryAUROC):
    """Binary AUROC fed the same (N, 2) probabilities as the other classification metrics."""

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        super().update(probs[:, 1], target)


CLASSIFICATION_METRICS = ("loss", "acc", "precision", "recall", "f1", "auroc", "log_loss")
REGRESSION_METRICS = ("loss", "mse", "rmse", "mae", "r2")


def metric_names(task: str, split: str) -> list[str]:
    """Every metric TaskModule logs for a split ('train' has loss, acc and lr only)."""
    if split == "train":
        return ["train/loss", "train/lr"] + (["train/acc"] if task == "classification" else [])
    names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    return [f"{split}/{name}" for name in names]


def make_metrics(spec: Spec) -> MetricCollection:
    """Epoch metrics for one split; classification ones take softmax probabilities, regression ones values."""
    if spec.task == "classification":
        k = int(spec.num_classes)
        return MetricCollection({
            "acc": C.MulticlassAccuracy(k, average="micro"),
            "precision": C.MulticlassPrecision(k, average="macro"),
            "recall": C.MulticlassRecall(k, average="macro"),
            "f1": C.MulticlassF1Score(k, average="macro"),
            "auroc": PositiveClassAUROC() if k == 2 else C.MulticlassAUROC(k, average="macro"),
            "log_loss": LogLoss(),
        })
    return MetricCollection({"mse": R.MeanSquaredError(), "rmse": R.MeanSquaredError(squared=False),
                             "mae": R.MeanAbsoluteError(), "r2": R.R2Score()})


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
        logs = {"train/loss": sums[0] / sums[2]}
        if self.classification:
            logs["train/acc"] = sums[1] / sums[2]
        self.log_dict(logs, sync_dist=True)  # equal on every rank by now; sync_dist only quiets Lightning
        self._losses, self._sizes, self._hits = [], [], []

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
