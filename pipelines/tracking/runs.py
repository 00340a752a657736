"""A run's lifecycle and the batched writes every layer makes to it: metrics by step, params, tags.

The driver owns the run: it opens it, logs into it and ends it FINISHED, FAILED or KILLED, never RUNNING.
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Optional

from pipelines.errors import Stopped
from pipelines.tracking import names

MAX_PARAMS_PER_BATCH = 100      # MLflow's cap on one log_batch
MAX_PARAM_LENGTH = 6000


@contextlib.contextmanager
def ending_run(run_id: Optional[str] = None, finish: bool = True):
    """End a run FINISHED, or KILLED on Ctrl-C or a stop from outside (errors.Stopped) and FAILED on any other
    error: never RUNNING.

    Args:
        run_id: that run, through the client; None: the active (fluent) run.
        finish: False leaves a run that ends well to its owner (`mlflow run` ends its own).
    """
    import mlflow

    def end(status: str) -> None:
        if run_id is None:
            mlflow.end_run(status)
        else:
            mlflow.MlflowClient().set_terminated(run_id, status)

    try:
        yield
    except (KeyboardInterrupt, Stopped):
        end("KILLED")
        raise
    except BaseException:
        end("FAILED")
        raise
    if finish:
        end("FINISHED")


def metrics_at(values: Dict[str, float], step: int = 0) -> list:
    """MLflow Metric entities for {key: value} at one step, stamped now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, int(step)) for key, value in values.items()]


def log_metrics(client, run_id: str, values: Dict[str, float], step: int = 0) -> None:
    """{key: value} at `step` into run `run_id`, in one request."""
    if values:
        client.log_batch(run_id, metrics=metrics_at(values, step))


def set_tags(client, run_id: str, tags: Dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_params(params: Dict[str, object]) -> None:
    """Params into the active run, values cut to MLflow's length cap, in batches MLflow accepts."""
    import mlflow

    items = [(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        mlflow.log_params(dict(items[i:i + MAX_PARAMS_PER_BATCH]))


def last_logged_epoch(client, run_id: str) -> int:
    """The last epoch (0-based) whose metrics the run holds, -1 for none: a resumed or restarted run starts
    logging after it, so no epoch is logged twice."""
    return max((m.step for m in client.get_metric_history(run_id, names.EPOCH_PROBE)), default=-1)


def epoch_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    """The per-epoch ones (train/, val/, perf/ throughput) of Lightning's callback metrics, as floats.

    perf/launch/ is not an epoch's: the driver logs it once, after training (ray_driver)."""
    return {k: float(v) for k, v in metrics.items()
            if k.startswith((*names.EPOCH_PREFIXES, names.PERF_PREFIX)) and not k.startswith(names.LAUNCH_PREFIX)}


def existing_run(run_id: str) -> Optional[str]:
    """`run_id` if the store has that run, else None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_run(run_id).info.run_id
    except MlflowException:
        return None
