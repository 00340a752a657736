"""The MLflow side of a distributed run: only the driver's side writes to MLflow.

Workers report each epoch to Ray Train (ray_worker.RayReport); `MLflowReport`, a Ray Train callback, runs in
Ray Train's controller, which Ray pins to the driver's node, and writes each report into the driver's run once
Ray has taken its checkpoint into storage. So the workers need no tracking credentials and no view of the
driver's disk — the embedded SQLite store stays correct on a cluster of several nodes — and a worker group that
Ray restarts (trainer.max_failures) resumes after the last epoch the run holds: no epoch is logged twice.

`catch_up` covers a run continued by a new command (resume=auto, a resumed sweep's trial): an epoch whose
checkpoint reached storage while the process that would have logged it died.
"""
from __future__ import annotations

import json
import logging
from numbers import Number
from typing import Any, Dict, List, Optional

from ray.train import UserCallback

from pipelines.tracking import names, runs

log = logging.getLogger("dlp")
EPOCH_FILE = "dlp_epoch.json"   # in every Ray checkpoint: its epoch and metrics, for resuming the MLflow curve


class MLflowReport(UserCallback):
    """In Ray Train's controller: rank 0's report of each epoch becomes that epoch's metrics in run `run_id`."""

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri
        self._client = None
        self._last = -1
        self._nodes = ""

    def after_report(self, run_context, metrics: List[Dict[str, Any]], checkpoint) -> None:
        if not metrics or names.EPOCH_KEY not in metrics[0]:
            return
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.uri)
            self._last = runs.last_logged_epoch(self._client, self.run_id)
        nodes = ",".join(str(m.get(names.NODE_KEY, "?")) for m in metrics)
        if nodes != self._nodes:   # where each rank runs, once per worker group
            self._client.set_tag(self.run_id, names.WORKER_NODES, nodes)
            self._nodes = nodes
        epoch = int(metrics[0][names.EPOCH_KEY])
        if epoch <= self._last:
            return
        values = {k: float(v) for k, v in metrics[0].items()
                  if k != names.EPOCH_KEY and isinstance(v, Number) and not isinstance(v, bool)}
        runs.log_metrics(self._client, self.run_id, values, step=epoch)
        self._last = epoch


def catch_up(storage: str, run_id: str) -> None:
    """Log the epoch of the newest checkpoint in `storage`/`run_id` if the active run lacks it."""
    import mlflow
    import pyarrow.fs as pafs
    from mlflow import MlflowClient

    saved = _latest_epoch(pafs, storage, run_id)
    if saved is None:
        return
    client = MlflowClient()
    if int(saved["epoch"]) > runs.last_logged_epoch(client, mlflow.active_run().info.run_id):
        log.info("catching up epoch %d from Ray's checkpoint", int(saved["epoch"]) + 1)
        runs.log_metrics(client, mlflow.active_run().info.run_id, saved["metrics"], step=int(saved["epoch"]))


def _latest_epoch(pafs, storage: str, run_id: str) -> Optional[dict]:
    try:
        fs, root = pafs.FileSystem.from_uri(storage)
        entries = fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/{run_id}", allow_not_found=True))
    except (OSError, ValueError):
        return None
    best = None
    for entry in entries:
        if entry.type != pafs.FileType.Directory or not entry.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{entry.path}/{EPOCH_FILE}") as f:
                saved = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if best is None or saved["epoch"] > best["epoch"]:
            best = saved
    return best
