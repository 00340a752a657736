"""The MLproject's entry points as users run them: `mlflow run . -e <entry> --env-manager local` with only the
parameters an entry point requires, from a clean store. The README's documented command runs verbatim, in the
default suite; every entry point runs in the slow one.

`.` is a copy of this repository (so the runs' outputs/ land in the test's directory, not in the checkout); the
`dlp` those commands start is this checkout's.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import REPO, runs_with_status

DOCUMENTED = "mlflow run . -e pipeline -P experiment=digits_cnn --env-manager local"
LITTER = (".venv", ".git", "outputs", "mlruns", "mlartifacts", "*.db", "test-artifacts", "__pycache__", "*.egg-info",
          ".pytest_cache")


@pytest.fixture
def project(tmp_path):
    """(a copy of the repository to run `mlflow run .` in, the environment with `dlp` on PATH and a fresh store)."""
    copy = tmp_path / "dlpipe"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(*LITTER))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT"))}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONWARNINGS="ignore",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return copy, env, uri


def _mlflow_run(command: str, copy: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    args = command.split()
    assert args[:2] == ["mlflow", "run"]
    return subprocess.run([sys.executable, "-m", "mlflow", *args[1:]], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_documented_mlflow_run_command_completes_from_a_clean_store(project):
    copy, env, uri = project
    assert DOCUMENTED in (REPO / "README.md").read_text() and DOCUMENTED in (REPO / "MLproject").read_text()
    proc = _mlflow_run(DOCUMENTED, copy, env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "5 steps (0 reused, 5 run)" in proc.stdout
    assert runs_with_status(uri, "RUNNING") == [] and runs_with_status(uri, "FAILED") == []
    champion = MlflowClient(uri).get_model_version_by_alias("digits_cnn", "champion")
    assert MlflowClient(uri).get_run(champion.run_id).data.metrics["test/acc"] >= 0.98


def _required(entry: dict, given: dict) -> str:
    """-P name=value for each parameter without a default, from `given`."""
    missing = [name for name, spec in (entry.get("parameters") or {}).items() if "default" not in spec]
    return "".join(f" -P {name}={given[name]}" for name in missing)


@pytest.mark.slow
def test_every_mlproject_entry_point_runs_with_only_its_required_parameters(project):
    copy, env, uri = project
    entries = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    # pipeline first: it leaves a champion for evaluate; tune then registers a challenger for promote
    order = ["pipeline", "main", "train", "tune", "evaluate", "promote"]
    assert sorted(order) == sorted(entries)
    given = {"model_uri": "models:/digits_cnn@champion", "model": "digits_cnn"}
    for name in order:
        proc = _mlflow_run(f"mlflow run . -e {name}{_required(entries[name], given)} --env-manager local", copy, env)
        output = proc.stdout + proc.stderr
        if name == "promote":   # exit 1 = the challenger was refused for its score: a decision, recorded
            assert "PROMOTED digits_cnn" in output or "REFUSED digits_cnn" in output, output[-3000:]
            assert proc.returncode == 0 or "REFUSED digits_cnn" in output
        else:
            assert proc.returncode == 0, f"{name}: " + output[-3000:]
    assert runs_with_status(uri, "RUNNING") == []
