"""`dlp tune`: run (or resume) a prepared Sweep on Ray Tune, one distributed training run per trial.

Each trial is `pipelines.training.driver.train` inside a Tune function trainable: in the trial's own process
(in_process.py), or as a Ray Train run of trainer.num_workers workers (Ray 2.60's Train V2 pattern), whose epoch
reports reach Tune through Ray's TuneReportCallback. Hyperparameters are sampled once, on this driver, and reach
the trial through its config; ASHA sees every epoch.

MLflow: one parent run for the sweep (space, algorithm, scheduler, budget, then report.py's outputs) and one
nested child run per trial (trials.py sets its final status).

Resume: the sweep's Tune state lives in <output_dir>/tune/<parent run id>. Running the same command again after
a crash or Ctrl-C (or with resume=true) restores it: finished trials are kept, unfinished ones rerun their trial
function, which finds its child run by tag and continues it from its checkpoints (in process: the run's
last.ckpt; a worker group: the Ray Train checkpoints stored under the run's id).

Where trials run (slots.py): a trial of trainer.num_workers <= 1 on a one-node cluster trains inside its own
Tune actor (in_process.py) — no worker group, actors reused, data built once per process — holding its
worker's CPU (or GPU), as many at once as the node has room for. Other trials are Ray Train runs whose drivers stay
on this node (where the Tune state, and a local tracking store, live) and hold no CPU; their workers go anywhere,
with checkpoints in trainer.storage_path (each trial's under <storage_path>/tune/<sweep run id>/), which every
node must reach. A sweep whose concurrent trials cannot fit the cluster is refused before anything starts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from pipelines import signals
from pipelines.cluster import local, nodes
from pipelines.errors import UserError
from pipelines.sweeps import report, search, slots, trials
from pipelines.sweeps.spec import Sweep, decode, tune_space
from pipelines.sweeps.table import TrialTable
from pipelines.tracking import names, runs, store

log = logging.getLogger("dlp")


def run(sweep: Sweep, run_tags: Optional[Dict[str, str]] = None) -> report.SweepResult:
    """Run (or resume) the sweep; returns its trials, the best one and the challenger's model URI.

    `run_tags` go on a new sweep run (`dlp pipeline` nests the sweep under its own run with them)."""
    import mlflow

    from pipelines.cluster.local import RayCluster

    start = time.perf_counter()
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")   # trials keep our working directory
    uri = store.configure(sweep.cfg)
    experiment = store.set_experiment(sweep.cfg.mlflow.experiment_name)
    # under `mlflow run`, its run is the sweep run; trials (whose processes inherit our environment through
    # the Ray cluster we may start) must not see it, or each would write into it
    outer = os.environ.pop("MLFLOW_RUN_ID", None)
    parent, path = _find_unfinished(sweep, experiment.experiment_id)
    parent = parent or outer
    # trials' Ray logs stay in Ray's session dir; the table shows them
    with RayCluster(log_to_driver=False, env=sweep.cfg.cluster.env) as cluster:
        cluster.connect()
        plan = slots.plan(sweep)
        local.check_outside_job_dir(output_dir=sweep.cfg.output_dir,
                                    **{"trainer.storage_path": sweep.cfg.trainer.storage_path})
        nodes.check_storage(sweep.cfg.trainer.storage_path or str(Path(sweep.cfg.output_dir).resolve() / "tune"))
        run_obj = mlflow.start_run(run_id=parent, run_name=None if parent else f"sweep-{sweep.name}",
                                   tags=None if parent else run_tags)
        parent = run_obj.info.run_id
        with runs.ending_run():
            if path is None:
                path = Path(sweep.cfg.output_dir).resolve() / "tune" / parent
                _log_sweep_inputs(sweep, path, plan)
            else:
                log.info("resuming sweep %s from %s", parent, path)
                mlflow.set_tag(names.SWEEP_RESUMED, "true")
            with _tune_ctrl_c() as interrupted:
                grid = _tuner(sweep, parent, path, uri, experiment.name, plan).fit()
            if interrupted.is_set():
                raise KeyboardInterrupt  # Tune saved its state and stopped the trials it was running
            trials.await_trial_workers()
            done = trials.reconcile(sweep, parent, grid)
            _clean_up_trials(sweep, path, done)
            best = trials.best(sweep, done)
            version = report.log_sweep_outputs(sweep, parent, done, best)
    return report.SweepResult(sweep, parent, experiment.experiment_id, done, best, version,
                              time.perf_counter() - start)


def _clean_up_trials(sweep: Sweep, path: Path, done) -> None:
    """Remove what the trials staged on each node: a trial Tune stopped was killed before it could."""
    from pipelines.training import ray_driver

    ray_driver.clean_up(sweep.cfg, *[t.run_id for t in done if t.run_id], storage=_train_storage(sweep.cfg, path))


@contextlib.contextmanager
def _tune_ctrl_c():
    """Ctrl-C during Tuner.fit: Tune's own graceful stop (state saved, trials stopped; its signal is SIGUSR1),
    flagged by the event — after such a stop fit() returns normally and its trials all look TERMINATED. A second
    Ctrl-C raises KeyboardInterrupt at once. Tune is told to leave SIGINT alone, or it would replace our handler."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        with signals.graceful_ctrl_c(lambda: os.kill(os.getpid(), signal.SIGUSR1)) as interrupted:
            yield interrupted
    finally:
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)


def _find_unfinished(sweep: Sweep, experiment_id: str):
    """(parent run id, Tune state dir) of the newest unfinished sweep of this same command, or (None, None)."""
    from mlflow import MlflowClient
    from ray.tune import Tuner

    if sweep.resume is False:
        return None, None
    found = MlflowClient().search_runs([experiment_id], filter_string=f"tags.`{names.SWEEP}` != ''",
                                       order_by=["attributes.start_time DESC"], max_results=50)
    for r in found:
        path = r.data.tags.get(names.SWEEP_PATH)
        if (r.data.tags.get(names.SWEEP_SIGNATURE) == sweep.signature and r.info.status != "FINISHED"
                and path and Path(path).is_dir() and Tuner.can_restore(path)):
            return r.info.run_id, Path(path)
    if sweep.resume:
        raise UserError(f"tune: resume=true but no unfinished sweep of tune={sweep.name} with these overrides "
                        f"was found in experiment '{sweep.cfg.mlflow.experiment_name}'")
    return None, None


def _log_sweep_inputs(sweep: Sweep, path: Path, plan: slots.Slots) -> None:
    import mlflow

    from pipelines.config.compose import to_yaml

    s = sweep.spec
    mlflow.log_params({"tune.name": sweep.name, "tune.search": s.search, "tune.scheduler": s.scheduler,
                       "tune.num_samples": s.num_samples, "tune.max_concurrent_trials": plan.concurrent,
                       "tune.trials_in_process": plan.in_process,
                       "tune.metric": sweep.metric, "tune.mode": sweep.mode, "tune.grace_period": s.grace_period,
                       "tune.reduction_factor": s.reduction_factor, "tune.seed": s.seed,
                       "tune.workers_per_trial": sweep.cfg.trainer.num_workers,
                       "tune.max_epochs": sweep.cfg.trainer.max_epochs})
    mlflow.log_params({f"space.{k}": json.dumps(OmegaConf.to_container(v)) for k, v in s.space.items()})
    mlflow.log_text(OmegaConf.to_yaml(s), f"{names.SWEEP_DIR}/space.yaml")
    mlflow.log_text(to_yaml(sweep.cfg), f"{names.SWEEP_DIR}/base_config.yaml")
    mlflow.set_tags({names.SWEEP: f"{sweep.cfg.name}/{sweep.name}", names.SWEEP_SIGNATURE: sweep.signature,
                     names.SWEEP_PATH: str(path), names.EXPERIMENT: sweep.cfg.name,
                     names.MONITOR: names.monitor_tag(sweep.metric, sweep.mode)})


def _tuner(sweep: Sweep, parent: str, path: Path, uri: str, experiment: str, plan: slots.Slots):
    from ray import tune

    from pipelines.config.compose import with_absolute_paths

    base = with_absolute_paths(sweep.cfg)
    # the trials' runs go where the sweep run is: under `mlflow run`, the experiment MLflow chose for it
    base["mlflow"]["experiment_name"] = experiment
    base["trainer"]["storage_path"] = _train_storage(sweep.cfg, path)
    base["mlflow"]["registered_model_name"] = None     # trials log models; the sweep registers the best one
    info = {"parent": parent, "uri": uri, "encoded": sweep.encoded, "sweep": sweep.name,
            "in_process": plan.in_process, "cpus": plan.resources.get("CPU", 1)}
    # every trial's actor on this node (Ray's node:<ip> resource): see slots.py
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, info=info), plan.resources)
    if path.exists() and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    s = sweep.spec
    return tune.Tuner(
        trainable, param_space=tune_space(s.space, s.search, sweep.encoded),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=search.make_searcher(sweep, plan.concurrent),
                                    scheduler=search.make_scheduler(sweep),
                                    num_samples=1 if s.search == "grid" else s.num_samples,
                                    max_concurrent_trials=plan.concurrent if s.search == "optuna" else None,
                                    reuse_actors=plan.in_process),
        run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0,
                                  callbacks=[TrialTable(sweep.metric, list(s.space), sweep.cfg.trainer.max_epochs)],
                                  failure_config=tune.FailureConfig(max_failures=0)))


def _train_storage(cfg: DictConfig, path: Path) -> str:
    """Where the trials' Ray Train checkpoints go: under trainer.storage_path when set, else in the sweep's dir."""
    root = cfg.trainer.storage_path
    return f"{root.rstrip('/')}/tune/{path.name}" if root else str(path / "train")


def _trial(params: Dict[str, Any], base: Dict[str, Any], info: Dict[str, Any]) -> None:
    """One trial, in a Tune trial actor: train one sampled config as a nested MLflow run, here or in a worker
    group (Ray's TuneReportCallback turns each epoch's Train report into a Tune result); continue this trial's run
    if it has one (resume)."""
    from ray import tune

    from pipelines.config.compose import validate
    from pipelines.training.driver import train

    started = time.time()
    cfg = OmegaConf.create(base)
    values = decode(params, info["encoded"])
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    trial_id = tune.get_context().get_trial_id()
    cfg.mlflow.run_name = f"{info['sweep']}-{trial_id}"
    store.configure(cfg)
    tags = {names.PARENT_RUN: info["parent"], names.SWEEP_RUN: info["parent"], names.TRIAL_ID: trial_id,
            names.TRIAL_PARAMS: json.dumps(values), names.TRIAL_STARTED: f"{started:.3f}"}
    continue_run = _trial_run(info["parent"], trial_id)
    if info["in_process"]:
        from pipelines.sweeps import in_process

        in_process.prepare(cfg, continue_run, info["cpus"])
        in_process.run(validate(cfg), tags, continue_run)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    train(validate(cfg), run_tags=tags, continue_run=continue_run, ray_callbacks=[TuneReportCallback()])


def _trial_run(parent: str, trial_id: str) -> Optional[str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    parent_run = client.get_run(parent)
    found = client.search_runs([parent_run.info.experiment_id],
                               filter_string=f"tags.`{names.SWEEP_RUN}` = '{parent}' and "
                                             f"tags.`{names.TRIAL_ID}` = '{trial_id}'")
    return found[0].info.run_id if found else None
