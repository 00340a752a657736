"""A store's faults under real use: four `dlp train` started at once on a brand-new SQLite store.

MLflow creates a new store's schema (alembic migrations, the default experiment) in whichever process opens it
first, without a lock: three of four such processes crashed in the migration. store_checks.prepare opens the
store under a file lock beside it, so all four finish.
"""
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.conftest import SMOKE


@pytest.mark.slow
def test_four_trainings_started_together_on_a_new_store_all_finish(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", "model=mlp", *SMOKE,
                               f"output_dir={tmp_path / f'out{i}'}", "mlflow.experiment_name=together"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    client = MlflowClient(uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert set(experiments) == {"Default", "together"}
    runs = client.search_runs([experiments["together"]])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
