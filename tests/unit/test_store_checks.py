"""A tracking store that cannot be used is one line and exit 2, before any data loads or Ray starts; a store
that fails is left as it was (same bytes, same mtime); a password in its URI is never printed."""
import base64
import http.server
import os
import sqlite3
import threading
import time

import pytest

from pipelines.errors import UserError
from pipelines.tracking import store_checks
from tests.conftest import SMOKE, assert_one_line_error, dlp_in_process, free_ports, run_dlp


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A working directory without a store; the test sets MLFLOW_TRACKING_URI."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 store_checks.RETRIES_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class _Server:
    """A real HTTP server on 127.0.0.1 answering every GET with `status` and recording each request."""

    def __init__(self, status: int):
        seen = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append((self.path, self.headers.get("Authorization")))
                body = b'{"experiments": []}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_answering():
    made = []

    def start(status):
        made.append(_Server(status))
        return made[-1]

    yield start
    for server in made:
        server.close()


def _state(path):
    return path.read_bytes(), os.stat(path).st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


# -- a tracking server -----------------------------------------------------------------------------------------

def test_unreachable_server_fails_train_in_seconds_in_one_line_password_masked(fresh, monkeypatch):
    port = free_ports()[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:s3cret@127.0.0.1:{port}")
    start = time.monotonic()
    # a distributed run: its Ray cluster would start right after the config; the store is checked first
    proc = run_dlp("train", "model=mlp", *SMOKE, "trainer.num_workers=1", cwd=fresh, timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert_one_line_error(proc, f"tracking server http://bob:***@127.0.0.1:{port} is unreachable",
                          "Connection refused", "MLFLOW_TRACKING_URI")
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == "", proc.stderr + proc.stdout
    assert "s3cret" not in proc.stderr + proc.stdout
    assert took < 10, f"{took:.1f} s"
    assert not (fresh / "outputs").exists() and not (fresh / "mlflow.db").exists()


@pytest.mark.parametrize("command", [["models"], ["evaluate", "runs:/abc/model"], ["promote", "m"],
                                     ["predict", "runs:/abc/model", "in.csv", "-o", "out.csv"],
                                     ["pipeline", "model=mlp", *SMOKE]])
def test_every_store_command_checks_the_server_first(fresh, monkeypatch, capsys, command):
    port = free_ports()[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:s3cret@127.0.0.1:{port}")
    (fresh / "in.csv").write_text("a\n1\n")
    proc = dlp_in_process(capsys, *command)
    assert proc.returncode == 2
    assert_one_line_error(proc, f"http://bob:***@127.0.0.1:{port} is unreachable")
    assert "s3cret" not in proc.stderr + proc.stdout


def test_a_server_asking_for_credentials_says_which_variables_to_set(fresh, monkeypatch, capsys, server_answering):
    server = server_answering(401)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.port}")
    proc = dlp_in_process(capsys, "models")
    assert proc.returncode == 2
    assert_one_line_error(proc, "HTTP 401", "needs credentials", "MLFLOW_TRACKING_USERNAME",
                          "MLFLOW_TRACKING_PASSWORD")
    assert len(server.requests) == 1 and server.requests[0][1] is None   # one request, no retries

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:hunter2@127.0.0.1:{server.port}")
    proc = dlp_in_process(capsys, "models")
    assert_one_line_error(proc, f"http://alice:***@127.0.0.1:{server.port}", "refused user 'alice'")
    assert "hunter2" not in proc.stderr + proc.stdout
    assert len(server.requests) == 2


def test_a_server_that_is_not_mlflow_is_one_line(fresh, monkeypatch, capsys, server_answering):
    server = server_answering(404)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.port}/mlflow")
    proc = dlp_in_process(capsys, "models")
    assert proc.returncode == 2
    assert_one_line_error(proc, "HTTP 404", "is it an MLflow tracking server")
    assert server.requests[0][0] == "/mlflow/api/2.0/mlflow/experiments/search?max_results=1"


def test_a_server_that_answers_passes_with_the_uris_credentials_and_shorter_retries(fresh, monkeypatch,
                                                                                     server_answering):
    server = server_answering(200)
    store_checks.prepare(f"http://bob:s3cret@127.0.0.1:{server.port}")
    assert base64.b64decode(server.requests[0][1].split()[1]).decode() == "bob:s3cret"
    assert os.environ[store_checks.RETRIES_ENV] == store_checks.RETRIES
    monkeypatch.setenv(store_checks.RETRIES_ENV, "2")   # the user's choice wins
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "carol")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    store_checks.prepare(f"http://127.0.0.1:{server.port}")
    assert base64.b64decode(server.requests[1][1].split()[1]).decode() == "carol:pw"
    assert os.environ[store_checks.RETRIES_ENV] == "2"


def test_an_unreachable_database_is_one_line_password_masked(fresh, monkeypatch, capsys):
    port = free_ports()[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://dlp:s3cret@127.0.0.1:{port}/dlp")
    start = time.monotonic()
    proc = dlp_in_process(capsys, "models")
    assert proc.returncode == 2 and time.monotonic() - start < 10
    assert_one_line_error(proc, f"postgresql://dlp:***@127.0.0.1:{port}/dlp does not answer")
    assert "s3cret" not in proc.stderr + proc.stdout


# -- a SQLite file ---------------------------------------------------------------------------------------------

def _refused_untouched(db, monkeypatch, capsys, needle: str) -> None:
    """`dlp train` on the store file `db` (in the working directory): exit 2, one line with `needle`, the file
    byte-identical with the same mtime."""
    before = _state(db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db.name}")
    proc = dlp_in_process(capsys, "train", "model=mlp", *SMOKE)
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)
    assert _state(db) == before


def test_a_file_that_is_not_a_database_is_left_untouched(fresh, monkeypatch, capsys):
    db = fresh / "mlflow.db"
    db.write_text("name,score\nada,1\n")   # say, a CSV saved under the store's name
    _refused_untouched(db, monkeypatch, capsys, "mlflow.db is not an SQLite database")


def test_another_programs_sqlite_database_is_left_untouched(fresh, monkeypatch, capsys):
    db = fresh / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    _refused_untouched(db, monkeypatch, capsys, "app.db is an SQLite database of something else (tables customers)")


def _made_store(path):
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def test_a_read_only_store_is_left_untouched(fresh, monkeypatch, capsys):
    db = _made_store(fresh / "mlflow.db")
    db.chmod(0o444)   # tests run as root, who could write it anyway: the mode is the owner's word
    before = _state(db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    proc = dlp_in_process(capsys, "train", "model=mlp", *SMOKE)
    assert proc.returncode == 2
    assert_one_line_error(proc, "mlflow.db is read-only (mode 0444)", "chmod u+w")
    assert _state(db) == before


def test_a_store_in_a_read_only_folder_is_left_untouched(fresh, monkeypatch, capsys):
    db = _made_store(fresh / "ro" / "mlflow.db")
    before = _state(db)
    db.parent.chmod(0o555)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        proc = dlp_in_process(capsys, "train", "model=mlp", *SMOKE)
    finally:
        db.parent.chmod(0o755)
    assert proc.returncode == 2
    assert_one_line_error(proc, f"{db.parent} is not writable")
    assert _state(db) == before


def test_an_empty_file_or_a_new_folder_becomes_a_store(fresh, monkeypatch, capsys):
    (fresh / "empty.db").touch()   # SQLite takes an empty file as an empty database
    for uri in ("sqlite:///empty.db", "sqlite:///new/folder/mlflow.db"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        proc = dlp_in_process(capsys, "models")
        assert proc.returncode == 0, proc.stderr
    assert (fresh / "empty.db").read_bytes().startswith(store_checks.SQLITE_HEADER)
    assert (fresh / "new" / "folder" / "mlflow.db").read_bytes().startswith(store_checks.SQLITE_HEADER)


def test_a_folder_named_as_the_store_is_one_line(fresh, monkeypatch, capsys):
    (fresh / "runs").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs")
    proc = dlp_in_process(capsys, "models")
    assert proc.returncode == 2
    assert_one_line_error(proc, "runs is a folder", "sqlite:///runs/mlflow.db")


# -- the file lock ---------------------------------------------------------------------------------------------

def test_the_file_lock_excludes_a_second_holder_until_released(tmp_path):
    path, order = tmp_path / "x.lock", []

    def second():
        with store_checks.file_lock(path, 5, lambda: "busy"):
            order.append("second")

    with store_checks.file_lock(path, 5, lambda: "busy"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first")
        with pytest.raises(UserError, match=r"^still busy \(.*x\.lock\)$"):
            with store_checks.file_lock(path, 0.2, lambda: "still busy"):
                pass
    thread.join(5)
    assert order == ["first", "second"]
