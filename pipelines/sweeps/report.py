"""What a finished sweep leaves: the trials CSV, plot and best-trial metrics on the sweep run, the best trial's
model registered as `challenger`, and the one-screen summary `dlp tune` prints."""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from pipelines.sweeps.spec import Sweep
from pipelines.sweeps.table import short
from pipelines.sweeps.trials import Trial
from pipelines.tracking import console, names, plots

log = logging.getLogger("dlp")
STATUSES = ("completed", "stopped", "errored")


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
    def model_name(self) -> str:
        return model_name(self.sweep)

    def failure(self) -> Optional[str]:
        """Why `dlp tune` exits 1 (None: it succeeded): no trial completed, or (tune.on_error=fail) one errored."""
        errored = [t for t in self.trials if t.status == "errored"]
        if not any(t.status == "completed" for t in self.trials):
            why = f"; {len(errored)} errored, the first: {errored[0].error[:160]}" if errored else ""
            return f"tune: no trial of {len(self.trials)} completed{why}"
        if errored and self.sweep.spec.on_error == "fail":
            return (f"tune: {len(errored)} of {len(self.trials)} trials errored (the first: {errored[0].error[:160]}); "
                    "tune.on_error=ignore exits 0 when at least one trial completed")
        return None

    @property
    def challenger(self) -> Optional[str]:
        return f"models:/{self.model_name}@{names.CHALLENGER}" if self.challenger_version else None


def model_name(sweep: Sweep) -> str:
    """The registered model a sweep's best trial becomes a version of."""
    return sweep.cfg.mlflow.registered_model_name or sweep.cfg.name


def log_sweep_outputs(sweep: Sweep, parent: str, trials: List[Trial], best: Optional[Trial]) -> Optional[str]:
    """Trials CSV and plot on the parent run; the best trial's model registered as `challenger` (its version)."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame([{"trial_id": t.trial_id, "run_id": t.run_id, "status": t.status, "epochs": t.epochs,
                           sweep.metric: t.best, **{k: _cell(v) for k, v in t.params.items()}, **t.test,
                           "error": t.error} for t in trials])
    counts = frame["status"].value_counts()
    mlflow.log_metrics({f"{names.TRIALS_PREFIX}{s}": float(counts.get(s, 0)) for s in STATUSES})
    mlflow.log_metric(f"{names.TRIALS_PREFIX}epochs", float(frame["epochs"].sum()))
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trials.csv"
        frame.to_csv(csv, index=False)
        mlflow.log_artifact(str(csv), names.SWEEP_DIR)
        plot = plots.sweep(frame, list(sweep.spec.space), sweep.metric, sweep.mode, Path(tmp) / "sweep.png")
        if plot:
            mlflow.log_artifact(str(plot), names.PLOTS)
    if best is None:
        mlflow.set_tag(names.SWEEP_BEST, "none: no trial completed")
        return None
    mlflow.log_metric(f"{names.BEST_PREFIX}{sweep.metric}", best.best)
    mlflow.log_metrics({f"{names.BEST_PREFIX}{k}": v for k, v in best.test.items()})
    mlflow.log_params({f"best.{k}": _cell(v) for k, v in best.params.items()})
    mlflow.set_tags({names.SWEEP_BEST_TRIAL: best.trial_id, names.SWEEP_BEST_RUN: best.run_id})
    return _register_challenger(sweep, parent, best)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _register_challenger(sweep: Sweep, parent: str, best: Trial) -> Optional[str]:
    """The best trial's model as a new version with alias `challenger` (registry.versions.register: the same
    evidence tags as `dlp register`), tagged with the sweep's run id; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.registry import versions

    client = MlflowClient()
    if not client.get_run(best.run_id).data.tags.get(names.MODEL_URI):
        log.warning("the best trial logged no model (mlflow.log_model=false): nothing registered")
        return None
    name = model_name(sweep)
    version, _ = versions.register(names.run_model_uri(best.run_id), name)
    client.set_model_version_tag(name, version, names.SWEEP_RUN, parent)
    mlflow.set_tag(names.SWEEP_CHALLENGER, f"models:/{name}/{version}")
    return str(version)


def summary(result: SweepResult) -> str:
    """The one-screen report printed at the end of `dlp tune`."""
    s, trials = result.sweep, result.trials
    count = {k: sum(t.status == k for t in trials) for k in STATUSES}
    lines = [f"dlpipe · tune {s.name} over {s.cfg.name} · {len(trials)} trials ({count['completed']} completed, "
             f"{count['stopped']} stopped by {s.spec.scheduler}, {count['errored']} errored) in {result.seconds:.0f}s"]
    for t in trials:
        shown = f"{t.best:.4f}" if t.best is not None else "-"
        params = ", ".join(f"{k}={short(v)}" for k, v in t.params.items())
        lines.append(f"  {t.trial_id[-12:]:<12} {t.status:<9} {t.epochs:>3} ep  {s.metric} {shown}  {params}"
                     + (f"  [{t.error[:80]}]" if t.error else ""))
    if result.best is not None:
        b = result.best
        lines.append(f"  best:     trial {b.trial_id} {s.metric} = {b.best:.4f}"
                     + "".join(f"  {k} = {v:.4f}" for k, v in sorted(names.headline(b.test).items())))
    if result.challenger:
        lines.append(f"  model:    {result.challenger}   -> dlp promote {result.model_name}")
    import mlflow

    experiment = mlflow.get_experiment(result.experiment_id).name  # under `mlflow run`: the one it chose
    lines.append(f"  sweep run: {result.run_id}  (experiment '{experiment}')")
    lines.append(console.browse_hint(result.experiment_id, result.run_id))
    return "\n".join(lines)
