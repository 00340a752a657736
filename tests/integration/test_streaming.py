"""`dlp train` on a streamed table (data.streaming): in process and with two Ray Train workers reading Ray Data
shards, compared with the in-memory path on the same rows; the run records its datasets; the logged model
predicts raw rows; a bad shard is one line and no run, or left out and counted."""
import re

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import assert_one_line_error, dlp_in_new_store, dlp_in_process, run_dlp, runs_with_status
from tests.datafiles import synthetic_table, write_shards

JOB = ["model=mlp", "data=csv", "data.source=parquet", "data.target=label", "data.batch_size=128",
       "trainer.max_epochs=4", "trainer.threads=1", "trainer.progress_bar=false", "trainer.early_stopping.patience=0",
       "model.dropout=0.0", "seed=3"]
ROWS = 6000


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """(folder of 4 Parquet shards, one Parquet file) of the same rows."""
    root = tmp_path_factory.mktemp("table")
    df = synthetic_table(ROWS, seed=5)
    one = root / "one.parquet"
    df.to_parquet(one)
    return write_shards(root / "shards", df, shards=4, row_group_size=500), str(one)


def _run_id(out: str) -> str:
    return re.search(r"run id:\s+(\w+)", out).group(1)


@pytest.fixture(scope="module")
def in_memory(table, tmp_path_factory):
    uri, code, out = dlp_in_new_store(tmp_path_factory.mktemp("mem"), "train", *JOB, f"data.path={table[1]}",
                                      "data.streaming=false")
    assert code == 0, out
    return MlflowClient(uri).get_run(_run_id(out))


def test_a_streamed_run_trains_like_the_in_memory_one_and_records_its_datasets(table, in_memory, store, capsys,
                                                                               tmp_path):
    proc = dlp_in_process(capsys, "train", *JOB, f"data.path={table[0]}")   # a folder: auto streams it
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(store)
    run = client.get_run(_run_id(proc.stdout))
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["dlp.data.source"].startswith("parquet:") and tags["dlp.data.source"].endswith("/shards")
    assert sum(int(tags[f"dlp.data.n_{s}"]) for s in ("train", "val", "test")) == ROWS
    # splits differ (a hash of file and row, not a stratified draw), so the comparison is within noise
    assert metrics["test/acc"] > 0.9
    assert abs(metrics["test/acc"] - in_memory.data.metrics["test/acc"]) <= 0.03, \
        (metrics["test/acc"], in_memory.data.metrics["test/acc"])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss")) == [0, 1, 2, 3]
    assert metrics["perf/samples_per_second"] > 0
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["mlp-parquet-test", "mlp-parquet-train", "mlp-parquet-val"]
    assert {t.key: t.value for t in inputs["mlp-parquet-train"].tags}["rows"] == tags["dlp.data.n_train"]
    assert len({i.dataset.digest for i in inputs.values()}) == 3

    # the logged model takes raw rows, as an in-memory run's does
    rows = synthetic_table(20, seed=9).drop(columns=["label"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    out = dlp_in_process(capsys, "predict", f"runs:/{run.info.run_id}/model", str(tmp_path / "rows.csv"),
                         "-o", str(tmp_path / "preds.csv"))
    assert out.returncode == 0, out.stderr
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 20 and set(preds["prediction"].astype(str)) <= {"0", "1", "2"}


def test_a_bad_shard_is_one_line_and_no_run_or_is_left_out_and_counted(table, store, tmp_path, capsys):
    import shutil

    folder = tmp_path / "shards"
    shutil.copytree(table[0], folder)
    (folder / "part-00002.parquet").write_bytes(b"PAR1 garbage")
    proc = run_dlp("train", *JOB, f"data.path={folder}", "trainer.max_epochs=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_line_error(proc, "part-00002.parquet", "data.on_error=skip")
    assert not runs_with_status(store, "RUNNING") and not runs_with_status(store, "FINISHED")

    proc = dlp_in_process(capsys, "train", *JOB, f"data.path={folder}", "trainer.max_epochs=1",
                          "data.on_error=skip", "mlflow.log_model=false")
    assert proc.returncode == 0, proc.stderr
    run = MlflowClient(store).get_run(_run_id(proc.stdout))
    assert run.data.tags["dlp.data.skipped_files"] == "1"
    assert sum(int(run.data.tags[f"dlp.data.n_{s}"]) for s in ("train", "val", "test")) == ROWS * 3 // 4


@pytest.mark.slow
@pytest.mark.distributed
def test_two_workers_read_even_ray_data_shards_and_train_like_one_process(table, in_memory, ray_cluster,
                                                                         tmp_path_factory):
    uri, code, out = dlp_in_new_store(tmp_path_factory.mktemp("two"), "train", *JOB, f"data.path={table[0]}",
                                      "trainer.num_workers=2", settle=0.5)
    assert code == 0, out
    client = MlflowClient(uri)
    (run,) = runs_with_status(uri, "FINISHED")
    assert run.data.tags["dlp.world_size"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss")) == [0, 1, 2, 3]
    assert run.data.metrics["test/acc"] > 0.9
    assert abs(run.data.metrics["test/acc"] - in_memory.data.metrics["test/acc"]) <= 0.03
    assert "Running Dataset" not in out and "execution finished" not in out   # Ray Data stays quiet


def test_a_table_dataset_names_its_files_as_mlflow_source(table, in_memory):
    import json

    for i in in_memory.inputs.dataset_inputs:
        assert i.dataset.source_type == "local" and json.loads(i.dataset.source) == {"uri": table[1]}, i.dataset


@pytest.mark.slow   # ~20 s: make test-slow and CI
def test_a_streamed_text_table_trains_an_rnn_whose_model_reads_raw_texts(store, capsys, tmp_path):
    from tests.unit.test_stream_text import reviews

    folder = write_shards(tmp_path / "texts", reviews(1500), shards=3, row_group_size=250)
    proc = dlp_in_process(capsys, "train", "model=rnn_classifier", "data=text_csv", "data.source=parquet",
                          f"data.path={folder}", "data.text=review", "data.target=sentiment", "data.max_length=16",
                          "trainer.max_epochs=3", "trainer.threads=1", "trainer.progress_bar=false", "seed=1")
    assert proc.returncode == 0, proc.stderr
    run = MlflowClient(store).get_run(_run_id(proc.stdout))
    assert run.data.tags["dlp.data.source"] == f"parquet:{folder}" and run.data.metrics["test/acc"] > 0.9
    pd.DataFrame({"review": ["a lovely superb film", "awful and dull"]}).to_csv(tmp_path / "t.csv", index=False)
    out = dlp_in_process(capsys, "predict", f"runs:/{run.info.run_id}/model", str(tmp_path / "t.csv"),
                         "-o", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr
    assert pd.read_csv(tmp_path / "p.csv")["prediction"].tolist() == ["pos", "neg"]
