"""A node's CPU, memory, disk, network and (through NVML) GPU use during training, as MLflow's own system
metrics in the training run: system/<node>/cpu_utilization_percentage, system/<node>/system_memory_usage_megabytes,
system/<node>/gpu_0_utilization_percentage ... (step = sample number), every cfg.mlflow.system_metrics_interval
seconds.

The driver monitors its node around fit (driver.py); a Ray Train worker of local rank 0 monitors another node when
the tracking store is one that node reaches (a server or a database, not the driver's SQLite file: ray_worker.py).
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import sys
from typing import Optional

from omegaconf import DictConfig

REMOTE_SCHEMES = ("http", "https", "postgresql", "mysql", "mssql")   # stores a process on another node reaches


def node_name() -> str:
    """This machine's host name, as a metric-name component (system/<node>/...)."""
    return metric_safe(socket.gethostname() or "node")


def metric_safe(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name)


def reachable_from_other_nodes(uri: str) -> bool:
    """Whether a tracking store at `uri` takes writes from another machine (http(s):// or a database server;
    not sqlite:// or a file store, which only the driver's disk holds)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    return scheme in REMOTE_SCHEMES


def _monitor_class():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class NodeMonitor(SystemMetricsMonitor):
        """MLflow's monitor, except that finishing takes a last sample and logs the last, partial interval (MLflow's
        drops it): a run shorter than the interval still gets one sample, and a longer one its end."""

        def finish(self):
            if self._process is None:
                return
            self._shutdown_event.set()
            self._process.join()
            self._process = None
            self.collect_metrics()
            self.publish_metrics(self.aggregate_metrics())
            self.mlflow_logger.flush()

        def start(self):
            import psutil

            psutil.cpu_percent()   # its first call has nothing to compare with: 0.0, which would be the first sample
            super().start()

    return NodeMonitor


@contextlib.contextmanager
def monitoring(cfg: DictConfig, run_id: Optional[str], uri: str, node_id: Optional[str] = None):
    """System metrics of this node into run `run_id` while the block runs (sampling starts on entering, the last
    samples are logged on leaving); nothing when cfg.mlflow.system_metrics is false or there is no run.

    A monitor that cannot start (the store unreachable from here) is one warning line: training goes on."""
    if not cfg.mlflow.system_metrics or run_id is None:
        yield None
        return
    try:
        monitor = _monitor_class()(run_id, sampling_interval=float(cfg.mlflow.system_metrics_interval),
                                   samples_before_logging=1, resume_logging=True,
                                   node_id=metric_safe(node_id) if node_id else node_name(), tracking_uri=uri)
        monitor.start()
    except Exception as e:  # noqa: BLE001 - the metrics are an aid: never the reason a run fails
        print(f"dlp: warning: system metrics: cannot monitor this node ({type(e).__name__}: {e})",
              file=sys.stderr, flush=True)
        yield None
        return
    try:
        yield monitor
    finally:
        try:
            monitor.finish()
        except Exception as e:  # noqa: BLE001
            logging.getLogger("dlp").warning("system metrics: the last samples were not logged: %s", e)
