"""`dlp train trainer.num_workers=N`: the same `fit()` in N Ray Train workers (DDP over gloo or NCCL).

The driver (`run`) joins the cluster in $RAY_ADDRESS or starts a local one, runs a TorchTrainer
whose workers each call `pipelines.train.fit` under RayDDPStrategy, and hands back a FitResult
whose best checkpoint is a local .ckpt file. The only module that imports `ray.train`.

Per epoch, every worker reports to Ray and rank 0 hands Ray the epoch's Lightning checkpoint;
rank 0 writes the epoch to MLflow only after Ray has committed that checkpoint, so a restarted
worker group (trainer.max_failures) always resumes at or after the last epoch MLflow holds and
no epoch is ever logged twice or from an attempt that was thrown away.

Test hook: DLP_FAULT="rank=R,epoch=E" makes worker R exit hard during epoch E (0-based) of the
first attempt only, to exercise fault tolerance.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf

from pipelines import raycluster, tracking
from pipelines.errors import UserError

log = logging.getLogger("dlp")

CKPT_FILE = "model.ckpt"
EPOCH_FILE = "dlp_epoch.json"        # the epoch and metrics a Ray checkpoint holds, for resuming the MLflow curve


class TrainingFailed(UserError):
    """A distributed run that Ray gave up on (a worker died more often than trainer.max_failures allows)."""

    exit_code = 1


# ---- driver ---------------------------------------------------------------------------------

def lr_factor(cfg: DictConfig) -> float:
    """How much trainer.lr_scaling multiplies optim.lr by, relative to one worker."""
    world = max(1, int(cfg.trainer.num_workers))
    return {"none": 1.0, "linear": float(world), "sqrt": math.sqrt(world)}[cfg.trainer.lr_scaling]


def storage_path(cfg: DictConfig) -> str:
    """Where Ray keeps checkpoints: trainer.storage_path (a shared path or s3:// on a cluster), else <output_dir>/ray."""
    path = cfg.trainer.storage_path or str(Path(cfg.output_dir) / "ray")
    return path if "://" in path else str(Path(path).expanduser().resolve())


def worker_config(cfg: DictConfig) -> Dict[str, Any]:
    """cfg as plain data for the workers: paths made absolute (their working directory is not ours), lr scaled once."""
    from pipelines.config import with_absolute_paths

    plain = with_absolute_paths(cfg)
    factor = lr_factor(cfg)
    plain["optim"]["lr"] = cfg.optim.lr * factor
    if plain["sched"].get("max_lr") is not None:
        plain["sched"]["max_lr"] = cfg.sched.max_lr * factor
    t = plain["trainer"]
    t["accelerator"], t["devices"] = ("gpu" if t["use_gpu"] else "cpu"), "auto"
    return plain


def unfinished_run(cfg: DictConfig, experiment_id: str) -> Optional[str]:
    """resume=auto: the newest run of this experiment that Ray holds checkpoints for and MLflow has not seen finish.

    Its Ray run directory is named by the MLflow run id, so training again under that name makes Ray hand
    the workers its latest checkpoint."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    root = Path(storage_path(cfg))
    if "://" in str(cfg.trainer.storage_path or "") or not root.is_dir():
        return None
    client = MlflowClient()
    snapshots = sorted(root.glob("*/checkpoint_manager_snapshot.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for snapshot in snapshots:
        try:
            run = client.get_run(snapshot.parent.name)
        except MlflowException:
            continue
        if run.info.experiment_id == experiment_id and run.info.status != "FINISHED":
            log.info("resume=auto: continuing run %s from Ray's checkpoints in %s", run.info.run_id, snapshot.parent)
            return run.info.run_id
    return None


def staging_dir(storage: str, output_dir: str, run_id: str) -> Path:
    """Where rank 0 writes a checkpoint before Ray copies it into storage (not /tmp: nothing piles up there)."""
    root = Path(storage) / ".staging" if "://" not in storage else Path(output_dir) / "ray-staging"
    return root / run_id


def run(cfg: DictConfig, run_id: str, uri: str, ckpt_path: Optional[str] = None, report_to_tune: bool = False):
    """Train `cfg` in cfg.trainer.num_workers Ray Train workers; the driver's MLflow run `run_id` gets the epochs.

    Args:
        ckpt_path: a Lightning checkpoint to start from (resume=...), used when Ray has none of its own.
        report_to_tune: called from a Ray Tune trial (`dlp tune`): every epoch's report also becomes a Tune result.
    Returns:
        pipelines.train.FitResult with a local path to the best checkpoint.
    """
    import mlflow

    from pipelines.train import FitResult

    raycluster.train_env(local=not os.environ.get("RAY_ADDRESS"))  # Ray Train reads (and propagates) it from here
    t = cfg.trainer
    lr = cfg.optim.lr * lr_factor(cfg)
    mlflow.set_tags({"dlp.world_size": str(t.num_workers), "dlp.effective_lr": f"{lr:g}",
                     "dlp.ray_storage": f"{storage_path(cfg)}/{run_id}"})
    started = raycluster.connect()
    try:
        fit_called = time.time()
        result, wall = _fit_on_ray(cfg, run_id, uri, ckpt_path, report_to_tune)
    finally:
        shutil.rmtree(staging_dir(storage_path(cfg), str(Path(cfg.output_dir).resolve()), run_id), ignore_errors=True)
        if started:  # the local cluster stops while the driver logs plots and the model (Python joins it at exit)
            raycluster.shutdown_in_background()
    out = result.return_value or {}
    _log_launch_times(out, fit_called, wall)
    best, score = _best_checkpoint(result, cfg, run_id)
    return FitResult(best_checkpoint=best or out.get("best_checkpoint"),
                     best_score=score if score is not None else out.get("best_score"),
                     test_metrics=out.get("test_metrics", {}), epochs=out.get("epochs", 0),
                     fit_seconds=out.get("fit_seconds", wall))


# set by `dlp train` when this process is the command itself (not a test, script or Tune trial calling train())
COMMAND_PROCESS = False


def _log_launch_times(out: Dict[str, Any], fit_called: float, wall: float) -> None:
    """Where a distributed run's time outside training goes, as run metrics (seconds; `benchmarks/scaling.py`
    breaks the launch overhead down with them): this process's start to TorchTrainer.fit() (imports, the local
    cluster's start, data checks, the MLflow run; only when the process is the `dlp train` command), fit() to rank 0
    entering the train function (Ray Train's controller, placement group and worker processes, their imports),
    rank 0's work outside Lightning's fit (data, model, process group, the test pass), and rank 0's return to
    fit() returning (Ray Train's shutdown)."""
    import mlflow

    if "entered_at" not in out:
        return
    times = {"ray_train_start_seconds": out["entered_at"] - fit_called,
             "worker_setup_seconds": out["returned_at"] - out["entered_at"] - out["fit_seconds"],
             "ray_train_stop_seconds": fit_called + wall - out["returned_at"]}
    started = _process_start() if COMMAND_PROCESS else None
    if started is not None:
        times["to_ray_fit_seconds"] = fit_called - started
    mlflow.log_metrics({f"perf/launch/{k}": round(v, 3) for k, v in times.items()})


def _process_start() -> Optional[float]:
    """This process's start as a Unix time, from /proc (Linux; None elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _fit_on_ray(cfg: DictConfig, run_id: str, uri: str, ckpt_path: Optional[str], report_to_tune: bool = False):
    import signal

    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    t = cfg.trainer
    config = {"cfg": worker_config(cfg), "run_id": run_id, "uri": tracking.absolute_uri(uri), "ckpt_path": ckpt_path,
              "fault": os.environ.get("DLP_FAULT"), "storage": storage_path(cfg)}
    trainer = TorchTrainer(
        _train_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=dict(t.resources_per_worker) or {"CPU": 1}),
        run_config=RunConfig(
            name=run_id, storage_path=storage_path(cfg),
            callbacks=[_tune_callback()] if report_to_tune else None,
            failure_config=FailureConfig(max_failures=t.max_failures),
            # Ray always keeps the latest checkpoint as well, which is the one a restart resumes from
            checkpoint_config=CheckpointConfig(num_to_keep=None if t.save_top_k < 0 else max(1, t.save_top_k),
                                               checkpoint_score_attribute=cfg.monitor.metric,
                                               checkpoint_score_order=cfg.monitor.mode),
            # Ray's per-report and worker-group INFO lines would bury the one line per epoch; warnings still show
            logging_config=LoggingConfig(log_level="WARNING")))
    import threading

    # TorchTrainer.fit installs its own Ctrl-C handler (in the main thread only: a Tune trial runs in another)
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        raise TrainingFailed(_failure_message(e, t.max_failures)) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, handler)
    if result.error is not None:
        raise TrainingFailed(_failure_message(result.error, t.max_failures))
    if result.return_value is None:  # Ray's Ctrl-C handler aborted the run: no worker finished fit()
        raise KeyboardInterrupt
    return result, time.perf_counter() - start


def _tune_callback():
    """Ray's bridge from a TorchTrainer inside a Tune trial to Tune: rank 0's reports become the trial's results."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return TuneReportCallback()


def _failure_message(error: Exception, max_failures: int) -> str:
    from ray.exceptions import RayActorError

    def died(exc: Exception) -> bool:  # Ray reports a vanished worker as a failed health check or a dead actor
        exc = getattr(exc, "health_check_failure", exc)
        return isinstance(exc, RayActorError)

    failures = getattr(error, "worker_failures", None) or {}
    if failures:
        # a worker whose process died is the cause; its peers only see their collectives break
        rank, exc = min(failures.items(), key=lambda item: (not died(item[1]), item[0]))
        if died(exc):
            why = f"worker rank {rank} died (its process exited; see its log above)"
        else:
            what = str(exc).strip().splitlines()
            why = f"worker rank {rank} raised {type(exc).__name__}: {what[0] if what else ''}"
    else:
        lines = [line for line in str(error).splitlines() if line.strip()]
        why = lines[-1] if lines else type(error).__name__
    retries = "no restarts allowed" if max_failures == 0 else f"after {max_failures} restart(s)"
    return (f"distributed training failed ({retries}; raise trainer.max_failures to survive worker loss): "
            f"{why[:300]}")


def _best_checkpoint(result, cfg: DictConfig, run_id: str) -> tuple:
    """(local .ckpt path, score) of Ray's best checkpoint by the monitored metric; remote storage is downloaded."""
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(cfg.monitor.metric) is not None]
    if not ranked:
        return None, None
    pick = max if cfg.monitor.mode == "max" else min
    ckpt, metrics = pick(ranked, key=lambda cm: cm[1][cfg.monitor.metric])
    import pyarrow.fs

    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        path = Path(ckpt.path) / CKPT_FILE
    else:
        from pipelines.train import checkpoint_dir

        path = Path(ckpt.to_directory(str(checkpoint_dir(cfg, run_id) / "ray-best"))) / CKPT_FILE
    return (str(path) if path.is_file() else None), float(metrics[cfg.monitor.metric])


# ---- worker ---------------------------------------------------------------------------------

def _train_worker(config: Dict[str, Any]):
    """One Ray Train worker: the driver's cfg, the latest Ray checkpoint if this is a restart, then fit()."""
    entered = time.time()
    import ray.train
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        prepare_trainer,
    )

    from pipelines.train import fit

    _quiet_worker()

    cfg = OmegaConf.create(config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
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
    """The data, set up, with the training loader's shuffle counter set to `next_epoch`.

    BatchLoader draws epoch e's order from seed + e, counting epochs itself from 0; Lightning creates the
    first iterator before any hook runs, so a restarted worker must start the count where the run stopped
    to shuffle as the uninterrupted run would.
    """
    import datamodules

    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")  # before fit() seeds, as `dlp train` does in-process, so the model starts from the same weights
    if next_epoch:
        make = dm.train_dataloader

        def train_dataloader():
            loader = make()
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(next_epoch)
            return loader

        dm.train_dataloader = train_dataloader
    return dm


def _quiet_worker() -> None:
    import warnings

    from ray.train.v2._internal.execution import context

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Ray names this logger by file path, so LoggingConfig's ray.train filter misses its per-report INFO line
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "mlflow", "alembic", context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*deterministic.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a restart reuses the run's dir
    warnings.filterwarnings("ignore", category=FutureWarning)


def _catch_up_mlflow(run_id: str, uri: str, epoch_info: dict) -> None:
    """Log the resumed checkpoint's epoch if the failed attempt died between Ray's commit and the MLflow write."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    logged = max((m.step for m in client.get_metric_history(run_id, "train/loss")), default=-1)
    epoch = int(epoch_info["epoch"])
    if epoch > logged:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in epoch_info["metrics"].items()])


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
        from ray.train import Checkpoint, CheckpointConsistencyMode

        from pipelines.tracking import EPOCH_PREFIXES

        epoch = trainer.current_epoch
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(EPOCH_PREFIXES)}
        metrics["perf/epoch_seconds"] = time.perf_counter() - self._epoch_start
        directory = self.staging / f"epoch={epoch:04d}-rank{self.rank}"
        if self.rank == 0:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            (directory / EPOCH_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
        trainer.save_checkpoint(str(directory / CKPT_FILE))  # collective: every rank calls it, rank 0 writes
        checkpoint = Checkpoint.from_directory(str(directory)) if self.rank == 0 else None
        ray.train.report({**metrics, "epoch": epoch}, checkpoint=checkpoint,
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
