"""The up-front cluster checks that need no cluster: a store a remote cluster cannot reach, a submitted job's
output inside its temporary working_dir, and the environment a joined cluster gets."""
from __future__ import annotations

import json

import pytest

from pipelines.cluster import jobs, local
from pipelines.errors import UserError


@pytest.mark.parametrize("address,uri,ok", [
    ("http://127.0.0.1:8265", "sqlite:///mlflow.db", True),         # a cluster on this machine shares its disk
    ("http://localhost:8265", "http://127.0.0.1:5000", True),
    ("http://10.200.0.1:8265", "http://10.200.0.1:5000", True),     # a team server the nodes reach
    ("http://10.200.0.1:8265", "sqlite:///mlflow.db", False),
    ("http://10.200.0.1:8265", "file:///tmp/mlruns", False),
    ("http://10.200.0.1:8265", "mlruns", False),
    ("10.200.0.1:6379", "http://127.0.0.1:5000", False),            # loopback here is not loopback there
])
def test_a_remote_cluster_refuses_a_store_on_this_machine(address, uri, ok):
    if ok:
        jobs.check_store_reachable(address, uri)
        return
    with pytest.raises(UserError, match="cannot reach; start a team server") as e:
        jobs.check_store_reachable(address, uri)
    assert address in str(e.value) and "\n" not in str(e.value)


def _in_job(monkeypatch, tmp_path, env_vars=None):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": env_vars or {}}}))


def test_a_submitted_job_refuses_output_inside_its_working_dir(tmp_path, monkeypatch):
    local.check_outside_job_dir(output_dir="outputs")          # not a job: anything goes
    _in_job(monkeypatch, tmp_path)
    with pytest.raises(UserError, match=r"output_dir=outputs is inside this Ray job's temporary working_dir"):
        local.check_outside_job_dir(output_dir="outputs")
    with pytest.raises(UserError, match=r"trainer.storage_path=ckpts"):
        local.check_outside_job_dir(**{"trainer.storage_path": "ckpts"})
    local.check_outside_job_dir(output_dir=str(tmp_path.parent / "elsewhere"), **{"trainer.storage_path": "s3://b/x"})
    local.check_outside_job_dir(**{"trainer.storage_path": None})


def test_a_jobs_driver_does_not_repeat_the_jobs_env_vars(tmp_path, monkeypatch):
    """Ray refuses ray.init(runtime_env=...) in a job when a key repeats the job's own env_vars."""
    for k in list(local.passed_env()):
        monkeypatch.delenv(k)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.200.0.1:5000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")                     # this process's own run, never passed
    monkeypatch.setenv("HOME_NOT_PASSED", "x")
    assert local.driver_runtime_env(local.DEFAULT_ENV) == {
        "env_vars": {"MLFLOW_TRACKING_URI": "http://10.200.0.1:5000", "AWS_ACCESS_KEY_ID": "key"}}
    _in_job(monkeypatch, tmp_path, env_vars={"MLFLOW_TRACKING_URI": "http://10.200.0.1:5000"})
    assert local.driver_runtime_env(local.DEFAULT_ENV) == {"env_vars": {"AWS_ACCESS_KEY_ID": "key"}}
    assert local.driver_runtime_env(["GLOO_*"]) == {"env_vars": {}}


def test_the_auth_token_comes_from_the_environment_then_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert local.auth_token() == ""
    (tmp_path / "token").write_text("t0k\n")
    assert local.auth_token() == "t0k"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
    assert local.auth_token() == "env"
