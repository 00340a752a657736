"""`dlp server`: a tracking server for a team and its cluster — MLflow with a PostgreSQL (or SQLite) backend and
proxied artifacts (a local folder or s3://), basic-auth on whenever it listens beyond loopback.

    dlp server                                            # 127.0.0.1:5000, SQLite and artifacts in .dlp-server/
    dlp server --host 10.0.0.5 --backend-store-uri postgresql://dlp:PW@db/dlp --artifacts-destination s3://b/mlflow

Artifacts are proxied (`--serve-artifacts`): clients and Ray workers upload and download through the server, so
only the server needs storage credentials (its own AWS_* / MLFLOW_S3_ENDPOINT_URL). With auth on, the admin's
password is --password, else $DLP_SERVER_PASSWORD, else one generated on the first start and kept in
<dir>/admin_password (mode 0600) for the next. MLflow creates the admin only in an empty auth database
(<dir>/auth.db), so a different password for an existing one is refused rather than silently ignored.

Every check runs before the server starts and fails with one line; a URI is printed with its password masked.
"""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlsplit

from pipelines.errors import UserError, first_line
from pipelines.tracking.store_checks import mask

PASSWORD_ENV = "DLP_SERVER_PASSWORD"
SECRET_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
READY_TIMEOUT_S = 90


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    backend: Optional[str] = None        # None: sqlite:///<dir>/mlflow.db
    artifacts: Optional[str] = None      # None: <dir>/artifacts
    dir: str = ".dlp-server"
    auth: Optional[bool] = None          # None: on beyond loopback
    username: str = "admin"
    password: Optional[str] = None
    workers: int = 1
    allowed_hosts: Optional[str] = None  # None: MLflow's default (localhost and private address ranges)

    @property
    def root(self) -> Path:
        return Path(self.dir).expanduser().resolve()

    @property
    def backend_uri(self) -> str:
        return self.backend or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts_destination(self) -> str:
        dest = self.artifacts or str(self.root / "artifacts")
        return dest if "://" in dest else str(Path(dest).expanduser().resolve())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, no port) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_on(cfg: ServerConfig) -> bool:
    """Whether basic-auth is on: always beyond loopback (refusing --no-auth there), by choice on loopback."""
    if is_loopback(cfg.host):
        return bool(cfg.auth)
    if cfg.auth is False:
        raise UserError(f"server: --no-auth with --host {cfg.host}: a server beyond loopback always asks for a "
                        "password; drop --no-auth, or bind to 127.0.0.1")
    return True


def admin_password(cfg: ServerConfig) -> str:
    """The admin password: given, kept from an earlier start, or generated and kept (0600) in <dir>."""
    kept_file = cfg.root / "admin_password"
    kept = kept_file.read_text().strip() if kept_file.is_file() else None
    given = cfg.password or os.environ.get(PASSWORD_ENV) or None
    if given and kept and given != kept and (cfg.root / "auth.db").exists():
        raise UserError(f"server: {cfg.root / 'auth.db'} already holds user '{cfg.username}' with the password in "
                        f"{kept_file}; use that one, or remove both files to start the users over")
    password = given or kept or secrets.token_urlsafe(18)
    if password != kept:
        _write_private(kept_file, password + "\n")
    return password


def secret_key(cfg: ServerConfig) -> str:
    """The key MLflow's auth app signs its CSRF tokens with: $MLFLOW_FLASK_SERVER_SECRET_KEY, else one generated
    on the first start and kept (0600) in <dir>/secret_key, so sessions survive a restart."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = cfg.root / "secret_key"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    key = secrets.token_urlsafe(32)
    _write_private(path, key + "\n")
    return key


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only (it holds a secret), through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_auth_config(cfg: ServerConfig, password: str) -> Path:
    """The basic-auth ini MLflow reads through MLFLOW_AUTH_CONFIG_PATH (0600: it holds the password)."""
    path = cfg.root / "basic_auth.ini"
    text = ("[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{cfg.root / 'auth.db'}\n"
            f"admin_username = {cfg.username}\nadmin_password = {password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    _write_private(path, text)
    return path


def command(cfg: ServerConfig, auth: bool) -> List[str]:
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", cfg.backend_uri, "--serve-artifacts",
            "--artifacts-destination", cfg.artifacts_destination, "--host", cfg.host, "--port", str(cfg.port),
            "--workers", str(cfg.workers)]
    if cfg.allowed_hosts:
        argv += ["--allowed-hosts", cfg.allowed_hosts]
    return argv + (["--app-name", "basic-auth"] if auth else [])


def check_port(cfg: ServerConfig) -> None:
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as e:
            raise UserError(f"server: cannot listen on {cfg.host}:{cfg.port} ({e.strerror}); pick another --port, "
                            "or --host an address of this machine") from None


def check_backend(uri: str) -> None:
    """A database backend must answer before the server starts (SQLite files are created)."""
    if uri.startswith("sqlite:"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 5} if "postgres" in uri else {})
        with engine.connect():
            pass
    except Exception as e:  # driver missing, refused, bad password, no such database
        why = first_line(e)[:200]
        raise UserError(f"server: the backend store {mask(uri)} does not answer ({why}); check the host, port, "
                        "user, password and database") from None


def check_artifacts(dest: str) -> None:
    """An s3:// destination must be listable with the server's credentials; a folder is created."""
    if "://" not in dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        return
    if not dest.startswith("s3://"):
        return
    import boto3

    parts = urlsplit(dest)
    try:
        boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None).list_objects_v2(
            Bucket=parts.netloc, Prefix=parts.path.lstrip("/"), MaxKeys=1)
    except Exception as e:  # no credentials, no such bucket, endpoint unreachable
        why = first_line(e)[:200]
        raise UserError(f"server: cannot use the artifact store {dest} ({why}); give this process its "
                        "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL)") from None


def banner(cfg: ServerConfig, auth: bool, password: Optional[str]) -> str:
    lines = [f"dlp server: tracking at {cfg.url} (backend {mask(cfg.backend_uri)}, "
             f"artifacts {cfg.artifacts_destination})", f"export MLFLOW_TRACKING_URI={cfg.url}"]
    if auth:
        lines += [f"export MLFLOW_TRACKING_USERNAME={cfg.username}", f"export MLFLOW_TRACKING_PASSWORD={password}"]
    return "\n".join(lines)


def serve(cfg: ServerConfig) -> int:
    """Check everything, start the server, print how to use it, and wait for it (SIGINT/SIGTERM stop it)."""
    auth = auth_on(cfg)
    check_port(cfg)
    cfg.root.mkdir(parents=True, exist_ok=True)
    check_backend(cfg.backend_uri)
    check_artifacts(cfg.artifacts_destination)
    env = dict(os.environ)
    password = None
    if auth:
        password = admin_password(cfg)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(cfg, password))
        env[SECRET_ENV] = secret_key(cfg)
    log = cfg.root / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(command(cfg, auth), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        _wait_ready(cfg, proc, log)
        print(banner(cfg, auth, password), flush=True)
        return 0 if proc.wait() == 0 else 1
    except _Stopped:
        return 0
    finally:
        _stop(proc)


class _Stopped(Exception):
    """SIGINT or SIGTERM: stop the server (raised from the handler, so no wait runs inside it)."""


def _interrupt(*_) -> None:
    raise _Stopped


def _wait_ready(cfg: ServerConfig, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"server: mlflow server exited ({_cause(log) or proc.returncode}); its log: {log}")
        try:
            with urllib.request.urlopen(f"{cfg.url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UserError(f"server: no answer at {cfg.url}/health after {READY_TIMEOUT_S} s; its log: {log}")


def _cause(log: Path) -> str:
    """The last exception line of the server's log (else its last line), shortened."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b.*:", line)]
    return (errors or lines or [""])[-1][:200]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow starts uvicorn as a child): TERM, then KILL after 10 s."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:
    """The mlflow server (and its gunicorn/uvicorn workers' parent) ends if `dlp server` is killed."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass
