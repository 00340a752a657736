"""The MLflow model registry, the dlpipe way: `dlp register`, `dlp promote`, `dlp rollback`, `dlp models`.

Aliases only (stages are deprecated in MLflow): `challenger` marks the version waiting for a decision,
`champion` the one serving (`models:/<name>@champion`). Promotion is evidence-based: the challenger and
the current champion are both re-scored, here and now, on the same frozen test split, and `champion`
moves only if the challenger is better. Every decision is written onto the challenger's version (tags
and description) and every champion change onto the registered model's `dlp.champion_history`, so
`rollback` can step back and anyone can audit why a version serves.

The test split is "frozen" by the dataset fingerprint each training run records (`dlp.data.*` tags:
source, split sizes, sha256 over the raw split contents): the split is rebuilt from the training run's
config.yaml (same data config, same seed), and its fingerprint must equal what both versions were
trained against, or promotion is refused.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from pipelines import tracking
from pipelines.errors import UserError

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "dlp.champion_history"   # registered-model tag: JSON list of versions that held `champion`
HISTORY_KEEP = 100                     # MLflow caps a tag value; a hundred versions is plenty of rollback
FINGERPRINT_KEYS = ("source", "n_train", "n_val", "n_test", "hash")

# Metrics promote can compute from a pyfunc model's predictions on raw rows, and which way is better.
HIGHER_IS_BETTER = {"classification": {"acc": True, "f1": True, "precision": True, "recall": True, "log_loss": False},
                    "regression": {"r2": True, "mae": False, "rmse": False, "mse": False}}
DEFAULT_METRIC = {"classification": "acc", "regression": "r2", "forecast": "mae"}


@dataclass
class Decision:
    """The outcome of one `promote`: what was compared, how, and whether `champion` moved."""
    name: str
    challenger: str                  # version
    champion: Optional[str]          # version holding `champion` at decision time (None: there was none)
    metric: str                      # e.g. "acc"; scored on the rebuilt test split
    higher_is_better: bool
    challenger_score: float
    champion_score: Optional[float]
    promoted: bool
    reason: str
    at: str
    user: str

    def line(self) -> str:
        vs = (f"{self.champion_score:.4f} (champion v{self.champion})" if self.champion is not None
              else "no champion")
        verdict = "PROMOTED" if self.promoted else "REFUSED"
        return (f"{verdict} {self.name} v{self.challenger}: test {self.metric} {self.challenger_score:.4f} vs {vs}"
                f" — {self.reason}")


# ---- client and small lookups ------------------------------------------------------------

def _client():
    from mlflow import MlflowClient

    tracking.configure()
    return MlflowClient()


def _not_found(e) -> bool:
    return getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if _not_found(e):
            raise UserError(f"registry: no registered model '{name}' (dlp models lists them)") from None
        raise


def _version_by_alias(client, name: str, alias: str):
    """The version holding `alias`, or None; an unknown model name is a UserError."""
    from mlflow.exceptions import MlflowException

    _registered(client, name)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _not_found(e) or "alias" in str(e).lower():
            return None
        raise


def _version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    _registered(client, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if _not_found(e):
            raise UserError(f"registry: model '{name}' has no version {version}") from None
        raise


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER variable and no passwd entry (some containers)
        return "unknown"


# ---- register ----------------------------------------------------------------------------

def _run_id_of(model_uri: str) -> str:
    """`runs:/<id>/model` (or `runs:/<id>`) -> <id>; only runs are accepted: their tags carry the evidence."""
    if not model_uri.startswith("runs:/"):
        raise UserError(f"register: '{model_uri}' is not a run's model; pass runs:/<run id>/model "
                        f"(dlp train prints it)")
    run_id = model_uri[len("runs:/"):].split("/")[0]
    if not run_id:
        raise UserError(f"register: '{model_uri}' names no run id; pass runs:/<run id>/model")
    return run_id


def register(model_uri: str, name: str) -> Tuple[str, Dict[str, str]]:
    """Register a training run's model as a new version of `name` with alias `challenger`.

    The run's evidence is copied onto the version as tags, so a version can be judged without
    opening its run: source run, monitored metric (and its last value), test metrics and the
    dataset fingerprint (`dlp.data.*`), which `promote` requires to match the champion's.
    Returns (version, tags).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client()
    run_id = _run_id_of(model_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"register: no run '{run_id}' in {tracking.tracking_uri()}") from None
    logged = run.data.tags.get("dlp.model_uri")
    if not logged:
        raise UserError(f"register: run '{run_id}' logged no model (trained with mlflow.log_model=false?)")
    # register the LoggedModel itself: in MLflow 3 it lives under the experiment, not the run's artifacts
    version = str(mlflow.register_model(logged, name).version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    tags = _evidence(run)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=f"{_now()} registered by {_user()} from run {run_id} "
                                                           f"as {CHALLENGER}")
    return version, tags


def _evidence(run) -> Dict[str, str]:
    tags = {"dlp.source_run_id": run.info.run_id}
    for key in ("dlp.experiment", "dlp.task", "dlp.model", "dlp.monitor", "dlp.model_uri"):
        if key in run.data.tags:
            tags[key] = run.data.tags[key]
    monitor = run.data.tags.get("dlp.monitor", "").split(":")[0]
    if monitor in run.data.metrics:
        tags["dlp.monitor_value"] = f"{run.data.metrics[monitor]:.6g}"
    tags.update({f"dlp.{k}": f"{v:.6g}" for k, v in run.data.metrics.items() if k.startswith("test/")})
    tags.update({k: v for k, v in run.data.tags.items() if k.startswith("dlp.data.")})
    return tags


# ---- fingerprints and the frozen test split ------------------------------------------------

def fingerprint(client, run_id: str) -> Dict[str, str]:
    """The dataset fingerprint a run trained on: its `dlp.data.*` tags, else data/fingerprint.json."""
    tags = client.get_run(run_id).data.tags
    fp = {k: tags[f"dlp.data.{k}"] for k in FINGERPRINT_KEYS if f"dlp.data.{k}" in tags}
    if "hash" not in fp:
        import mlflow

        try:
            fp = {k: str(v) for k, v in mlflow.artifacts.load_dict(f"runs:/{run_id}/data/fingerprint.json").items()}
        except Exception:
            raise UserError(f"promote: run '{run_id}' recorded no dataset fingerprint; retrain it with dlp train") \
                from None
    return {k: str(fp.get(k)) for k in FINGERPRINT_KEYS}


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
    from pipelines.config import validate

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
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
    return TestSplit(_as_model_input(frame, dm.prep), labels, task, dm.prep, cfg.monitor.metric)


def _as_model_input(frame: pd.DataFrame, prep: dict) -> pd.DataFrame:
    """Raw rows typed as the logged signature expects (see train._input_example): doubles, ISO timestamps."""
    frame = frame.astype({c: "float64" for c in frame.select_dtypes("integer").columns})
    if prep.get("kind") == "timeseries":
        frame[prep["time"]] = frame[prep["time"]].astype(str)
    return frame


# ---- metrics -------------------------------------------------------------------------------

def resolve_metric(task: str, monitor: str, requested: Optional[str]) -> Tuple[str, bool]:
    """(metric, higher_is_better). `requested` (acc, test/acc, val/acc all mean acc) wins; otherwise the
    training run's monitored metric if it is one promote can compute, else the task's default
    (accuracy for classification, r2 for regression, mae for forecasts — val/loss has no test twin here)."""
    table = HIGHER_IS_BETTER["classification" if task == "classification" else "regression"]
    if requested:
        name = requested.split("/")[-1]
        if name not in table:
            raise UserError(f"promote: --metric {requested} cannot be computed for a {task} model; "
                            f"choose {', '.join(table)}")
        return name, table[name]
    name = monitor.split("/")[-1]
    if name not in table:
        name = DEFAULT_METRIC[task]
    return name, table[name]


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


# ---- the race guard ------------------------------------------------------------------------

def lock_path(registry_uri: str) -> Path:
    """Where the promotion lock lives: beside a local store (sqlite:/// or a file store), so every
    process using that store finds it; for a remote registry, in this machine's temp directory."""
    if registry_uri.startswith("sqlite:///"):
        db = Path(tracking.absolute_uri(registry_uri)[len("sqlite:///"):])
        return db.with_name(db.name + ".dlp-registry.lock")
    if registry_uri.startswith("file:") or "://" not in registry_uri:
        root = Path(registry_uri[len("file://"):] if registry_uri.startswith("file://") else registry_uri)
        return root.resolve() / ".dlp-registry.lock"
    digest = hashlib.sha256(registry_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dlp-registry-{digest}.lock"


@contextlib.contextmanager
def champion_lock(name: str, timeout: float = 600.0):
    """Exclusive lock on moving `champion` of model `name` (flock on a per-model lock file).

    MLflow's alias update is last-writer-wins: two promotions that each compare against the champion
    they read, then set the alias, can leave the worse model serving. Under this lock a promotion reads
    the champion, scores it, decides and moves the alias while no other dlp promotion or rollback of the
    same model can, so each decision is made against the champion of that moment.

    Limits: flock only excludes processes that see the same lock file — those on this machine, or on a
    shared filesystem whose flock is honoured (local disks yes; NFS often not). A promoter on another
    machine against a remote registry, or anyone moving the alias by hand (UI, API), is not excluded;
    `promote` re-reads the alias after moving it and reports such an overwrite, but cannot undo it.
    A crashed holder releases the lock with its process (flock is tied to the open file).
    """
    import mlflow

    base = lock_path(mlflow.get_registry_uri() or tracking.tracking_uri())
    path = base.with_name(f"{base.name}.{hashlib.sha256(name.encode()).hexdigest()[:12]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+") as handle:  # a fresh open file description per call: threads exclude each other too
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"promote: '{name}' stayed locked by another promotion for {timeout:.0f} s "
                                    f"({path})") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- champion history ----------------------------------------------------------------------

def history(client, name: str) -> List[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    try:
        return [str(v) for v in json.loads(raw)] if raw else []
    except ValueError:
        return []


def _set_champion(client, name: str, version: str, past: List[str]) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(past[-HISTORY_KEEP:]))


def _check_alias(client, name: str, version: str) -> None:
    """Detect (not prevent) a writer outside the lock that moved `champion` while we held it."""
    now = _version_by_alias(client, name, CHAMPION)
    if now is None or str(now.version) != str(version):
        raise UserError(f"promote: champion of '{name}' was moved to "
                        f"v{getattr(now, 'version', None)} by someone outside dlp's lock while v{version} "
                        f"was being promoted; re-run dlp promote {name}")


# ---- promote -------------------------------------------------------------------------------

def _record(client, name: str, version: str, fields: Dict[str, str], line: str) -> None:
    """Write a decision onto a version: `dlp.<event>.*` tags (the latest) and a line in its description
    (all of them)."""
    for key, value in fields.items():
        client.set_model_version_tag(name, version, key, value)
    old = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=(old + "\n" if old else "") + line)


def _record_decision(client, d: Decision) -> None:
    fields = {"dlp.promote.decision": "promoted" if d.promoted else "refused", "dlp.promote.reason": d.reason,
              "dlp.promote.metric": d.metric, "dlp.promote.challenger_score": f"{d.challenger_score:.6g}",
              "dlp.promote.champion_version": str(d.champion or ""),
              "dlp.promote.champion_score": "" if d.champion_score is None else f"{d.champion_score:.6g}",
              "dlp.promote.at": d.at, "dlp.promote.by": d.user}
    _record(client, d.name, d.challenger, fields, f"{d.at} promote by {d.user}: {d.line()}")


def _refuse(client, name: str, version: str, reason: str) -> None:
    """A refusal that is the user's to fix (wrong data, incompatible or broken model): recorded, then raised."""
    at, user = _now(), _user()
    _record(client, name, version, {"dlp.promote.decision": "refused", "dlp.promote.reason": reason,
                                    "dlp.promote.at": at, "dlp.promote.by": user},
            f"{at} promote by {user}: REFUSED {name} v{version}: {reason}")
    raise UserError(f"promote: {name} v{version} refused: {reason}")


def _load(name: str, version: str):
    """(pyfunc model, None), or (None, why it does not load)."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}"), None
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _inputs(model) -> Optional[set]:
    schema = model.metadata.get_input_schema()
    return set(schema.input_names()) if schema is not None else None


def _score_or_refuse(client, name: str, version: str, model, split: TestSplit, metric: str) -> float:
    try:
        value = score(model, split, metric)
    except UserError:
        raise
    except Exception as e:
        _refuse(client, name, version, f"does not predict on the test split "
                                       f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if not np.isfinite(value):
        _refuse(client, name, version, f"test {metric} is {value}")
    return value


def promote(name: str, metric: Optional[str] = None, min_delta: float = 0.0,
            version: Optional[str] = None) -> Decision:
    """Make the challenger (or `version`) champion if it beats the champion on the frozen test split.

    Checks, in order: both versions were trained on the same data (fingerprint), the test split rebuilt
    from the training config is that data, the challenger loads, takes the champion's input columns and
    predicts. Then both are scored on the raw test rows; `champion` moves only if the challenger is better
    by more than zero and at least `min_delta` (direction from the metric: lower is better for losses and
    errors). Equal scores keep the champion. Without a champion, a challenger that loads and predicts
    becomes it. The whole read-score-decide-move sequence runs under `champion_lock`.

    A worse challenger returns a Decision with promoted=False; the refusals that are the user's to fix
    (unknown model, no challenger, fingerprint mismatch, incompatible or broken model) raise UserError.
    Either way the decision is recorded on the challenger's version.
    """
    client = _client()
    candidate = _version(client, name, version) if version else _version_by_alias(client, name, CHALLENGER)
    if candidate is None:
        raise UserError(f"promote: model '{name}' has no '{CHALLENGER}' alias; dlp register runs:/<id>/model "
                        f"--name {name} first")
    challenger = str(candidate.version)
    with champion_lock(name):
        current = _version_by_alias(client, name, CHAMPION)
        if current is not None and str(current.version) == challenger:
            raise UserError(f"promote: {name} v{challenger} already is the champion")
        fp = fingerprint(client, candidate.run_id)
        if current is not None:
            theirs = fingerprint(client, current.run_id)
            if theirs != fp:
                diff = ", ".join(f"{k} {fp[k][:12]} vs {theirs[k][:12]}" for k in FINGERPRINT_KEYS
                                 if fp[k] != theirs[k])
                _refuse(client, name, challenger, f"trained on other data than champion v{current.version} "
                                                  f"(dataset fingerprint differs: {diff})")
        split = rebuild_test_split(client, candidate.run_id, fp)
        metric_name, higher = resolve_metric(split.task, split.monitor, metric)
        new_model, why = _load(name, challenger)
        if new_model is None:
            _refuse(client, name, challenger, f"does not load ({why})")
        old_model = None
        if current is not None:  # a champion that stopped loading is not the challenger's fault: stop, move nothing
            old_model, why = _load(name, str(current.version))
            if old_model is None:
                raise UserError(f"promote: champion {name} v{current.version} does not load ({why}); "
                                f"fix it or move the alias by hand")
        if old_model is not None and _inputs(old_model) is not None and _inputs(new_model) != _inputs(old_model):
            missing = sorted(_inputs(old_model) - (_inputs(new_model) or set()))
            extra = sorted((_inputs(new_model) or set()) - _inputs(old_model))
            _refuse(client, name, challenger, f"input columns differ from champion v{current.version} "
                                              f"(missing {missing[:5]}, extra {extra[:5]})")
        new_score = _score_or_refuse(client, name, challenger, new_model, split, metric_name)
        old_score = score(old_model, split, metric_name) if old_model is not None else None
        promoted, reason = _judge(new_score, old_score, higher, min_delta)
        decision = Decision(name, challenger, str(current.version) if current is not None else None, metric_name,
                            higher, new_score, old_score, promoted, reason, _now(), _user())
        if promoted:
            past = history(client, name)
            if current is not None and (not past or past[-1] != str(current.version)):
                past.append(str(current.version))  # the alias was set outside dlp: keep it rollback-able
            _set_champion(client, name, challenger, past + [challenger])
        _record_decision(client, decision)
        if promoted:
            _check_alias(client, name, challenger)
    return decision


def _judge(new: float, old: Optional[float], higher: bool, min_delta: float) -> Tuple[bool, str]:
    if old is None:
        return True, "no champion yet; the challenger loads and predicts"
    gain = (new - old) if higher else (old - new)
    if gain > 0 and gain >= min_delta:
        return True, f"better by {gain:.4g} (min delta {min_delta:g})"
    if gain > 0:
        return False, f"better by only {gain:.4g} < min delta {min_delta:g}"
    return False, "not better than the champion" + (f" (worse by {-gain:.4g})" if gain < 0 else " (equal)")


# ---- rollback ------------------------------------------------------------------------------

def rollback(name: str) -> Tuple[str, str]:
    """Move `champion` back to the version that held it before the current one; returns (from, to).

    The step back is recorded like a promotion (tags `dlp.rollback.*` and a description line on the
    version leaving) and popped off `dlp.champion_history`, so a second rollback goes one further back.
    """
    client = _client()
    _registered(client, name)
    with champion_lock(name):
        current = _version_by_alias(client, name, CHAMPION)
        if current is None:
            raise UserError(f"rollback: model '{name}' has no champion to roll back")
        past = history(client, name)
        if not past or past[-1] != str(current.version):
            past.append(str(current.version))
        if len(past) < 2:
            raise UserError(f"rollback: '{name}' v{current.version} is the only champion it has had; "
                            f"nothing to roll back to")
        leaving, back = past[-1], past[-2]
        _set_champion(client, name, back, past[:-1])
        at, user = _now(), _user()
        _record(client, name, leaving, {"dlp.rollback.at": at, "dlp.rollback.by": user, "dlp.rollback.to": back},
                f"{at} rollback by {user}: champion {name} v{leaving} -> v{back}")
        _check_alias(client, name, back)
    return leaving, back


# ---- list ----------------------------------------------------------------------------------

def list_models() -> List[dict]:
    """Every registered model's versions, newest first: aliases, source run, test metrics, last decision."""
    client = _client()
    rows = []
    for model in client.search_registered_models(max_results=1000):
        aliases: Dict[str, List[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name='{model.name}'")
        for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
            tags = mv.tags or {}
            rows.append({"name": model.name, "version": str(mv.version),
                         "aliases": sorted(aliases.get(str(mv.version), [])), "run_id": mv.run_id,
                         "metrics": {k[len("dlp.test/"):]: v for k, v in tags.items() if k.startswith("dlp.test/")},
                         "decision": tags.get("dlp.promote.decision", "")})
    return rows


def format_models(rows: List[dict]) -> str:
    """`dlp models`: one line per version; key metrics are the test ones recorded at registration."""
    if not rows:
        return "no registered models (dlp register runs:/<id>/model --name <model>)"
    keys = ("acc", "f1", "r2", "mae")
    lines = [f"{'model':<24} {'version':>7}  {'aliases':<22} {'metrics':<36} {'last decision':<13} run"]
    for r in rows:
        shown = "  ".join(f"{k} {r['metrics'][k]}" for k in keys if k in r["metrics"])
        lines.append(f"{r['name']:<24} {r['version']:>7}  {','.join(r['aliases']) or '-':<22} {shown or '-':<36} "
                     f"{r['decision'] or '-':<13} {r['run_id']}")
    return "\n".join(lines)
