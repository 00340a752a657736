"""Lightning callbacks that write each finished epoch: into the MLflow run (rank 0, by run id) or as a line.

fit() adds them; the driver owns the run, these only log into it.
"""
from __future__ import annotations

import time
from typing import Dict

from lightning.pytorch.callbacks import Checkpoint

from pipelines.tracking import names, runs


class EpochEnd(Checkpoint):
    """Calls `epoch_end(trainer, metrics)` once per finished epoch on rank 0, metrics final.

    A Checkpoint subclass on purpose: Lightning runs checkpoint-type callbacks' on_train_epoch_end
    after the LightningModule's, so the epoch's aggregated train/ and val/ metrics are complete here.
    """

    def epoch_end(self, trainer, metrics: Dict[str, float]) -> None:
        raise NotImplementedError

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        self.epoch_end(trainer, runs.epoch_metrics(trainer.callback_metrics))

    def state_dict(self) -> Dict:
        return {}


class EpochClock:
    """Times an epoch for its perf/ metrics: the whole epoch, and the training batches alone (Lightning
    validates from inside the training epoch, after its last batch)."""

    def __init__(self):
        self._epoch_start, self._train_seconds = 0.0, None

    def epoch_started(self) -> None:
        self._epoch_start, self._train_seconds = time.perf_counter(), None

    def validation_started(self) -> None:
        if self._train_seconds is None and self._epoch_start:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def times(self) -> Dict[str, float]:
        out = {names.EPOCH_SECONDS: time.perf_counter() - self._epoch_start}   # validation, checkpoints included
        if self._train_seconds is not None:
            out[names.TRAIN_SECONDS] = self._train_seconds                    # the training batches only
        return out


class EpochReport(Checkpoint):
    """Base of the callbacks that hand every finished epoch to Ray — RayReport in a Ray Train worker, TuneReport
    in a trial trained in its Tune actor: times the epoch and builds its report, which names `node` (this node's
    Ray address). A Checkpoint subclass, so Lightning runs it after the LightningModule's on_train_epoch_end
    (metrics final) and after checkpoint callbacks listed before it."""

    def __init__(self, node: str):
        self.clock = EpochClock()
        self.node = node

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.clock.epoch_started()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.clock.validation_started()

    def measured(self, trainer) -> tuple:
        """(the epoch's train/, val/ and perf/ time metrics; those with the epoch number and this node: the report)."""
        metrics = {**runs.epoch_metrics(trainer.callback_metrics), **self.clock.times()}
        return metrics, {**metrics, names.EPOCH_KEY: trainer.current_epoch, names.NODE_KEY: self.node}

    def state_dict(self) -> Dict:
        return {}


class MLflowEpochLogger(EpochEnd):
    """Logs every train/ and val/ metric once per epoch (step = epoch) from rank 0, by run id.

    Epochs already in the run (a resumed run) are skipped, so an epoch is never logged twice.
    """

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri
        self.client = None
        self.last_logged = -1
        self.clock = EpochClock()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.global_rank != 0 or stage != "fit":
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(self.uri)
        self.last_logged = runs.last_logged_epoch(self.client, self.run_id)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.clock.epoch_started()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.clock.validation_started()

    def epoch_end(self, trainer, metrics: Dict[str, float]) -> None:
        epoch = trainer.current_epoch
        if self.client is None or epoch <= self.last_logged:
            return
        metrics.update(self.clock.times())
        runs.log_metrics(self.client, self.run_id, metrics, step=epoch)
        self.last_logged = epoch


class EpochPrinter(EpochEnd):
    """One line per epoch where no progress bar can draw (logs, CI, Ray workers)."""

    SHOWN = ("train/loss", "val/loss", "train/acc", "val/acc", "val/r2")

    def __init__(self, monitor: str):
        self.monitor = monitor

    def epoch_end(self, trainer, metrics: Dict[str, float]) -> None:
        keys = dict.fromkeys([*self.SHOWN, self.monitor])
        shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}", flush=True)
