"""A disk that fills up mid-run: the run ends FAILED with one line, and every checkpoint, model file and artifact
left on the disk loads — none is truncated in place, an earlier good last.ckpt included.

The store (SQLite and its artifacts) and the outputs live on a small tmpfs this test mounts (root only; CI runs as
root), filled to leave a chosen amount of free space, so the disk runs out at different points of a run: the
first checkpoint, a later one, the plots, the model's files.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMOKE

DIGITS = ["train", "experiment=digits_cnn", *SMOKE, "trainer.max_epochs=3", "trainer.limit_train_batches=3"]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs at tmp_path/disk, unmounted by PID-free umount when the test ends."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        if os.environ.get("CI"):
            pytest.fail("the full-disk test needs root and mount(8) under CI")
        pytest.skip("needs root to mount a tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"mount tmpfs: {proc.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _dlp(disk, *args):
    # temporary files stay on the machine's own /tmp, another filesystem, as they usually are: a writer that
    # stages there and moves the file into place copies it across, and can truncate it on the full disk
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": f"sqlite:///{disk / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=disk, env=env, capture_output=True,
                          text=True, timeout=300)


def _fill(disk, leave: int) -> None:
    """A filler file so that about `leave` bytes stay free."""
    (disk / "filler").unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave))


def _every_file_loads(disk) -> list:
    """What was checked; fails on the first file that does not load."""
    import json

    import torch
    import yaml

    checked = []
    for path in sorted(disk.rglob("*")):
        if not path.is_file() or path.name == "filler":
            continue
        assert not path.name.startswith(".") or path.suffix != ".tmp", f"temporary file left behind: {path}"
        if path.suffix == ".ckpt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".pt2":
            torch.export.load(str(path))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml") or path.name == "MLmodel":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.read_bytes()[-8:-4] == b"IEND", path
        else:
            continue
        checked.append(path)
    return checked


def _statuses(disk) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{disk / 'mlflow.db'}")
    return [r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


@pytest.mark.slow
@pytest.mark.parametrize("leave_kib", [600, 3000, 3950, 4100])   # the first checkpoint, a later one, the model
def test_a_disk_that_fills_mid_run_truncates_nothing(small_disk, leave_kib):
    assert _dlp(small_disk, "models").returncode == 0   # the store exists; the disk fills during the run
    _fill(small_disk, leave_kib * 1024)
    proc = _dlp(small_disk, *DIGITS)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err[-3000:]
    if proc.returncode != 0:
        assert proc.returncode == 1 and err.splitlines()[-1].startswith("dlp: error: no space left on device"), err
    assert "RUNNING" not in _statuses(small_disk)
    assert _every_file_loads(small_disk)


@pytest.mark.slow
def test_a_full_disk_never_damages_the_last_good_checkpoint(small_disk):
    proc = _dlp(small_disk, *DIGITS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (last,) = Path(small_disk, "outputs", "checkpoints").glob("*/last.ckpt")
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    _fill(small_disk, 300 * 1024)   # room for the store's writes, not for a checkpoint
    # no best-* checkpoints: the first file the resumed run writes is last.ckpt, over the good one
    proc = _dlp(small_disk, *DIGITS, "trainer.max_epochs=5", "trainer.save_top_k=0", "resume=last")
    assert proc.returncode == 1 and "no space left on device" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before   # the write failed, the old file is whole
    assert "RUNNING" not in _statuses(small_disk)
    (small_disk / "filler").unlink()
    proc = _dlp(small_disk, *DIGITS, "trainer.max_epochs=5", "resume=last")   # space again: it continues
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _every_file_loads(small_disk)
