"""`dlp pipeline experiment=X [tune=Y] [overrides]`: prepare -> train (or tune) -> evaluate -> register -> promote.

The step graph is conf/pipeline.yaml: each step names the steps it needs and its parameters
(override with pipeline.<step>.<key>=value). Every step runs as an MLflow run nested under one
pipeline run (under `mlflow run`, the run MLflow made for the command). Before running a step, its
key — a hash of its entry point, parameters, code version (HEAD plus any uncommitted diff), the
data fingerprint and its upstream steps' outputs — is looked up among FINISHED step runs of the
experiment; on a match the step is reused: a step run tagged dlp.step.reused_from carries the earlier
outputs and nothing is recomputed. Re-running a pipeline that failed therefore resumes at the step
that failed, and re-running a finished one reuses every step.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from pipelines import tracking
from pipelines.errors import ConfigError, UserError

log = logging.getLogger("dlp")

KEY_TAG, STEP_TAG, OUT_TAG, REUSED_TAG = "dlp.step.key", "dlp.step", "dlp.step.outputs", "dlp.step.reused_from"
PIPELINE_TAG = "dlp.pipeline"


@dataclass
class Pipeline:
    cfg: DictConfig                  # the training config (experiment + overrides)
    steps: DictConfig                # conf/pipeline.yaml steps, with pipeline.* overrides applied
    tune_args: List[str]             # tune=<y> and tune.* overrides, if the pipeline tunes instead of training
    overrides: List[str]


@dataclass
class StepResult:
    name: str
    run_id: str
    outputs: Dict[str, Any]
    reused_from: Optional[str] = None
    seconds: float = 0.0


@dataclass
class PipelineResult:
    run_id: str
    experiment_id: str
    steps: List[StepResult] = field(default_factory=list)


def prepare(args: List[str]) -> Pipeline:
    """Split `dlp pipeline` arguments into training, tune and step overrides; validate all before running."""
    from pipelines.config import CONF_DIR, compose

    tune_args, step_overrides, overrides = [], [], []
    for arg in args:
        key = arg.split("=", 1)[0]
        if key == "tune" or key.startswith("tune."):
            tune_args.append(arg)
        elif key.startswith("pipeline."):
            step_overrides.append(arg[len("pipeline."):])
        else:
            overrides.append(arg)
    spec = OmegaConf.load(CONF_DIR / "pipeline.yaml")
    try:
        steps = OmegaConf.merge(spec.steps, OmegaConf.from_dotlist(step_overrides))
    except Exception as e:  # noqa: BLE001 — a malformed dotlist
        raise ConfigError(f"pipeline: {str(e).splitlines()[0]}") from None
    for override in step_overrides:
        step, _, key = override.split("=", 1)[0].partition(".")
        if step not in spec.steps or key not in spec.steps[step] or key == "needs":
            allowed = ", ".join(f"{s}.{k}" for s in spec.steps for k in spec.steps[s] if k != "needs")
            raise ConfigError(f"pipeline: unknown step parameter '{step}.{key}' (allowed: {allowed})")
    _check_graph(steps)
    if tune_args:
        from pipelines import tune

        tune.prepare([*tune_args, *overrides])   # the sweep's errors, before anything runs
    cfg = compose(overrides)
    return Pipeline(cfg, steps, tune_args, overrides)


def _check_graph(steps: DictConfig) -> None:
    for name, step in steps.items():
        if name not in STEPS:
            raise ConfigError(f"pipeline: step '{name}' has no implementation (known: {', '.join(STEPS)})")
        for need in step.needs:
            if need not in steps or list(steps).index(need) >= list(steps).index(name):
                raise ConfigError(f"pipeline: step '{name}' needs '{need}', which is not an earlier step")


# ---- the driver -----------------------------------------------------------------------------

def run(p: Pipeline, echo: Callable[[str], None] = print) -> PipelineResult:
    """Run the steps in order, each as a nested MLflow run; reuse any whose inputs match a finished one."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking.configure(p.cfg)
    client = MlflowClient(uri)
    outer = os.environ.pop("MLFLOW_RUN_ID", None)   # `mlflow run` made our run; steps must not write into it
    if outer:
        experiment_id = client.get_run(outer).info.experiment_id
        parent = outer
    else:
        experiment_id = mlflow.set_experiment(p.cfg.mlflow.experiment_name or p.cfg.name).experiment_id
        parent = client.create_run(experiment_id, run_name=f"pipeline-{p.cfg.name}").info.run_id
    code = tracking.code_version()
    _set_tags(client, parent, {PIPELINE_TAG: p.cfg.name, "dlp.experiment": p.cfg.name,
                               "dlp.pipeline.command": json.dumps([*p.overrides, *p.tune_args]),
                               "dlp.pipeline.code_version": code or "unknown"})
    result = PipelineResult(parent, experiment_id)
    outputs: Dict[str, Dict[str, Any]] = {}
    with tracking.ending_run(parent, finish=not outer):   # `mlflow run` ends its own run
        for name, step in p.steps.items():
            params = {k: v for k, v in OmegaConf.to_container(step).items() if k != "needs"}
            upstream = {need: outputs[need] for need in step.needs}
            done = _run_step(client, p, experiment_id, parent, name, params, upstream, code, echo)
            outputs[name] = done.outputs
            result.steps.append(done)
        client.log_dict(parent, {s.name: {"run_id": s.run_id, "reused_from": s.reused_from, "outputs": s.outputs}
                                 for s in result.steps}, "pipeline/steps.json")
    return result


def _run_step(client, p: Pipeline, experiment_id: str, parent: str, name: str, params: dict, upstream: dict,
              code: Optional[str], echo) -> StepResult:
    entry = "tune" if name == "train" and p.tune_args else name
    inputs = {"entry": entry, "params": params, "code": code, "upstream": upstream,
              "config": _step_config(p, entry)}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    tags = {"mlflow.parentRunId": parent, STEP_TAG: name, KEY_TAG: key, "dlp.step.entry": entry}
    start = time.perf_counter()
    earlier = _finished_step(client, experiment_id, key)
    if earlier is not None:
        outputs = json.loads(earlier.data.tags[OUT_TAG])
        run_id = client.create_run(experiment_id, run_name=f"{name} (reused)",
                                   tags={**tags, REUSED_TAG: earlier.info.run_id, OUT_TAG: json.dumps(outputs)}
                                   ).info.run_id
        client.set_terminated(run_id, "FINISHED")
        echo(f"step {name:<9} reused  run {earlier.info.run_id}  {_show(outputs)}")
        return StepResult(name, run_id, outputs, earlier.info.run_id)
    echo(f"step {name:<9} running ...")
    run_id, outputs = STEPS[name](client, p, experiment_id, tags, params, upstream)
    client.set_tag(run_id, OUT_TAG, json.dumps(outputs))
    seconds = time.perf_counter() - start
    echo(f"step {name:<9} done    run {run_id}  {_show(outputs)}  ({seconds:.0f}s)")
    return StepResult(name, run_id, outputs, None, seconds)


def _step_config(p: Pipeline, entry: str) -> Any:
    """What of the training config a step's result depends on: the data settings for prepare, all of it for
    train and tune; later steps depend on it only through their upstream outputs."""
    if entry == "prepare":
        return {"data": OmegaConf.to_container(p.cfg.data, resolve=True), "seed": p.cfg.seed}
    if entry == "train":
        return OmegaConf.to_container(p.cfg, resolve=True)
    if entry == "tune":
        return {"cfg": OmegaConf.to_container(p.cfg, resolve=True), "tune": p.tune_args}
    return None


def _finished_step(client, experiment_id: str, key: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and "
                                                             f"attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5)
    return next((r for r in runs if OUT_TAG in r.data.tags), None)


def _set_tags(client, run_id: str, tags: Dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _show(outputs: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in outputs.items())


# ---- the steps: each returns (its run id, its outputs) ----------------------------------------

def _in_step_run(client, experiment_id: str, tags: dict, name: str, body: Callable[[str], dict]):
    """Run `body(run_id)` in a fresh step run that ends FINISHED (reusable only once _run_step has tagged its
    outputs), KILLED on Ctrl-C or FAILED."""
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    with tracking.ending_run(run_id):
        outputs = body(run_id)
    return run_id, outputs


def step_prepare(client, p: Pipeline, experiment_id: str, tags: dict, params: dict, upstream: dict):
    import datamodules

    def body(run_id):
        dm = datamodules.build(p.cfg.data, p.cfg.seed)
        dm.setup("fit")
        fp = {k: str(v) for k, v in dm.fingerprint().items()}
        client.log_dict(run_id, fp, "data/fingerprint.json")
        _set_tags(client, run_id, {f"dlp.data.{k}": v for k, v in fp.items()})
        return {"data_hash": fp["hash"], "n_train": int(fp["n_train"]), "n_test": int(fp["n_test"])}
    return _in_step_run(client, experiment_id, tags, "prepare", body)


def step_train(client, p: Pipeline, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines.train import train

    plain = OmegaConf.to_container(p.cfg, resolve=True)
    plain["mlflow"]["registered_model_name"] = None     # the register step does it
    plain["mlflow"]["log_model"] = True                 # evaluate and register need the model
    plain["mlflow"]["experiment_name"] = client.get_experiment(experiment_id).name
    from pipelines.config import validate

    cfg = validate(OmegaConf.create(plain))
    out = train(cfg, run_tags=tags)
    shown = {k: v for k, v in out.fit.test_metrics.items() if k in ("test/acc", "test/r2", "test/mae")}
    return out.run_id, {"run_id": out.run_id, **shown}


def step_tune(client, p: Pipeline, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines import tune

    sweep = tune.prepare([*p.tune_args, *p.overrides,
                          f"mlflow.experiment_name={client.get_experiment(experiment_id).name}"])
    result = tune.run(sweep, run_tags=tags)
    if result.best is None:
        raise UserError("pipeline: the sweep finished with no completed trial to carry on with")
    version = result.challenger_version
    return result.run_id, {"run_id": result.best.run_id, "sweep_run_id": result.run_id,
                           **({"version": version} if version else {})}


def evaluate(model_uri: str, metric: Optional[str] = None) -> Dict[str, Any]:
    """Score a logged model (runs:/<id>/model or models:/<name>@<alias>|/<version>) on the frozen test split
    of the run that trained it, from raw rows: {"metric": name, "value": score, "run_id": source run}."""
    import mlflow

    from pipelines import registry

    source = _source_run(model_uri)
    split = registry.rebuild_test_split(mlflow.MlflowClient(), source, registry.fingerprint(mlflow.MlflowClient(),
                                                                                            source))
    try:
        name, higher = registry.resolve_metric(split.task, split.monitor, metric)
    except UserError as e:
        raise UserError(str(e).replace("promote: --metric", "evaluate: metric")) from None
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as e:  # noqa: BLE001 — MLflow raises several types for a missing or broken model
        raise UserError(f"evaluate: cannot load model '{model_uri}': {str(e).splitlines()[0]}") from None
    return {"metric": name, "value": registry.score(model, split, name), "higher_is_better": higher,
            "run_id": source, "n_test": len(split.labels)}


def _source_run(model_uri: str) -> str:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].split("/")[0]
    if model_uri.startswith("models:/"):
        ref = model_uri[len("models:/"):]
        client = MlflowClient()
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                return client.get_model_version_by_alias(name, alias).run_id
            name, version = ref.rsplit("/", 1)
            return client.get_model_version(name, version).run_id
        except MlflowException as e:
            raise UserError(f"evaluate: no registered model '{ref}': {str(e).splitlines()[0]}") from None
    raise UserError(f"evaluate: '{model_uri}' is not runs:/<id>/model or models:/<name>@<alias>")


def step_evaluate(client, p: Pipeline, experiment_id: str, tags: dict, params: dict, upstream: dict):
    run_id = upstream["train"]["run_id"]

    def body(step_run):
        out = evaluate(f"runs:/{run_id}/model", params.get("metric"))
        client.log_metric(step_run, f"eval/{out['metric']}", out["value"])
        return {"metric": out["metric"], "value": out["value"], "model_run_id": run_id}
    return _in_step_run(client, experiment_id, tags, "evaluate", body)


def step_register(client, p: Pipeline, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines import registry

    name = params.get("name") or p.cfg.mlflow.registered_model_name or p.cfg.name

    def body(step_run):
        version = upstream["train"].get("version")   # a sweep registered its best trial already
        if version is None:
            version, _ = registry.register(f"runs:/{upstream['train']['run_id']}/model", name)
        return {"model": name, "version": str(version)}
    return _in_step_run(client, experiment_id, tags, "register", body)


def step_promote(client, p: Pipeline, experiment_id: str, tags: dict, params: dict, upstream: dict):
    from pipelines import registry

    reg = upstream["register"]

    def body(step_run):
        decision = registry.promote(reg["model"], metric=params.get("metric"),
                                    min_delta=float(params.get("min_delta") or 0.0), version=reg["version"])
        client.set_tag(step_run, "dlp.promote.decision", decision.line()[:5000])
        return {"model": reg["model"], "version": reg["version"], "promoted": decision.promoted,
                "champion": decision.challenger if decision.promoted else decision.champion}
    return _in_step_run(client, experiment_id, tags, "promote", body)


def step_train_or_tune(client, p: Pipeline, experiment_id: str, tags: dict, params: dict, upstream: dict):
    return (step_tune if p.tune_args else step_train)(client, p, experiment_id, tags, params, upstream)


STEPS: Dict[str, Callable] = {"prepare": step_prepare, "train": step_train_or_tune, "evaluate": step_evaluate,
                              "register": step_register, "promote": step_promote}


def summary(result: PipelineResult) -> str:
    reused = sum(s.reused_from is not None for s in result.steps)
    lines = [f"dlpipe · pipeline · {len(result.steps)} steps ({reused} reused, {len(result.steps) - reused} run)"]
    for s in result.steps:
        lines.append(f"  {s.name:<9} {'reused' if s.reused_from else 'ran':<7} {_show(s.outputs)}")
    lines.append(f"  pipeline run: {result.run_id}")
    return "\n".join(lines)

