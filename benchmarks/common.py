"""What the benchmark scripts share: a throw-away MLflow store, machine info, quiet logs, tables, JSON.

Used by benchmarks/quality.py, benchmarks/overhead.py and benchmarks/report.py (`make bench`).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(ROOT))


def quiet() -> None:
    """Silence third-party banners, progress bars and warnings so the tables stay readable.

    Lightning and MLflow set their loggers' levels when imported, so import them first. MLflow
    re-enables its own UserWarnings inside catch_warnings blocks, so third-party warnings are dropped
    where they are shown; warnings raised from dlpipe's own code still print.
    """
    import lightning  # noqa: F401
    import mlflow  # noqa: F401

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if "site-packages" not in str(filename):
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


@contextlib.contextmanager
def temp_store(prefix: str = "dlp-bench-") -> Iterator[tuple[Path, list[str]]]:
    """A temporary directory and the overrides that point a run's MLflow store and outputs into it.

    MLFLOW_TRACKING_URI is restored afterwards: tracking.store.configure() exports it for child processes.
    """
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        overrides = [f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"output_dir={root}/outputs",
                     "trainer.progress_bar=false"]
        try:
            yield root, overrides
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved


def git_commit() -> dict:
    """HEAD's short hash and whether the working tree differs from it (numbers from a dirty tree say so)."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            # the READMEs and results/ are what the benchmarks themselves write
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                              ":!README.md", ":!benchmarks/README.md", ":!benchmarks/results"))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import lightning
    import sklearn
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **git_commit(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "torch_threads_default": torch.get_num_threads(),
            # other processes on a shared machine slow everything down, multi-threaded torch most of all
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "python": platform.python_version(),
            "torch": torch.__version__, "lightning": lightning.__version__, "sklearn": sklearn.__version__,
            "platform": platform.platform()}


def save_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def load_json(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(headers: Sequence[str], rows: Sequence[Sequence], markdown: bool = False) -> str:
    """Aligned plain-text table for the terminal, or a markdown table for the README."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in headers) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
