"""Each way a cluster run is commonly misconfigured gets one line naming the culprit and the fix, exit 2, before
any compute, and no MLflow run left RUNNING in the team store (tests/cluster/conftest.py's stack)."""
from __future__ import annotations

import subprocess

import pytest


pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

TRAIN = ["train", "experiment=digits_cnn", "trainer.num_workers=2", "trainer.max_epochs=1", "data.limit=200"]


def assert_refused(stack, proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout[-2000:] + err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("dlp: error:")]
    assert len(lines) == 1 and len(err.splitlines()) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert stack.running_runs() == []


def test_a_local_storage_path_on_two_nodes(stack):
    proc = stack.head.run(["dlp", *TRAIN], stack.driver_env())
    assert_refused(stack, proc, "trainer.storage_path", f"node {stack.worker.ip} cannot see it", "s3://")


def test_a_missing_ray_token(stack):
    env = stack.driver_env()
    env.pop("RAY_AUTH_TOKEN")
    proc = stack.head.run(["dlp", *TRAIN, "trainer.storage_path=s3://dlp/x"], env)
    assert_refused(stack, proc, "token auth", "RAY_AUTH_TOKEN")


def test_storage_credentials_that_fail_on_the_nodes(stack):
    env = stack.driver_env(AWS_SECRET_ACCESS_KEY="not-the-key")   # what the driver passes the nodes
    proc = stack.head.run(["dlp", *TRAIN, "trainer.storage_path=s3://dlp/x"], env)
    assert_refused(stack, proc, "s3://dlp/x", "node ")


def test_submit_with_a_store_on_the_laptops_disk(stack):
    env = {"RAY_AUTH_TOKEN": stack.token}     # no MLFLOW_TRACKING_URI: the default sqlite:///mlflow.db here
    proc = stack.laptop.run(["dlp", "submit", "--address", stack.dashboard, "--", *TRAIN], env)
    assert_refused(stack, proc, "sqlite:///", "cannot reach", "dlp server")
    assert stack.laptop.files("*.db") == []


def test_a_submitted_job_writing_into_its_working_dir(stack):
    proc = stack.laptop.run(["dlp", "submit", "--address", stack.dashboard, "--wait", "--", *TRAIN,
                             "trainer.storage_path=s3://dlp/x", "output_dir=outputs"], stack.laptop_env())
    assert_refused(stack, proc, "output_dir=outputs is inside this Ray job's temporary working_dir")
    assert stack.laptop.files("*.db") == []
