"""Which MLflow store a command uses, the experiment its runs go to, and the code version they record."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Optional

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
REPO = Path(__file__).resolve().parents[2]


def tracking_uri(cfg=None) -> str:
    """cfg.mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    uri = (cfg.mlflow.tracking_uri if cfg is not None else None) or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """`uri` with a local store path made absolute, for processes in another working directory (Ray workers
    and jobs): sqlite:///x.db is relative to the working directory, sqlite:////x.db is not."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return Path(uri[len("file:"):]).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri).resolve().as_uri()
    return uri


def configure(cfg=None) -> str:
    """Check the store of `cfg` (store_checks.py) and point MLflow (here and in child processes) at it; returns
    its URI."""
    import mlflow

    from pipelines.tracking import store_checks

    uri = tracking_uri(cfg)
    store_checks.prepare(uri)  # unreachable or unusable: one line, before any data; a new SQLite store under a lock
    mlflow.set_tracking_uri(uri)
    # Children (Ray workers, `mlflow models serve`) must see the same store.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def set_experiment(name: str):
    """The experiment runs go to: `name`, or under `mlflow run` (MLFLOW_RUN_ID set) the experiment of the run
    MLflow made for the command, which fluent start_run() then continues."""
    import mlflow

    outer = os.environ.get("MLFLOW_RUN_ID")
    if outer:
        return mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(outer).info.experiment_id)
    return mlflow.set_experiment(name)


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# The untracked files that count as code: sources and configs under the project's source folders (a new module
# or conf/ option changes what runs), never outputs, stores or notes. Ignored files (.gitignore) never count.
SOURCE_DIRS = ("pipelines", "models", "datamodules", "conf")
SOURCE_SUFFIXES = (".py", ".yaml", ".yml")


def code_version(repo: Optional[Path] = None) -> Optional[str]:
    """HEAD, plus a hash of the uncommitted changes when there are any: the diff of tracked files and the content
    of untracked source files (SOURCE_DIRS, SOURCE_SUFFIXES). What `dlp pipeline` keys its step cache on, so an
    edited working tree never reuses a step computed by other code. Outside a git checkout (or when git fails),
    a hash of every source file there, 'tree+<hash>'; None when there are none."""
    repo = Path(repo or REPO)

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return _source_tree(repo)
        commit = head.stdout.decode().strip()
        diff = git("diff", "HEAD", "--binary").stdout
        others = git("ls-files", "--others", "--exclude-standard", "-z", "--", *SOURCE_DIRS).stdout
    except (OSError, subprocess.TimeoutExpired):
        return _source_tree(repo)
    h = hashlib.sha256(diff)
    new = sorted(n for n in others.decode(errors="surrogateescape").split("\0") if n.endswith(SOURCE_SUFFIXES))
    for name in new:
        try:
            content = (repo / name).read_bytes()
        except OSError:   # removed (or unreadable) since git listed it
            continue
        h.update(f"\0untracked {name}\0".encode(errors="surrogateescape") + hashlib.sha256(content).digest())
    return f"{commit}+{h.hexdigest()[:12]}" if diff or new else commit


def _source_tree(repo: Path) -> Optional[str]:
    h, found = hashlib.sha256(), False
    for folder in SOURCE_DIRS:
        for path in sorted((repo / folder).rglob("*")):
            if path.suffix in SOURCE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                h.update(f"\0{path.relative_to(repo)}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
                found = True
    return f"tree+{h.hexdigest()[:12]}" if found else None
