"""`dlp ui` serves the MLflow UI on 127.0.0.1 over the same store."""
import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.conftest import free_ports


def test_ui_serves_the_store_on_loopback(store, tmp_path):
    import mlflow

    mlflow.set_experiment("ui-check")
    port = free_ports()[0]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port)], cwd=tmp_path,
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except OSError:
                time.sleep(0.5)
        assert body == b"OK"
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 10}', headers={"Content-Type": "application/json"})
        names = urllib.request.urlopen(req, timeout=10).read().decode()
        assert "ui-check" in names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
