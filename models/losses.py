"""The training criterion of a task: cross-entropy or BCE for classification, MSE or Huber for regression."""
from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

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


def make_loss(loss_cfg: DictConfig, spec) -> TaskLoss:
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
