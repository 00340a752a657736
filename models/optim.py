"""Optimisers and learning-rate schedules built from the `optim` and `sched` config sections.

Used by models.base.TaskModule.configure_optimizers (every `dlp train`).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch.optim import lr_scheduler as lrs

WARMUP_START = 0.01  # warm-up begins at 1 % of the target learning rate


def make_optimizer(optim: DictConfig, groups: list) -> torch.optim.Optimizer:
    """sgd | adam | adamw | rmsprop | adagrad over param groups that already carry their weight_decay."""
    name, lr = optim.name, optim.lr
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, betas=tuple(optim.betas))
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=optim.momentum)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr)
    raise ValueError(f"optim.name={name!r} is unknown; choose one of sgd, adam, adamw, rmsprop, adagrad")


class WarmupPlateau(lrs.ReduceLROnPlateau):
    """ReduceLROnPlateau after a linear warm-up (SequentialLR refuses plateau: its step needs the metric).

    The monitored metric is ignored during warm-up, so the plateau's patience starts counting afterwards.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: int, **kwargs: Any):
        super().__init__(optimizer, **kwargs)
        self.warmup_epochs = warmup_epochs
        self.target_lrs = [g["lr"] for g in optimizer.param_groups]
        self._warm(0)

    def _warm(self, epoch: int) -> None:
        factor = WARMUP_START + (1.0 - WARMUP_START) * epoch / self.warmup_epochs
        for group, lr in zip(self.optimizer.param_groups, self.target_lrs):
            group["lr"] = lr * factor
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def step(self, metrics: Any, epoch: Optional[int] = None) -> None:  # type: ignore[override]
        if self.last_epoch < self.warmup_epochs:
            self.last_epoch += 1
            self._warm(self.last_epoch)
        else:
            super().step(metrics, epoch)


def make_scheduler(sched: DictConfig, opt: torch.optim.Optimizer, max_epochs: int,
                   total_steps: Optional[float] = None, monitor: str = "val/loss",
                   mode: str = "min") -> Optional[dict]:
    """Lightning scheduler config for `sched` (None for constant without warm-up).

    Epoch-wise except onecycle (per step over `total_steps`, where warm-up epochs set its rising phase).
    """
    name, warmup = sched.name, sched.warmup_epochs
    if name == "onecycle":
        if total_steps is None or not math.isfinite(total_steps):
            raise ValueError("sched.name=onecycle needs a finite run length; set trainer.max_epochs")
        pct = min(max(warmup / max_epochs, 1e-3), 0.999) if warmup > 0 else 0.3
        cycle = "betas" in opt.defaults or opt.defaults.get("momentum", 0) > 0
        s = lrs.OneCycleLR(opt, max_lr=sched.max_lr or opt.defaults["lr"], total_steps=int(total_steps),
                           pct_start=pct, cycle_momentum=cycle)
        return {"scheduler": s, "interval": "step"}
    if name == "plateau":
        kw = dict(mode=mode, factor=sched.factor, patience=sched.patience)
        s = WarmupPlateau(opt, warmup, **kw) if warmup > 0 else lrs.ReduceLROnPlateau(opt, **kw)
        return {"scheduler": s, "interval": "epoch", "monitor": monitor}
    if name == "constant":
        main = None
    elif name == "step":
        main = lrs.StepLR(opt, step_size=sched.step_size, gamma=sched.gamma)
    elif name == "exponential":
        main = lrs.ExponentialLR(opt, gamma=sched.gamma)
    elif name == "cosine":
        main = lrs.CosineAnnealingLR(opt, T_max=max(1, max_epochs - warmup), eta_min=sched.min_lr)
    else:
        raise ValueError(f"sched.name={name!r} is unknown; choose one of constant, step, exponential, "
                         "cosine, onecycle, plateau")
    if warmup > 0:
        warm = lrs.LinearLR(opt, start_factor=WARMUP_START, total_iters=warmup)
        main = warm if main is None else lrs.SequentialLR(opt, [warm, main], milestones=[warmup])
    return None if main is None else {"scheduler": main, "interval": "epoch"}
