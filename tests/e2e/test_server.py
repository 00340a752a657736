"""`dlp server` as a user starts it on this machine: basic-auth asked for, a training run logged through it with
its model proxied into the server's artifact folder, and SIGTERM stopping the server and MLflow's workers."""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import SMOKE, free_ports

pytestmark = pytest.mark.slow

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _status(url: str, auth=None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()} if auth else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


def _wait_banner(proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline, exports = time.monotonic() + timeout, {}
    while "MLFLOW_TRACKING_PASSWORD" not in exports:
        assert time.monotonic() < deadline and proc.poll() is None, "dlp server did not start"
        line = proc.stdout.readline()
        if line.startswith("export "):
            key, value = line[len("export "):].strip().split("=", 1)
            exports[key] = value
    return exports


def test_a_server_with_auth_logs_a_run_and_stops_on_sigterm(tmp_path):
    port = free_ports()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "server", "--auth", "--port", str(port),
                             "--dir", str(tmp_path / "srv")], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            text=True)
    try:
        exports = _wait_banner(proc)
        url = f"http://127.0.0.1:{port}"
        assert exports["MLFLOW_TRACKING_URI"] == url
        creds = (exports["MLFLOW_TRACKING_USERNAME"], exports["MLFLOW_TRACKING_PASSWORD"])
        assert _status(url + SEARCH) == 401 and _status(url + SEARCH, creds) == 200
        assert _status(url + SEARCH, (creds[0], "wrong")) == 401
        train = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "experiment=digits_cnn", *SMOKE],
                               env={**env, **exports}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert train.returncode == 0, train.stderr[-3000:]
        logged = list((tmp_path / "srv" / "artifacts").rglob("MLmodel"))
        assert logged, "the model did not reach the server's artifact folder"
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0
    leftover = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout.split()
    assert leftover == []                                   # MLflow's server and its workers are gone
    with socket.socket() as s:
        # SO_REUSEADDR, as a server sets it: closed connections may linger in TIME_WAIT, a listener may not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))                        # and the port is free again
