"""Every name dlpipe writes into MLflow and reads back: metric keys, `dlp.*` tags, artifact paths, aliases.

Training writes runs with these names; sweeps, the registry and the workflow read them back, and the MLflow UI
shows them. One place, so a writer and its readers cannot drift apart.
"""
from __future__ import annotations

from typing import Dict, Tuple

# ---- metrics (step = epoch for the per-epoch ones) -----------------------------------------------------
EPOCH_PREFIXES = ("train/", "val/")          # logged once per epoch by rank 0
TEST_PREFIX = "test/"                        # logged once, after the test pass
EPOCH_PROBE = "train/loss"                   # logged every epoch: its last step is the last epoch a run holds
EPOCH_KEY = "epoch"                          # the epoch (0-based) in every report to Ray Train and Tune
NODE_KEY = "node"                            # the reporting worker's node address, in every report to Ray Train
PERF_PREFIX = "perf/"
EPOCH_SECONDS = "perf/epoch_seconds"         # the whole epoch: training batches, validation, checkpoint
TRAIN_SECONDS = "perf/train_seconds"         # the training batches only
LAUNCH_PREFIX = "perf/launch/"               # where a distributed run's time outside training goes
SAMPLES_PER_SECOND = "perf/samples_per_second"   # training samples per second over the epoch's batches, all ranks
STEPS_PER_SECOND = "perf/steps_per_second"       # optimiser steps per second, likewise
FLOPS_PER_SAMPLE = "perf/flops_per_sample"       # forward + backward FLOPs of one training sample, counted once
TFLOPS = "perf/tflops"                           # achieved: flops_per_sample x samples_per_second / 1e12
MFU = "perf/mfu"                                 # tflops / the device's peak at the run's precision (known parts only)
SYSTEM_PREFIX = "system/"                        # MLflow's system metrics: system/<node>/cpu_utilization_percentage ...
HEADLINE_TEST_METRICS = ("test/acc", "test/f1", "test/r2", "test/mae")   # what summaries and `dlp models` show
BY_HORIZON = "test/{}_by_horizon"            # forecasts: test/mae_by_horizon, step = steps ahead
TRIALS_PREFIX = "trials/"                    # a sweep's counts: trials/completed, stopped, errored, epochs
BEST_PREFIX = "best/"                        # a sweep's best trial: best/<metric>, best/test/...
EVAL_PREFIX = "eval/"                        # `dlp evaluate`, the workflow's evaluate step

# ---- run tags --------------------------------------------------------------------------------------------
PARENT_RUN = "mlflow.parentRunId"            # MLflow's own: nests a run under another in the UI
GIT_COMMIT = "mlflow.source.git.commit"
EXPERIMENT = "dlp.experiment"                # the preset's name
TASK = "dlp.task"
MODEL = "dlp.model"
MONITOR = "dlp.monitor"                      # "<metric>:<mode>", see monitor_tag
DATA_PREFIX = "dlp.data."                    # the dataset fingerprint: source, split sizes, content hash
FINGERPRINT_KEYS = ("source", "n_train", "n_val", "n_test", "hash")
MODEL_URI = "dlp.model_uri"                  # the LoggedModel's models:/m-... URI
MODEL_SHA256 = "dlp.model_sha256"            # on the LoggedModel and its run: JSON {file: sha256} of its files
RESUMED_FROM = "dlp.resumed_from"
WORLD_SIZE = "dlp.world_size"
WORKER_NODES = "dlp.worker_nodes"            # each rank's node, in rank order: "10.0.0.2,10.0.0.1" (the latest attempt's)
EFFECTIVE_LR = "dlp.effective_lr"
RAY_STORAGE = "dlp.ray_storage"

# a sweep's parent run and its trials' child runs
SWEEP = "dlp.sweep"                          # "<experiment>/<space>" on the parent run
SWEEP_SIGNATURE = "dlp.sweep.signature"      # what makes two commands the same sweep (resume)
SWEEP_PATH = "dlp.sweep.path"                # Tune's state directory
SWEEP_RESUMED = "dlp.sweep.resumed"
SWEEP_BEST = "dlp.sweep.best"
SWEEP_BEST_TRIAL = "dlp.sweep.best_trial"
SWEEP_BEST_RUN = "dlp.sweep.best_run_id"
SWEEP_CHALLENGER = "dlp.challenger"          # the registry version the sweep made challenger
SWEEP_RUN = "dlp.sweep_run_id"               # on a trial's run, and on the version a sweep registered
TRIAL_ID = "dlp.trial_id"
TRIAL_STATUS = "dlp.trial_status"            # completed (N epochs) | stopped by <scheduler> after epoch k | errored
TRIAL_PARAMS = "dlp.trial_params"
TRIAL_STARTED = "dlp.trial_started"          # Unix time the trial's function started (before its run opened)
TRIAL_PROCESS = "dlp.trial_process"          # <node>:<pid> of a trial trained in its Tune actor (reused by trials)
STOPPED_AT_EPOCH = "dlp.stopped_at_epoch"

# a `dlp pipeline` run and its step runs
PIPELINE = "dlp.pipeline"
PIPELINE_COMMAND = "dlp.pipeline.command"
PIPELINE_CODE_VERSION = "dlp.pipeline.code_version"
STEP = "dlp.step"
STEP_ENTRY = "dlp.step.entry"
STEP_KEY = "dlp.step.key"                    # the hash a finished step is reused by
STEP_OUTPUTS = "dlp.step.outputs"
STEP_REUSED_FROM = "dlp.step.reused_from"
STEP_DECISION = "dlp.step.decision"          # the promote step's one-line account of the decision

# ---- the model registry: aliases, and tags on model versions and registered models ----------------------
CHAMPION, CHALLENGER = "champion", "challenger"
SOURCE_RUN = "dlp.source_run_id"
MONITOR_VALUE = "dlp.monitor_value"
TEST_TAG_PREFIX = "dlp.test/"                # a version's copy of its run's test/* metrics
PROMOTE_PREFIX = "dlp.promote."              # the latest decision: decision (promoted|refused), reason, scores ...
PROMOTE_DECISION = "dlp.promote.decision"
ROLLBACK_PREFIX = "dlp.rollback."
CHAMPION_HISTORY = "dlp.champion_history"    # registered-model tag: JSON list of the versions that held champion

# ---- artifacts -----------------------------------------------------------------------------------------
LOGGED_MODEL = "model"                       # the pyfunc model's name; a run's model URI is runs:/<id>/model
CONFIG = "config.yaml"                       # the resolved config a run trained with
FINGERPRINT = "data/fingerprint.json"
PLOTS = "plots"
CHECKPOINTS = "checkpoints"
PER_HORIZON = "forecast/per_horizon.csv"
SWEEP_DIR = "sweep"                          # trials.csv, space.yaml, base_config.yaml of a sweep
PIPELINE_STEPS = "pipeline/steps.json"


def monitor_tag(metric: str, mode: str) -> str:
    """The MONITOR tag's value: the monitored metric and which way is better, e.g. "val/acc:max"."""
    return f"{metric}:{mode}"


def monitored(tags: Dict[str, str]) -> Tuple[str, str]:
    """(metric, mode) from a run's or version's tags ("", "" when it has no MONITOR tag)."""
    metric, _, mode = tags.get(MONITOR, "").rpartition(":")
    return metric, mode


def data_tags(fingerprint: Dict) -> Dict[str, str]:
    """The dataset fingerprint as run tags (dlp.data.source, dlp.data.hash, ...)."""
    return {f"{DATA_PREFIX}{k}": str(v) for k, v in fingerprint.items()}


def run_model_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{LOGGED_MODEL}"


def headline(metrics: Dict[str, float]) -> Dict[str, float]:
    """The test metrics a summary shows (accuracy and F1, or R² and MAE: whichever the task has)."""
    return {k: v for k, v in metrics.items() if k in HEADLINE_TEST_METRICS}
