"""A sweep's trials once Tune is done with them: each one's final status, set on its child run.

A trial ends completed (its child run FINISHED), stopped by the scheduler (KILLED, tag "stopped by asha after
epoch k") or errored (FAILED, with the error); the sweep's best is the best completed trial.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipelines.errors import last_line
from pipelines.sweeps.spec import decode
from pipelines.tracking import names, runs

log = logging.getLogger("dlp")


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


def await_trial_workers(timeout: float = 30.0) -> None:
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


def reconcile(sweep, parent: str, grid) -> List[Trial]:
    """One Trial per Tune trial, with its child run's final status set: a trial the scheduler stopped was
    killed mid-run (its run is not FINISHED); one that raised is FAILED with the error."""
    from mlflow import MlflowClient

    client = MlflowClient()
    children = {r.data.tags.get(names.TRIAL_ID): r for r in client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.`{names.SWEEP_RUN}` = '{parent}'")}
    return sorted((_trial(sweep, client, result, children) for result in grid), key=lambda t: t.trial_id)


def _trial(sweep, client, result, children: dict) -> Trial:
    # a trial that never reported has no metrics; its directory is _trial_<id>_<n>_<params>_<date>
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[2]
    child = children.get(trial_id)
    frame = result.metrics_dataframe
    values = frame[sweep.metric].dropna() if frame is not None and sweep.metric in frame else None
    best = None if values is None or values.empty else float(values.max() if sweep.mode == "max" else values.min())
    epochs = int((result.metrics or {}).get(names.EPOCH_KEY, -1)) + 1
    params = decode(dict(result.config or {}), sweep.encoded)
    if result.error is not None:
        status, error = "errored", last_line(result.error)
    elif child is not None and child.info.status == "FINISHED":
        status, error = "completed", ""
    else:
        status, error = "stopped", ""
    run_id = child.info.run_id if child is not None else None
    if run_id is not None:
        # the stop reaches a trial's workers asynchronously: rank 0 may log one more epoch than Tune saw
        epochs = max(epochs, backfill_epochs(client, run_id, frame))
        finish_child(client, run_id, status, error, epochs, sweep.spec.scheduler)
        child = client.get_run(run_id)
    test = {k: v for k, v in (child.data.metrics.items() if child else ()) if k.startswith(names.TEST_PREFIX)}
    return Trial(trial_id, run_id, status, params, epochs, best, test, error)


def backfill_epochs(client, run_id: str, frame) -> int:
    """Log the epochs Tune received but the child run lacks (a trial stopped right after its report dies
    before its rank 0 writes that epoch to MLflow); return how many epochs the run now holds."""
    logged = runs.last_logged_epoch(client, run_id)
    if frame is None or names.EPOCH_KEY not in frame:
        return logged + 1
    keys = [k for k in frame.columns if k.startswith((*names.EPOCH_PREFIXES, names.PERF_PREFIX))]
    missing = [m for _, row in frame.iterrows() if int(row[names.EPOCH_KEY]) > logged
               for m in runs.metrics_at({k: row[k] for k in keys if row[k] == row[k]},   # row[k] == row[k]: not NaN
                                        step=int(row[names.EPOCH_KEY]))]
    if missing:
        client.log_batch(run_id, metrics=missing)
    return max([logged, *(int(e) for e in frame[names.EPOCH_KEY].dropna())]) + 1


def finish_child(client, run_id: str, status: str, error: str, epochs: int, scheduler: str) -> None:
    if status == "completed":
        client.set_tag(run_id, names.TRIAL_STATUS, f"completed ({epochs} epochs)")
        return
    if status == "stopped":
        client.set_tag(run_id, names.TRIAL_STATUS, f"stopped by {scheduler} after epoch {epochs}")
        client.set_tag(run_id, names.STOPPED_AT_EPOCH, str(epochs))
        client.set_terminated(run_id, "KILLED")
    else:
        client.set_tag(run_id, names.TRIAL_STATUS, f"errored: {error}"[:5000])
        client.set_terminated(run_id, "FAILED")


def best(sweep, trials: List[Trial]) -> Optional[Trial]:
    done = [t for t in trials if t.status == "completed" and t.best is not None]
    if not done:
        return None
    return (max if sweep.mode == "max" else min)(done, key=lambda t: t.best)
