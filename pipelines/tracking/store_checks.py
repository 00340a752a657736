"""Is the tracking store usable? Asked once per process, before any data loads or Ray starts; and a new SQLite
store's schema made by one process at a time.

    http(s)://host[:port]   one GET of the REST API (5 s, no retries): unreachable, credentials refused, not MLflow
    sqlite:///path.db       its folder is (or can be made) writable; an existing file is empty or an SQLite
                            database with MLflow's tables or none, and is writable (a file whose mode has no write
                            bit is refused, also for root, who could write it anyway)
    postgresql://, mysql:// the database answers within 5 s

Each failure is one UserError line naming the store, its password masked; a store that fails is not written to.
MLflow alone would retry an unreachable server for ~250 s (7 retries, backoff 2 s doubling) and print five
chained tracebacks with the URI's password; a database for minutes. After the check passes, MLflow's own retries
ride out a server's restart: MLFLOW_HTTP_REQUEST_MAX_RETRIES defaults to 5 here (~1 min) instead of 7 (~4 min),
and a value the user exported wins.

MLflow creates a new SQLite store's schema (alembic migrations, the default experiment) the first time a process
opens it, with no lock: four `dlp train` started together on a new store crashed in three. `prepare` opens the
store under a file lock beside it (<db>.dlp-store.lock), so the first opener migrates and the others find the
tables made.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from pipelines.errors import UserError, first_line

TIMEOUT_S = 5
LOCK_TIMEOUT_S = 300.0
SQLITE_HEADER = b"SQLite format 3\x00"
RETRIES_ENV, RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5"
API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
DATABASES = ("postgresql", "mysql", "mssql")
_checked, _opened = set(), set()


def mask(uri: str) -> str:
    """`uri` with its password replaced by ***: postgresql://dlp:***@db:5432/dlp."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def prepare(uri: str) -> None:
    """Check the store at `uri` and open it for this process (a SQLite store under its lock, see the module)."""
    check(uri)
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault(RETRIES_ENV, RETRIES)
    path = sqlite_path(uri)
    if path is None or uri in _opened:
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    with file_lock(path.with_name(path.name + ".dlp-store.lock"), LOCK_TIMEOUT_S,
                   lambda: f"tracking store {uri} stayed locked by another dlp process creating it for "
                           f"{LOCK_TIMEOUT_S:.0f} s"):
        try:
            MlflowClient(uri)   # creates the tables on first use, verifies their version on any later one
        except (MlflowException, SQLAlchemyError) as e:   # an out-of-date schema, a malformed file
            raise UserError(f"tracking store {uri} cannot be opened: {first_line(e)}") from None
    _opened.add(uri)


def check(uri: str) -> None:
    """One line (UserError) if the store at `uri` cannot be used; stdlib and requests only (no MLflow import),
    so `dlp train` asks it right after composing its config."""
    if uri in _checked:
        return
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("http", "https"):
        check_server(uri)
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            check_sqlite(uri, path)
    elif scheme in DATABASES:
        check_database(uri)
    _checked.add(uri)


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a sqlite:/// store (relative to the working directory; sqlite:////abs is absolute), or None
    for other stores and in-memory ones."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if name in ("", ":memory:") else Path(name)


# -- a tracking server -------------------------------------------------------------------------------------------

def check_server(uri: str) -> None:
    import requests

    parts = urlsplit(uri)
    plain = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    user, headers = _credentials(parts)
    try:
        reply = requests.get(plain.rstrip("/") + API_PROBE, headers=headers, timeout=TIMEOUT_S, verify=_verify(),
                             cert=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None)
    except requests.RequestException as e:   # refused, no route, unknown host, timeout, TLS
        raise UserError(f"tracking server {mask(uri)} is unreachable: {_reason(e)}; start it (dlp server) or set "
                        "MLFLOW_TRACKING_URI to a server that answers") from None
    code = reply.status_code
    if code in (401, 403):
        ask = (f"it refused user '{user}'; check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if user
               else "it needs credentials; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        raise UserError(f"tracking server {mask(uri)} answered HTTP {code} ({reply.reason}): {ask}")
    if code == 404 or code >= 500:
        raise UserError(f"tracking server {mask(uri)} answered HTTP {code} ({reply.reason}) to "
                        f"{API_PROBE.split('?')[0]}; is it an MLflow tracking server, and is the URI (path) right?")


def _credentials(parts) -> tuple:
    """(user, headers) as MLflow sends them: MLFLOW_TRACKING_USERNAME/PASSWORD, else the URI's user:password,
    else MLFLOW_TRACKING_TOKEN as a bearer token."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password) and parts.username and parts.password:
        from urllib.parse import unquote

        user, password = unquote(parts.username), unquote(parts.password)
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return user, {"Authorization": f"Basic {token}"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return "(MLFLOW_TRACKING_TOKEN)", {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    return None, {}


def _verify():
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def _reason(error: Exception) -> str:
    """The cause inside requests' wrapping ('Connection refused', 'Name or service not known', ...)."""
    import requests

    if isinstance(error, requests.Timeout):
        return f"no answer within {TIMEOUT_S} s"
    text = str(error)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    ssl = re.search(r"SSLError\((.+?)\)\)*$", text)
    return first_line(ssl.group(1) if ssl else text)[:200]


# -- a SQLite file -----------------------------------------------------------------------------------------------

def check_sqlite(uri: str, path: Path) -> None:
    """Read-only checks (the file is opened for reading only, so a failure leaves it as it was)."""
    fix = "point MLFLOW_TRACKING_URI (or mlflow.tracking_uri) at another file"
    if path.is_dir():
        raise UserError(f"tracking store {uri}: {path} is a folder; name a file in it, e.g. "
                        f"sqlite:///{path / 'mlflow.db'}")
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise UserError(f"tracking store {uri}: cannot read {path} ({e.strerror}); {fix}") from None
        if head and head != SQLITE_HEADER:
            raise UserError(f"tracking store {uri}: {path} is not an SQLite database (it begins {head[:8]!r}); "
                            f"move it away or {fix}")
        if not _writable(path):
            raise UserError(f"tracking store {uri}: {path} is read-only (mode {path.stat().st_mode & 0o777:04o}); "
                            f"make it writable (chmod u+w) or {fix}")
        if head:
            _check_tables(uri, path, fix)
    folder = next(p for p in [path.absolute().parent, *path.absolute().parents] if p.exists())
    if not folder.is_dir() or not _writable(folder):
        what = "is not a folder" if not folder.is_dir() else "is not writable (SQLite writes its journal there)"
        raise UserError(f"tracking store {uri}: {folder} {what}; {fix}")


def _writable(path: Path) -> bool:
    """Writable by this process and not marked read-only: root passes os.access for a 0444 file (an immutable
    file or a read-only mount it does not), yet a mode with no write bit is the owner's 'do not write'."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _check_tables(uri: str, path: Path, fix: str) -> None:
    """An SQLite database that holds tables, none of them MLflow's, is someone else's: MLflow would add its
    schema to it."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:   # a malformed file, a locked one
        raise UserError(f"tracking store {uri}: cannot read {path} as SQLite ({first_line(e)}); {fix}") from None
    if tables and not tables & {"alembic_version", "experiments"}:
        shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        raise UserError(f"tracking store {uri}: {path} is an SQLite database of something else (tables {shown}), "
                        f"not an MLflow store; {fix}")


# -- a database server -------------------------------------------------------------------------------------------

def check_database(uri: str) -> None:
    """The database answers (MLflow alone retries a refused connection for minutes)."""
    import sqlalchemy

    args = {"connect_timeout": TIMEOUT_S} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001 — driver missing, refused, bad password, no such database
        raise UserError(f"tracking store {mask(uri)} does not answer ({_mask_in(first_line(e), uri)[:200]}); "
                        "check the host, port, user, password and database") from None


def _mask_in(text: str, uri: str) -> str:
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text


# -- a file lock -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def file_lock(path: Path, timeout: float, busy: Callable[[], str]) -> Iterator[None]:
    """Exclusive flock on `path` (made, with its folder, if missing) while the block runs; UserError(busy())
    after waiting `timeout` s. Each call opens the file afresh, so threads of one process exclude each other
    too; a crashed holder releases it with its process. flock excludes only processes that see the same file:
    this machine's, or a shared filesystem's that honours flock (local disks do; NFS often not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{busy()} ({path})") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
