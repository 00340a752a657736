"""What a finished run logs on the driver, from its best checkpoint: plots, forecast errors, the checkpoint and
the model (raw rows in, pipelines/tracking/model.py)."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from pipelines.tracking import model as logged_model
from pipelines.tracking import names, plots, runs
from pipelines.training.fit import FitResult


def log_outputs(cfg: DictConfig, dm, result: FitResult, run_id: str) -> Optional[str]:
    """Plots and the model into the active run; returns the model's runs:/ URI (None with mlflow.log_model=false)."""
    import mlflow

    import models

    client = mlflow.MlflowClient()
    best = result.best_checkpoint
    model = models.load_checkpoint(best) if best else models.build(cfg, dm.spec).eval()
    with tempfile.TemporaryDirectory() as tmp:
        curve = plots.learning_curve(client, run_id, cfg.monitor.metric, Path(tmp) / "learning_curve.png")
        if curve:
            mlflow.log_artifact(str(curve), names.PLOTS)
        if dm.spec.task == "classification":
            y_true, logits = _test_outputs(model, dm)
            cm = plots.confusion_matrix(y_true, logits.argmax(1), dm.spec.class_names, Path(tmp) / "confusion_matrix.png")
            mlflow.log_artifact(str(cm), names.PLOTS)
        elif getattr(dm.spec, "horizon", 0):
            _log_forecast(client, run_id, dm, model, Path(tmp))
    if best:
        mlflow.log_artifact(best, names.CHECKPOINTS)
    if not cfg.mlflow.log_model:
        return None
    try:
        info = logged_model.log_model(model.net, dm.prep, logged_model.input_example(dm),
                                      registered_model_name=cfg.mlflow.registered_model_name)
    except BaseException:   # a full disk, Ctrl-C, SIGTERM: MLflow would leave the logged model PENDING
        with contextlib.suppress(Exception):   # the store may be on the full disk too: the first error stands
            _fail_pending_models(client, run_id)
        raise
    mlflow.set_tag(names.MODEL_URI, info.model_uri)
    return names.run_model_uri(run_id)


def _fail_pending_models(client, run_id: str) -> None:
    """The run's logged models still PENDING end FAILED: the UI and `dlp models` then show no half-logged model
    as if it were coming."""
    from mlflow.entities import LoggedModelStatus

    experiment = client.get_run(run_id).info.experiment_id
    for m in client.search_logged_models(experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}'"):
        if m.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(m.model_id, LoggedModelStatus.FAILED)


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

    y, pred = _test_outputs(model, dm)
    mean, std = dm.spec.target_scale or (0.0, 1.0)
    y, pred = y * std + mean, pred * std + mean
    errors = plots.per_horizon_errors(pred, y)
    client.log_batch(run_id, metrics=[m for name in ("mae", "rmse") for h, value in enumerate(errors[name], start=1)
                                      for m in runs.metrics_at({names.BY_HORIZON.format(name): value}, step=h)])
    table = pd.DataFrame({"steps_ahead": range(1, len(errors["mae"]) + 1), **errors})
    mlflow.log_text(table.to_csv(index=False), names.PER_HORIZON)
    prep = dm.prep
    paths = [plots.forecast(dm.series("test"), dm.window_index("test"), pred, prep["target"], prep["time"],
                            prep.get("group"), tmp / "forecast.png"),
             plots.horizon_errors(errors, prep["target"], tmp / "error_by_horizon.png")]
    for path in paths:
        mlflow.log_artifact(str(path), names.PLOTS)
