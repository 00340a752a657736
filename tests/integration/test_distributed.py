"""`dlp train trainer.num_workers=2` on a real local Ray cluster: same quality as one process,
each epoch in MLflow once, a killed worker resumed from its checkpoint, and a clean failure."""
import re
import subprocess
import time

import pytest

from tests.conftest import assert_one_line_error, dlp_in_new_store, dlp_in_process, runs_with_status

pytestmark = pytest.mark.distributed
RAY_PREFIX = re.compile(r"^(\x1b\[\d+m)?\((\w+ pid=\d+|raylet)")  # a line Ray streamed from one of its processes

# Full digits, one thread per worker (2 workers fill the machine's 2 cores); no augmentation, dropout or
# warm-up, so 5 epochs reach ~98% and the runs compared differ by their distribution, not by their noise.
JOB = ["experiment=digits_cnn", "trainer.max_epochs=5", "trainer.threads=1", "trainer.progress_bar=true",
       "data.augment.enabled=false", "model.dropout=0.0", "sched.warmup_epochs=0"]


@pytest.fixture(scope="module")
def two_workers(ray_cluster, tmp_path_factory):
    """One uninterrupted 2-worker run, shared: (its store URI, the run, the console output)."""
    uri, code, out = dlp_in_new_store(tmp_path_factory.mktemp("two_workers"), "train", *JOB,
                                      "trainer.num_workers=2", settle=0.5)
    assert code == 0, out
    (run,) = runs_with_status(uri, "FINISHED")
    return uri, run, out


def _steps(uri, run_id, key="train/loss"):
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def _history(uri, run_id, keys=("train/loss", "val/loss", "val/acc")) -> dict:
    """Each key's values in epoch order (after checking each epoch is there once)."""
    from mlflow import MlflowClient

    out = {}
    for key in keys:
        history = sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)), (key, steps)
        out[key] = [m.value for m in history]
    return out


def _same_history(got: dict, want: dict, atol: float = 1e-5) -> None:
    for key in want:
        assert len(got[key]) == len(want[key]) and all(abs(a - b) <= atol for a, b in zip(got[key], want[key])), \
            (key, got[key], want[key])


def _leftover_placement_groups(ray):
    return [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]


@pytest.mark.slow   # 15-55 s here: the default run keeps to its 10 minutes (make test-slow, CI)
def test_two_workers_match_one_process_and_log_each_epoch_once(two_workers, tmp_path):
    from pipelines.config.compose import compose
    from pipelines.training.fit import fit

    uri, run, console = two_workers
    assert _steps(uri, run.info.run_id) == [0, 1, 2, 3, 4]
    assert _steps(uri, run.info.run_id, "val/acc") == [0, 1, 2, 3, 4]
    assert run.data.tags["dlp.world_size"] == "2"
    assert run.data.tags.get("dlp.model_uri", "").startswith("models:/")
    epoch_lines = [line for line in console.splitlines() if "epoch 3/5" in line]
    assert len(epoch_lines) == 1, console  # rank 0 only, no progress bars
    # where the time outside training went (a test's process is not the command's: no process-start phase)
    launch = {k: v for k, v in run.data.metrics.items() if k.startswith("perf/launch/")}
    assert set(launch) == {f"perf/launch/{k}" for k in ("ray_train_start_seconds", "worker_setup_seconds",
                                                        "ray_train_stop_seconds")}, launch
    assert 0 < launch["perf/launch/ray_train_start_seconds"] < 120 and launch["perf/launch/worker_setup_seconds"] > 0
    one = fit(compose([*JOB, f"output_dir={tmp_path}"]), run_id=None)  # the same global batch and seed, 1 process
    assert abs(run.data.metrics["test/acc"] - one.test_metrics["test/acc"]) <= 0.01, \
        (run.data.metrics["test/acc"], one.test_metrics["test/acc"])


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_a_killed_worker_resumes_from_its_checkpoint(two_workers, ray_cluster, store, monkeypatch, capsys):
    monkeypatch.setenv("DLP_FAULT", "rank=1,epoch=2")  # rank 1 exits hard in epoch 3 of 5, first attempt only
    proc = dlp_in_process(capsys, "train", *JOB, "trainer.num_workers=2", "trainer.max_failures=1")
    assert proc.returncode == 0, proc.stderr
    assert "DLP_FAULT: rank 1 exits during epoch 3" in proc.stdout + proc.stderr
    resumed = [line for line in (proc.stdout + proc.stderr).splitlines() if "resuming from checkpoint" in line]
    assert len(resumed) == 1 and "model.ckpt (epoch 2 of 5 done)" in resumed[0], resumed
    (run,) = runs_with_status(store, "FINISHED")
    assert _steps(store, run.info.run_id) == [0, 1, 2, 3, 4]
    assert _steps(store, run.info.run_id, "val/acc") == [0, 1, 2, 3, 4]
    # the epochs after the restart are the uninterrupted run's: weights, optimiser, RNG and loader order restored
    uri, uninterrupted, _ = two_workers
    _same_history(_history(store, run.info.run_id), _history(uri, uninterrupted.info.run_id))
    assert abs(run.data.metrics["test/acc"] - uninterrupted.data.metrics["test/acc"]) <= 1e-6
    assert not _leftover_placement_groups(ray_cluster)


@pytest.mark.slow   # 15-55 s here: the default run keeps to its 10 minutes (make test-slow, CI)
def test_a_worker_failure_without_retries_fails_the_run_cleanly(ray_cluster, store, monkeypatch, capsys):
    monkeypatch.setenv("DLP_FAULT", "rank=1,epoch=1")
    proc = dlp_in_process(capsys, "train", "experiment=digits_cnn", "trainer.max_epochs=3", "trainer.threads=1",
                          "data.limit=300", "trainer.num_workers=2", "trainer.max_failures=0")
    # the workers' own tracebacks reach the console through Ray's log streaming; dlp adds one line, no traceback
    own = "\n".join(line for line in proc.stderr.splitlines() if not RAY_PREFIX.search(line))
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, own),
                          "distributed training failed", "worker rank 1 died")
    assert proc.returncode == 1
    assert len(runs_with_status(store, "FAILED")) == 1
    assert not runs_with_status(store, "RUNNING")
    assert not _leftover_placement_groups(ray_cluster)
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")])
    assert not [a for a in alive if a.class_name in ("RayTrainWorker", "TrainController")], alive


LONG_JOB = ["train", *JOB, "trainer.max_epochs=8", "trainer.num_workers=2", "mlflow.log_model=false"]


@pytest.fixture(scope="module")
def long_uninterrupted(ray_cluster, tmp_path_factory):
    uri, code, out = dlp_in_new_store(tmp_path_factory.mktemp("long"), *LONG_JOB, settle=0.5)
    assert code == 0, out
    (run,) = runs_with_status(uri, "FINISHED")
    return uri, run


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_resume_auto_continues_the_run_after_the_driver_stopped(long_uninterrupted, ray_cluster, store, tmp_path,
                                                                 sig):
    """Stop `dlp train` (the driver) at a random point after its second epoch — Ctrl-C, SIGTERM or SIGKILL; the
    same command with resume=auto (or resume=last) finishes the same MLflow run, each epoch logged once, every
    epoch's metrics and the test metrics those of an uninterrupted run."""
    import os
    import random
    import signal
    import sys

    from mlflow import MlflowClient

    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONWARNINGS": "ignore"}
    driver = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *LONG_JOB], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(store)
    deadline, epochs = time.time() + 120, []
    while time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
        runs = runs_with_status(store, "RUNNING")
        epochs = client.get_metric_history(runs[0].info.run_id, "train/loss") if runs else []
        if len(epochs) >= 2:
            break
    # a random point within the third epoch: a fixed 0-2 s could outlast the 6 epochs left on a fast machine
    stamps = sorted(m.timestamp for m in epochs)
    epoch_seconds = (stamps[-1] - stamps[0]) / 1000 / max(1, len(stamps) - 1) if len(stamps) >= 2 else 0.5
    time.sleep(random.uniform(0.0, min(2.0, epoch_seconds)))
    assert driver.poll() is None, "the job ended before the test could stop it"
    os.kill(driver.pid, getattr(signal, sig))
    _, err = driver.communicate(timeout=120)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    if sig == "SIGKILL":
        assert run.info.status == "RUNNING"   # a dead driver leaves its run RUNNING
    else:
        assert driver.returncode in (130, 143) and run.info.status == "KILLED", (driver.returncode, err[-3000:])
        assert "the MLflow run is marked KILLED" in err and "Traceback" not in err, err[-3000:]
    how = "resume=last" if sig == "SIGTERM" else "resume=auto"   # last: the same as auto with Ray workers
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *LONG_JOB, how], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint" in proc.stdout + proc.stderr
    (finished,) = runs_with_status(store, "FINISHED")
    assert finished.info.run_id == run.info.run_id
    assert _steps(store, run.info.run_id) == list(range(8))
    uri, uninterrupted = long_uninterrupted
    _same_history(_history(store, run.info.run_id), _history(uri, uninterrupted.info.run_id))
    assert abs(finished.data.metrics["test/acc"] - uninterrupted.data.metrics["test/acc"]) <= 1e-6
    assert not _leftover_placement_groups(ray_cluster)


@pytest.mark.slow
def test_bf16_mixed_precision_trains_across_two_workers(ray_cluster, store, capsys):
    """trainer.precision=bf16-mixed reaches the workers' Lightning Trainers (CPU autocast over gloo) and still learns."""
    proc = dlp_in_process(capsys, "train", *JOB, "trainer.max_epochs=3", "trainer.num_workers=2",
                          "trainer.precision=bf16-mixed", "mlflow.log_model=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = runs_with_status(store, "FINISHED")
    assert run.data.params["trainer.precision"] == "bf16-mixed" and run.data.tags["dlp.world_size"] == "2"
    assert run.data.metrics["test/acc"] >= 0.9
    assert _steps(store, run.info.run_id) == [0, 1, 2]


LOCAL_CLUSTER_PROBE = """
import json, time, urllib.error, urllib.request
from pipelines.cluster import local as raycluster
assert raycluster.connect()
import ray
from ray.util.state import list_workers
url = ray._private.worker.global_worker.node.webui_url
time.sleep(3)  # the raylet would prestart its task workers as the driver registers
try:
    urllib.request.urlopen(f"http://{url}/api/version", timeout=10)
    anonymous = 200
except urllib.error.HTTPError as e:
    anonymous = e.code
port = int(url.rsplit(":", 1)[1])
listening = []
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    local, state = line.split()[1:4:2]
    if state == "0A" and int(local.split(":")[1], 16) == port:
        listening.append(".".join(str(int(local[i:i + 2], 16)) for i in (6, 4, 2, 0)))
alive = list_workers(address=f"http://{url}", filters=[("is_alive", "=", True)])  # this cluster, not another test's

@ray.remote(num_cpus=ray.cluster_resources()["CPU"])
class Hold:   # every CPU taken, as by the training workers
    def ready(self):
        return True

def worker_pid():
    import os
    return os.getpid()

hold = Hold.remote()
ray.get(hold.ready.remote())
task = ray.remote(num_cpus=0)(worker_pid)   # as Ray Data's read tasks
first = ray.get(task.remote())
time.sleep(3)   # Ray kills an idle worker over its limit after 1 s
print(json.dumps({"workers": sorted(w.worker_type for w in alive), "anonymous": anonymous, "listening": listening,
                  "task_worker_kept": ray.get(task.remote()) == first}))
ray.shutdown()
"""


@pytest.mark.slow   # 15-55 s here: the default run keeps to its 10 minutes (make test-slow, CI)
def test_the_local_cluster_binds_to_localhost_needs_a_token_and_idles_lean(tmp_path):
    """The cluster `dlp train` starts without RAY_ADDRESS: its dashboard listens on 127.0.0.1 only, refuses a
    request without Ray's token, and holds no prestarted task workers (Train and Tune run actors only) -- yet
    keeps the task worker it started while every CPU is taken, so streamed data's reads do not start a process
    for every epoch and split."""
    import json
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", LOCAL_CLUSTER_PROBE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["listening"] == ["127.0.0.1"], seen
    assert seen["anonymous"] == 401, seen
    assert seen["workers"] == ["DRIVER"], seen
    assert seen["task_worker_kept"], seen
