"""The champion served by `mlflow models serve --env-manager local` answers a real HTTP request on 127.0.0.1
with the same predictions as `dlp predict models:/<name>@champion`, from raw rows (a string column included:
the category encoding and scaling travel inside the pyfunc model)."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SMOKE, dlp_in_process, free_ports


def _wait_healthy(proc, url: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout:.0f} s")


def _served(model_uri: str, frame: pd.DataFrame, cwd) -> pd.DataFrame:
    """`frame` through `mlflow models serve -m model_uri` (a real server on 127.0.0.1, stopped by PID)."""
    port = free_ports()[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        # mlflow runs `uvicorn` from PATH: the venv's bin must be on it, as with an activated venv
        cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore",
                      "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(server, f"http://127.0.0.1:{port}/ping")
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
            return pd.DataFrame(json.loads(r.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow   # 15-55 s here: the default run keeps to its 10 minutes (make test-slow, CI)
def test_served_champion_matches_dlp_predict(store, tmp_path, capsys):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300) * 50 + 100,
                          "colour": rng.choice(["red", "green", "blue"], size=300)})
    frame["label"] = np.where(frame.x1 + (frame.colour == "red") > 0.3, "yes", "no")
    frame.to_csv(tmp_path / "table.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=mlp", "data=csv", "data.path=table.csv", "data.target=label",
                          *SMOKE, "trainer.limit_train_batches=null", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = next(line.split()[2] for line in proc.stdout.splitlines() if line.strip().startswith("run id:"))
    assert dlp_in_process(capsys, "register", f"runs:/{run_id}/model", "--name", "tabular").returncode == 0
    proc = dlp_in_process(capsys, "promote", "tabular")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    raw = frame.drop(columns="label").sample(25, random_state=1).reset_index(drop=True)
    raw.to_csv(tmp_path / "raw.csv", index=False)
    proc = dlp_in_process(capsys, "predict", "models:/tabular@champion", "raw.csv", "-o", "preds.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = pd.read_csv(tmp_path / "preds.csv")
    assert len(expected) == 25 and set(expected["prediction"]) <= {"yes", "no"}

    served = _served("models:/tabular@champion", pd.read_csv(tmp_path / "raw.csv"), tmp_path)
    assert list(served.columns) == list(expected.columns)
    assert (served["prediction"].astype(str) == expected["prediction"].astype(str)).all()
    probs = [c for c in expected.columns if c.startswith("prob_")]
    assert np.allclose(served[probs].to_numpy(float), expected[probs].to_numpy(float), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["rotten_tomatoes_rnn", "co2_lstm"])
def test_served_text_and_forecast_models_match_dlp_predict(store, tmp_path, capsys, experiment):
    """Serving parity beyond tables: texts in, labels and probabilities out; a history in, the horizon out."""
    import mlflow

    proc = dlp_in_process(capsys, "train", f"experiment={experiment}", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = next(line.split()[2] for line in proc.stdout.splitlines() if line.strip().startswith("run id:"))
    uri = f"runs:/{run_id}/model"
    raw = mlflow.models.Model.load(uri).load_input_example()   # raw rows as the model takes them
    raw.to_csv(tmp_path / "raw.csv", index=False)
    proc = dlp_in_process(capsys, "predict", uri, "raw.csv", "-o", "preds.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = pd.read_csv(tmp_path / "preds.csv")
    served = _served(uri, pd.read_csv(tmp_path / "raw.csv"), tmp_path)
    assert list(served.columns) == list(expected.columns) and len(served) == len(expected) > 0
    for column in expected.columns:
        if column == "date":   # the same instants; JSON writes them as ISO text with a time of day
            assert (pd.to_datetime(served[column]) == pd.to_datetime(expected[column])).all(), \
                (served[column].head(3).tolist(), expected[column].head(3).tolist())
        elif pd.api.types.is_numeric_dtype(expected[column]):
            assert np.allclose(served[column].to_numpy(float), expected[column].to_numpy(float), atol=1e-5), column
        else:
            assert (served[column].astype(str) == expected[column].astype(str)).all(), column
