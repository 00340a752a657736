"""`dlp tune experiment=X tune=Y [overrides] [resume=true|false]`: a Ray Tune sweep of distributed trials.

conf/tune/Y.yaml (pipelines.schema.SweepConfig) names a search space over any config key, the search
algorithm (grid, random, Optuna TPE), the scheduler (FIFO, ASHA, HyperBand), the budget and the
overrides every trial shares. Each trial is `pipelines.train.train` — a Ray Train run of
trainer.num_workers workers — inside a Tune function trainable (Ray 2.60's Train V2 pattern):
hyperparameters are sampled once, on this driver, and reach every worker through the trial's config;
each epoch's report reaches Tune through Ray's TuneReportCallback, so ASHA sees every epoch.

MLflow: one parent run for the sweep (space, algorithm, scheduler, budget, then the best config and
metric, a trials CSV and a plot) and one nested child run per trial, ending FINISHED (completed),
KILLED (tag dlp.trial_status "stopped by asha after epoch k") or FAILED (with the error). The best
completed trial's model is registered under mlflow.registered_model_name (else the experiment's name)
with alias `challenger`.

Resume: the sweep's Tune state lives in <output_dir>/tune/<parent run id>. Running the same command
again after a crash or Ctrl-C (or with resume=true) restores it: finished trials are kept, unfinished
ones rerun their trial function, which finds its child run by tag and continues it from the Ray Train
checkpoints stored under that run's id.

Resources: a trial's driver only waits on its Train workers, so it reserves a little logical memory and
no CPU; on a 2-CPU machine two trial drivers holding a CPU each would leave their workers none (deadlock).
A sweep whose concurrent trials cannot fit the cluster is refused before anything starts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from ray.tune import Callback

from pipelines import tracking
from pipelines.errors import ConfigError, UserError

log = logging.getLogger("dlp")

STATUS_TAG, TRIAL_TAG, SWEEP_TAG = "dlp.trial_status", "dlp.trial_id", "dlp.sweep_run_id"
_MISSING = object()


@dataclass
class Sweep:
    """A validated `dlp tune` command: the search spec, the training config every trial starts from."""
    name: str
    spec: DictConfig
    cfg: DictConfig
    overrides: List[str]
    resume: Optional[bool]           # None: continue an unfinished sweep of the same command if there is one
    metric: str
    mode: str
    encoded: List[str] = field(default_factory=list)   # keys whose choices travel as JSON strings

    @property
    def signature(self) -> str:
        """What makes two commands 'the same sweep' for resuming."""
        return json.dumps({"tune": self.name, "overrides": self.overrides})


@dataclass
class Trial:
    trial_id: str
    run_id: Optional[str]
    status: str                      # completed | stopped | errored
    params: Dict[str, Any]
    epochs: int
    best: Optional[float]
    test: Dict[str, float]
    error: str = ""


@dataclass
class SweepResult:
    sweep: Sweep
    run_id: str
    experiment_id: str
    trials: List[Trial]
    best: Optional[Trial]
    challenger_version: Optional[str]      # the registry version given alias `challenger`, if any
    seconds: float

    @property
    def challenger(self) -> Optional[str]:
        name = self.sweep.cfg.mlflow.registered_model_name or self.sweep.cfg.name
        return f"models:/{name}@challenger" if self.challenger_version else None


# ---- command line -> Sweep ------------------------------------------------------------------

def prepare(args: List[str]) -> Sweep:
    """Parse `dlp tune` arguments and check everything that can be checked before Ray or MLflow start."""
    from pipelines.config import compose

    name, resume, tune_overrides, overrides = None, None, [], []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "tune":
            name = value
        elif key == "resume" and value.lower() in ("true", "false", "auto"):
            resume = {"true": True, "false": False, "auto": None}[value.lower()]
        elif key.startswith("tune."):
            tune_overrides.append(arg[len("tune."):])
        else:
            overrides.append(arg)
    if not name:
        raise UserError(f"tune: name a search space with tune=<name> (available: {', '.join(available())})")
    spec = load_spec(name, tune_overrides)
    cfg = compose([*spec.overrides, *overrides])   # the command line wins over the sweep's fixed overrides
    plain = OmegaConf.to_container(cfg, resolve=True)
    if plain["trainer"]["num_workers"] < 1:        # a trial is always a Ray Train run
        plain["trainer"]["num_workers"] = 1
    plain["trainer"]["progress_bar"] = False       # the sweep's table replaces per-trial epoch lines
    plain["mlflow"]["tracking_uri"] = tracking.absolute_uri(tracking.tracking_uri(cfg))
    plain["mlflow"]["experiment_name"] = cfg.mlflow.experiment_name or cfg.name
    from pipelines.config import validate

    cfg = validate(OmegaConf.create(plain))
    metric, mode = spec.metric or cfg.monitor.metric, spec.mode or cfg.monitor.mode
    _check_metric(cfg, metric, mode)
    encoded = _check_space(cfg, spec)
    if spec.search == "optuna":
        from pipelines.search import finite_choices

        choices = finite_choices(tune_space(spec.space, spec.search, encoded))
        size = math.prod(len(values) for values in choices.values()) if choices else 0
        if size and spec.num_samples > size:
            log.warning("tune: the space has %d configs and TPE tries each once: %d trials, not num_samples=%d",
                        size, size, spec.num_samples)
    return Sweep(name, spec, cfg, overrides, resume, metric, mode, encoded)


def available() -> List[str]:
    from pipelines.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "tune").glob("*.yaml"))


def load_spec(name: str, overrides: List[str] = ()) -> DictConfig:
    """conf/tune/<name>.yaml merged into SweepConfig, then `tune.key=value` overrides; read-only."""
    from pipelines.config import CONF_DIR
    from pipelines.schema import SPACE_KINDS, SWEEP_CHOICES, SweepConfig

    path = CONF_DIR / "tune" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"tune: unknown search space '{name}' (available: {', '.join(available())})")
    try:
        spec = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path),
                               OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # noqa: BLE001 — OmegaConf raises several types, all meaning "bad sweep file"
        raise ConfigError(f"tune: {path.name}: {str(e).splitlines()[0]}") from None
    for key, allowed in SWEEP_CHOICES.items():
        if spec[key] not in allowed:
            raise ConfigError(f"tune: {key}: unknown '{spec[key]}' (allowed: {', '.join(allowed)})")
    for key, ok, why in (("num_samples", spec.num_samples >= 1, "must be >= 1"),
                         ("max_concurrent_trials", spec.max_concurrent_trials >= 1, "must be >= 1"),
                         ("grace_period", spec.grace_period >= 1, "must be >= 1"),
                         ("reduction_factor", spec.reduction_factor >= 2, "must be >= 2"),
                         ("mode", spec.mode in (None, "min", "max"), "must be min or max"),
                         ("space", len(spec.space) > 0, "names no hyperparameter")):
        if not ok:
            raise ConfigError(f"tune: {key}={spec[key]}: {why}")
    for key, dist in spec.space.items():
        if not isinstance(dist, DictConfig) or len(dist) != 1 or next(iter(dist)) not in SPACE_KINDS:
            raise ConfigError(f"tune: space.{key}: expected one of {{{', '.join(SPACE_KINDS)}}}: [...]")
        kind, values = next(iter(dist.items()))
        arity = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2}.get(kind, 3)
        if arity is None and len(values) < 1 or arity is not None and len(values) != arity:
            raise ConfigError(f"tune: space.{key}: {kind} takes {arity or 'a non-empty list of'} values")
        if spec.search == "grid" and kind not in ("grid", "choice"):
            raise ConfigError(f"tune: space.{key}: search=grid needs grid or choice values, not {kind}")
        if spec.search == "optuna" and kind == "grid":
            raise ConfigError(f"tune: space.{key}: search=optuna samples; use choice instead of grid")
    OmegaConf.set_readonly(spec, True)
    return spec


def _check_metric(cfg: DictConfig, metric: str, mode: str) -> None:
    import datamodules
    import models

    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")  # bad data fails here, before any run
    produced = models.metric_names(dm.spec.task, "val") + models.metric_names(dm.spec.task, "train")
    if metric not in produced:
        raise ConfigError(f"tune: metric={metric}: not produced by a {dm.spec.task} task (available: "
                          f"{', '.join(produced)})")


def _check_space(cfg: DictConfig, spec: DictConfig) -> List[str]:
    """Every key names a config key, and one value of each validates; returns the keys whose choices are
    not scalars (Optuna takes scalars only: those travel as JSON strings)."""
    from pipelines.config import validate

    encoded = []
    for key, dist in spec.space.items():
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"tune: space key '{key}' is not a key of experiment {cfg.name}'s config "
                              f"(dlp config show experiment={cfg.name})")
        kind, values = next(iter(dist.items()))
        values = OmegaConf.to_container(values)
        candidates = values if kind in ("choice", "grid") else values[:1]
        for value in candidates:
            trial = OmegaConf.create(OmegaConf.to_container(cfg))
            OmegaConf.update(trial, key, value, merge=False)
            try:
                validate(trial)
            except ConfigError as e:
                raise ConfigError(f"tune: space.{key} value {value!r}: {str(e).removeprefix('config: ')}") from None
        if kind in ("choice", "grid") and any(isinstance(v, (list, dict)) for v in values):
            encoded.append(key)
    return encoded


# ---- the sweep ------------------------------------------------------------------------------

def run(sweep: Sweep, run_tags: Optional[Dict[str, str]] = None) -> SweepResult:
    """Run (or resume) the sweep; returns its trials, the best one and the challenger's model URI.

    `run_tags` go on a new sweep run (`dlp pipeline` nests the sweep under its own run with them)."""
    import mlflow

    from pipelines import raycluster

    start = time.perf_counter()
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")   # trials keep our working directory
    uri = tracking.configure(sweep.cfg)
    experiment = tracking.set_experiment(sweep.cfg.mlflow.experiment_name)
    # under `mlflow run`, its run is the sweep run; trials (whose processes inherit our environment through
    # the Ray cluster we may start) must not see it, or each would write into it
    outer = os.environ.pop("MLFLOW_RUN_ID", None)
    parent, path = _find_unfinished(sweep, experiment.experiment_id)
    parent = parent or outer
    started = raycluster.connect(log_to_driver=False)  # trials' Ray logs stay in Ray's session dir; the table shows
    try:
        import ray

        check_fits(sweep.cfg, sweep.spec.max_concurrent_trials, ray.cluster_resources())
        run_obj = mlflow.start_run(run_id=parent, run_name=None if parent else f"sweep-{sweep.name}",
                                   tags=None if parent else run_tags)
        parent = run_obj.info.run_id
        with tracking.ending_run():
            if path is None:
                path = Path(sweep.cfg.output_dir).resolve() / "tune" / parent
                _log_sweep_inputs(sweep, path)
            else:
                log.info("resuming sweep %s from %s", parent, path)
                mlflow.set_tag("dlp.sweep.resumed", "true")
            with _ctrl_c() as interrupted:
                grid = _tuner(sweep, parent, path, uri).fit()
            if interrupted.is_set():
                raise KeyboardInterrupt  # Tune saved its state and stopped the trials it was running
            _await_trial_workers()
            trials = _reconcile(sweep, parent, grid)
            best = _best(sweep, trials)
            version = _log_sweep_outputs(sweep, parent, trials, best)
    finally:
        if started:
            import ray

            ray.shutdown()
    return SweepResult(sweep, parent, experiment.experiment_id, trials, best, version, time.perf_counter() - start)


@contextlib.contextmanager
def _ctrl_c():
    """Ctrl-C during Tuner.fit: Tune's own graceful stop (state saved, trials stopped), and a flag that says it
    happened — after such a stop fit() returns normally and its trials all look TERMINATED. A second Ctrl-C
    raises KeyboardInterrupt at once."""
    import signal
    import threading

    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum, frame):
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGUSR1)      # Tune's graceful-stop signal

    previous = signal.signal(signal.SIGINT, handler)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"   # Tune would replace our handler with its own
    try:
        yield interrupted
    finally:
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        signal.signal(signal.SIGINT, previous)


def _find_unfinished(sweep: Sweep, experiment_id: str):
    """(parent run id, Tune state dir) of the newest unfinished sweep of this same command, or (None, None)."""
    from mlflow import MlflowClient
    from ray.tune import Tuner

    if sweep.resume is False:
        return None, None
    runs = MlflowClient().search_runs([experiment_id], filter_string="tags.`dlp.sweep` != ''",
                                      order_by=["attributes.start_time DESC"], max_results=50)
    for r in runs:
        path = r.data.tags.get("dlp.sweep.path")
        if (r.data.tags.get("dlp.sweep.signature") == sweep.signature and r.info.status != "FINISHED"
                and path and Path(path).is_dir() and Tuner.can_restore(path)):
            return r.info.run_id, Path(path)
    if sweep.resume:
        raise UserError(f"tune: resume=true but no unfinished sweep of tune={sweep.name} with these overrides "
                        f"was found in experiment '{sweep.cfg.mlflow.experiment_name}'")
    return None, None


def check_fits(cfg: DictConfig, concurrent: int, total: Dict[str, float]) -> None:
    """Refuse a sweep whose concurrent trials' workers cannot all be placed on a cluster with `total`
    resources: Ray would wait forever. Trial drivers hold no CPU (see the module docstring)."""
    t = cfg.trainer
    per_worker = dict(t.resources_per_worker) or {"CPU": 1}
    if t.use_gpu:
        per_worker.setdefault("GPU", 1)
    for resource, amount in per_worker.items():
        need, have = t.num_workers * amount, total.get(resource, 0)
        if need > have:
            raise UserError(f"tune: one trial needs {need:g} {resource} (trainer.num_workers={t.num_workers} x "
                            f"{amount:g}) but the cluster has {have:g}")
        if need * concurrent > have:
            raise UserError(f"tune: {concurrent} concurrent trials x {need:g} {resource} each need "
                            f"{need * concurrent:g} {resource}, the cluster has {have:g}; set "
                            f"tune.max_concurrent_trials={int(have // need)} or fewer trainer.num_workers")


def _log_sweep_inputs(sweep: Sweep, path: Path) -> None:
    import mlflow

    from pipelines.config import to_yaml

    s = sweep.spec
    mlflow.log_params({"tune.name": sweep.name, "tune.search": s.search, "tune.scheduler": s.scheduler,
                       "tune.num_samples": s.num_samples, "tune.max_concurrent_trials": s.max_concurrent_trials,
                       "tune.metric": sweep.metric, "tune.mode": sweep.mode, "tune.grace_period": s.grace_period,
                       "tune.reduction_factor": s.reduction_factor, "tune.seed": s.seed,
                       "tune.workers_per_trial": sweep.cfg.trainer.num_workers,
                       "tune.max_epochs": sweep.cfg.trainer.max_epochs})
    mlflow.log_params({f"space.{k}": json.dumps(OmegaConf.to_container(v)) for k, v in s.space.items()})
    mlflow.log_text(OmegaConf.to_yaml(s), "sweep/space.yaml")
    mlflow.log_text(to_yaml(sweep.cfg), "sweep/base_config.yaml")
    mlflow.set_tags({"dlp.sweep": f"{sweep.cfg.name}/{sweep.name}", "dlp.sweep.signature": sweep.signature,
                     "dlp.sweep.path": str(path), "dlp.experiment": sweep.cfg.name,
                     "dlp.monitor": f"{sweep.metric}:{sweep.mode}"})


def _tuner(sweep: Sweep, parent: str, path: Path, uri: str):
    from ray import tune

    from pipelines.config import with_absolute_paths

    base = with_absolute_paths(sweep.cfg)
    base["trainer"]["storage_path"] = str(path / "train")
    base["mlflow"]["registered_model_name"] = None     # trials log models; the sweep registers the best one
    info = {"parent": parent, "uri": uri, "encoded": sweep.encoded, "sweep": sweep.name}
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, info=info),
                                    {"memory": sweep.spec.trial_memory_mb * 1024 ** 2})
    if path.exists() and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    s = sweep.spec
    return tune.Tuner(
        trainable, param_space=tune_space(s.space, s.search, sweep.encoded),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=_searcher(sweep),
                                    scheduler=_scheduler(sweep), num_samples=1 if s.search == "grid" else s.num_samples,
                                    max_concurrent_trials=s.max_concurrent_trials if s.search == "optuna" else None),
        run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0,
                                  callbacks=[TrialTable(sweep.metric, list(s.space), sweep.cfg.trainer.max_epochs)],
                                  failure_config=tune.FailureConfig(max_failures=0)))


def tune_space(space: DictConfig, search: str, encoded: List[str]) -> Dict[str, Any]:
    """The declarative space as Ray Tune domains (choice -> grid_search under search=grid)."""
    from ray import tune

    out = {}
    for key, dist in space.items():
        kind, values = next(iter(dist.items()))
        values = OmegaConf.to_container(values)
        if key in encoded:
            values = [json.dumps(v) for v in values]
        if kind == "grid" or (kind == "choice" and search == "grid"):
            out[key] = tune.grid_search(values)
        else:
            out[key] = getattr(tune, kind)(*values) if kind != "choice" else tune.choice(values)
    return out


def _searcher(sweep: Sweep):
    s = sweep.spec
    if s.search != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # a SearchGenerator, not a Searcher: Tune ignores TuneConfig.max_concurrent_trials for it (with a warning)
        # and would start every grid point's trial at once, so the generator itself holds the limit
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from pipelines.search import DistinctConfigs

    # TPE models the good and bad trials once a few exist; Optuna's default of 10 random ones first
    # would leave a small sweep purely random
    startup = max(2, min(10, s.num_samples // 3))
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup))
    # over a space of choices only, TPE re-proposes configs it has tried; seeded training makes a repeat pure waste
    return DistinctConfigs(searcher, seed=s.seed)


def _scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    s = sweep.spec
    # Rungs strictly before the last epoch, and no stop *at* max_t: a trial that trained every epoch ends on
    # its own, after testing and logging its model, instead of being killed by the scheduler at the finish.
    last = max(1, sweep.cfg.trainer.max_epochs - 1)
    if s.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=last, grace_period=min(s.grace_period, last),
                             reduction_factor=s.reduction_factor, stop_last_trials=False)
    if s.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=last, reduction_factor=s.reduction_factor,
                                  stop_last_trials=False)
    return FIFOScheduler()


# ---- one trial (runs in a Tune trial actor) ---------------------------------------------------

def _trial(params: Dict[str, Any], base: Dict[str, Any], info: Dict[str, Any]) -> None:
    """Train one sampled config as a nested MLflow run; continue this trial's run if it has one (resume)."""
    from ray import tune

    from pipelines.config import validate
    from pipelines.train import train

    cfg = OmegaConf.create(base)
    values = decode(params, info["encoded"])
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    trial_id = tune.get_context().get_trial_id()
    cfg.mlflow.run_name = f"{info['sweep']}-{trial_id}"
    cfg = validate(cfg)
    tracking.configure(cfg)
    tags = {"mlflow.parentRunId": info["parent"], SWEEP_TAG: info["parent"], TRIAL_TAG: trial_id,
            "dlp.trial_params": json.dumps(values)}
    train(cfg, run_tags=tags, continue_run=_trial_run(info["parent"], trial_id), report_to_tune=True)


def decode(params: Dict[str, Any], encoded: List[str]) -> Dict[str, Any]:
    return {k: json.loads(v) if k in encoded else v for k, v in params.items()}


def _trial_run(parent: str, trial_id: str) -> Optional[str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    parent_run = client.get_run(parent)
    runs = client.search_runs([parent_run.info.experiment_id],
                              filter_string=f"tags.`{SWEEP_TAG}` = '{parent}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
    return runs[0].info.run_id if runs else None


# ---- after the sweep ------------------------------------------------------------------------

def _await_trial_workers(timeout: float = 30.0) -> None:
    """Wait until this sweep's trials have let go of the cluster: a trial the scheduler stopped is killed, and
    its Ray Train controller and workers die after it (fate sharing) while Train's placement-group cleaner
    removes its workers' placement group, all asynchronously. Until the workers are gone, a stopped trial's
    rank 0 could still log an epoch to a run we are about to mark KILLED."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    job = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout
    while True:
        held = [a.class_name for a in list_actors(filters=[("state", "=", "ALIVE"), ("job_id", "=", job)],
                                                  raise_on_missing_output=False)
                if a.class_name in ("RayTrainWorker", "TrainController")]
        held += [f"placement group {g.placement_group_id}" for g in list_placement_groups(
            filters=[("state", "=", "CREATED")], raise_on_missing_output=False) if g.creator_job_id == job]
        if not held:
            log.debug("trials released the cluster after %.1fs", time.monotonic() - deadline + timeout)
            return
        if time.monotonic() > deadline:
            log.warning("stopped trials still hold %s after %.0fs", ", ".join(held), timeout)
            return
        time.sleep(0.5)


def _reconcile(sweep: Sweep, parent: str, grid) -> List[Trial]:
    """One Trial per Tune trial, with its child run's final status set: a trial the scheduler stopped was
    killed mid-run (its run is not FINISHED); one that raised is FAILED with the error."""
    from mlflow import MlflowClient

    client = MlflowClient()
    children = {r.data.tags.get(TRIAL_TAG): r for r in client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{parent}'")}
    trials = []
    for result in grid:
        # a trial that never reported has no metrics; its directory is _trial_<id>_<n>_<params>_<date>
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[2]
        child = children.get(trial_id)
        frame = result.metrics_dataframe
        values = frame[sweep.metric].dropna() if frame is not None and sweep.metric in frame else None
        best = None if values is None or values.empty else float(values.max() if sweep.mode == "max" else values.min())
        epochs = int((result.metrics or {}).get("epoch", -1)) + 1
        params = decode(dict(result.config or {}), sweep.encoded)
        if result.error is not None:
            status, error = "errored", _first_line(result.error)
        elif child is not None and child.info.status == "FINISHED":
            status, error = "completed", ""
        else:
            status, error = "stopped", ""
        run_id = child.info.run_id if child is not None else None
        if run_id is not None:
            # the stop reaches a trial's workers asynchronously: rank 0 may log one more epoch than Tune saw
            epochs = max(epochs, _backfill_epochs(client, run_id, frame))
            _finish_child(client, run_id, status, error, epochs, sweep.spec.scheduler)
            child = client.get_run(run_id)
        test = {k: v for k, v in (child.data.metrics.items() if child else ()) if k.startswith("test/")}
        trials.append(Trial(trial_id, run_id, status, params, epochs, best, test, error))
    return sorted(trials, key=lambda t: t.trial_id)


def _backfill_epochs(client, run_id: str, frame) -> int:
    """Log the epochs Tune received but the child run lacks (a trial stopped right after its report dies
    before its rank 0 writes that epoch to MLflow); return how many epochs the run now holds."""
    from mlflow.entities import Metric

    from pipelines.tracking import EPOCH_PREFIXES

    logged = max((m.step for m in client.get_metric_history(run_id, "train/loss")), default=-1)
    if frame is None or "epoch" not in frame:
        return logged + 1
    keys = [k for k in frame.columns if k.startswith((*EPOCH_PREFIXES, "perf/"))]
    now = int(time.time() * 1000)
    missing = [Metric(k, float(row[k]), now, int(row["epoch"])) for _, row in frame.iterrows()
               if int(row["epoch"]) > logged for k in keys if row[k] == row[k]]   # row[k] == row[k]: not NaN
    if missing:
        client.log_batch(run_id, metrics=missing)
    return max([logged, *(int(e) for e in frame["epoch"].dropna())]) + 1


def _finish_child(client, run_id: str, status: str, error: str, epochs: int, scheduler: str) -> None:
    if status == "completed":
        client.set_tag(run_id, STATUS_TAG, f"completed ({epochs} epochs)")
        return
    if status == "stopped":
        client.set_tag(run_id, STATUS_TAG, f"stopped by {scheduler} after epoch {epochs}")
        client.set_tag(run_id, "dlp.stopped_at_epoch", str(epochs))
        client.set_terminated(run_id, "KILLED")
    else:
        client.set_tag(run_id, STATUS_TAG, f"errored: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _best(sweep: Sweep, trials: List[Trial]) -> Optional[Trial]:
    done = [t for t in trials if t.status == "completed" and t.best is not None]
    if not done:
        return None
    return (max if sweep.mode == "max" else min)(done, key=lambda t: t.best)


def _log_sweep_outputs(sweep: Sweep, parent: str, trials: List[Trial], best: Optional[Trial]) -> Optional[str]:
    """Trials CSV and plot on the parent run; the best trial's model registered as `challenger` (its version)."""
    import tempfile

    import mlflow
    import pandas as pd

    from pipelines import plots

    frame = pd.DataFrame([{"trial_id": t.trial_id, "run_id": t.run_id, "status": t.status, "epochs": t.epochs,
                           sweep.metric: t.best, **{k: _cell(v) for k, v in t.params.items()}, **t.test,
                           "error": t.error} for t in trials])
    counts = frame["status"].value_counts()
    mlflow.log_metrics({f"trials/{s}": float(counts.get(s, 0)) for s in ("completed", "stopped", "errored")})
    mlflow.log_metric("trials/epochs", float(frame["epochs"].sum()))
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trials.csv"
        frame.to_csv(csv, index=False)
        mlflow.log_artifact(str(csv), "sweep")
        plot = plots.sweep(frame, list(sweep.spec.space), sweep.metric, sweep.mode, Path(tmp) / "sweep.png")
        if plot:
            mlflow.log_artifact(str(plot), "plots")
    if best is None:
        mlflow.set_tag("dlp.sweep.best", "none: no trial completed")
        return None
    mlflow.log_metric(f"best/{sweep.metric}", best.best)
    mlflow.log_metrics({f"best/{k}": v for k, v in best.test.items()})
    mlflow.log_params({f"best.{k}": _cell(v) for k, v in best.params.items()})
    mlflow.set_tags({"dlp.sweep.best_trial": best.trial_id, "dlp.sweep.best_run_id": best.run_id})
    return _register_challenger(sweep, parent, best)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _register_challenger(sweep: Sweep, parent: str, best: Trial) -> Optional[str]:
    """The best trial's model as a new version with alias `challenger` (pipelines.registry.register: the same
    evidence tags as `dlp register`), tagged with the sweep's run id; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import registry

    client = MlflowClient()
    if not client.get_run(best.run_id).data.tags.get("dlp.model_uri"):
        log.warning("the best trial logged no model (mlflow.log_model=false): nothing registered")
        return None
    name = sweep.cfg.mlflow.registered_model_name or sweep.cfg.name
    version, _ = registry.register(f"runs:/{best.run_id}/model", name)
    client.set_model_version_tag(name, version, SWEEP_TAG, parent)
    mlflow.set_tag("dlp.challenger", f"models:/{name}/{version}")
    return str(version)


# ---- console --------------------------------------------------------------------------------

class TrialTable(Callback):
    """A compact table of trials (status, epoch, metric, parameters) instead of Tune's raw logs.

    On a terminal it redraws in place on every result; in a log it is printed when a trial starts or ends.
    """

    def __init__(self, metric: str, keys: List[str], max_epochs: int):
        self.metric, self.keys, self.max_epochs = metric, keys, max_epochs
        self.rows: Dict[str, Dict[str, Any]] = {}
        self._drawn = 0

    def _row(self, trial) -> Dict[str, Any]:
        return self.rows.setdefault(trial.trial_id, {"status": "PENDING", "epoch": 0, "metric": None,
                                                     "params": {k: trial.config.get(k) for k in self.keys}})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "RUNNING"
        self._draw(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["epoch"] = int(result.get("epoch", -1)) + 1
        row["metric"] = result.get(self.metric, row["metric"])
        self._draw(force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row["status"] = "done" if row["epoch"] >= self.max_epochs else "stopped"
        self._draw(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "ERROR"
        self._draw(force=True)

    def render(self) -> List[str]:
        head = f"{'trial':<12} {'status':<8} {'epoch':>7} {self.metric:>10}  " + "  ".join(self.keys)
        lines = [head]
        for trial_id, row in self.rows.items():
            metric = f"{row['metric']:.4f}" if isinstance(row["metric"], (int, float)) else "-"
            params = "  ".join(_short(row["params"].get(k)) for k in self.keys)
            lines.append(f"{trial_id[-12:]:<12} {row['status']:<8} {row['epoch']:>3}/{self.max_epochs:<3} "
                         f"{metric:>10}  {params}")
        return lines

    def _draw(self, force: bool) -> None:
        tty = sys.stdout.isatty()
        if not (tty or force):
            return
        lines = self.render()
        if tty and self._drawn:
            sys.stdout.write(f"\x1b[{self._drawn}F\x1b[J")   # back to the table's first line, clear below
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self._drawn = len(lines) if tty else 0


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary(result: SweepResult) -> str:
    """The one-screen report printed at the end of `dlp tune`."""
    s, trials = result.sweep, result.trials
    count = {k: sum(t.status == k for t in trials) for k in ("completed", "stopped", "errored")}
    lines = [f"dlpipe · tune {s.name} over {s.cfg.name} · {len(trials)} trials ({count['completed']} completed, "
             f"{count['stopped']} stopped by {s.spec.scheduler}, {count['errored']} errored) in {result.seconds:.0f}s"]
    for t in trials:
        shown = f"{t.best:.4f}" if t.best is not None else "-"
        params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        lines.append(f"  {t.trial_id[-12:]:<12} {t.status:<9} {t.epochs:>3} ep  {s.metric} {shown}  {params}"
                     + (f"  [{t.error[:80]}]" if t.error else ""))
    if result.best is not None:
        b = result.best
        lines.append(f"  best:     trial {b.trial_id} {s.metric} = {b.best:.4f}"
                     + "".join(f"  {k} = {v:.4f}" for k, v in sorted(b.test.items()) if k in ("test/acc", "test/r2",
                                                                                             "test/mae")))
    if result.challenger:
        lines.append(f"  model:    {result.challenger}   -> dlp promote {result.challenger.split('/')[1].split('@')[0]}")
    lines.append(f"  sweep run: {result.run_id}  (experiment '{s.cfg.mlflow.experiment_name}')")
    lines.append(f"  browse:   dlp ui   then open http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs/"
                 f"{result.run_id}")
    return "\n".join(lines)
