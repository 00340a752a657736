"""`fit()`: the one training function. It trains and tests one model, the same on the driver (`dlp train`) and
inside a Ray Train worker (trainer.num_workers >= 1): no process-group setup of its own, and only rank 0 writes
to MLflow, by run id."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from omegaconf import DictConfig

from pipelines import signals
from pipelines.tracking import callbacks, runs, store
from pipelines.training import accel, checkpoints, perf


@dataclass
class FitResult:
    best_checkpoint: Optional[str]
    best_score: Optional[float]
    test_metrics: Dict[str, float]
    epochs: int
    fit_seconds: float


def checkpoint_dir(cfg: DictConfig, run_id: str) -> Path:
    return (Path(cfg.output_dir) / "checkpoints" / run_id).resolve()


def fit(cfg: DictConfig, run_id: Optional[str], datamodule=None, ckpt_path: Optional[str] = None,
        strategy="auto", plugins=None, extra_callbacks: Sequence = (), uri: Optional[str] = None,
        prepare: Optional[Callable] = None, checkpoint=None) -> FitResult:
    """Train `cfg` from scratch or from `ckpt_path`, then test the best checkpoint.

    Args:
        run_id: the MLflow run rank 0 logs the epochs and test metrics into (None: log nothing; a Ray Train
            worker's epochs reach MLflow through Ray's reports instead).
        datamodule: the data, already built (default: built here from cfg.data).
        strategy, plugins, extra_callbacks: what a Ray Train worker adds (RayDDPStrategy, a fault hook).
        prepare: may check or adapt the Lightning Trainer before fitting (Ray's prepare_trainer).
        checkpoint: the Lightning Checkpoint callback that keeps the checkpoints and, after fit, names the best
            one (`best_model_path`, `best_model_score`) for the test pass. Default: a ModelCheckpoint under
            <output_dir>/checkpoints/<run id>; a Ray Train worker passes its report to Ray's storage instead.
    """
    import lightning as L

    import datamodules
    import models

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    accel.configure(cfg)
    dm = datamodule or datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")
    model = accel.compiled(models.build(cfg, dm.spec), cfg)
    ckpt_cb = checkpoint or _model_checkpoint(cfg, run_id)
    kept = [ckpt_cb] if checkpoint else [ckpt_cb, checkpoints.LastCheckpoint(checkpoint_dir(cfg, run_id or "local"))]
    logged, others = _callbacks(cfg, run_id, uri or store.tracking_uri(cfg))
    # Lightning runs checkpoint-type callbacks in list order after the others: an epoch is logged to MLflow
    # before its checkpoint is written, so a resumed run never lacks an epoch's metrics
    trainer = _trainer(cfg, [*logged, *kept, checkpoints.RngState(), *extra_callbacks, *others], strategy,
                       [checkpoints.AtomicCheckpointIO(), *(plugins or [])])
    if prepare is not None:
        trainer = prepare(trainer)
    accel.say_precision(cfg, trainer)

    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on; give the
        # caller back a KeyboardInterrupt (the run ends KILLED) and Ctrl-C its default meaning.
        if trainer.interrupted:
            signals.restore_ctrl_c()
            raise KeyboardInterrupt from None
        raise
    fit_seconds = time.perf_counter() - start
    best = ckpt_cb.best_model_path or None
    last = kept[-1].path if len(kept) > 1 and kept[-1].path.is_file() else "last"
    tested = trainer.test(model, datamodule=dm, ckpt_path=best or str(last), verbose=False)
    test_metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    if run_id is not None and trainer.global_rank == 0:
        from mlflow import MlflowClient

        runs.log_metrics(MlflowClient(uri or store.tracking_uri(cfg)), run_id, test_metrics)
    score = ckpt_cb.best_model_score
    return FitResult(best, float(score) if score is not None else None, test_metrics,
                     trainer.current_epoch, fit_seconds)


def _model_checkpoint(cfg: DictConfig, run_id: Optional[str]):
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=str(checkpoint_dir(cfg, run_id or "local")), filename="best-{epoch:03d}",
                           monitor=cfg.monitor.metric, mode=cfg.monitor.mode, save_top_k=cfg.trainer.save_top_k,
                           save_last=False, auto_insert_metric_name=False)   # last.ckpt: LastCheckpoint


def _callbacks(cfg: DictConfig, run_id: Optional[str], uri: str) -> tuple:
    """(what goes before the checkpoint callbacks: epoch logging; what goes after: the epoch line, early
    stopping)."""
    from lightning.pytorch.callbacks import EarlyStopping

    mode, metric = cfg.monitor.mode, cfg.monitor.metric
    logged = [callbacks.MLflowEpochLogger(run_id, uri)] if run_id is not None else []
    out = [perf.Throughput(cfg)]
    if cfg.trainer.progress_bar and not sys.stderr.isatty():
        out.append(callbacks.EpochPrinter(metric))
    stopping = cfg.trainer.early_stopping
    if stopping.patience > 0:
        out.append(EarlyStopping(monitor=metric, mode=mode, patience=stopping.patience, min_delta=stopping.min_delta))
    return logged, out


def _trainer(cfg: DictConfig, callbacks_: list, strategy, plugins):
    import lightning as L

    t = cfg.trainer
    limits = {k: getattr(t, k) for k in ("limit_train_batches", "limit_val_batches") if getattr(t, k) is not None}
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, precision=t.precision,
        strategy=strategy, plugins=plugins, callbacks=callbacks_, logger=False,
        gradient_clip_val=t.gradient_clip_val or None, accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic="warn" if t.deterministic else False,
        enable_progress_bar=t.progress_bar and sys.stderr.isatty(),
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, **limits)
