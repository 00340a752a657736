"""dlp on a Ray cluster of two hosts that share no disk (tests/cluster/conftest.py): training with rank 0 on
either node, a worker killed mid-run, a sweep, and the README's laptop workflow against the team stack.

Each run is checked against what a correct run must hold — every epoch logged exactly once, the test metrics
and a model that loads from the team store, Ray's checkpoints in S3 — and against what must not exist: a
checkpoint or an MLflow store on any host's own disk."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.hosts import PRIVATE

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
SMALL = ["experiment=digits_cnn", "trainer.threads=1", "trainer.progress_bar=false", "data.limit=300"]


def run_summary(stack, run_id: str) -> dict:
    """The run as the team store holds it, read from the laptop (which has no storage credentials): its status,
    tags, test metrics, the steps of each epoch's val/acc, and whether its model loads."""
    return stack.query(f"""
r = client.get_run({run_id!r})
steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/acc")]
model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
print(json.dumps({{"status": r.info.status, "tags": r.data.tags, "steps": steps, "model": type(model).__name__,
                  "test": {{k: v for k, v in r.data.metrics.items() if k.startswith("test/")}}}}))
""")


def s3_keys(stack, prefix: str) -> list:
    """The objects under s3://dlp/<prefix>, listed from the head (which holds the S3 keys)."""
    return stack.head.python(f"""
import boto3, json
pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="dlp", Prefix={prefix!r})
print(json.dumps([o["Key"] for p in pages for o in p.get("Contents", [])]))""", stack.s3)


def assert_node_disks_clean(stack) -> None:
    """No checkpoint and no MLflow store on either Ray node's own disk: they live in S3 and the team store."""
    for host in (stack.head, stack.worker):
        assert host.files("*.ckpt") == [] and host.files("*.db") == [], host.name
        assert [f for f in host.files() if "/mlruns/" in f or "staging" in f] == [], host.name


def train_on_head(stack, *args: str, env=None):
    proc = stack.head.run(["dlp", "train", *SMALL, *args], stack.driver_env(**(env or {})), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc, re.search(r"run id:\s+([0-9a-f]{32})", proc.stdout).group(1)


@pytest.mark.parametrize("rank0", ["worker", "head"])
def test_train_two_workers_with_rank0_on_either_node(stack, rank0):
    other = {"worker": "head", "head": "worker"}[rank0]
    _, run_id = train_on_head(stack, "trainer.num_workers=2", "trainer.max_epochs=2",
                              f"trainer.storage_path=s3://dlp/train-{rank0}",
                              f"trainer.label_selector=[{{role:{rank0}}},{{role:{other}}}]")
    run = run_summary(stack, run_id)
    ips = {"head": stack.head.ip, "worker": stack.worker.ip}
    assert run["tags"]["dlp.worker_nodes"] == f"{ips[rank0]},{ips[other]}"     # rank 0 where it was forced
    assert run["status"] == "FINISHED" and run["steps"] == [0, 1], run          # each epoch once
    assert run["test"]["test/acc"] > 0 and run["model"] == "PyFuncModel"
    keys = s3_keys(stack, f"train-{rank0}/{run_id}/")
    assert any(k.endswith("/model.ckpt") for k in keys), keys
    assert_node_disks_clean(stack)


def test_a_killed_worker_resumes_from_s3(stack):
    """Rank 1 (on the worker node) exits hard in epoch 2: Ray restarts the group from the checkpoint in S3."""
    proc, run_id = train_on_head(stack, "trainer.num_workers=2", "trainer.max_epochs=3", "trainer.max_failures=1",
                                 "trainer.storage_path=s3://dlp/fault",
                                 "trainer.label_selector=[{role:head},{role:worker}]", env={"DLP_FAULT": "rank=1,epoch=1"})
    out = proc.stdout + proc.stderr
    assert "DLP_FAULT: rank 1 exits during epoch 2" in out
    assert re.search(r"resuming from checkpoint \S*dlp/fault/" + run_id, out), out[-3000:]
    run = run_summary(stack, run_id)
    assert run["status"] == "FINISHED" and run["steps"] == [0, 1, 2], run
    assert_node_disks_clean(stack)


def test_tune_four_trials_two_at_a_time(stack):
    proc = stack.head.run(["dlp", "tune", *SMALL, "tune=digits_asha", "trainer.max_epochs=2",
                           "trainer.storage_path=s3://dlp/sweeps"], stack.driver_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    sweep = stack.query("""
exp = client.get_experiment_by_name("digits_cnn")
runs = client.search_runs([exp.experiment_id], "tags.`dlp.sweep` = 'digits_cnn/digits_asha'")
v = client.get_model_version_by_alias("digits_cnn", "challenger")
print(json.dumps({"ids": [r.info.run_id for r in runs], "status": [r.info.status for r in runs],
                  "metrics": runs[0].data.metrics if runs else {}, "challenger_run": v.run_id}))""")
    assert len(sweep["ids"]) == 1 and sweep["status"] == ["FINISHED"], sweep
    keys = s3_keys(stack, f"sweeps/tune/{sweep['ids'][0]}/")
    assert sum(k.endswith("/model.ckpt") for k in keys) >= 4, keys   # every trial's checkpoints
    done = sweep["metrics"]
    assert done["trials/completed"] + done["trials/stopped"] == 4 and done["trials/errored"] == 0, done
    assert_node_disks_clean(stack)


def readme_block(title: str) -> str:
    """The bash block after the README line `title`."""
    text = (REPO / "README.md").read_text()
    return re.search(re.escape(title) + r".*?```bash\n(.*?)```", text, re.S).group(1)


def test_the_readme_laptop_workflow_verbatim(stack):
    """Submit from a laptop with its own disk and no storage keys; register, promote, predict from it."""
    block = readme_block("On the laptop")
    env = stack.laptop_env(HEAD=stack.head.ip, SERVER=stack.services_ip, TOKEN=stack.token,
                           PASSWORD=stack.tracking["MLFLOW_TRACKING_PASSWORD"])
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN"):
        env.pop(var)    # the block sets them itself
    stack.laptop.run(["mkdir", "-p", f"{PRIVATE}/work"])
    proc = stack.laptop.run(["bash", "-euo", "pipefail", "-c", block], env, cwd=f"{PRIVATE}/work", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "SUCCEEDED" in proc.stdout and "digits" in proc.stdout
    preds = stack.laptop.run(["cat", f"{PRIVATE}/work/preds.csv"]).stdout.splitlines()
    assert len(preds) == 21 and preds[0].startswith("prediction"), preds[:3]
    champion = stack.query("""
v = client.get_model_version_by_alias("digits", "champion")
print(json.dumps(client.get_run(v.run_id).data.tags.get("dlp.worker_nodes")))""")
    assert sorted(champion.split(",")) == sorted([stack.head.ip, stack.worker.ip])   # the job used both nodes
    assert stack.laptop.files("*.db") == [] and stack.laptop.files("*.ckpt") == []
    assert_node_disks_clean(stack)
    assert stack.running_runs() == []


def test_a_table_streamed_from_s3_trains_on_both_nodes(stack):
    """A folder of Parquet shards in S3 that neither node holds: the driver lists it and makes its one statistics
    pass, Ray Data read tasks read it on the nodes, two workers (one per node) train on even shards of it."""
    stack.head.python(f"""
import io, json, sys
import boto3, numpy as np
sys.path.insert(0, {str(REPO)!r})
from tests.datafiles import synthetic_table
df = synthetic_table(4000, seed=4)
s3 = boto3.client("s3")
for i, part in enumerate(np.array_split(np.arange(len(df)), 4)):
    buf = io.BytesIO()
    df.iloc[part].to_parquet(buf, row_group_size=500)
    s3.put_object(Bucket="dlp", Key=f"tables/synth/part-{{i:05d}}.parquet", Body=buf.getvalue())
print(json.dumps(len(df)))""", stack.s3)
    proc = stack.head.run(["dlp", "train", "model=mlp", "data=csv", "data.source=parquet", "data.target=label",
                           "data.path=s3://dlp/tables/synth", "trainer.max_epochs=2", "trainer.threads=1",
                           "trainer.progress_bar=false", "trainer.num_workers=2",
                           "trainer.storage_path=s3://dlp/stream",
                           "trainer.label_selector=[{role:head},{role:worker}]"], stack.driver_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    run = run_summary(stack, re.search(r"run id:\s+([0-9a-f]{32})", proc.stdout).group(1))
    assert run["status"] == "FINISHED" and run["steps"] == [0, 1], run
    assert run["tags"]["dlp.data.source"] == "parquet:s3://dlp/tables/synth", run["tags"]
    assert sum(int(run["tags"][f"dlp.data.n_{s}"]) for s in ("train", "val", "test")) == 4000
    assert run["test"]["test/acc"] > 0.8 and run["model"] == "PyFuncModel"
    assert_node_disks_clean(stack)
