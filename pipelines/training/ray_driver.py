"""`dlp train trainer.num_workers=N`, the driver's side: the same `fit()` in N Ray Train workers (DDP over gloo
or NCCL), through a TorchTrainer whose workers run ray_worker.train_worker.

The driver joins the cluster in $RAY_ADDRESS or starts a local one (pipelines/cluster/local.py) and checks,
before its MLflow run exists, that every node reaches trainer.storage_path (pipelines/cluster/nodes.py). It runs
the TorchTrainer with ray_tracking.MLflowReport, which writes each epoch into the run from Ray's controller on
this node, logs the test metrics the workers return, and hands back a FitResult whose best checkpoint is a local
copy of Ray's best (removed by `clean_up` once the model is logged). Only here and in ray_*.py is `ray.train`."""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from omegaconf import DictConfig

from pipelines import signals
from pipelines.errors import UserError, first_line
from pipelines.tracking import names, store
from pipelines.training import ray_data, ray_tracking, ray_worker
from pipelines.training.fit import FitResult

log = logging.getLogger("dlp")


class TrainingFailed(UserError):
    """A distributed run that Ray gave up on (a worker died more often than trainer.max_failures allows)."""

    exit_code = 1


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
    from pipelines.config.compose import with_absolute_paths

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

    Its Ray run directory (local, shared or s3://) is named by the MLflow run id, so training again under that
    name makes Ray hand the workers its latest checkpoint."""
    import pyarrow.fs as pafs
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        fs, root = pafs.FileSystem.from_uri(storage_path(cfg))
        runs_ = [e for e in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                 if e.type == pafs.FileType.Directory]
        snapshots = [i for i in fs.get_file_info([f"{e.path}/checkpoint_manager_snapshot.json" for e in runs_])
                     if i.type == pafs.FileType.File]
    except (OSError, ValueError) as e:
        raise UserError(f"resume=auto: cannot read trainer.storage_path {storage_path(cfg)}: {e}") from None
    client = MlflowClient()
    for snapshot in sorted(snapshots, key=lambda i: i.mtime_ns or 0, reverse=True):
        run_dir = snapshot.path.rsplit("/", 2)[-2]
        try:
            run = client.get_run(run_dir)
        except MlflowException:
            continue
        if run.info.experiment_id == experiment_id and run.info.status != "FINISHED":
            log.info("resume=auto: continuing run %s from Ray's checkpoints in %s", run.info.run_id,
                     snapshot.path.rsplit("/", 1)[0])
            return run.info.run_id
    return None


def prepare(cfg: DictConfig, cluster=None) -> None:
    """Before the MLflow run opens: join (or start) the cluster and check that every node reaches the storage."""
    from pipelines.cluster import nodes

    if cluster is not None:
        cluster.connect()
    nodes.check_storage(storage_path(cfg))


def clean_up(cfg: DictConfig, *run_ids: str, storage: Optional[str] = None) -> None:
    """Remove what the runs staged on each node's disk: the driver's copy of the best checkpoint, and what a
    worker left when it was killed (by a failure, or by Tune stopping its trial) before removing its own."""
    import ray

    from pipelines.cluster import nodes

    storage = storage or storage_path(cfg)
    paths = [str(ray_worker.staging_dir(storage, str(Path(cfg.output_dir).resolve()), r)) for r in run_ids]
    ray_worker.remove_stagings(paths)
    try:
        if ray.is_initialized() and len(nodes.alive_nodes()) > 1:
            nodes.on_every_node(ray_worker.remove_stagings, paths)
    except Exception as e:  # a node lost with the run: nothing to clean there; never hide the run's own error
        log.warning("could not clean up the staging folders on every node: %s", first_line(e))


def run(cfg: DictConfig, run_id: str, uri: str, ckpt_path: Optional[str] = None, callbacks: Sequence = (),
        cluster=None, process_started: Optional[float] = None, datamodule=None) -> FitResult:
    """Train `cfg` in cfg.trainer.num_workers Ray Train workers; the driver's MLflow run `run_id` gets the epochs.

    Args:
        ckpt_path: a Lightning checkpoint to start from (resume=...), used when Ray has none of its own.
        callbacks: Ray Train run callbacks (a Tune trial's: every epoch's report also becomes a Tune result).
        cluster: the command's RayCluster (stopped here in the background, while the driver logs its outputs);
            None: one is joined or started here and stopped before returning.
        process_started: the command process's start (Unix time), for the perf/launch/to_ray_fit_seconds metric.
        datamodule: the driver's, set up; a streamed one becomes Ray Data datasets split across the workers.
    Returns: FitResult with a local path to the best checkpoint.
    """
    import mlflow

    from pipelines.cluster.local import RayCluster, train_env

    train_env(local=not os.environ.get("RAY_ADDRESS"))  # Ray Train reads (and propagates) it from here
    t = cfg.trainer
    mlflow.set_tags({names.WORLD_SIZE: str(t.num_workers), names.EFFECTIVE_LR: f"{cfg.optim.lr * lr_factor(cfg):g}",
                     names.RAY_STORAGE: f"{storage_path(cfg)}/{run_id}"})
    own = cluster is None
    cluster = RayCluster(env=cfg.cluster.env) if own else cluster
    cluster.connect()
    try:
        ray_tracking.catch_up(storage_path(cfg), run_id)    # a continued run: an epoch its last process missed
        start_from = _stage_in(ckpt_path, storage_path(cfg), run_id) if ckpt_path else None
        fit_called = time.time()
        result, wall = _fit_on_ray(cfg, run_id, uri, start_from, callbacks, datamodule)
    finally:
        cluster.stop(background=not own)
    out = result.return_value or {}
    mlflow.log_metrics(out.get("test_metrics", {}))
    _log_launch_times(out, fit_called, wall, process_started)
    best, score = _best_checkpoint(result, cfg, run_id)
    return FitResult(best_checkpoint=best,
                     best_score=score if score is not None else out.get("best_score"),
                     test_metrics=out.get("test_metrics", {}), epochs=out.get("epochs", 0),
                     fit_seconds=out.get("fit_seconds", wall))


def _log_launch_times(out: Dict[str, Any], fit_called: float, wall: float, process_started: Optional[float]) -> None:
    """Where a distributed run's time outside training goes, as run metrics (seconds; `benchmarks/scaling.py`
    breaks the launch overhead down with them): the process's start to TorchTrainer.fit() (imports, the local
    cluster's start, data checks, the MLflow run; only when the caller knows the process's start), fit() to rank 0
    entering the train function (Ray Train's controller, placement group and worker processes, their imports),
    rank 0's work outside Lightning's fit (data, model, process group, the test pass), and rank 0's return to
    fit() returning (Ray Train's shutdown)."""
    import mlflow

    if "entered_at" not in out:
        return
    times = {"ray_train_start_seconds": out["entered_at"] - fit_called,
             "worker_setup_seconds": out["returned_at"] - out["entered_at"] - out["fit_seconds"],
             "ray_train_stop_seconds": fit_called + wall - out["returned_at"]}
    if process_started is not None:
        times["to_ray_fit_seconds"] = fit_called - process_started
    mlflow.log_metrics({f"{names.LAUNCH_PREFIX}{k}": round(v, 3) for k, v in times.items()})


def process_start() -> Optional[float]:
    """This process's start as a Unix time, from /proc (Linux; None elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _stage_in(ckpt_path: str, storage: str, run_id: str) -> str:
    """Copy the checkpoint to start from (resume=<file> on this machine) into Ray's storage, where every worker
    reads it; returns its URI there."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(storage)
    dest = f"{root.rstrip('/')}/{run_id}/dlp-start/{ray_worker.CKPT_FILE}"
    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(str(Path(ckpt_path).resolve()), dest, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    return dest if "://" not in storage else f"{storage.split('://', 1)[0]}://{dest}"


def _fit_on_ray(cfg: DictConfig, run_id: str, uri: str, ckpt_path: Optional[str], callbacks: Sequence, dm=None):
    from ray.train import TrainingFailedError

    config = {"cfg": worker_config(cfg), "run_id": run_id, "ckpt_path": ckpt_path, "fault": os.environ.get("DLP_FAULT"),
              "storage": storage_path(cfg), **ray_worker.monitor_config(store.absolute_uri(uri))}
    data = ray_data.trainer_kwargs(dm, config)   # a streamed table: Ray Data datasets, split across the workers
    callbacks = [ray_tracking.MLflowReport(run_id, store.absolute_uri(uri)), *callbacks]
    trainer = _torch_trainer(cfg, config, run_id, callbacks, data)
    start = time.perf_counter()
    try:
        with signals.keeping_ctrl_c():   # TorchTrainer.fit installs its own Ctrl-C handler
            result = trainer.fit()
    except TrainingFailedError as e:
        raise TrainingFailed(_failure_message(e, cfg.trainer.max_failures)) from None
    except SystemExit:   # Ray's Ctrl-C handler exits when its abort finds the controller gone, or on a third one
        raise KeyboardInterrupt from None
    if result.error is not None:
        raise TrainingFailed(_failure_message(result.error, cfg.trainer.max_failures))
    if result.return_value is None:  # Ray's Ctrl-C handler aborted the run: no worker finished fit()
        raise KeyboardInterrupt
    return result, time.perf_counter() - start


def _torch_trainer(cfg: DictConfig, config: Dict[str, Any], run_id: str, callbacks: Sequence, data: Dict[str, Any]):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.trainer
    return TorchTrainer(
        ray_worker.train_worker, train_loop_config=config, **data,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=dict(t.resources_per_worker) or {"CPU": 1},
                                     label_selector=_plain(t.label_selector)),
        run_config=RunConfig(
            name=run_id, storage_path=storage_path(cfg), callbacks=list(callbacks) or None,
            failure_config=FailureConfig(max_failures=t.max_failures),
            # Ray always keeps the latest checkpoint as well, which is the one a restart resumes from
            checkpoint_config=CheckpointConfig(num_to_keep=None if t.save_top_k < 0 else max(1, t.save_top_k),
                                               checkpoint_score_attribute=cfg.monitor.metric,
                                               checkpoint_score_order=cfg.monitor.mode),
            # Ray's per-report and worker-group INFO lines would bury the one line per epoch; warnings still show
            logging_config=LoggingConfig(log_level="WARNING")))


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _failure_message(error: Exception, max_failures: int) -> str:
    """One line that keeps Ray's cause: which worker died or what it raised, or what the controller could not do
    (e.g. use the storage from a node); raising trainer.max_failures is suggested only when a worker died."""
    from ray.exceptions import RayActorError

    def died(exc: Exception) -> bool:  # Ray reports a vanished worker as a failed health check or a dead actor
        exc = getattr(exc, "health_check_failure", exc)
        return isinstance(exc, RayActorError)

    failures = getattr(error, "worker_failures", None) or {}
    retries = "no restarts allowed" if max_failures == 0 else f"after {max_failures} restart(s)"
    if failures:
        # a worker whose process died is the cause; its peers only see their collectives break
        rank, exc = min(failures.items(), key=lambda item: (not died(item[1]), item[0]))
        if died(exc):
            return (f"distributed training failed ({retries}; raise trainer.max_failures to survive worker "
                    f"loss): worker rank {rank} died (its process exited; see its log above)")
        exc = getattr(exc, "cause", None) or exc   # a RayTaskError wraps the worker's own exception
        return f"distributed training failed: worker rank {rank} raised {type(exc).__name__}: {_cause(exc)}"
    exc = getattr(error, "controller_failure", None) or error
    exc = getattr(exc, "cause", None) or exc
    return f"distributed training failed: {type(exc).__name__}: {_cause(exc)}"


def _cause(exc: Exception) -> str:
    """The message of `exc` without its traceback, its lines joined, at most 400 characters."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.startswith((" ", "Traceback"))]
    text = " ".join(lines)
    if "Unable to set up cluster storage" in text:
        return ("Ray could not use trainer.storage_path from a worker's node; on several nodes it must be "
                "s3://bucket/prefix or a shared filesystem every node mounts")
    return text[:400]


def _best_checkpoint(result, cfg: DictConfig, run_id: str) -> tuple:
    """(local .ckpt path, score) of Ray's best checkpoint by the monitored metric; remote storage is downloaded."""
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(cfg.monitor.metric) is not None]
    if not ranked:
        return None, None
    pick = max if cfg.monitor.mode == "max" else min
    ckpt, metrics = pick(ranked, key=lambda cm: cm[1][cfg.monitor.metric])
    import pyarrow.fs

    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        path = Path(ckpt.path) / ray_worker.CKPT_FILE
    else:
        staging = ray_worker.staging_dir(storage_path(cfg), str(Path(cfg.output_dir).resolve()), run_id)
        path = Path(ckpt.to_directory(str(staging / "best"))) / ray_worker.CKPT_FILE
    return (str(path) if path.is_file() else None), float(metrics[cfg.monitor.metric])
