"""`dlp submit / jobs / logs / stop` against a real two-node Ray cluster started with `ray start`
(tests/raynodes.py: token auth on, free ports, a private temp dir, stopped by its own PIDs)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from pipelines.cluster import jobs
from tests.conftest import REPO, SMOKE, assert_one_line_error, dlp_in_process
from tests.raynodes import running_cluster


@pytest.fixture(scope="module")
def cluster():
    with running_cluster(nodes=2, cpus=1) as c:
        yield c


@pytest.fixture
def client_env(cluster, monkeypatch):
    """This process as a client of `cluster`: its token in the environment, no other address."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return cluster


@pytest.mark.distributed
def test_submit_wait_round_trip_then_jobs_and_logs(client_env, capsys):
    addr = client_env.address
    proc = dlp_in_process(capsys, "submit", "--address", addr, "--wait", "--", "config", "show", "experiment=digits_cnn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("submitted dlp-config-"), proc.stdout
    job_id = first.split()[1]
    assert "name: digits_cnn" in proc.stdout and f"job {job_id} SUCCEEDED" in proc.stdout

    proc = dlp_in_process(capsys, "jobs", "--address", addr)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and "dlp config show experiment=digits_cnn" in row

    proc = dlp_in_process(capsys, "logs", job_id, "--address", addr)
    assert proc.returncode == 0, proc.stderr
    assert "name: digits_cnn" in proc.stdout and "metric: val/acc" in proc.stdout

    proc = dlp_in_process(capsys, "stop", job_id, "--address", addr)
    assert proc.returncode == 0 and "already ended" in proc.stdout


@pytest.mark.distributed
def test_submit_returns_at_once_and_a_refused_job_exits_2(client_env, capsys, monkeypatch):
    addr = client_env.address
    monkeypatch.setenv("RAY_ADDRESS", addr)  # the address from the environment, as a user would set it
    proc = dlp_in_process(capsys, "submit", "--", "config", "show", "no_such.key=1")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[1]
    assert f"dlp logs {job_id} --follow" in proc.stdout and "--address" not in proc.stdout
    proc = dlp_in_process(capsys, "logs", job_id, "--follow")
    assert "unknown key 'no_such'" in proc.stdout
    # the job's dlp refused its input: one line here too, exit 2 like the command itself
    assert_one_line_error(proc, f"job {job_id}: ", "no_such")
    assert proc.returncode == 2


@pytest.mark.distributed
def test_user_errors_are_one_line(client_env, capsys, monkeypatch):
    addr = client_env.address
    proc = dlp_in_process(capsys, "submit", "--address", "http://127.0.0.1:9", "--", "config", "show")
    assert_one_line_error(proc, "no Ray cluster reachable at http://127.0.0.1:9", "ray start --head")
    proc = dlp_in_process(capsys, "submit", "--address", addr, "--")
    assert_one_line_error(proc, "nothing to run", "--")
    proc = dlp_in_process(capsys, "submit", "--address", addr, "--", "ui")
    assert_one_line_error(proc, "'ui'")
    proc = dlp_in_process(capsys, "submit", "--address", addr, "--", "train", "model=nope")
    assert_one_line_error(proc, "nope")  # checked here, before any upload
    for command in ("logs", "stop"):
        proc = dlp_in_process(capsys, command, "dlp-nope", "--address", addr)
        assert_one_line_error(proc, "no job 'dlp-nope'", "dlp jobs")

    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(Path(tempfile.gettempdir()) / "dlp-no-token-here"))
    proc = dlp_in_process(capsys, "jobs", "--address", addr)
    # "requires an auth token", or "rejected the auth token" when Ray's SDK falls back on a token it cached
    # in this process (an earlier test's local cluster made ~/.ray/auth_token): either way one line and the fix
    assert_one_line_error(proc, "auth token", "RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    proc = dlp_in_process(capsys, "jobs", "--address", addr)
    assert_one_line_error(proc, "rejected the auth token")


@pytest.mark.slow   # over half a minute: make test-slow, CI
@pytest.mark.distributed
def test_train_job_logs_to_the_callers_store(client_env, store, tmp_path, capsys, monkeypatch):
    """A relative sqlite URI reaches the job as an absolute path: the run lands in the caller's store."""
    from tests.conftest import runs_with_status

    relative = "sqlite:///mlflow.db"  # `store` made tmp_path the working directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", relative)
    proc = dlp_in_process(capsys, "submit", "--address", client_env.address, "--wait", "--",
                          "train", "experiment=digits_cnn", *SMOKE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finished = runs_with_status(store, "FINISHED")
    assert len(finished) == 1 and finished[0].info.run_id in proc.stdout
    # The experiment was created here, so its artifacts are too, not in the job's temporary working_dir.
    assert Path(finished[0].info.artifact_uri.replace("file://", "")).is_relative_to(tmp_path)


def test_runtime_env_ships_the_repo_and_an_absolute_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/m.db")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.delenv("DLP_OUTPUT_DIR", raising=False)
    env = jobs.runtime_env()
    assert env["working_dir"] == str(REPO) and {".venv", ".git", "mlruns", "outputs", "*.ckpt"} <= set(env["excludes"])
    # cluster.env's defaults go along; a cluster on this machine writes into this folder's outputs/
    assert {k: v for k, v in env["env_vars"].items() if not k.startswith(("AWS_", "MLFLOW_"))} == {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "DLP_OUTPUT_DIR": str(tmp_path / "outputs")}
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/runs/m.db"
    assert env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "s3cret"
    assert "DLP_OUTPUT_DIR" not in jobs.runtime_env(address="http://10.0.0.5:8265")["env_vars"]
    assert "pip" not in env
    assert any(dep.startswith("ray[") for dep in jobs.runtime_env("pip")["pip"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert jobs.absolute_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"  # dlp's default store, made absolute
    for uri in ("http://mlflow:5000", "sqlite:////abs/m.db", "databricks"):
        assert jobs.absolute_tracking_uri(uri) == uri
    assert jobs.absolute_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert jobs.entrypoint(["train", "tags.note=a b"]) == "python -m pipelines.cli train 'tags.note=a b'"


def test_auth_token_from_env_then_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert jobs.auth_headers() == {"Authorization": "Bearer abc"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "token").write_text("fromfile\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert jobs.auth_headers() == {"Authorization": "Bearer fromfile"}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "absent"))
    assert jobs.auth_headers() == {}


def test_address_flag_beats_environment(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert jobs.resolve_address() == "http://head:8265"
    assert jobs.resolve_address("http://other:8265") == "http://other:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    assert jobs.resolve_address() == jobs.DEFAULT_ADDRESS


def test_cluster_starting_points_parse():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    launcher = yaml.safe_load((REPO / "conf/cluster/ray-cluster.yaml").read_text())
    validate_config(prepare_config(launcher))  # Ray's own schema for `ray up`
    assert set(launcher["available_node_types"]) >= {"head", "cpu_worker"}
    assert any("scripts/setup.sh" in c for c in launcher["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in launcher["head_start_ray_commands"])
    rayjob = yaml.safe_load((REPO / "conf/cluster/rayjob.yaml").read_text())
    assert rayjob["kind"] == "RayJob"
    assert rayjob["spec"]["entrypoint"] == ("python -m pipelines.cli train experiment=digits_cnn trainer.num_workers=2 "
                                            "trainer.storage_path=s3://<bucket>/dlpipe/checkpoints")   # no shared disk
    spec = rayjob["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert [e["name"] for e in head["env"]][0] == "MLFLOW_TRACKING_URI"
    worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == worker["envFrom"] == [{"secretRef": {"name": "dlpipe-s3"}}]   # every pod: the S3 keys
    assert "env" not in worker                                                               # no tracking secrets
    assert spec["workerGroupSpecs"][0]["replicas"] == 2
    yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])


@pytest.mark.distributed
@pytest.mark.slow
def test_distributed_train_job_spans_both_nodes(client_env, store, tmp_path, capsys):
    """`dlp submit -- train trainer.num_workers=2`: one worker per 1-CPU node, the run in the caller's store."""
    from mlflow import MlflowClient

    from tests.conftest import runs_with_status

    proc = dlp_in_process(capsys, "submit", "--address", client_env.address, "--wait", "--",
                          "train", "experiment=digits_cnn", "trainer.num_workers=2", "trainer.max_epochs=1",
                          "trainer.threads=1", "trainer.progress_bar=false", "data.limit=200")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finished = runs_with_status(store, "FINISHED")
    assert len(finished) == 1 and finished[0].info.run_id in proc.stdout
    run = MlflowClient(store).get_run(finished[0].info.run_id)
    assert run.data.tags["dlp.world_size"] == "2" and "test/acc" in run.data.metrics
