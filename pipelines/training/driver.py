"""`dlp train`: one tracked training run, driven from this process.

The driver (`train`) checks the data, the monitored metric and the resume target before any MLflow run exists,
opens the run, calls `fit` (in this process, or with trainer.num_workers >= 1 in Ray Train workers through
ray_driver.py), then logs test metrics, plots and the model from the best checkpoint (outputs.py) and closes the
run FINISHED, FAILED or KILLED — never leaving it RUNNING.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from omegaconf import DictConfig

from pipelines.cluster import local
from pipelines.errors import UserError
from pipelines.tracking import artifacts, console, datasets, names, runs, store, system_metrics
from pipelines.training import checks, outputs, ray_driver
from pipelines.training.fit import FitResult, fit


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    fit: FitResult
    model_uri: Optional[str] = None


def train(cfg: DictConfig, run_tags: Optional[Dict[str, str]] = None, continue_run: Optional[str] = None,
          ray_callbacks: Sequence = (), cluster=None, process_started: Optional[float] = None,
          fit_callbacks: Sequence = (), datamodule=None) -> TrainResult:
    """Run `dlp train`: returns the run id, test metrics and the logged model's URI.

    `dlp tune` trials call it too: `run_tags` nest the run under the sweep (mlflow.parentRunId), `continue_run`
    picks up a trial's earlier run (and, through Ray's storage named by it, its checkpoints), and `ray_callbacks`
    (Tune's report callback) join Ray Train's run config. `cluster`: the RayCluster the command started for a
    distributed run; `process_started`: the command process's start (Unix time), for the launch-phase metrics.
    In this process (num_workers=0), `fit_callbacks` join fit()'s (a trial's report to Tune); `datamodule`: built.
    """
    import mlflow

    import datamodules

    uri = store.configure(cfg)
    dm = datamodule or datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")  # bad data fails here, before any MLflow run exists
    checks.check_metric(cfg.monitor.metric, dm.spec.task)
    resume_from = checks.resolve_resume(cfg)
    local.check_outside_job_dir(output_dir=cfg.output_dir, **{"trainer.storage_path": cfg.trainer.storage_path})
    if resume_from is not None:
        # the training loader's shuffle count continues where the checkpoint's run stopped
        dm.first_epoch = checks.check_checkpoint_matches(resume_from, cfg) + 1

    if cfg.trainer.num_workers >= 1:
        ray_driver.prepare(cfg, cluster)   # the cluster joined and its storage checked before any run exists

    artifacts.use_atomic_local_writes()   # a full disk or a kill never leaves a truncated artifact in a local store
    experiment = store.set_experiment(cfg.mlflow.experiment_name or cfg.name)
    resume_run = runs.existing_run(resume_from.parent.name) if resume_from is not None else None
    if cfg.resume == "auto" or (cfg.resume == "last" and cfg.trainer.num_workers >= 1):
        resume_run = ray_driver.unfinished_run(cfg, experiment.experiment_id)
        if resume_run is None and cfg.resume == "last" and continue_run is None:
            raise UserError(f"resume=last: no unfinished run of '{experiment.name}' has checkpoints in "
                            f"{ray_driver.storage_path(cfg)}; train once first, or resume=auto to start afresh")
    resume_run = continue_run or resume_run
    run = mlflow.start_run(run_id=resume_run, run_name=None if resume_run else (cfg.mlflow.run_name or None))
    run_id = run.info.run_id
    with runs.ending_run():
        if resume_run is None:
            _log_run_inputs(cfg, dm)
            mlflow.set_tags(run_tags or {})
        else:
            mlflow.set_tag(names.RESUMED_FROM, str(resume_from or f"ray checkpoint (resume={cfg.resume})"))
        ckpt_path = str(resume_from) if resume_from else None
        try:
            with system_metrics.monitoring(cfg, run_id, uri):   # this node's; Ray workers monitor theirs
                if cfg.trainer.num_workers >= 1:
                    result = ray_driver.run(cfg, run_id, uri, ckpt_path=ckpt_path, callbacks=ray_callbacks,
                                            cluster=cluster, process_started=process_started, datamodule=dm)
                else:
                    result = fit(cfg, run_id, datamodule=dm, ckpt_path=ckpt_path, uri=uri,
                                 extra_callbacks=fit_callbacks)
            out = TrainResult(run_id, experiment.experiment_id, result)
            out.model_uri = outputs.log_outputs(cfg, dm, result, run_id)
        finally:
            if cfg.trainer.num_workers >= 1:
                ray_driver.clean_up(cfg, run_id)
    return out


def _log_run_inputs(cfg: DictConfig, dm) -> None:
    """The flattened config as params, config.yaml, the dataset fingerprint, and the run's dlp.* tags."""
    import mlflow

    from pipelines.config.compose import flatten, to_yaml

    runs.log_params(flatten(cfg))
    mlflow.log_text(to_yaml(cfg), names.CONFIG)
    fp = dm.fingerprint()
    mlflow.log_dict(fp, names.FINGERPRINT)
    datasets.log_datasets(dm, cfg.name, fp)
    tags = {names.EXPERIMENT: cfg.name, names.TASK: dm.spec.task, names.MODEL: cfg.model.name,
            names.MONITOR: names.monitor_tag(cfg.monitor.metric, cfg.monitor.mode), **names.data_tags(fp),
            **dict(cfg.tags)}
    commit = store.git_commit()
    if commit:
        tags[names.GIT_COMMIT] = commit
    mlflow.set_tags(tags)


def summary(cfg: DictConfig, out: TrainResult, wall: float) -> str:
    """The one-screen report printed at the end of `dlp train`."""
    import mlflow

    r = out.fit
    lines = [f"dlpipe · {cfg.name} · {r.epochs} epochs in {r.fit_seconds:.1f}s (wall {wall:.1f}s)"]
    if r.best_score is not None:
        lines.append(f"  best {cfg.monitor.metric} = {r.best_score:.4f}")
    lines.append("  test metrics:")
    lines += [f"    {k:<16} {v:.4f}" for k, v in sorted(r.test_metrics.items())]
    experiment = mlflow.get_experiment(out.experiment_id).name  # under `mlflow run`: the one it chose
    lines.append(f"  run id:   {out.run_id}  (experiment '{experiment}')")
    if out.model_uri:
        lines.append(f"  model:    {out.model_uri}   -> dlp predict {out.model_uri} input.csv -o preds.csv")
    lines.append(console.browse_hint(out.experiment_id, out.run_id))
    return "\n".join(lines)

