"""Shared fixtures: a private MLflow store per test, tiny configs, and a real `dlp` subprocess."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A test run started in the background (nohup, `&`, some CI runners) inherits SIGINT ignored, and so would every
# `dlp` process the tests start: the Ctrl-C tests would find Ctrl-C ignored. Handlers do not survive exec, so
# with this the tests' processes start with Ctrl-C's default meaning.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# One quick epoch on a slice of the data; explicit keys because a preset, applied after
# trainer=smoke, would set its own max_epochs. One thread per process: the machine has 2 cores.
SMOKE = ["trainer=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
         "trainer.early_stopping.patience=0", "trainer.progress_bar=false", "trainer.threads=1"]


def free_ports(n: int = 1) -> list:
    """n distinct TCP ports on 127.0.0.1 that nothing listens on now (bound together so they differ; the OS hands
    out ephemeral ports, outside Ray's worker range)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


SCALE_MINUTES = 12   # the most a `scale` test takes on 2 busy cores: none starts closer than this to the deadline


def pytest_collection_modifyitems(config, items):
    """The `late` tests run after the others and the `scale` tests (thousands of files, gigabytes of data) last:
    under a deadline, they are what is cut (in that order from the end)."""
    items.sort(key=lambda item: 2 if item.get_closest_marker("scale") else 1 if item.get_closest_marker("late") else 0)


def pytest_runtest_setup(item):
    """DLP_TEST_DEADLINE (Unix seconds; .ci/run sets it for the cluster and slow tests): a test that would start
    after it -- a `scale` test, after it less SCALE_MINUTES -- is skipped, its reason saying so, instead of the
    whole CI run overrunning its time limit. Unset (make test, make test-slow), every test runs."""
    deadline = os.environ.get("DLP_TEST_DEADLINE")
    if not deadline:
        return
    margin = SCALE_MINUTES * 60 if item.get_closest_marker("scale") else 0
    if time.time() > float(deadline) - margin:
        pytest.skip("CI time budget spent (DLP_TEST_DEADLINE): not run in this CI run")


@functools.cache
def _migrated_store() -> Path:
    """One empty SQLite MLflow store with all its tables, made once per test session (removed at exit)."""
    folder = tempfile.mkdtemp(prefix="dlp-test-store-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    template = Path(folder) / "mlflow.db"
    subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                    "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{template}"],
                   cwd=folder, check=True, capture_output=True, timeout=300)
    return template


def new_store(db: Path) -> str:
    """The SQLite MLflow store at `db`, made there if there is none: a copy of _migrated_store() (creating the
    tables takes a few seconds, in every process that meets a new file), its Default experiment pointed at db's
    folder as MLflow would have pointed it (<working directory>/mlruns/0). Returns its URI."""
    if not db.exists():   # a store already there (a rerun against the same folder) is kept
        shutil.copyfile(_migrated_store(), db)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                         (str(db.parent / "mlruns" / "0"),))
        conn.close()
    return f"sqlite:///{db}"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in tmp_path, also the working directory (outputs/ lands there)."""
    uri = new_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # mlflow.set_experiment() exports the active experiment's id; one left by an earlier in-process test names
    # an experiment this store lacks (and subprocesses such as `mlflow run` would inherit it)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri


def run_dlp(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess with the test's environment (store URI included)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def dlp_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same CLI entry point, called in this process (saves a ~8 s interpreter start per call)."""
    from pipelines.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def runs_with_status(uri: str, status: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(exps) if r.info.status == status] if exps else []


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("dlp: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs, dashboard on 127.0.0.1) shared by a test module; `dlp` joins it."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


def dlp_in_new_store(tmp: Path, *args: str, settle: float = 0.0) -> tuple:
    """The CLI entry point, in this process, against the SQLite store in `tmp` (made if none; also the working
    directory): (store URI, exit code, console output). For module-scoped fixtures, where `store` cannot be used.
    `settle`: seconds to wait before leaving, for worker lines that reach the driver through Ray's log monitor."""
    import contextlib
    import io
    import time

    import mlflow

    from pipelines.cli import main

    uri = new_store(tmp / "mlflow.db")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(tmp)
        mlflow.set_tracking_uri(uri)
        with contextlib.redirect_stdout(out):
            code = main(list(args))
            time.sleep(settle)
    return uri, code, out.getvalue()
