"""`dlp train` / `dlp predict` end to end: a real subprocess against a temporary MLflow store."""
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import SMOKE, assert_one_line_error, dlp_in_process, run_dlp, runs_with_status


def _only_run(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def test_train_logs_everything_and_the_model_predicts(store, tmp_path):
    proc = run_dlp("train", "experiment=digits_cnn", *SMOKE, "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _only_run(store)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run_id in proc.stdout and "test metrics" in proc.stdout and "dlp ui" in proc.stdout

    params = run.data.params
    assert params["model.name"] == "cnn" and params["trainer.max_epochs"] == "2"
    tags = run.data.tags
    assert tags["dlp.data.source"] == "sklearn:digits" and len(tags["dlp.data.hash"]) == 64
    assert "mlflow.source.git.commit" in tags
    for key in ("train/loss", "val/loss", "val/acc", "val/f1", "val/auroc"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1], key
    train_s, epoch_s = (client.get_metric_history(run_id, k) for k in ("perf/train_seconds", "perf/epoch_seconds"))
    assert len(train_s) == len(epoch_s) == 2 and all(0 < t.value <= e.value for t, e in zip(train_s, epoch_s))
    for key in ("test/acc", "test/precision", "test/recall", "test/f1", "test/auroc"):
        assert 0.0 <= run.data.metrics[key] <= 1.0, key
    assert 0.0 < run.data.metrics["test/log_loss"] < float("inf"), run.data.metrics   # a loss: positive, finite

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "plots", "data", "checkpoints"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/learning_curve.png", "plots/confusion_matrix.png"}
    png = client.download_artifacts(run_id, "plots/learning_curve.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    import mlflow

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.signature is not None
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = pd.DataFrame(digits.data[:20], columns=[f"p{i}" for i in range(64)])
    preds = model.predict(rows)
    assert list(preds.columns[:2]) == ["prediction", "prob_0"]
    assert np.allclose(preds.filter(like="prob_").sum(axis=1), 1.0, atol=1e-4)

    rows.to_csv(tmp_path / "rows.csv", index=False)
    proc = run_dlp("predict", f"runs:/{run_id}/model", "rows.csv", "-o", "out/preds.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = pd.read_csv(tmp_path / "out/preds.csv")
    assert len(written) == 20
    assert (written["prediction"].astype(str).values == preds["prediction"].astype(str).values).all()


def test_csv_just_works(store, tmp_path, capsys):
    """A CSV with a string column trains and predicts with no other setting (resuming is tests/e2e/test_resume.py)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300),
                          "colour": rng.choice(["red", "green", "blue"], size=300)})
    frame["label"] = np.where(frame.x1 + (frame.colour == "red") > 0.3, "yes", "no")
    frame.to_csv(tmp_path / "my.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=mlp", "data=csv", "data.path=my.csv", "data.target=label",
                          "trainer.accelerator=cpu", "trainer.progress_bar=false", "trainer.threads=1",
                          "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _only_run(store)
    assert run.info.status == "FINISHED" and run.data.tags["dlp.task"] == "classification"

    raw = frame.drop(columns="label").head(7)
    raw.to_csv(tmp_path / "raw.csv", index=False)
    proc = dlp_in_process(capsys, "predict", f"runs:/{run.info.run_id}/model", "raw.csv", "-o", "p.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(pd.read_csv(tmp_path / "p.csv")["prediction"]) <= {"yes", "no"}


def _every_run(uri):
    """Every run of the store, deleted ones and those of deleted experiments included."""
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return [r.info.run_id for r in client.search_runs(exps, run_view_type=ViewType.ALL)] if exps else []


def _write_bad_csvs(tmp_path):
    good = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0] * 10, "label": [0, 1] * 20})
    good.to_csv(tmp_path / "good.csv", index=False)
    holes = good.copy()
    holes.loc[3, "a"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)


@pytest.mark.parametrize("overrides,needles", [
    (["data=csv", "data.path=missing.csv", "data.target=label"], ["missing.csv"]),
    (["data=csv", "data.path=good.csv", "data.target=nope"], ["nope"]),
    (["data=csv", "data.path=holes.csv", "data.target=label"], ["data.missing"]),
    (["resume=outputs/checkpoints/x/last.ckpt"], ["resume", "does not exist"]),
    (["resume=last"], ["resume=last"]),
    (["experiment=diabetes_mlp", "monitor.metric=val/acc", "monitor.mode=max"], ["monitor.metric=val/acc"]),
])
def test_bad_input_is_one_line_exit_2_and_opens_no_run(store, tmp_path, capsys, overrides, needles):
    _write_bad_csvs(tmp_path)
    model = [] if any(o.startswith("experiment=") for o in overrides) else ["model=mlp"]
    proc = dlp_in_process(capsys, "train", *model, *overrides, *SMOKE)
    assert proc.returncode == 2
    assert_one_line_error(proc, *needles)
    assert _every_run(store) == []   # checked before the run opens: not even a FAILED one


def test_predict_with_unknown_model_or_input_is_one_line(store, tmp_path, capsys):
    (tmp_path / "x.csv").write_text("a\n1\n")
    proc = dlp_in_process(capsys, "predict", "models:/nope@champion", "x.csv", "-o", "y.csv")
    assert_one_line_error(proc, "models:/nope@champion")
    proc = dlp_in_process(capsys, "predict", "models:/nope@champion", "nothere.csv", "-o", "y.csv")
    assert_one_line_error(proc, "nothere.csv")


def test_data_error_in_a_real_process_exits_2_without_traceback(store, tmp_path):
    proc = run_dlp("train", "model=mlp", "data=csv", "data.path=absent.csv", "data.target=y", *SMOKE,
                   cwd=tmp_path, timeout=180)
    assert proc.returncode == 2
    assert_one_line_error(proc, "absent.csv")
    assert _every_run(store) == []


@pytest.mark.slow   # 15-55 s here: the default run keeps to its 10 minutes (make test-slow, CI)
def test_ctrl_c_marks_the_run_killed(store, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "train", "experiment=digits_cnn", "trainer.max_epochs=500",
         "trainer.threads=1", "trainer.accelerator=cpu"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # epoch lines appear once training is under way (no TTY here)
        if line.startswith("epoch 2/") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert runs_with_status(store, "RUNNING") == []
    assert len(runs_with_status(store, "KILLED")) == 1
