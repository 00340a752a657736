"""`dlp train`: one tracked training run.

The driver (`train`) checks data and resume target before any MLflow run exists, opens the run,
calls `fit` (in this process, or with trainer.num_workers >= 1 in Ray Train workers through
`pipelines.distributed`), then logs test metrics, plots and the model from the best checkpoint
and closes the run with FINISHED, FAILED or KILLED — never leaving it RUNNING.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from pipelines import tracking
from pipelines.errors import UserError

log = logging.getLogger("dlp")


@dataclass
class FitResult:
    best_checkpoint: Optional[str]
    best_score: Optional[float]
    test_metrics: Dict[str, float]
    epochs: int
    fit_seconds: float


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    fit: FitResult
    model_uri: Optional[str] = None


def checkpoint_dir(cfg: DictConfig, run_id: str) -> Path:
    return (Path(cfg.output_dir) / "checkpoints" / run_id).resolve()


def fit(cfg: DictConfig, run_id: Optional[str], datamodule=None, ckpt_path: Optional[str] = None,
        strategy="auto", plugins=None, extra_callbacks: Sequence = (), uri: Optional[str] = None,
        prepare: Optional[Callable] = None) -> FitResult:
    """Train and test one model. Runs the same on the driver or inside a distributed worker:
    no process-group setup of its own, and only rank 0 talks to MLflow (through `run_id`).
    `prepare(trainer)` (e.g. Ray's prepare_trainer) may check or adapt the Lightning Trainer before fitting."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    import datamodules
    import models

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    dm = datamodule or datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")
    model = models.build(cfg, dm.spec)

    mode, metric = cfg.monitor.mode, cfg.monitor.metric
    ckpt_cb = ModelCheckpoint(
        dirpath=str(checkpoint_dir(cfg, run_id or "local")), filename="best-{epoch:03d}", monitor=metric,
        mode=mode, save_top_k=cfg.trainer.save_top_k, save_last=True, auto_insert_metric_name=False)
    callbacks = [ckpt_cb, *extra_callbacks]
    if run_id is not None:
        callbacks.append(tracking.MLflowEpochLogger(run_id, uri or tracking.tracking_uri(cfg)))
    show_bar = cfg.trainer.progress_bar and sys.stderr.isatty()
    if cfg.trainer.progress_bar and not show_bar:
        callbacks.append(tracking.EpochPrinter(metric))
    if cfg.trainer.early_stopping.patience > 0:
        callbacks.append(EarlyStopping(monitor=metric, mode=mode, patience=cfg.trainer.early_stopping.patience,
                                       min_delta=cfg.trainer.early_stopping.min_delta))
    t = cfg.trainer
    limits = {k: getattr(t, k) for k in ("limit_train_batches", "limit_val_batches") if getattr(t, k) is not None}
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, precision=t.precision,
        strategy=strategy, plugins=plugins, callbacks=callbacks, logger=False,
        gradient_clip_val=t.gradient_clip_val or None, accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic="warn" if t.deterministic else False, enable_progress_bar=show_bar,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, **limits)
    if prepare is not None:
        trainer = prepare(trainer)

    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on; give the
        # caller back a KeyboardInterrupt (the run ends KILLED) and Ctrl-C its default meaning.
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise
    fit_seconds = time.perf_counter() - start
    best = ckpt_cb.best_model_path or None
    tested = trainer.test(model, datamodule=dm, ckpt_path=best or "last", verbose=False)
    test_metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    if run_id is not None and trainer.global_rank == 0:
        from mlflow import MlflowClient

        client = MlflowClient(uri or tracking.tracking_uri(cfg))
        client.log_batch(run_id, metrics=[_metric(k, v) for k, v in test_metrics.items()])
    score = ckpt_cb.best_model_score
    return FitResult(best, float(score) if score is not None else None, test_metrics,
                     trainer.current_epoch, fit_seconds)


def _metric(key, value, step=0):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def resolve_resume(cfg: DictConfig) -> Optional[Path]:
    """The checkpoint `resume=` asks for; a missing one is an error, never a silent fresh start."""
    if cfg.resume is None or cfg.resume == "auto":  # auto: pipelines.distributed.unfinished_run
        return None
    if cfg.resume == "last":
        root = Path(cfg.output_dir) / "checkpoints"
        found = sorted(root.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"resume=last: no last.ckpt under {root}/; train once first or pass resume=<path.ckpt>")
        return found[-1].resolve()
    path = Path(cfg.resume).expanduser()
    if not path.is_file():
        raise UserError(f"resume: checkpoint '{path}' does not exist")
    return path.resolve()


def _check_checkpoint_matches(path: Path, cfg: DictConfig) -> None:
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True).get("dlp_cfg") or {}
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"resume: cannot read checkpoint '{path}': {type(e).__name__}") from None
    want = OmegaConf.to_container(cfg.model, resolve=True)
    if saved.get("model") and saved["model"] != want:
        diff = sorted(k for k in set(want) | set(saved["model"]) if want.get(k) != saved["model"].get(k))
        raise UserError(f"resume: checkpoint '{path}' was trained with different model settings ({', '.join(diff)})")


def train(cfg: DictConfig, run_tags: Optional[Dict[str, str]] = None, continue_run: Optional[str] = None,
          report_to_tune: bool = False) -> TrainResult:
    """Run `dlp train`: returns the run id, test metrics and the logged model's URI.

    `dlp tune` trials call it too: `run_tags` nest the run under the sweep (mlflow.parentRunId), `continue_run`
    picks up a trial's earlier run (and, through Ray's storage named by it, its checkpoints), and
    `report_to_tune` turns every epoch into a Tune result.
    """
    import mlflow

    import datamodules

    uri = tracking.configure(cfg)
    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")  # bad data fails here, before any MLflow run exists
    _check_monitor(cfg, dm.spec)
    resume_from = resolve_resume(cfg)
    if resume_from is not None:
        _check_checkpoint_matches(resume_from, cfg)

    experiment = tracking.set_experiment(cfg.mlflow.experiment_name or cfg.name)
    resume_run = _existing_run(resume_from.parent.name) if resume_from is not None else None
    if cfg.resume == "auto":
        from pipelines import distributed

        resume_run = distributed.unfinished_run(cfg, experiment.experiment_id)
    resume_run = continue_run or resume_run
    run = mlflow.start_run(run_id=resume_run, run_name=None if resume_run else (cfg.mlflow.run_name or None))
    run_id = run.info.run_id
    with tracking.ending_run():
        if resume_run is None:
            _log_run_inputs(cfg, dm, resume_from)
            mlflow.set_tags(run_tags or {})
        else:
            mlflow.set_tag("dlp.resumed_from", str(resume_from or "ray checkpoint (resume=auto)"))
        ckpt_path = str(resume_from) if resume_from else None
        if cfg.trainer.num_workers >= 1:
            from pipelines import distributed

            result = distributed.run(cfg, run_id, uri, ckpt_path=ckpt_path, report_to_tune=report_to_tune)
        else:
            result = fit(cfg, run_id, datamodule=dm, ckpt_path=ckpt_path, uri=uri)
        out = TrainResult(run_id, experiment.experiment_id, result)
        _log_outputs(cfg, dm, result, out)
    return out


def _existing_run(run_id: str) -> Optional[str]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_run(run_id).info.run_id
    except MlflowException:
        return None


def _check_monitor(cfg: DictConfig, spec) -> None:
    import models

    available = models.metric_names(spec.task, "val") + models.metric_names(spec.task, "train")
    if cfg.monitor.metric not in available:
        raise UserError(f"monitor.metric={cfg.monitor.metric}: not produced by a {spec.task} task "
                        f"(available: {', '.join(available)})")


def _log_run_inputs(cfg: DictConfig, dm, resume_from: Optional[Path]) -> None:
    import mlflow

    from pipelines.config import flatten, to_yaml

    params = {k: str(v)[:6000] for k, v in flatten(cfg).items()}
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[i:i + 100]))
    mlflow.log_text(to_yaml(cfg), "config.yaml")
    fp = dm.fingerprint()
    mlflow.log_dict(fp, "data/fingerprint.json")
    tags = {"dlp.experiment": cfg.name, "dlp.task": dm.spec.task, "dlp.model": cfg.model.name,
            "dlp.monitor": f"{cfg.monitor.metric}:{cfg.monitor.mode}",
            **{f"dlp.data.{k}": str(v) for k, v in fp.items()}, **dict(cfg.tags)}
    commit = tracking.git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    mlflow.set_tags(tags)


def _log_outputs(cfg: DictConfig, dm, result: FitResult, out: TrainResult) -> None:
    """Plots and the model, from the best checkpoint, on the driver only."""
    import tempfile

    import mlflow

    import models
    from pipelines import plots

    client = mlflow.MlflowClient()
    best = result.best_checkpoint
    model = models.load_checkpoint(best) if best else models.build(cfg, dm.spec).eval()
    with tempfile.TemporaryDirectory() as tmp:
        curve = plots.learning_curve(client, out.run_id, cfg.monitor.metric, Path(tmp) / "learning_curve.png")
        if curve:
            mlflow.log_artifact(str(curve), "plots")
        if dm.spec.task == "classification":
            y_true, logits = _test_outputs(model, dm)
            cm = plots.confusion_matrix(y_true, logits.argmax(1), dm.spec.class_names, Path(tmp) / "confusion_matrix.png")
            mlflow.log_artifact(str(cm), "plots")
        elif getattr(dm.spec, "horizon", 0):
            _log_forecast(client, out.run_id, dm, model, Path(tmp))
    if result.best_checkpoint:
        mlflow.log_artifact(result.best_checkpoint, "checkpoints")
    if cfg.mlflow.log_model:
        info = tracking.log_model(model.net, dm.prep, _input_example(dm),
                                  registered_model_name=cfg.mlflow.registered_model_name)
        out.model_uri = f"runs:/{out.run_id}/model"
        mlflow.set_tag("dlp.model_uri", info.model_uri)


def _test_outputs(model, dm) -> tuple:
    """(targets, network outputs) over the test split, already encoded and preprocessed by the datamodule."""
    import torch

    with torch.no_grad():
        pairs = [(y, model(x)) for x, y in dm.test_dataloader()]
    return tuple(torch.cat(part).numpy() for part in zip(*pairs))


def _log_forecast(client, run_id: str, dm, model, tmp: Path) -> None:
    """Forecast plot, per-horizon MAE/RMSE (metric `test/mae_by_horizon` with step = steps ahead, plus CSV and PNG)."""
    import mlflow
    import pandas as pd

    from pipelines import plots

    y, pred = _test_outputs(model, dm)
    mean, std = dm.spec.target_scale or (0.0, 1.0)
    y, pred = y * std + mean, pred * std + mean
    errors = plots.per_horizon_errors(pred, y)
    client.log_batch(run_id, metrics=[_metric(f"test/{name}_by_horizon", value, step=h)
                                      for name in ("mae", "rmse") for h, value in enumerate(errors[name], start=1)])
    table = pd.DataFrame({"steps_ahead": range(1, len(errors["mae"]) + 1), **errors})
    mlflow.log_text(table.to_csv(index=False), "forecast/per_horizon.csv")
    prep = dm.prep
    paths = [plots.forecast(dm.series("test"), dm.window_index("test"), pred, prep["target"], prep["time"],
                            prep.get("group"), tmp / "forecast.png"),
             plots.horizon_errors(errors, prep["target"], tmp / "error_by_horizon.png")]
    for path in paths:
        mlflow.log_artifact(str(path), "plots")


def _input_example(dm):
    """A few raw rows the logged model accepts (for time series: the last lookback steps of each test series)."""
    frame, _ = dm.raw_frame("test")
    prep = dm.prep
    if prep["kind"] == "timeseries":
        group = prep.get("group")
        frame = (frame.groupby(group, sort=True).tail(prep["lookback"]) if group else frame.tail(prep["lookback"]))
        frame = frame.reset_index(drop=True)
        # timestamps travel as ISO strings: a CSV handed to `dlp predict` has strings, not datetimes
        frame[prep["time"]] = frame[prep["time"]].astype(str)
    else:
        frame = frame.head(5)
    # integer columns would make the signature refuse float inputs; doubles accept both
    return frame.astype({c: "float64" for c in frame.select_dtypes("integer").columns})


def summary(cfg: DictConfig, out: TrainResult, wall: float) -> str:
    """The one-screen report printed at the end of `dlp train`."""
    r = out.fit
    lines = [f"dlpipe · {cfg.name} · {r.epochs} epochs in {r.fit_seconds:.1f}s (wall {wall:.1f}s)"]
    if r.best_score is not None:
        lines.append(f"  best {cfg.monitor.metric} = {r.best_score:.4f}")
    lines.append("  test metrics:")
    lines += [f"    {k:<16} {v:.4f}" for k, v in sorted(r.test_metrics.items())]
    import mlflow

    experiment = mlflow.get_experiment(out.experiment_id).name  # under `mlflow run`: the one it chose
    lines.append(f"  run id:   {out.run_id}  (experiment '{experiment}')")
    if out.model_uri:
        lines.append(f"  model:    {out.model_uri}   -> dlp predict {out.model_uri} input.csv -o preds.csv")
    lines.append(f"  browse:   dlp ui   then open http://127.0.0.1:5000/#/experiments/{out.experiment_id}/runs/{out.run_id}")
    return "\n".join(lines)
