"""The epoch metrics TaskModule logs per split, their names, and which way each one improves."""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics import classification as C
from torchmetrics import regression as R

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


def make_metrics(spec) -> MetricCollection:
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


# which way a metric improves (by its name after the split prefix): losses and errors fall, the rest rise
LOWER_IS_BETTER = frozenset({"loss", "log_loss", "mse", "rmse", "mae"})


def higher_is_better(name: str) -> bool:
    """True for acc, f1, r2, auroc ...; False for loss, log_loss, mse, rmse, mae (`val/acc` and `acc` alike)."""
    return name.split("/")[-1] not in LOWER_IS_BETTER
