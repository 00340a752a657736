"""MLflow side of a training run: where the store is, run lifecycle, per-epoch metrics, plots, model.

The driver owns the run (creates it, logs params/artifacts/model, sets the final status);
the Lightning callback here logs per-epoch metrics from rank 0 only, by run id.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, Optional

from lightning.pytorch.callbacks import Checkpoint

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EPOCH_PREFIXES = ("train/", "val/")


def tracking_uri(cfg=None) -> str:
    """cfg.mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    uri = (cfg.mlflow.tracking_uri if cfg is not None else None) or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """`uri` with a local store path made absolute, for processes in another working directory (Ray workers
    and jobs): sqlite:///x.db is relative to the working directory, sqlite:////x.db is not."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return Path(uri[len("file:"):]).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri).resolve().as_uri()
    return uri


def configure(cfg=None) -> str:
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    # Children (Ray workers, `mlflow models serve`) must see the same store.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def set_experiment(name: str):
    """The experiment runs go to: `name`, or under `mlflow run` (MLFLOW_RUN_ID set) the experiment of the run
    MLflow made for the command, which fluent start_run() then continues."""
    import mlflow

    outer = os.environ.get("MLFLOW_RUN_ID")
    if outer:
        return mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(outer).info.experiment_id)
    return mlflow.set_experiment(name)


@contextlib.contextmanager
def ending_run(run_id: Optional[str] = None, finish: bool = True):
    """End a run FINISHED, or KILLED on Ctrl-C and FAILED on any other error: never RUNNING.

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
    except KeyboardInterrupt:
        end("KILLED")
        raise
    except BaseException:
        end("FAILED")
        raise
    if finish:
        end("FINISHED")


def git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def code_version() -> Optional[str]:
    """HEAD, plus a hash of the uncommitted changes to tracked files when there are any: what `dlp pipeline`
    keys its step cache on, so an edited working tree never reuses a step computed by other code."""
    import hashlib

    commit = git_commit()
    if commit is None:
        return None
    root = Path(__file__).resolve().parent.parent
    try:
        diff = subprocess.run(["git", "-C", str(root), "diff", "HEAD"], capture_output=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return commit
    return f"{commit}+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else commit


class EpochEnd(Checkpoint):
    """Calls `epoch_end(trainer, metrics)` once per finished epoch on rank 0, metrics final.

    A Checkpoint subclass on purpose: Lightning runs checkpoint-type callbacks' on_train_epoch_end
    after the LightningModule's, so the epoch's aggregated train/ and val/ metrics are complete here.
    """

    def epoch_end(self, trainer, metrics: Dict[str, float]) -> None:
        raise NotImplementedError

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(EPOCH_PREFIXES)}
        self.epoch_end(trainer, metrics)

    def state_dict(self) -> Dict:
        return {}


class MLflowEpochLogger(EpochEnd):
    """Logs every train/ and val/ metric once per epoch (step = epoch) from rank 0, by run id.

    Epochs already in the run (a resumed run) are skipped, so an epoch is never logged twice.
    """

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri
        self.client = None
        self.last_logged = -1
        self._epoch_start = 0.0
        self._train_seconds: Optional[float] = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.global_rank != 0 or stage != "fit":
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(self.uri)
        history = self.client.get_metric_history(self.run_id, "train/loss")
        self.last_logged = max((m.step for m in history), default=-1)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._train_seconds = time.perf_counter(), None

    def on_validation_start(self, trainer, pl_module) -> None:
        # Lightning validates from inside the training epoch, after its last batch: the batches alone
        if self._train_seconds is None and self._epoch_start:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def epoch_end(self, trainer, metrics: Dict[str, float]) -> None:
        epoch = trainer.current_epoch
        if self.client is None or epoch <= self.last_logged:
            return
        from mlflow.entities import Metric

        metrics["perf/epoch_seconds"] = time.perf_counter() - self._epoch_start   # validation, checkpoints included
        if self._train_seconds is not None:
            metrics["perf/train_seconds"] = self._train_seconds                  # the training batches only
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])
        self.last_logged = epoch


class EpochPrinter(EpochEnd):
    """One line per epoch where no progress bar can draw (logs, CI, Ray workers)."""

    def __init__(self, monitor: str):
        self.monitor = monitor

    def epoch_end(self, trainer, metrics: Dict[str, float]) -> None:
        keys = ["train/loss", "val/loss", "train/acc", "val/acc", "val/r2", self.monitor]
        shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(keys) if k in metrics)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}", flush=True)


def log_model(net, prep: dict, raw_example,
              registered_model_name: Optional[str] = None):
    """Log `net` + preprocessing as a pyfunc model (raw rows in) under the active run's `model`.

    The network is saved as a torch.export program with a dynamic batch dimension, so loading
    needs neither dlpipe's code nor pickle.
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from datamodules import preprocess

    net = net.eval().cpu().float()
    x = torch.from_numpy(preprocess.transform(raw_example, prep))
    if x.shape[0] < 2:  # torch.export specialises size-1 dimensions
        x = torch.cat([x, x])
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # nn.LSTM/GRU re-list their weights in _flat_weights while tracing; harmless, and not ours to fix
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        program = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
    with tempfile.TemporaryDirectory() as tmp:
        net_path, prep_path = Path(tmp) / "net.pt2", Path(tmp) / "prep.json"
        torch.export.save(program, net_path)
        prep_path.write_text(json.dumps(prep))
        from pipelines import pyfunc_model

        output = pyfunc_model.DlpModel().bind(program.module(), prep).predict(None, raw_example)
        with warnings.catch_warnings():
            # integer *outputs* (a forecast's step column) are fine; integer inputs were made doubles upstream
            warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
            signature = infer_signature(raw_example, output)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.__file__,
            artifacts={"net": str(net_path), "prep": str(prep_path)},
            code_paths=[preprocess.__file__],
            signature=signature,
            input_example=raw_example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "mlflow"],
            registered_model_name=registered_model_name,
        )
    return info
