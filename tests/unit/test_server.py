"""`dlp server`'s decisions and checks, without a server: auth on beyond loopback, secrets kept 0600 and reused,
passwords masked, and each bad setting refused in one line before anything starts (tests/cluster starts the
real server on PostgreSQL and S3; tests/e2e/test_server.py starts one on this machine)."""
from __future__ import annotations

import socket
import stat

import pytest

from pipelines.cluster import server
from pipelines.cluster.server import ServerConfig
from pipelines.errors import UserError
from tests.conftest import assert_one_line_error, dlp_in_process


def test_mask_hides_only_the_password():
    assert server.mask("postgresql://dlp:s3cr3t@db:5432/dlp") == "postgresql://dlp:***@db:5432/dlp"
    assert server.mask("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert server.mask("postgresql://dlp@db/dlp") == "postgresql://dlp@db/dlp"


@pytest.mark.parametrize("host,auth,on", [
    ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False), ("127.0.0.1", True, True),
    ("10.0.0.5", None, True), ("0.0.0.0", None, True), ("10.0.0.5", True, True),
])
def test_auth_is_on_beyond_loopback(host, auth, on):
    assert server.auth_on(ServerConfig(host=host, auth=auth)) is on


def test_no_auth_beyond_loopback_is_refused(capsys, tmp_path):
    proc = dlp_in_process(capsys, "server", "--host", "10.0.0.5", "--no-auth", "--dir", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "--no-auth with --host 10.0.0.5", "bind to 127.0.0.1")
    assert not (tmp_path / "s").exists()     # refused before anything was written


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_admin_password_is_generated_once_kept_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(server.PASSWORD_ENV, raising=False)
    cfg = ServerConfig(dir=str(tmp_path))
    first = server.admin_password(cfg)
    assert len(first) >= 16 and _mode(tmp_path / "admin_password") == 0o600
    assert server.admin_password(cfg) == first
    monkeypatch.setenv(server.PASSWORD_ENV, "from-the-env")
    assert server.admin_password(cfg) == "from-the-env"                       # no users yet: the new one is kept
    assert (tmp_path / "admin_password").read_text().strip() == "from-the-env"
    (tmp_path / "auth.db").write_text("")                                     # MLflow made the admin with it
    with pytest.raises(UserError, match="already holds user 'admin'") as e:
        server.admin_password(ServerConfig(dir=str(tmp_path), password="another"))
    assert "another" not in str(e.value) and "from-the-env" not in str(e.value)


def test_auth_config_and_secret_key_are_private(tmp_path, monkeypatch):
    monkeypatch.delenv(server.SECRET_ENV, raising=False)
    cfg = ServerConfig(dir=str(tmp_path), username="ops")
    ini = server.write_auth_config(cfg, "pw")
    text = ini.read_text()
    assert _mode(ini) == 0o600 and "admin_username = ops" in text and "admin_password = pw" in text
    assert f"database_uri = sqlite:///{tmp_path / 'auth.db'}" in text
    key = server.secret_key(cfg)
    assert server.secret_key(cfg) == key and _mode(tmp_path / "secret_key") == 0o600
    assert server.command(cfg, auth=True)[-2:] == ["--app-name", "basic-auth"]
    assert "--app-name" not in server.command(cfg, auth=False)


def test_a_busy_port_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.check_port(ServerConfig(port=port))


def test_a_backend_that_does_not_answer_is_one_line_with_the_password_masked():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # bound, not listening: refused
        with pytest.raises(UserError, match="does not answer") as e:
            server.check_backend(f"postgresql://dlp:s3cr3t@127.0.0.1:{port}/dlp")
    assert "s3cr3t" not in str(e.value) and "dlp:***@" in str(e.value) and "\n" not in str(e.value)


def test_artifacts_without_credentials_are_one_line(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(UserError, match=r"cannot use the artifact store s3://b/mlflow .*AWS_ACCESS_KEY_ID"):
        server.check_artifacts("s3://b/mlflow")
