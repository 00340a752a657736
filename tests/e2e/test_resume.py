"""`resume=last` after SIGINT, SIGTERM or SIGKILL at a random point of a run: the resumed run continues from the
last finished epoch and ends exactly as an uninterrupted run with the same seed — every epoch's metrics, logged
once each, and the test metrics.

The interrupted `dlp train` is a real subprocess, signalled while it trains (its epoch lines say where it is);
the comparison is against an uninterrupted run of the same command in its own working directory.
"""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

EPOCHS = 6
PER_EPOCH = ("train/loss", "train/acc", "val/loss", "val/acc")


def _write_data(path):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=3000) for i in range(8)})
    frame["colour"] = rng.choice(["red", "green", "blue"], size=len(frame))
    frame["label"] = np.where(frame.x1 + frame.x2 * frame.x3 + (frame.colour == "red") > 0.3, "yes", "no")
    frame.to_csv(path, index=False)


def _args(data):
    # dropout and a scheduler, so that a lost RNG or optimiser state shows in the metrics
    return ["train", "model=mlp", "data=csv", f"data.path={data}", "data.target=label", "data.batch_size=16",
            "model.dropout=0.3", "sched.name=cosine", "trainer.accelerator=cpu", "trainer.threads=1", "trainer.progress_bar=true",
            f"trainer.max_epochs={EPOCHS}"]


def _dlp(args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _history(client, run_id):
    out = {}
    for key in PER_EPOCH:
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), (key, [m.step for m in history])
        out[key] = [m.value for m in sorted(history, key=lambda m: m.step)]
    return out


def _interrupt(proc, sig, after_epoch):
    """Send `sig` to `proc` at a random moment of epoch `after_epoch + 1` (0-based `after_epoch` is finished)."""
    for line in proc.stdout:
        if line.startswith(f"epoch {after_epoch + 1}/"):
            time.sleep(random.uniform(0.0, 0.4))
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _finished_run(client, run_id):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", run.info.status
    return run


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The uninterrupted run: (store URI, per-epoch metrics, test metrics)."""
    tmp = tmp_path_factory.mktemp("baseline")
    _write_data(tmp / "data.csv")
    env_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env_uri)
        proc = _dlp(_args(tmp / "data.csv"), tmp)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    client = MlflowClient(env_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    tests = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    return _history(client, run.info.run_id), tests


@pytest.mark.slow   # two real runs each, against a shared uninterrupted one: make test-slow, CI
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_resume_last_after_a_signal_ends_as_the_uninterrupted_run(baseline, store, tmp_path, sig):
    history, tests = baseline
    _write_data(tmp_path / "data.csv")
    after = random.randint(0, EPOCHS - 3)
    code, err = _interrupt(_dlp(_args(tmp_path / "data.csv"), tmp_path), sig, after)
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL and run.info.status == "RUNNING"
    else:   # Ctrl-C and SIGTERM alike: the run ends KILLED, one line, no traceback
        assert code in (130, 143) and run.info.status == "KILLED", (code, run.info.status, err[-2000:])
        assert "Traceback" not in err and "the MLflow run is marked KILLED" in err, err[-2000:]
    logged = len(client.get_metric_history(run.info.run_id, "train/loss"))
    assert after + 1 <= logged <= EPOCHS, logged   # EPOCHS: it landed in the test pass or model logging

    proc = _dlp([*_args(tmp_path / "data.csv"), "resume=last"], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    resumed = _finished_run(client, run.info.run_id)   # the same run, continued
    got = _history(client, run.info.run_id)            # every epoch exactly once
    for key in PER_EPOCH:
        assert np.allclose(got[key], history[key], rtol=0, atol=1e-6), (key, got[key], history[key])
    got_tests = {k: v for k, v in resumed.data.metrics.items() if k.startswith("test/")}
    assert got_tests.keys() == tests.keys()
    assert all(abs(got_tests[k] - tests[k]) < 1e-6 for k in tests), (got_tests, tests)


def test_last_ckpt_is_the_last_epoch_not_the_best(tmp_path):
    """last.ckpt is rewritten after every epoch, also when the monitored metric got worse."""
    import torch

    from pipelines.config.compose import compose
    from pipelines.training.fit import fit

    _write_data(tmp_path / "data.csv")
    # a learning rate this high makes val/loss worse in later epochs
    cfg = compose([*_args(tmp_path / "data.csv")[1:], "trainer.max_epochs=4", "optim.lr=0.5",
                   "trainer.progress_bar=false", f"output_dir={tmp_path}"])
    fit(cfg, run_id=None)
    (last,) = (tmp_path / "checkpoints").glob("*/last.ckpt")
    assert torch.load(last, weights_only=True)["epoch"] == 3


KILL_AFTER_CHECKPOINT = """
import os, sys
from pipelines.training import checkpoints
saved = checkpoints.LastCheckpoint.on_train_epoch_end
def on_train_epoch_end(self, trainer, pl_module):
    saved(self, trainer, pl_module)
    if trainer.current_epoch == {epoch}:
        os._exit(9)   # killed the moment epoch {epoch}'s last.ckpt is in place
checkpoints.LastCheckpoint.on_train_epoch_end = on_train_epoch_end
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_a_kill_just_after_the_checkpoint_loses_no_epoch(baseline, store, tmp_path):
    """MLflow never lags the checkpoint: an epoch is logged before its last.ckpt is written, so a process killed
    right after the write still has that epoch's metrics, and the resumed run logs each epoch once."""
    history, tests = baseline
    _write_data(tmp_path / "data.csv")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT.format(epoch=2), *_args(tmp_path / "data.csv")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-3000:]
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1, 2]

    proc = _dlp([*_args(tmp_path / "data.csv"), "resume=last"], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    got = _history(client, _finished_run(client, run.info.run_id).info.run_id)
    assert all(np.allclose(got[k], history[k], rtol=0, atol=1e-6) for k in PER_EPOCH), (got, history)
