"""`dlp train trainer.num_workers=N`, a worker's side: each Ray Train worker runs `train_worker`, which calls the
same `fit()` as an in-process run, under RayDDPStrategy.

Per epoch, every worker reports to Ray and rank 0 hands Ray the epoch's Lightning checkpoint; rank 0 writes the
epoch to MLflow only after Ray has committed that checkpoint, so a restarted worker group (trainer.max_failures)
always resumes at or after the last epoch MLflow holds and no epoch is ever logged twice or from an attempt that
was thrown away.

Test hook: DLP_FAULT="rank=R,epoch=E" makes worker R exit hard during epoch E (0-based) of the first attempt
only, to exercise fault tolerance.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf

from pipelines.tracking import console, names, runs
from pipelines.training.fit import fit

CKPT_FILE = "model.ckpt"
EPOCH_FILE = "dlp_epoch.json"        # the epoch and metrics a Ray checkpoint holds, for resuming the MLflow curve


def staging_dir(storage: str, output_dir: str, run_id: str) -> Path:
    """Where rank 0 writes a checkpoint before Ray copies it into storage (not /tmp: nothing piles up there)."""
    root = Path(storage) / ".staging" if "://" not in storage else Path(output_dir) / "ray-staging"
    return root / run_id


def train_worker(config: Dict[str, Any]):
    """One Ray Train worker: the driver's cfg, the latest Ray checkpoint if this is a restart, then fit()."""
    entered = time.time()
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
    from ray.train.v2._internal.execution import context

    # Ray names this logger by file path, so LoggingConfig's ray.train filter misses its per-report INFO line
    console.quiet_libraries(context.__file__)
    import warnings

    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a restart reuses the run's dir

    cfg = OmegaConf.create(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    run_id, uri = config["run_id"], config["uri"]
    staging = staging_dir(config["storage"], cfg.output_dir, run_id)
    callbacks = [RayReport(staging, rank)]
    if config.get("fault"):
        callbacks.append(FaultHook(config["fault"], staging / "fault-fired"))

    def go(ckpt_path: Optional[str], next_epoch: int = 0):
        out = fit(cfg, run_id, datamodule=_datamodule(cfg, next_epoch), ckpt_path=ckpt_path,
                  strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()],
                  extra_callbacks=callbacks, uri=uri, prepare=prepare_trainer)
        return {"best_checkpoint": out.best_checkpoint, "best_score": out.best_score,
                "test_metrics": out.test_metrics, "epochs": out.epochs, "fit_seconds": out.fit_seconds,
                "entered_at": entered, "returned_at": time.time()}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return go(config.get("ckpt_path"))
    with checkpoint.as_directory() as d:
        epoch_info = json.loads((Path(d) / EPOCH_FILE).read_text())
        if rank == 0:
            print(f"resuming from checkpoint {checkpoint.path}/{CKPT_FILE} "
                  f"(epoch {epoch_info['epoch'] + 1} of {cfg.trainer.max_epochs} done)", flush=True)
            _catch_up_mlflow(run_id, uri, epoch_info)
        return go(str(Path(d) / CKPT_FILE), epoch_info["epoch"] + 1)


def _datamodule(cfg: DictConfig, next_epoch: int):
    """The data, set up, with the training loader's shuffle count starting at `next_epoch` (a restart shuffles
    as the uninterrupted run would)."""
    import datamodules

    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")  # before fit() seeds, as `dlp train` does in-process, so the model starts from the same weights
    dm.first_epoch = next_epoch
    return dm


def _catch_up_mlflow(run_id: str, uri: str, epoch_info: dict) -> None:
    """Log the resumed checkpoint's epoch if the failed attempt died between Ray's commit and the MLflow write."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    epoch = int(epoch_info["epoch"])
    if epoch > runs.last_logged_epoch(client, run_id):
        runs.log_metrics(client, run_id, epoch_info["metrics"], step=epoch)


class RayReport(Checkpoint):
    """Reports every epoch to Ray Train, with rank 0's Lightning checkpoint; waits for Ray's commit on rank 0.

    A Checkpoint subclass so Lightning runs it after the LightningModule's on_train_epoch_end (metrics
    final) and before MLflowEpochLogger, which fit() adds later: by the time an epoch reaches MLflow,
    the checkpoint a restart would resume from is at least that epoch.
    """

    def __init__(self, staging: Path, rank: int):
        self.staging, self.rank = staging, rank
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import ray.train
        from ray.train import Checkpoint as RayCheckpoint
        from ray.train import CheckpointConsistencyMode

        epoch = trainer.current_epoch
        metrics = runs.epoch_metrics(trainer.callback_metrics)
        metrics[names.EPOCH_SECONDS] = time.perf_counter() - self._epoch_start
        directory = self.staging / f"epoch={epoch:04d}-rank{self.rank}"
        if self.rank == 0:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            (directory / EPOCH_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
        trainer.save_checkpoint(str(directory / CKPT_FILE))  # collective: every rank calls it, rank 0 writes
        checkpoint = RayCheckpoint.from_directory(str(directory)) if self.rank == 0 else None
        ray.train.report({**metrics, names.EPOCH_KEY: epoch}, checkpoint=checkpoint,
                         delete_local_checkpoint_after_upload=self.rank == 0)
        if self.rank == 0:
            ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)

    def state_dict(self) -> Dict:
        return {}


class FaultHook(Checkpoint):
    """Test hook (DLP_FAULT="rank=R,epoch=E"): worker R exits hard in epoch E, once per run."""

    def __init__(self, spec: str, marker: Path):
        fields = dict(part.split("=", 1) for part in spec.split(","))
        self.rank, self.epoch, self.marker = int(fields["rank"]), int(fields["epoch"]), marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()
            print(f"DLP_FAULT: rank {self.rank} exits during epoch {self.epoch + 1}", flush=True)
            os._exit(1)

    def state_dict(self) -> Dict:
        return {}
