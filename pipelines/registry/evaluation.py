"""The frozen test split and how a logged model scores on it: `dlp evaluate`, and both sides of `dlp promote`.

The test split is "frozen" by the dataset fingerprint each training run records (`dlp.data.*` tags: source,
split sizes, sha256 over the raw split contents): it is rebuilt from the training run's config.yaml (same data
config, same seed), and its fingerprint must equal what the model was trained against. Models are scored from
raw rows through their own preprocessing (mlflow.pyfunc), as they would be served.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pandas as pd

from pipelines.errors import UserError, first_line
from pipelines.registry import versions
from pipelines.tracking import names

# metrics computed from a pyfunc model's predictions on raw rows (val/loss, say, has no such twin)
PREDICTABLE = {"classification": ("acc", "f1", "precision", "recall", "log_loss"),
               "regression": ("r2", "mae", "rmse", "mse")}
DEFAULT_METRIC = {"classification": "acc", "regression": "r2", "forecast": "mae"}


def fingerprint(client, run_id: str) -> Dict[str, str]:
    """The dataset fingerprint a run trained on: its `dlp.data.*` tags, else data/fingerprint.json."""
    tags = client.get_run(run_id).data.tags
    fp = {k: tags[names.DATA_PREFIX + k] for k in names.FINGERPRINT_KEYS if names.DATA_PREFIX + k in tags}
    if "hash" not in fp:
        import mlflow

        try:
            fp = {k: str(v) for k, v in mlflow.artifacts.load_dict(f"runs:/{run_id}/{names.FINGERPRINT}").items()}
        except Exception:
            raise UserError(f"promote: run '{run_id}' recorded no dataset fingerprint; retrain it with dlp train") \
                from None
    return {k: str(fp.get(k)) for k in names.FINGERPRINT_KEYS}


@dataclass
class TestSplit:
    """The raw test rows as the logged models take them, their labels, and how to score them."""
    frame: pd.DataFrame
    labels: np.ndarray
    task: str                 # classification | regression | forecast
    prep: dict
    monitor: str              # the training run's monitor.metric, e.g. val/loss


def rebuild_test_split(client, run_id: str, expected: Dict[str, str]) -> TestSplit:
    """Recreate the training run's test split from its config.yaml and check it is the same data.

    Relative data paths resolve against the working directory, as they did for `dlp train`.
    """
    import mlflow
    from omegaconf import OmegaConf

    import datamodules
    from pipelines.config.compose import validate
    from pipelines.tracking.model import as_model_input

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{names.CONFIG}")
    except Exception:
        raise UserError(f"promote: run '{run_id}' has no config.yaml artifact; cannot rebuild its test split") \
            from None
    cfg = validate(OmegaConf.create(text))
    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("test")
    now = {k: str(v) for k, v in dm.fingerprint().items()}
    if now["hash"] != expected["hash"]:
        raise UserError(f"promote: the data of run '{run_id}' ({now['source']}) changed since training "
                        f"(hash {now['hash'][:12]} != {expected['hash'][:12]}); the test split is not the frozen one")
    frame, labels = dm.raw_frame("test")
    task = "forecast" if dm.prep.get("kind") == "timeseries" else dm.spec.task
    return TestSplit(as_model_input(frame, dm.prep), labels, task, dm.prep, cfg.monitor.metric)


def resolve_metric(task: str, monitor: str, requested: Optional[str], command: str = "promote: --metric"
                   ) -> Tuple[str, bool]:
    """(metric, higher_is_better). `requested` (acc, test/acc, val/acc all mean acc) wins; otherwise the
    training run's monitored metric if it is one a model's predictions give, else the task's default
    (accuracy for classification, r2 for regression, mae for forecasts — val/loss has no test twin here)."""
    from models.metrics import higher_is_better

    allowed = PREDICTABLE["classification" if task == "classification" else "regression"]
    if requested:
        name = requested.split("/")[-1]
        if name not in allowed:
            raise UserError(f"{command} {requested} cannot be computed for a {task} model; "
                            f"choose {', '.join(allowed)}")
        return name, higher_is_better(name)
    name = monitor.split("/")[-1]
    if name not in allowed:
        name = DEFAULT_METRIC[task]
    return name, higher_is_better(name)


def score(model, split: TestSplit, metric: str) -> float:
    """`metric` of a loaded pyfunc model on the raw test rows (preprocessing happens inside the model)."""
    if split.task == "forecast":
        return _forecast_score(model, split, metric)
    preds = model.predict(split.frame)
    if split.task == "classification":
        return _classification_score(preds, split, metric)
    return _regression_score(np.asarray(split.labels, dtype=np.float64),
                             preds["prediction"].to_numpy(dtype=np.float64), metric)


def _classification_score(preds: pd.DataFrame, split: TestSplit, metric: str) -> float:
    from sklearn import metrics as M

    truth = np.asarray([str(v) for v in split.labels], dtype=object)
    guess = preds["prediction"].astype(str).to_numpy(dtype=object)
    if metric == "acc":
        return float(M.accuracy_score(truth, guess))
    if metric == "log_loss":
        classes = [str(c) for c in split.prep["class_names"]]
        probs = preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
        probs /= probs.sum(axis=1, keepdims=True)  # float32 softmax sums to 1 only within ~1e-7
        index = {c: i for i, c in enumerate(classes)}
        return float(M.log_loss([index[t] for t in truth], probs, labels=list(range(len(classes)))))
    fn = {"f1": M.f1_score, "precision": M.precision_score, "recall": M.recall_score}[metric]
    return float(fn(truth, guess, average="macro", zero_division=0))


def _regression_score(y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    err = pred - y
    if metric == "mae":
        return float(np.abs(err).mean())
    if metric in ("mse", "rmse"):
        mse = float((err ** 2).mean())
        return mse if metric == "mse" else mse ** 0.5
    return float(1.0 - (err ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))  # r2


def _forecast_score(model, split: TestSplit, metric: str) -> float:
    """Forecasts from origins `horizon` steps apart through each test series (the first after `lookback`
    steps), every forecast compared with the `horizon` values that followed: non-overlapping horizons,
    no test value scored twice. Simple and documented, not a full rolling evaluation."""
    prep, frame = split.prep, split.frame.copy()
    lookback, horizon, group = prep["lookback"], prep["horizon"], prep.get("group")
    frame["__y"] = np.asarray(split.labels, dtype=np.float64)
    ys, preds = [], []
    series = [rows for _, rows in frame.groupby(group, sort=True)] if group else [frame]
    for rows in series:
        rows = rows.reset_index(drop=True)
        for origin in range(lookback, len(rows) - horizon + 1, horizon):
            history = rows.iloc[origin - lookback:origin].drop(columns="__y")
            out = model.predict(history)
            preds.append(out["prediction"].to_numpy(dtype=np.float64))
            ys.append(rows["__y"].iloc[origin:origin + horizon].to_numpy())
    if not ys:
        raise UserError(f"promote: the test split holds no full window of {lookback} + {horizon} steps")
    return _regression_score(np.concatenate(ys), np.concatenate(preds), metric)


def evaluate(model_uri: str, metric: Optional[str] = None) -> Dict[str, Any]:
    """`dlp evaluate`: score a logged model (runs:/<id>/model or models:/<name>@<alias>|/<version>) on the frozen
    test split of the run that trained it, from raw rows: {"metric", "value", "higher_is_better", "run_id",
    "n_test"}."""
    import mlflow

    from pipelines.tracking.model_trust import load_verified

    client = mlflow.MlflowClient()
    source = source_run(model_uri)
    split = rebuild_test_split(client, source, fingerprint(client, source))
    name, higher = resolve_metric(split.task, split.monitor, metric, command="evaluate: metric")
    try:
        model = load_verified(model_uri, "evaluate")  # files checked against their logged digests, then loaded
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 — MLflow raises several types for a missing or broken model
        raise UserError(f"evaluate: cannot load model '{model_uri}': {first_line(e)}") from None
    return {"metric": name, "value": score(model, split, name), "higher_is_better": higher,
            "run_id": source, "n_test": len(split.labels)}


def source_run(model_uri: str) -> str:
    """The run that trained the model at runs:/<id>/model or models:/<name>@<alias> (or /<version>)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id = versions.run_id_of(model_uri)
    if run_id is not None:
        return run_id
    if not model_uri.startswith("models:/"):
        raise UserError(f"evaluate: '{model_uri}' is not runs:/<id>/model or models:/<name>@<alias>")
    ref = model_uri[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, number = ref.rsplit("/", 1)
        return client.get_model_version(name, number).run_id
    except MlflowException as e:
        raise UserError(f"evaluate: no registered model '{ref}': {first_line(e)}") from None
