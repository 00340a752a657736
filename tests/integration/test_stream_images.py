"""`dlp train model=cnn` on a streamed image folder (data.streaming with data.source=image_folder): in process on a
small learnable tree, and with two Ray Train workers reading Ray Data shards of a 50,000-image tree."""
import re
import time
from multiprocessing import Pool

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import dlp_in_new_store, dlp_in_process, runs_with_status

CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def _write_images(job: tuple) -> int:
    """Images start..start+n-1 of class k: a bright square in corner k of a noisy dark background."""
    from PIL import Image

    folder, k, start, n, size, seed = job
    rng = np.random.default_rng([seed, k, start])
    half = size // 2
    r, c = CORNERS[k]
    for i in range(start, start + n):
        img = rng.integers(0, 90, (size, size), dtype=np.uint8)
        img[r * half:(r + 1) * half, c * half:(c + 1) * half] += np.uint8(150)
        Image.fromarray(img, "L").save(f"{folder}/{i:06d}.png", compress_level=1)
    return n


def write_learnable(root, per_class: int, size: int, classes: int = 3, seed: int = 0, processes: int = 1) -> str:
    """root/class<k>/<i>.png: `classes` classes of `per_class` grayscale size x size images (class k: a bright
    square in corner k), written by `processes` processes."""
    jobs = []
    for k in range(classes):
        folder = root / f"class{k}"
        folder.mkdir(parents=True)
        for part in np.array_split(np.arange(per_class), max(1, processes)):
            jobs.append((str(folder), k, int(part[0]), len(part), size, seed))
    if processes > 1:
        with Pool(processes) as pool:
            written = sum(pool.map(_write_images, jobs))
    else:
        written = sum(map(_write_images, jobs))
    assert written == per_class * classes
    return str(root)


def _run_id(out: str) -> str:
    return re.search(r"run id:\s+(\w+)", out).group(1)


JOB = ["model=cnn", "data=image_folder", "data.streaming=true", "trainer.threads=1", "trainer.progress_bar=false",
       "trainer.early_stopping.patience=0", "seed=1"]


@pytest.mark.slow   # ~15-40 s: make test-slow and CI
def test_a_streamed_image_folder_trains_a_cnn_in_process(tmp_path, store, capsys):
    root = write_learnable(tmp_path / "tree", per_class=80, size=16)
    proc = dlp_in_process(capsys, "train", *JOB, f"data.path={root}", "data.batch_size=32", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(store)
    run = client.get_run(_run_id(proc.stdout))
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["dlp.data.source"] == f"image_folder:{root}"
    assert sum(int(tags[f"dlp.data.n_{s}"]) for s in ("train", "val", "test")) == 240
    assert metrics["test/acc"] > 0.8, metrics
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss")) == [0, 1, 2]
    inputs = {i.dataset.name for i in run.inputs.dataset_inputs}
    assert len(inputs) == 3


@pytest.mark.slow
@pytest.mark.scale
@pytest.mark.distributed
def test_two_workers_train_on_a_50000_image_tree_streamed_through_ray_data(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("big")
    start = time.monotonic()
    root = write_learnable(tmp / "tree", per_class=12500, size=8, classes=4, processes=2)
    written = time.monotonic() - start
    start = time.monotonic()
    uri, code, out = dlp_in_new_store(tmp, "train", *JOB, f"data.path={root}", "data.batch_size=256",
                                      "trainer.max_epochs=1", "trainer.num_workers=2", "mlflow.log_model=false",
                                      settle=0.5)
    trained = time.monotonic() - start
    print(f"\n50,000 images written in {written:.1f} s; streamed 2-worker training in {trained:.1f} s")
    assert code == 0, out
    (run,) = runs_with_status(uri, "FINISHED")
    tags = run.data.tags
    assert tags["dlp.world_size"] == "2"
    assert sum(int(tags[f"dlp.data.n_{s}"]) for s in ("train", "val", "test")) == 50_000
    assert run.data.metrics["test/acc"] > 0.5, run.data.metrics   # chance: 0.25
