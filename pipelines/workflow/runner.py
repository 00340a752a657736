"""`dlp pipeline`: run a plan's steps in order, each as an MLflow run nested under one pipeline run (under
`mlflow run`, the run MLflow made for the command).

Before running a step, its key (keys.py: a hash of its entry point, parameters, code version — HEAD, uncommitted
diff and untracked sources —, the training config it reads, for prepare the content of the data, and its upstream
steps' keys and outputs) is looked up among FINISHED step runs of the experiment; on a match the step is reused:
a step run tagged dlp.step.reused_from carries the earlier outputs and nothing is recomputed. Re-running a
pipeline that failed therefore resumes at the step that failed, and re-running a finished one reuses every step;
after a change, exactly the steps whose inputs it reaches run again.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from omegaconf import OmegaConf

from pipelines.tracking import names, runs, store
from pipelines.workflow import keys
from pipelines.workflow.plan import Pipeline
from pipelines.workflow.steps import STEPS


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


def run(p: Pipeline, echo: Callable[[str], None] = print) -> PipelineResult:
    """Run the steps in order, each as a nested MLflow run; reuse any whose inputs match a finished one."""
    import mlflow
    from mlflow import MlflowClient

    uri = store.configure(p.cfg)
    client = MlflowClient(uri)
    outer = os.environ.pop("MLFLOW_RUN_ID", None)   # `mlflow run` made our run; steps must not write into it
    if outer:
        experiment_id = client.get_run(outer).info.experiment_id
        parent = outer
    else:
        experiment_id = mlflow.set_experiment(p.cfg.mlflow.experiment_name or p.cfg.name).experiment_id
        parent = client.create_run(experiment_id, run_name=f"pipeline-{p.cfg.name}").info.run_id
    code = store.code_version()
    runs.set_tags(client, parent, {names.PIPELINE: p.cfg.name, names.EXPERIMENT: p.cfg.name,
                                   names.PIPELINE_COMMAND: json.dumps([*p.overrides, *p.tune_args]),
                                   names.PIPELINE_CODE_VERSION: code or "unknown"})
    result = PipelineResult(parent, experiment_id)
    outputs: Dict[str, Dict[str, Any]] = {}
    step_keys: Dict[str, str] = {}
    with runs.ending_run(parent, finish=not outer):   # `mlflow run` ends its own run
        for name, step in p.steps.items():
            params = {k: v for k, v in OmegaConf.to_container(step).items() if k != "needs"}
            entry = "tune" if name == "train" and p.tune_args else name
            step_keys[name] = keys.step_key(entry, params, code, keys.step_config(p, entry),
                                            {n: {"key": step_keys[n], "outputs": outputs[n]} for n in step.needs})
            upstream = {need: outputs[need] for need in step.needs}
            done = _run_step(client, p, experiment_id, parent, name, entry, step_keys[name], params, upstream,
                             echo)
            outputs[name] = done.outputs
            result.steps.append(done)
        client.log_dict(parent, {s.name: {"run_id": s.run_id, "reused_from": s.reused_from, "outputs": s.outputs}
                                 for s in result.steps}, names.PIPELINE_STEPS)
    return result


def _run_step(client, p: Pipeline, experiment_id: str, parent: str, name: str, entry: str, key: str, params: dict,
              upstream: dict, echo) -> StepResult:
    tags = {names.PARENT_RUN: parent, names.STEP: name, names.STEP_KEY: key, names.STEP_ENTRY: entry}
    start = time.perf_counter()
    earlier = _finished_step(client, experiment_id, key)
    if earlier is not None:
        outputs = json.loads(earlier.data.tags[names.STEP_OUTPUTS])
        run_id = client.create_run(experiment_id, run_name=f"{name} (reused)",
                                   tags={**tags, names.STEP_REUSED_FROM: earlier.info.run_id,
                                         names.STEP_OUTPUTS: json.dumps(outputs)}).info.run_id
        client.set_terminated(run_id, "FINISHED")
        echo(f"step {name:<9} reused  run {earlier.info.run_id}  {_show(outputs)}")
        return StepResult(name, run_id, outputs, earlier.info.run_id)
    echo(f"step {name:<9} running ...")
    run_id, outputs = STEPS[name](client, p, experiment_id, tags, params, upstream)
    client.set_tag(run_id, names.STEP_OUTPUTS, json.dumps(outputs))
    seconds = time.perf_counter() - start
    echo(f"step {name:<9} done    run {run_id}  {_show(outputs)}  ({seconds:.0f}s)")
    return StepResult(name, run_id, outputs, None, seconds)


def _finished_step(client, experiment_id: str, key: str):
    found = client.search_runs([experiment_id], filter_string=f"tags.`{names.STEP_KEY}` = '{key}' and "
                                                              f"attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"], max_results=5)
    return next((r for r in found if names.STEP_OUTPUTS in r.data.tags), None)


def _show(outputs: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in outputs.items())


def summary(result: PipelineResult) -> str:
    reused = sum(s.reused_from is not None for s in result.steps)
    lines = [f"dlpipe · pipeline · {len(result.steps)} steps ({reused} reused, {len(result.steps) - reused} run)"]
    for s in result.steps:
        lines.append(f"  {s.name:<9} {'reused' if s.reused_from else 'ran':<7} {_show(s.outputs)}")
    lines.append(f"  pipeline run: {result.run_id}")
    return "\n".join(lines)
