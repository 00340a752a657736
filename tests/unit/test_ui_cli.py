"""`dlp ui`: loopback by default; a host beyond loopback refused in one line unless --allow-remote, which warns
what it exposes; store URIs printed with their passwords masked. os.execv (how `dlp ui` becomes MLflow's server)
is replaced by a recorder, so no server starts; tests/e2e/test_ui.py starts a real one."""
import os
import sys

import pytest

from tests.conftest import assert_one_line_error, dlp_in_process

SECRET_URI = "postgresql://dlp:s3cr3t-pw@db.internal:5432/dlp"


@pytest.fixture
def execv(monkeypatch):
    """The argv `dlp ui` would exec, instead of exec'ing it."""
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, list(argv))))
    return calls


def _option(argv, name):
    return argv[argv.index(name) + 1]


def test_the_default_binds_loopback_over_the_store(store, execv, capsys):
    out = dlp_in_process(capsys, "ui")
    assert out.returncode == 0, out.stderr
    (path, argv), = execv
    assert path == sys.executable and argv[1:4] == ["-m", "mlflow", "server"]
    assert _option(argv, "--host") == "127.0.0.1" and _option(argv, "--port") == "5000"
    assert _option(argv, "--backend-store-uri") == store
    assert "MLflow UI on http://127.0.0.1:5000" in out.stdout and out.stderr == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "ml-box.example.org"])
def test_a_host_beyond_loopback_is_refused_without_allow_remote(store, execv, capsys, monkeypatch, host):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    out = dlp_in_process(capsys, "ui", "--host", host)
    assert out.returncode == 2
    assert_one_line_error(out, f"--host {host}", "--allow-remote", "--host 127.0.0.1", "no authentication",
                          "dlp:***@db.internal")
    assert "s3cr3t-pw" not in out.stdout + out.stderr
    assert execv == []   # no server started


@pytest.mark.parametrize("host", ["localhost", "127.0.0.2", "::1"])
def test_other_loopback_hosts_need_no_flag(store, execv, capsys, host):
    out = dlp_in_process(capsys, "ui", "--host", host, "--port", "5123")
    assert out.returncode == 0, out.stderr
    assert _option(execv[0][1], "--host") == host and out.stderr == ""


def test_allow_remote_serves_and_warns_what_is_exposed(store, execv, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    out = dlp_in_process(capsys, "ui", "--host", "0.0.0.0", "--port", "5001", "--allow-remote")
    assert out.returncode == 0, out.stderr
    (_, argv), = execv
    assert _option(argv, "--host") == "0.0.0.0" and _option(argv, "--port") == "5001"
    assert _option(argv, "--backend-store-uri") == SECRET_URI   # the server itself needs the password
    warning, = out.stderr.strip().splitlines()
    assert warning.startswith("dlp: warning:")
    for needle in ("postgresql://dlp:***@db.internal:5432/dlp", "read/write", "no authentication",
                   "http://0.0.0.0:5001", "dlp server"):
        assert needle in warning, warning
    assert "s3cr3t-pw" not in out.stdout + out.stderr


def test_the_store_is_printed_with_its_password_masked(store, execv, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    out = dlp_in_process(capsys, "ui")
    assert out.returncode == 0, out.stderr
    assert "store: postgresql://dlp:***@db.internal:5432/dlp" in out.stdout
    assert "s3cr3t-pw" not in out.stdout + out.stderr
