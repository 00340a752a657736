"""The Ray cluster a distributed `dlp train` runs on: join $RAY_ADDRESS, reuse this process's Ray, or start one.

Kept free of torch and Lightning (it imports only `ray`) so that `dlp train trainer.num_workers>=1` can start
the local cluster in a background thread before its own heavy imports: the cluster's start (GCS, raylet,
dashboard: several seconds) then overlaps the imports, the data checks and the MLflow setup instead of
following them. `dlp train` (through pipelines.distributed) and `dlp tune` connect through here.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Optional

# Ray drains each worker's one-slot report queue once per interval (default 2 s, i.e. 2 s per epoch of a small job)
REPORT_INTERVAL_S = "0.1"

_starting: Optional[threading.Thread] = None     # start_in_background()'s thread
_ready = threading.Event()                       # set once its ray.init returned or failed
_outcome: dict = {}                              # its result ("started") or exception ("error")
_release = threading.Event()                     # set once the cluster it started is shut down: the thread may end
_stopping: Optional[threading.Thread] = None     # shutdown_in_background()'s thread


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


def connect(log_to_driver: bool = True) -> bool:
    """Join $RAY_ADDRESS, reuse this process's Ray, or start a local cluster sized to the machine.

    Waits for start_in_background() if it was called (and re-raises its error here, in the caller's thread).
    Args:
        log_to_driver: stream the workers' output to this console (a sweep keeps it in Ray's session logs).
    Returns True when this process started Ray (the caller shuts it down)."""
    if _starting is not None and _ready.wait() and _outcome:
        error, started = _outcome.pop("error", None), _outcome.pop("started", False)
        if error is not None:
            raise error
        if started:
            return True
    _wait_for_shutdown()
    return _connect(log_to_driver)


def _connect(log_to_driver: bool = True) -> bool:
    import ray

    if ray.is_initialized():
        return False
    local = not os.environ.get("RAY_ADDRESS")
    train_env(local)
    quiet = {"log_to_driver": log_to_driver, "logging_level": logging.WARNING}
    if not local:
        ray.init(**quiet)
    else:
        # a local cluster turns token auth on by itself (~/.ray/auth_token); only the dashboard honours the host
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
    return True


def start_in_background() -> None:
    """Start connect()'s work in a thread now; the next connect() waits for it. Main thread only.

    The thread lives as long as the cluster it starts: Ray ties the local cluster's processes (GCS, raylet,
    dashboard) to the *thread* that started them (Linux parent-death signal), so it waits until
    shutdown_in_background() or abandon() has stopped them, and dies with the process otherwise."""
    global _starting
    import ray

    _wait_for_shutdown()
    if _starting is not None or ray.is_initialized():
        return
    _ready.clear()
    _release.clear()
    _outcome.clear()
    # ray.init sets this SIGTERM handler (exit, so atexit shuts the cluster down) only from the main thread
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    def start():
        worker_log = logging.getLogger("ray._private.worker")
        worker_log.addFilter(_not_main_thread_warning)
        try:
            _outcome["started"] = _connect()
        except BaseException as e:  # handed to connect(), which raises it in the main thread
            _outcome["error"] = e
        finally:
            worker_log.removeFilter(_not_main_thread_warning)
            _ready.set()
        if _outcome.get("started"):
            _release.wait()

    _starting = threading.Thread(target=start, name="dlp-ray-start", daemon=True)
    _starting.start()


def abandon() -> None:
    """When `dlp train` ends: a cluster start_in_background() began that no connect() took over (the run failed
    before training) is shut down here rather than at exit."""
    if _starting is None:
        return
    _ready.wait()
    if _outcome.pop("started", False):
        import ray

        ray.shutdown()
    _outcome.clear()
    if _stopping is None:  # else shutdown_in_background()'s thread releases it once the cluster is down
        _release.set()


def _not_main_thread_warning(record: logging.LogRecord) -> bool:
    return "not the main thread" not in record.getMessage()


def shutdown_in_background() -> None:
    """ray.shutdown() in a thread (stopping the local cluster's processes takes 1-2 s) so the driver's own
    work after training (plots, checkpoint and model logging) overlaps it. Not a daemon: Python joins it
    before exiting, and the next connect() or start_in_background() waits for it."""
    global _stopping
    import ray

    def stop():
        ray.shutdown()
        _release.set()  # start_in_background()'s thread may end now

    _stopping = threading.Thread(target=stop, name="dlp-ray-shutdown")
    _stopping.start()


def _wait_for_shutdown() -> None:
    global _stopping, _starting
    if _stopping is not None:
        _stopping.join()
        _stopping = None
    if _starting is not None and _release.is_set():
        _starting.join()
        _starting = None
