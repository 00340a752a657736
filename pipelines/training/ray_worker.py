"""`dlp train trainer.num_workers=N`, a worker's side: each Ray Train worker runs `train_worker`, which calls the
same `fit()` as an in-process run, under RayDDPStrategy.

No shared disk is assumed: per epoch, every worker reports to Ray and rank 0 hands Ray the epoch's Lightning
checkpoint, which Ray copies into trainer.storage_path (a local folder on one node; a shared filesystem or
s3:// on several). The test pass after fit reads Ray's best checkpoint from there on every rank, a restarted
worker group resumes from Ray's latest, and what a worker staged on its node's disk is removed when it ends.
Workers never write epochs to MLflow: Ray's controller does, on the driver's node (ray_tracking.py). The one
exception is a node's system metrics, which the worker of local rank 0 on a node other than the driver's logs
when the tracking store takes writes from there (a server or a database; `node_monitor`).

Test hook: DLP_FAULT="rank=R,epoch=E" makes worker R exit hard during epoch E (0-based) of the first attempt
only, to exercise fault tolerance.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf

from pipelines.tracking import callbacks, console, system_metrics
from pipelines.training.fit import fit
from pipelines.training.ray_tracking import EPOCH_FILE

CKPT_FILE = "model.ckpt"


def staging_dir(storage: str, output_dir: str, run_id: str) -> Path:
    """Where a worker writes a checkpoint before Ray copies it into storage, and fetches one to read: beside
    a local storage, else under output_dir on this node (not /tmp: nothing piles up there); removed at the end."""
    root = Path(storage) / ".staging" if "://" not in storage else Path(output_dir) / "ray-staging"
    return root / run_id


def remove_staging(staging: Path) -> None:
    """Remove this run's staging folder, and the folders above it that it leaves empty."""
    shutil.rmtree(staging, ignore_errors=True)
    for parent in (staging.parent, staging.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()


def remove_stagings(paths: Sequence[str]) -> None:
    """remove_staging for each path, on the node this runs on (nodes.on_every_node)."""
    for path in paths:
        remove_staging(Path(path))


def monitor_config(uri: str) -> Dict[str, Any]:
    """On the driver: what the workers need to monitor their nodes (`node_monitor`), for their config."""
    import ray

    return {"uri": uri, "driver_node": ray.util.get_node_ip_address()}


def node_monitor(cfg: DictConfig, config: Dict[str, Any], local_rank: int):
    """This node's system metrics into the run, from the worker of local rank 0 (one monitor per node), unless
    the driver's monitor covers the node (the driver's node) or the store is one only the driver's disk holds."""
    import ray

    node = ray.util.get_node_ip_address()
    if local_rank != 0 or node == config.get("driver_node") or \
            not system_metrics.reachable_from_other_nodes(config.get("uri") or ""):
        return contextlib.nullcontext()
    return system_metrics.monitoring(cfg, config["run_id"], config["uri"], node_id=node)


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
    staging = staging_dir(config["storage"], cfg.output_dir, config["run_id"])
    checkpoint = ray.train.get_checkpoint()
    report = RayReport(staging, rank, cfg.monitor.metric, cfg.monitor.mode)
    # the fault fires on a first attempt only: a restart resumes from a Ray checkpoint
    faults = [FaultHook(config["fault"], staging / "fault-fired")] if config.get("fault") and not checkpoint else []

    def go(ckpt_path: Optional[str], next_epoch: int = 0):
        out = fit(cfg, None, datamodule=_datamodule(cfg, next_epoch, config.get("stream")), ckpt_path=ckpt_path,
                  strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()], checkpoint=report,
                  extra_callbacks=faults, prepare=prepare_trainer)
        return {"best_score": out.best_score, "test_metrics": out.test_metrics, "epochs": out.epochs,
                "fit_seconds": out.fit_seconds, "entered_at": entered, "returned_at": time.time()}

    try:
        with node_monitor(cfg, config, ray.train.get_context().get_local_rank()):
            return _start(go, config, checkpoint, staging, rank, cfg.trainer.max_epochs)
    finally:
        remove_staging(staging)


def _start(go, config: Dict[str, Any], checkpoint, staging: Path, rank: int, max_epochs: int):
    """go() from the checkpoint to start from: Ray's latest on a restart, else the driver's resume target."""
    if checkpoint is None:
        start = config.get("ckpt_path")
        return go(_fetch(start, staging / f"resume-rank{rank}") if start else None)
    with checkpoint.as_directory() as d:
        epoch_info = json.loads((Path(d) / EPOCH_FILE).read_text())
        if rank == 0:
            print(f"resuming from checkpoint {checkpoint.path}/{CKPT_FILE} "
                  f"(epoch {epoch_info['epoch'] + 1} of {max_epochs} done)", flush=True)
        return go(str(Path(d) / CKPT_FILE), epoch_info["epoch"] + 1)


def _fetch(uri: str, directory: Path) -> str:
    """A copy on this node of the checkpoint file at `uri` in Ray's storage (the driver put it there)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    directory.mkdir(parents=True, exist_ok=True)
    local = directory / CKPT_FILE
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return str(local)


def _datamodule(cfg: DictConfig, next_epoch: int, stream: Optional[Dict[str, Any]] = None):
    """The data, set up, with the training loader's shuffle count starting at `next_epoch` (a restart shuffles
    as the uninterrupted run would). A streamed table takes the driver's statistics and reads its Ray Data shards."""
    import datamodules

    if stream is not None:   # the driver's datamodule class: this node may not even see data.path
        from pipelines.training import ray_data

        dm = stream["cls"](cfg.data, cfg.seed)
        ray_data.adopt(dm, stream)
    else:
        dm = datamodules.build(cfg.data, cfg.seed)
        dm.setup("fit")  # before fit() seeds, as `dlp train` does in-process, so the model starts from the same weights
    dm.first_epoch = next_epoch
    return dm


class RayReport(callbacks.EpochReport):
    """fit()'s checkpoint callback in a worker: every epoch goes to Ray Train with rank 0's Lightning checkpoint,
    and after fit the best of Ray's checkpoints is the one every rank tests.

    Rank 0 waits for Ray to commit each checkpoint, so the best one is known to Ray when training ends.
    """

    def __init__(self, staging: Path, rank: int, monitor: str, mode: str):
        import ray

        super().__init__(ray.util.get_node_ip_address())
        self.staging, self.rank, self.monitor, self.mode = staging, rank, monitor, mode
        self._best: Optional[tuple] = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import ray.train
        from ray.train import Checkpoint as RayCheckpoint
        from ray.train import CheckpointConsistencyMode

        epoch = trainer.current_epoch
        metrics, report = self.measured(trainer)
        directory = self.staging / f"epoch={epoch:04d}-rank{self.rank}"
        if self.rank == 0:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            (directory / EPOCH_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
        trainer.save_checkpoint(str(directory / CKPT_FILE))  # collective: every rank calls it, rank 0 writes
        checkpoint = RayCheckpoint.from_directory(str(directory)) if self.rank == 0 else None
        ray.train.report(report, checkpoint=checkpoint, delete_local_checkpoint_after_upload=self.rank == 0)
        if self.rank == 0:
            ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)

    @property
    def best_model_path(self) -> Optional[str]:
        """A local copy (or, on a local storage, the path) of Ray's best checkpoint by the monitored metric."""
        return self._resolve_best()[0]

    @property
    def best_model_score(self) -> Optional[float]:
        return self._resolve_best()[1]

    def _resolve_best(self) -> tuple:
        if self._best is None:
            import pyarrow.fs as pafs
            import ray.train
            from ray.train import CheckpointConsistencyMode

            reported = ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
            scored = [r for r in reported if r.metrics.get(self.monitor) is not None]
            if not scored:
                self._best = (None, None)
                return self._best
            pick = max if self.mode == "max" else min
            best = pick(scored, key=lambda r: r.metrics[self.monitor])
            ckpt = best.checkpoint
            if isinstance(ckpt.filesystem, pafs.LocalFileSystem) and (Path(ckpt.path) / CKPT_FILE).is_file():
                path = Path(ckpt.path) / CKPT_FILE
            else:
                path = Path(ckpt.to_directory(str(self.staging / f"best-rank{self.rank}"))) / CKPT_FILE
            self._best = (str(path), float(best.metrics[self.monitor]))
        return self._best
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
