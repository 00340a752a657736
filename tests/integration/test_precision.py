"""The GPU path's settings, on this CPU: data.on_device, every trainer.precision, resume across precisions and
trainer.compile (its logged model predicts; without a working backend, one warning and eager mode)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import dlp_in_process, run_dlp

DIGITS = ("experiment=digits_cnn", "trainer.progress_bar=false")


def _run(client: MlflowClient, out: str):
    run_id = next(line.split()[2] for line in out.splitlines() if line.strip().startswith("run id:"))
    return client.get_run(run_id)


def _epochs(client: MlflowClient, run_id: str) -> dict:
    """{metric: [value per epoch]} of the run's train/ and val/ metrics."""
    run = client.get_run(run_id)
    keys = [k for k in run.data.metrics if k.startswith(("train/", "val/"))]
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in keys}


def test_data_on_device_gives_the_host_paths_metrics(store, capsys):
    """data.on_device=true (the tensors where the trainer's device is, batch indexing there) trains the same
    epochs as data.on_device=false: same batches, same order, same augmentation draws."""
    client = MlflowClient(store)
    runs = {}
    for flag in ("true", "false"):
        proc = dlp_in_process(capsys, "train", *DIGITS, "trainer.max_epochs=3", f"data.on_device={flag}")
        assert proc.returncode == 0, proc.stderr
        run = _run(client, proc.stdout)
        assert run.data.params["data.on_device"].lower() == flag
        runs[flag] = (_epochs(client, run.info.run_id), {k: v for k, v in run.data.metrics.items()
                                                          if k.startswith("test/")})
    (on, on_test), (off, off_test) = runs["true"], runs["false"]
    assert on.keys() == off.keys() and len(on["val/acc"]) == 3
    for key in on:
        np.testing.assert_allclose(on[key], off[key], atol=1e-6, err_msg=key)
    assert on_test == pytest.approx(off_test, abs=1e-6)


def test_on_device_is_refused_when_unknown(store, capsys):
    proc = dlp_in_process(capsys, "train", *DIGITS, "data.on_device=maybe")
    assert proc.returncode == 2 and "data.on_device" in proc.stderr and "auto, true, false" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", pytest.param("bf16-mixed", marks=pytest.mark.late),   # ~4 min each
                                       pytest.param("bf16-true", marks=pytest.mark.late)])              # in CI: late
def test_each_precision_trains_digits(store, capsys, precision):
    """Each precision this CPU runs reaches >= 0.97 test accuracy on the digits CNN (fp16 needs a GPU: on a CPU
    Lightning trains 16-mixed as bf16-mixed, see the next test)."""
    proc = dlp_in_process(capsys, "train", *DIGITS, f"trainer.precision={precision}")
    assert proc.returncode == 0, proc.stderr
    run = _run(MlflowClient(store), proc.stdout)
    assert run.data.params["trainer.precision"] == precision
    assert run.data.metrics["test/acc"] >= 0.97, run.data.metrics


@pytest.mark.slow   # 15 s
def test_sixteen_mixed_on_cpu_trains_as_bf16(store, capsys):
    proc = dlp_in_process(capsys, "train", *DIGITS, "trainer.precision=16-mixed", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr
    assert "bf16-mixed" in proc.stderr     # Lightning says fp16 AMP is GPU-only and what it uses instead


@pytest.mark.slow   # 15-55 s here: the default run keeps to its 10 minutes (make test-slow, CI)
@pytest.mark.parametrize("first,then", [("32-true", "bf16-mixed"),
                                        pytest.param("bf16-true", "32-true", marks=pytest.mark.slow)])
def test_checkpoint_resumes_under_another_precision(store, capsys, first, then):
    """A checkpoint written under one precision resumes under another: the epochs continue, nothing repeats."""
    client = MlflowClient(store)
    proc = dlp_in_process(capsys, "train", *DIGITS, f"trainer.precision={first}", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr
    run_id = _run(client, proc.stdout).info.run_id
    last = store.replace("sqlite:///", "").rsplit("/", 1)[0] + f"/outputs/checkpoints/{run_id}/last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {
        torch.bfloat16 if first == "bf16-true" else torch.float32}
    proc = dlp_in_process(capsys, "train", *DIGITS, f"trainer.precision={then}", "trainer.max_epochs=4",
                          f"resume={last}")
    assert proc.returncode == 0, proc.stderr
    epochs = _epochs(client, run_id)
    assert len(epochs["val/acc"]) == 4 and all(np.isfinite(epochs["train/loss"]))
    steps = [m.step for m in client.get_metric_history(run_id, "val/acc")]
    assert sorted(steps) == [0, 1, 2, 3]
    assert epochs["val/acc"][3] > epochs["val/acc"][0]   # it went on learning from the checkpoint's weights


def _predict_csv(tmp_path, model_uri: str) -> subprocess.CompletedProcess:
    from sklearn.datasets import load_digits

    pixels = load_digits().data[:20]
    pd.DataFrame(pixels, columns=[f"p{i}" for i in range(64)]).to_csv(tmp_path / "in.csv", index=False)
    return run_dlp("predict", model_uri, str(tmp_path / "in.csv"), "-o", str(tmp_path / "preds.csv"), cwd=tmp_path)


@pytest.mark.slow
def test_compiled_run_logs_a_model_that_predicts(store, tmp_path, capsys):
    """trainer.compile=true (torch.compile, inductor's C++ backend on this CPU): the run trains, its checkpoint
    keeps eager parameter names, and its logged model predicts."""
    proc = run_dlp("train", *DIGITS, "trainer.compile=true", "trainer.max_epochs=2", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "torch.compile does not work" not in proc.stderr
    run = _run(MlflowClient(store), proc.stdout)
    ckpt = next((tmp_path / "outputs" / "checkpoints" / run.info.run_id).glob("best-*.ckpt"))
    keys = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert keys and not any("_orig_mod" in k for k in keys)
    pred = _predict_csv(tmp_path, f"runs:/{run.info.run_id}/model")
    assert pred.returncode == 0, pred.stderr
    assert len(pd.read_csv(tmp_path / "preds.csv")) == 20


@pytest.mark.slow   # 16 s
def test_compile_without_a_backend_warns_once_and_trains_eagerly(store, tmp_path):
    """No C++ compiler (CXX names none): one warning line, eager training, a finished run."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CXX": "/nonexistent/c++"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", *DIGITS, "trainer.compile=true",
                           "trainer.max_epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "trainer.compile" in line]
    assert len(warned) == 1 and "eager mode" in warned[0] and "Traceback" not in proc.stderr, proc.stderr
    assert _run(MlflowClient(store), proc.stdout).info.status == "FINISHED"
