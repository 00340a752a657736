"""Registered models and their versions: `dlp register` (a run's model as a new version, alias challenger, with
the run's evidence as tags) and `dlp models` (every version: aliases, test metrics, last decision)."""
from __future__ import annotations

import getpass
import time
from typing import Dict, List, Optional, Tuple

from pipelines.errors import UserError
from pipelines.tracking import names, store, store_checks


def client():
    from mlflow import MlflowClient

    store.configure()
    return MlflowClient()


def not_found(e) -> bool:
    return getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()


def registered(c, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_registered_model(name)
    except MlflowException as e:
        if not_found(e):
            raise UserError(f"registry: no registered model '{name}' (dlp models lists them)") from None
        raise


def version_by_alias(c, name: str, alias: str):
    """The version holding `alias`, or None; an unknown model name is a UserError."""
    from mlflow.exceptions import MlflowException

    registered(c, name)
    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if not_found(e) or "alias" in str(e).lower():
            return None
        raise


def version(c, name: str, number: str):
    from mlflow.exceptions import MlflowException

    registered(c, name)
    try:
        return c.get_model_version(name, str(number))
    except MlflowException as e:
        if not_found(e):
            raise UserError(f"registry: model '{name}' has no version {number}") from None
        raise


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER variable and no passwd entry (some containers)
        return "unknown"


def run_id_of(model_uri: str) -> Optional[str]:
    """`runs:/<id>/model` (or `runs:/<id>`) -> <id> ('' when it names none); None for any other kind of URI."""
    if not model_uri.startswith("runs:/"):
        return None
    return model_uri[len("runs:/"):].split("/")[0]


def register(model_uri: str, name: str) -> Tuple[str, Dict[str, str]]:
    """Register a training run's model as a new version of `name` with alias `challenger`.

    The run's evidence is copied onto the version as tags, so a version can be judged without
    opening its run: source run, monitored metric (and its last value), test metrics and the
    dataset fingerprint (`dlp.data.*`), which `promote` requires to match the champion's.
    Returns (version, tags).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    c = client()
    run_id = run_id_of(model_uri)
    if run_id is None:   # only runs: their tags carry the evidence
        raise UserError(f"register: '{model_uri}' is not a run's model; pass runs:/<run id>/model "
                        f"(dlp train prints it)")
    if not run_id:
        raise UserError(f"register: '{model_uri}' names no run id; pass runs:/<run id>/model")
    try:
        run = c.get_run(run_id)
    except MlflowException:
        raise UserError(f"register: no run '{run_id}' in {store_checks.mask(store.tracking_uri())}") from None
    logged = run.data.tags.get(names.MODEL_URI)
    if not logged:
        raise UserError(f"register: run '{run_id}' logged no model (trained with mlflow.log_model=false?)")
    # register the LoggedModel itself: in MLflow 3 it lives under the experiment, not the run's artifacts
    number = str(mlflow.register_model(logged, name).version)
    c.set_registered_model_alias(name, names.CHALLENGER, number)
    tags = _evidence(run)
    for key, value in tags.items():
        c.set_model_version_tag(name, number, key, value)
    c.update_model_version(name, number, description=f"{now()} registered by {user()} from run {run_id} "
                                                     f"as {names.CHALLENGER}")
    return number, tags


def _evidence(run) -> Dict[str, str]:
    tags = {names.SOURCE_RUN: run.info.run_id}
    for key in (names.EXPERIMENT, names.TASK, names.MODEL, names.MONITOR, names.MODEL_URI):
        if key in run.data.tags:
            tags[key] = run.data.tags[key]
    monitor, _ = names.monitored(run.data.tags)
    if monitor in run.data.metrics:
        tags[names.MONITOR_VALUE] = f"{run.data.metrics[monitor]:.6g}"
    tags.update({names.TEST_TAG_PREFIX + k[len(names.TEST_PREFIX):]: f"{v:.6g}" for k, v in run.data.metrics.items()
                 if k.startswith(names.TEST_PREFIX)})
    tags.update({k: v for k, v in run.data.tags.items() if k.startswith(names.DATA_PREFIX)})
    return tags


def list_models() -> List[dict]:
    """Every registered model's versions, newest first: aliases, source run, test metrics, last decision."""
    c = client()
    rows = []
    for model in c.search_registered_models(max_results=1000):
        aliases: Dict[str, List[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        versions = c.search_model_versions(f"name='{model.name}'")
        for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
            tags = mv.tags or {}
            rows.append({"name": model.name, "version": str(mv.version),
                         "aliases": sorted(aliases.get(str(mv.version), [])), "run_id": mv.run_id,
                         "metrics": {k[len(names.TEST_TAG_PREFIX):]: v for k, v in tags.items()
                                     if k.startswith(names.TEST_TAG_PREFIX)},
                         "decision": tags.get(names.PROMOTE_DECISION, "")})
    return rows


def format_models(rows: List[dict]) -> str:
    """`dlp models`: one line per version; key metrics are the test ones recorded at registration."""
    if not rows:
        return "no registered models (dlp register runs:/<id>/model --name <model>)"
    lines = [f"{'model':<24} {'version':>7}  {'aliases':<22} {'metrics':<36} {'last decision':<13} run"]
    for r in rows:
        shown = "  ".join(f"{k} {r['metrics'][k]}" for k in (m[len(names.TEST_PREFIX):] for m in
                                                               names.HEADLINE_TEST_METRICS) if k in r["metrics"])
        lines.append(f"{r['name']:<24} {r['version']:>7}  {','.join(r['aliases']) or '-':<22} {shown or '-':<36} "
                     f"{r['decision'] or '-':<13} {r['run_id']}")
    return "\n".join(lines)
