"""`dlp pipeline` (and the MLproject's `pipeline` entry point through `mlflow run`): every step a nested
MLflow run, a second run reuses every step, a run that failed at evaluate resumes there."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, SMOKE, assert_one_line_error, dlp_in_process

STEPS = ["prepare", "train", "evaluate", "register", "promote"]
TINY = ["experiment=breast_cancer_mlp", "trainer.max_epochs=2", "trainer.progress_bar=false", "trainer.threads=1"]


def _pipelines(uri):
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string="tags.`dlp.pipeline` != ''", order_by=["attributes.start_time ASC"])
    return client, runs


def _steps(client, pipeline_run):
    children = client.search_runs([pipeline_run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{pipeline_run.info.run_id}'")
    return {r.data.tags["dlp.step"]: r for r in children}


def test_mlflow_run_pipeline_then_again_reuses_every_step(store, tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore"}
    overrides = " ".join([*SMOKE, "trainer.max_epochs=2", f"output_dir={tmp_path / 'outputs'}"])
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "pipeline", "-P", "experiment=digits_cnn",
               "-P", f"overrides={overrides}", "--env-manager", "local"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "5 steps (0 reused, 5 run)" in first.stdout
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "5 steps (5 reused, 0 run)" in second.stdout and "epoch" not in second.stdout  # no training

    client, (one, two) = _pipelines(store)
    assert one.info.status == two.info.status == "FINISHED"
    first_steps, second_steps = _steps(client, one), _steps(client, two)
    assert set(first_steps) == set(second_steps) == set(STEPS)
    for name in STEPS:
        assert "dlp.step.reused_from" not in first_steps[name].data.tags
        assert second_steps[name].data.tags["dlp.step.reused_from"] == first_steps[name].info.run_id, name
        assert first_steps[name].info.status == "FINISHED"
    train = first_steps["train"]
    assert train.data.metrics["test/acc"] > 0 and "dlp.model_uri" in train.data.tags
    version = client.get_model_version_by_alias("digits_cnn", "champion")
    assert version.run_id == train.info.run_id
    assert len(client.search_model_versions("name='digits_cnn'")) == 1    # the second pipeline registered nothing


def test_a_pipeline_failing_at_evaluate_resumes_there(store, capsys):
    failed = dlp_in_process(capsys, "pipeline", *TINY, "pipeline.evaluate.metric=r2")
    assert_one_line_error(failed, "evaluate: metric r2 cannot be computed for a classification model")
    client, (broken,) = _pipelines(store)
    assert broken.info.status == "FAILED"
    steps = _steps(client, broken)
    assert {n: r.info.status for n, r in steps.items()} == {"prepare": "FINISHED", "train": "FINISHED",
                                                             "evaluate": "FAILED"}

    fixed = dlp_in_process(capsys, "pipeline", *TINY, "pipeline.evaluate.metric=f1")
    assert fixed.returncode == 0, fixed.stderr
    assert "5 steps (2 reused, 3 run)" in fixed.stdout
    client, (_, done) = _pipelines(store)
    steps_now = _steps(client, done)
    assert steps_now["train"].data.tags["dlp.step.reused_from"] == steps["train"].info.run_id  # not retrained
    assert "dlp.step.reused_from" not in steps_now["evaluate"].data.tags
    f1 = steps_now["evaluate"].data.metrics["eval/f1"]
    assert f1 == pytest.approx(steps["train"].data.metrics["test/f1"], abs=1e-4)  # the same frozen test split
    assert client.get_model_version_by_alias("breast_cancer_mlp", "champion").run_id == steps["train"].info.run_id


def test_dlp_evaluate_scores_the_champion_on_its_frozen_split(store, capsys):
    assert dlp_in_process(capsys, "pipeline", *TINY).returncode == 0
    out = dlp_in_process(capsys, "evaluate", "models:/breast_cancer_mlp@champion", "--metric", "acc")
    assert out.returncode == 0, out.stderr
    client, (run,) = _pipelines(store)
    train = _steps(client, run)["train"]
    shown = float(out.stdout.split("test acc = ")[1].split()[0])
    assert shown == pytest.approx(train.data.metrics["test/acc"], abs=1e-4)
    bad = dlp_in_process(capsys, "evaluate", "models:/nope@champion")
    assert_one_line_error(bad, "evaluate: no registered model 'nope@champion'")


def test_unknown_step_parameter_is_refused_before_any_run(store, capsys):
    out = dlp_in_process(capsys, "pipeline", *TINY, "pipeline.evaluate.metrc=f1")
    assert_one_line_error(out, "unknown step parameter 'evaluate.metrc'", "evaluate.metric")
    assert _pipelines(store)[1] == []
