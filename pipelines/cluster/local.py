"""The Ray cluster a distributed `dlp train` or a `dlp tune` runs on: $RAY_ADDRESS joined, this process's Ray
reused, or a local cluster started — and then stopped by whoever started it.

`RayCluster` is that cluster as an object owned by the command: `dlp train` starts it in a background thread
before its own heavy imports (the local cluster's start, several seconds of GCS, raylet and dashboard, then
overlaps the imports, the data checks and the MLflow setup), the Ray Train driver connects to it and stops it in
the background while the driver logs plots and the model, and the command closes it when it ends. Kept free of
torch and Lightning: it imports only `ray`.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence

from pipelines import signals
from pipelines.config.schema import ClusterConfig
from pipelines.errors import UserError, first_line

DEFAULT_ENV = tuple(ClusterConfig().env)
NEVER_PASSED = ("MLFLOW_RUN_ID",)      # this process's own run (under `mlflow run`), not the workers'

# Ray drains each worker's one-slot report queue once per interval (default 2 s, i.e. 2 s per epoch of a small job)
REPORT_INTERVAL_S = "0.1"
IDLE_TASK_WORKERS = "4"   # RAY_num_workers_soft_limit of a local cluster; README's `ray start` lines set it too


def train_env(local: bool) -> None:
    """Environment for Ray Train, set before the cluster starts so its processes inherit it (setdefault: a user's
    own setting wins)."""
    # Ray Train propagates both to its controller and workers
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_INTERVAL_S)
    # its print patch sends each worker print to stdout *and* (through logging) stderr: every epoch line twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if local:
        # On the throw-away single-node cluster `dlp train` starts itself, two Train V2 extras do nothing useful
        # and cost start time: the preemption watcher (one more actor process, started while the worker
        # group starts; a local node is never drained) and Train's Prometheus metrics (no one scrapes them).
        # Both are Ray's documented switches; a cluster in $RAY_ADDRESS keeps Ray's defaults.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        # The raylet reads this system setting at start. By default it starts one idle task worker per CPU
        # when the driver connects (~80 MB and ~0.4 CPU-s each). Ray Train and Tune run actors, and an actor
        # never takes a prestarted task worker (Train's runtime_env differs). So on this cluster they would
        # only take memory and, while two training workers share two cores, a little CPU. A task that does
        # run still gets a worker on demand.
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        # Idle task workers Ray keeps: by default as many as the node has CPUs *available*, which is none while
        # the training workers hold them all, so each task worker was killed 1 s after its task and Ray Data's
        # read tasks (data.streaming) started fresh processes for every epoch and split, ~1.5 CPU-s each, on
        # the cores training needs. A few idle workers (~0.1-0.2 GB each, and only those tasks made) are kept.
        os.environ.setdefault("RAY_num_workers_soft_limit", IDLE_TASK_WORKERS)


def passed_env(patterns: Sequence[str] = DEFAULT_ENV) -> Dict[str, str]:
    """The driver's environment variables that match `patterns` (cluster.env: shell-style, e.g. AWS_*): what the
    cluster's processes get through Ray's runtime env. Their values are never logged or printed."""
    return {k: v for k, v in os.environ.items()
            if k not in NEVER_PASSED and any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def _job_runtime_env() -> Dict:
    """The runtime env of the Ray job this process is the driver of (`dlp submit`); {} outside a job."""
    return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}


def job_working_dir() -> Optional[Path]:
    """The temporary copy of the repository a submitted job runs in (its cwd; Ray deletes it later), else None."""
    return Path.cwd().resolve() if _job_runtime_env().get("working_dir") else None


def check_outside_job_dir(**paths: Optional[str]) -> None:
    """In a submitted job, refuse local output paths that resolve inside its temporary working_dir: whatever is
    written there (checkpoints, the sweep's state) is gone after the job."""
    work = job_working_dir()
    for key, path in paths.items():
        if work is None or not path or "://" in str(path):
            continue
        if Path(path).expanduser().resolve().is_relative_to(work):
            raise UserError(f"{key}={path} is inside this Ray job's temporary working_dir ({work}), which Ray deletes "
                            f"after the job; pass {key}=<an absolute path on the cluster> (or set DLP_OUTPUT_DIR in "
                            "the cluster's environment; `dlp submit` sets it for a cluster on this machine)")


def driver_runtime_env(patterns: Sequence[str]) -> Dict:
    """The runtime env this driver asks of a joined cluster: passed_env(patterns), less what a Ray job's own runtime
    env (`dlp submit` passes the same patterns) already sets, since Ray refuses a driver that repeats a job's key."""
    already = set(_job_runtime_env().get("env_vars") or {})
    return {"env_vars": {k: v for k, v in passed_env(patterns).items() if k not in already}}


def auth_token() -> str:
    """The Ray auth token at hand: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token ('' if none)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        with contextlib.suppress(OSError):
            token = path.expanduser().read_text().strip()
    return token


def _token_auth_on() -> None:
    """RAY_AUTH_MODE=token for this process and its children: a cluster started with a token requires it of
    every client, and Ray never turns it on by itself for an explicit address. Ray caches its settings when first
    imported, so they are re-read (what Ray does when it turns token auth on for a local cluster)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")


def connect(log_to_driver: bool = True, env: Sequence[str] = DEFAULT_ENV) -> bool:
    """Join $RAY_ADDRESS, reuse this process's Ray, or start a local cluster sized to the machine, in this thread.

    Args:
        log_to_driver: stream the workers' output to this console (a sweep keeps it in Ray's session logs).
        env: cluster.env, the patterns of the environment variables a joined cluster's processes get from here
            (a local cluster's processes inherit this process's environment anyway).
    Returns True when this call started Ray (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    with signals.keeping_sigterm():   # ray.init's own handler would end the run FAILED instead of KILLED
        _init(log_to_driver, env)
    return True


def _init(log_to_driver: bool, env: Sequence[str]) -> None:
    import ray

    address = os.environ.get("RAY_ADDRESS")
    train_env(local=not address)
    quiet = {"log_to_driver": log_to_driver, "logging_level": logging.WARNING}
    if address:
        if auth_token() and not os.environ.get("RAY_AUTH_MODE"):
            _token_auth_on()
        try:
            with _without_gcs_retries():
                ray.init(runtime_env=driver_runtime_env(env), **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            hint = ("it uses token auth: set RAY_AUTH_TOKEN or copy the head's ~/.ray/auth_token here"
                    if not auth_token() else "check the address and that the head node is up")
            raise UserError(f"could not join the Ray cluster at RAY_ADDRESS={address} ({first_line(e)[:160]}); "
                            f"{hint}") from None
    else:
        # a local cluster turns token auth on by itself (~/.ray/auth_token); only the dashboard honours the host
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **quiet)


@contextlib.contextmanager
def _without_gcs_retries():
    """Ray's C++ client writes a line to fd 2 for each failed GCS attempt (~20 of them with a wrong token or
    address) before ray.init gives up; the UserError says it once. Everything else written meanwhile is kept."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if b"gcs_client" not in line]
            os.write(2, b"".join(kept))


class RayCluster:
    """The cluster one command runs on; a context manager that stops, on exit, what it started.

    Ray ties a local cluster's processes (GCS, raylet, dashboard) to the *thread* that started them (Linux
    parent-death signal), so a background start keeps its thread alive until the cluster it started is stopped.
    """

    def __init__(self, log_to_driver: bool = True, env: Sequence[str] = DEFAULT_ENV):
        self.log_to_driver, self.env = log_to_driver, tuple(env)
        self.started = False                          # this object started Ray (and stops it)
        self._starting: Optional[threading.Thread] = None
        self._ready = threading.Event()               # the background ray.init returned or failed
        self._error: Optional[BaseException] = None   # its failure, raised by connect() in the caller's thread
        self._release = threading.Event()             # the cluster is stopped: the starting thread may end
        self._stopping: Optional[threading.Thread] = None

    def __enter__(self) -> "RayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "RayCluster":
        """Begin connect()'s work in a background thread now; the next connect() waits for it."""
        import ray

        if self._starting is not None or ray.is_initialized():
            return self
        signals.interrupt_on_sigterm()   # ray.init sets its own only from the main thread

        def start():
            worker_log = logging.getLogger("ray._private.worker")
            worker_log.addFilter(_not_main_thread_warning)
            try:
                self.started = connect(self.log_to_driver, self.env)
            except BaseException as e:  # handed to connect(), which raises it in the caller's thread
                self._error = e
            finally:
                worker_log.removeFilter(_not_main_thread_warning)
                self._ready.set()
            if self.started:
                self._release.wait()

        self._starting = threading.Thread(target=start, name="dlp-ray-start", daemon=True)
        self._starting.start()
        return self

    def connect(self) -> bool:
        """Wait for start() if it was called (raising its error here) or connect now; True when this object
        started Ray, so stopping it is this object's job."""
        if self._starting is not None:
            self._ready.wait()
            error, self._error = self._error, None
            if error is not None:
                raise error
        else:
            self.started = connect(self.log_to_driver, self.env)
        return self.started

    def stop(self, background: bool = False) -> None:
        """Shut down the cluster this object started (nothing otherwise). `background`: in a thread, since
        stopping the local cluster's processes takes 1-2 s that the driver's own work can overlap; not a daemon,
        so Python joins it before exiting, and close() waits for it."""
        if self._starting is not None:
            self._ready.wait()
        if not self.started or self._stopping is not None:
            return
        import ray

        def stop():
            ray.shutdown()
            self._release.set()

        self._stopping = threading.Thread(target=stop, name="dlp-ray-shutdown")
        self._stopping.start()
        if not background:
            self._stopping.join()

    def close(self) -> None:
        """When the command ends: stop a cluster it started that no run stopped (one that failed before training),
        and wait for a stop in progress."""
        self.stop()
        if self._stopping is not None:
            self._stopping.join()
        self._release.set()


def _not_main_thread_warning(record: logging.LogRecord) -> bool:
    return "not the main thread" not in record.getMessage()
