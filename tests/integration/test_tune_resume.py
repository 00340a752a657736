"""An interrupted `dlp tune` continues where it stopped: Ctrl-C after 2 finished trials, then the same
command again ends with 4 trials, the 2 finished ones not re-run (a real subprocess, its own Ray cluster)."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

COMMAND = [sys.executable, "-m", "pipelines.cli", "tune", "experiment=digits_cnn", "tune=digits_asha",
           "trainer.limit_train_batches=6"]
ENDED = re.compile(r"^(\w+)\s+(done|stopped)\s")


def _children(client, parent_id):
    """The sweep's child runs by trial id; a trial with two child runs (a resumed trial that opened a new run
    instead of continuing its own) fails here rather than collapsing into one entry."""
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    ids = [r.data.tags["dlp.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)), sorted(ids)
    return dict(zip(ids, runs))


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(store, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(COMMAND, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ended, lines = set(), []

    def read():
        for line in proc.stdout:
            lines.append(line)
            match = ENDED.match(line)
            if match:
                ended.add(match.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 400
    while len(ended) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert len(ended) >= 2, "".join(lines[-40:])
    proc.send_signal(signal.SIGINT)                     # Ctrl-C
    assert proc.wait(timeout=180) == 130, "".join(lines[-40:])
    reader.join(timeout=10)

    client = MlflowClient(store)
    (parent,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                 if "dlp.sweep" in r.data.tags]
    assert parent.info.status == "KILLED"
    before = _children(client, parent.info.run_id)
    finished = {tid: run for tid, run in before.items() if any(tid.endswith(e) for e in ended)}
    assert len(finished) >= 2, (list(before), ended)
    history = {tid: [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
               for tid, r in before.items()}

    again = subprocess.run(COMMAND, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = _children(client, parent.info.run_id)
    assert len(after) == 4, list(after)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).data.tags["dlp.sweep.resumed"] == "true"
    for tid, run in finished.items():
        assert after[tid].info.run_id == run.info.run_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps[:len(history[tid])] == history[tid] and len(steps) == len(set(steps)), (tid, steps)
        if run.info.status == "FINISHED":                              # completed before Ctrl-C: untouched
            assert after[tid].info.end_time == run.info.end_time
            assert steps == history[tid]
    for tid, run in before.items():                                    # interrupted mid-trial: continued in its run
        assert after[tid].info.run_id == run.info.run_id
        assert after[tid].info.status == "FINISHED" or tid in finished, (tid, after[tid].info.status)
        if tid not in finished:                # its epochs before Ctrl-C kept, the rest after them, none twice
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
            assert steps[:len(history[tid])] == history[tid] and steps == list(range(len(steps))), (tid, steps)
    for run in after.values():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert len(steps) == len(set(steps)), steps                    # no epoch logged twice
        assert run.info.status in ("FINISHED", "KILLED")
    assert "4 trials" in again.stdout
