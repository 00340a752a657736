"""Streamed tables (data.streaming): split membership by hash, one-pass statistics equal to the in-memory ones,
the bounded shuffling loader (every row once per epoch, an order set by seed and epoch alone), when auto streams,
and bad files — one line naming the file, or left out and counted under data.on_error=skip."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import datamodules
from datamodules import DataError, preprocess, streamed
from datamodules.stream_loader import StreamLoader, shuffled
from pipelines.config.data_schema import TabularDataConfig
from tests.datafiles import synthetic_table, write_shards


def cfg(path, **kw):
    base = dict(source="parquet", path=str(path), target="label", streaming=True, batch_size=32)
    return OmegaConf.structured(TabularDataConfig(**{**base, **kw}))


def streamed_dm(path, seed=0, **kw):
    dm = datamodules.build(cfg(path, **kw), seed)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def table():
    return synthetic_table(3000, seed=1)


@pytest.fixture
def shards(tmp_path, table):
    return write_shards(tmp_path / "shards", table, shards=3, row_group_size=400)


def train_rows(table: pd.DataFrame, shards: int, seed: int, fractions=(0.15, 0.15)) -> pd.DataFrame:
    """The rows the hash puts in train, computed here from the whole frame (as write_shards cut it)."""
    parts = np.array_split(np.arange(len(table)), shards)
    keep = [table.iloc[idx][streamed.split_codes(f"part-{i:05d}.parquet", 0, len(idx), seed, *fractions) == 0]
            for i, idx in enumerate(parts)]
    return pd.concat(keep)


# ---- split membership ----------------------------------------------------------------------

def test_split_codes_are_a_seeded_function_of_file_and_row_whatever_the_batching():
    whole = streamed.split_codes("a.parquet", 0, 10_000, 7, 0.15, 0.15)
    pieces = np.concatenate([streamed.split_codes("a.parquet", s, 1000, 7, 0.15, 0.15) for s in range(0, 10_000, 1000)])
    assert np.array_equal(whole, pieces)
    assert np.array_equal(whole, streamed.split_codes("a.parquet", 0, 10_000, 7, 0.15, 0.15))
    assert not np.array_equal(whole, streamed.split_codes("a.parquet", 0, 10_000, 8, 0.15, 0.15))
    assert not np.array_equal(whole, streamed.split_codes("b.parquet", 0, 10_000, 7, 0.15, 0.15))
    shares = np.bincount(whole, minlength=3) / len(whole)
    assert np.allclose(shares, [0.70, 0.15, 0.15], atol=0.015), shares


def test_splits_are_disjoint_and_cover_every_row(shards, table):
    dm = streamed_dm(shards)
    assert sum(dm.counts.values()) == len(table)
    seen = {}
    for split in ("train", "val", "test"):
        frame, _ = dm.raw_frame(split)
        seen[split] = set(map(tuple, frame.round(6).to_numpy().tolist()))
        assert len(seen[split]) == dm.counts[split]
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


# ---- one-pass statistics -------------------------------------------------------------------

def test_one_pass_statistics_equal_the_in_memory_fit_on_the_same_train_rows(shards, table):
    dm = streamed_dm(shards, seed=3)
    features = [c for c in table.columns if c != "label"]
    expected = preprocess.fit_tabular(train_rows(table, 3, seed=3), features, ["colour"], "error")
    assert dm.prep["columns"] == features
    assert dm.prep["categorical"] == expected["categorical"]
    for c, (mean, std) in expected["numeric"].items():
        assert dm.prep["numeric"][c] == pytest.approx([mean, std], rel=1e-9, abs=1e-12), c
    assert dm.spec.task == "classification" and dm.spec.class_names == ["0", "1", "2"]
    assert dm.counts["train"] == len(train_rows(table, 3, seed=3))


def test_fingerprint_comes_from_the_listing_and_changes_when_a_file_does(shards, tmp_path, table):
    first = streamed_dm(shards).fingerprint()
    assert first == streamed_dm(shards).fingerprint()
    assert first["source"].startswith("parquet:") and first["n_train"] > 0
    write_shards(tmp_path / "shards", table.assign(f0=table.f0 + 1), shards=3, row_group_size=400)
    assert streamed_dm(shards).fingerprint()["hash"] != first["hash"]


# ---- the loader ----------------------------------------------------------------------------

def _epoch(loader) -> tuple:
    x, y = zip(*loader)
    return torch.cat(x), torch.cat(y)


def _rows(x: torch.Tensor) -> list:
    return sorted(map(tuple, x.numpy().round(5).tolist()))


def test_each_epoch_serves_every_train_row_once_in_a_new_order_set_by_seed_and_epoch(shards):
    dm = streamed_dm(shards, shuffle_buffer=200)
    loader = dm.train_dataloader()
    (x0, y0), (x1, _) = _epoch(loader), _epoch(loader)
    n = dm.counts["train"]
    assert len(x0) == len(x1) >= n - 1   # a last batch of one row is dropped (BatchNorm)
    reference = _rows(torch.cat([torch.from_numpy(x) for b in dm.reader.source.blocks
                                 for x, _ in dm.reader.read(b, "train")]))
    assert len(reference) == n
    assert set(_rows(x0)) <= set(reference) and len(set(_rows(x0))) == len(x0)
    assert not torch.equal(x0, x1), "two epochs served the same order"
    # a resumed run: a fresh loader told to start at epoch 1 serves what the uninterrupted one served at epoch 1
    dm.first_epoch = 1
    assert torch.equal(_epoch(dm.train_dataloader())[0], x1)
    dm.first_epoch = 0
    assert torch.equal(_epoch(dm.train_dataloader())[0], x0)


def test_evaluation_loaders_read_in_order_and_serve_every_row(shards):
    dm = streamed_dm(shards)
    x, y = _epoch(dm.val_dataloader())
    assert len(x) == dm.counts["val"] and len(dm.val_dataloader()) == -(-dm.counts["val"] // 32)
    assert torch.equal(x, _epoch(dm.val_dataloader())[0])


def test_ray_read_tasks_take_runs_of_consecutive_blocks_of_about_a_unit_each():
    """A distributed run's read tasks: runs of the given block order (every block once, order kept) of about
    UNIT_BYTES of model inputs, at least 2 x READERS of them; unknown row counts (CSV) one block per task."""
    from pipelines.training import ray_data

    def runs(n, rows, row_bytes):
        blocks = [streamed.Block("f", "f", g, 0, rows) for g in range(n)]
        order = list(np.random.default_rng(0).permutation(n))
        out = ray_data.units(blocks, order, row_bytes)
        assert [i for run in out for i in run] == order
        return [len(run) for run in out]

    unit = ray_data.UNIT_BYTES
    assert runs(32, 10_000, unit / 40_000) == [4] * 8             # 4 blocks a unit
    assert runs(32, 100, unit / 40_000) == [8] * 4                # 400 blocks a unit, yet 2 x READERS tasks
    assert runs(5, 1_000_000, 1000) == [1] * 5                    # a block over a unit: one a task
    assert runs(3, -1, 100) == [1] * 3                            # CSV files: row counts unknown
    assert runs(0, 10, 100) == []


def test_the_shuffle_pool_holds_at_most_its_buffer_and_one_read_batch():
    """200 read batches of 100 rows, a 300-row buffer: every row comes out once, and at no point have more rows
    been read than served + buffer + batch + one read batch (memory is bounded by the buffer, not the table)."""
    consumed = [0]

    def chunks():
        for i in range(0, 20_000, 100):
            consumed[0] += 100
            yield np.arange(i, i + 100)[:, None], np.arange(i, i + 100)
    served, held = 0, []
    ids = []
    for _, y in shuffled(chunks(), buffer_rows=300, batch_size=50, rng=np.random.default_rng(0)):
        served += len(y)
        held.append(consumed[0] - served)
        ids.append(y)
    assert sorted(np.concatenate(ids).tolist()) == list(range(20_000))
    assert max(held) <= 300 + 100, max(held)
    first = ids[0]
    assert first.max() < 500, "the first batch should come from the first few read batches"


# ---- when auto streams ---------------------------------------------------------------------

def test_auto_streams_a_folder_or_an_s3_prefix_and_keeps_a_small_file_in_memory(shards, tmp_path, table):
    one = tmp_path / "one.parquet"
    table.to_parquet(one)
    assert datamodules.streams(cfg(shards, streaming="auto"))
    assert datamodules.streams(cfg("s3://bucket/prefix", streaming="auto"))
    assert not datamodules.streams(cfg(one, streaming="auto"))
    assert datamodules.streams(cfg(one, streaming="auto", stream_above=1e-12))   # over the share of memory
    assert not datamodules.streams(cfg(shards, streaming=False))
    assert type(datamodules.build(cfg(one, streaming="auto"), 0)).__name__ == "TabularDataModule"
    with pytest.raises(DataError, match="data.streaming: true needs data.source=csv or parquet"):
        datamodules.streams(OmegaConf.structured(TabularDataConfig(source="iris", streaming=True)))


def test_csv_shards_stream_like_parquet_ones(tmp_path, table):
    path = write_shards(tmp_path / "csv", table, shards=3, fmt="csv")
    dm = streamed_dm(path, source="csv")
    assert sum(dm.counts.values()) == len(table)
    assert dm.prep["categorical"]["colour"] == ["blue", "green", "red"]


# ---- bad files -----------------------------------------------------------------------------

def test_a_shard_with_another_schema_is_one_line_naming_it_or_skipped_and_counted(shards, tmp_path, table):
    table.drop(columns=["f3"]).head(50).to_parquet(tmp_path / "shards" / "part-00009.parquet")
    with pytest.raises(DataError, match=r"shard 'part-00009.parquet' has another schema .*lacks f3.*on_error=skip"):
        streamed_dm(shards)
    with pytest.warns(UserWarning, match=r"left out 1 unreadable file\(s\).*part-00009.parquet"):
        dm = streamed_dm(shards, on_error="skip")
    assert dm.fingerprint()["skipped_files"] == 1 and sum(dm.counts.values()) == len(table)


def test_a_corrupt_file_is_one_line_naming_it_or_skipped_and_counted(shards, tmp_path, table):
    (tmp_path / "shards" / "part-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"cannot read 'part-00001.parquet' as Parquet.*on_error=skip") as e:
        streamed_dm(shards)
    assert "\n" not in str(e.value)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        dm = streamed_dm(shards, on_error="skip")
    assert dm.fingerprint()["skipped_files"] == 1
    assert sum(dm.counts.values()) == len(table) - len(np.array_split(np.arange(len(table)), 3)[1])


def test_a_csv_that_breaks_after_its_first_block_is_left_out_under_skip(tmp_path, table):
    path = write_shards(tmp_path / "csv", table, shards=2, fmt="csv")
    bad = tmp_path / "csv" / "part-00001.csv"
    bad.write_text(bad.read_text() + "1,2,3\n")   # a row with too few fields, at the end
    with pytest.raises(DataError, match=r"cannot read 'part-00001.csv'"):
        streamed_dm(path, source="csv")
    with pytest.warns(UserWarning, match="part-00001.csv"):
        dm = streamed_dm(path, source="csv", on_error="skip")
    assert sum(dm.counts.values()) == len(table) // 2


def test_hidden_files_and_markers_are_not_data(shards, tmp_path, table):
    (tmp_path / "shards" / "_SUCCESS").write_text("")
    (tmp_path / "shards" / ".part-00000.parquet.crc").write_bytes(b"junk")
    assert sum(streamed_dm(shards).counts.values()) == len(table)


def test_missing_or_empty_sources_and_missing_values_are_one_line(tmp_path, table):
    with pytest.raises(DataError, match="does not exist"):
        streamed_dm(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .parquet"):
        streamed_dm(tmp_path / "empty")
    holes = table.copy()
    holes.loc[5, "f2"] = np.nan
    path = write_shards(tmp_path / "holes", holes, shards=2)
    with pytest.raises(DataError, match="column 'f2' has missing values.*data.missing=drop"):
        streamed_dm(path)
    assert sum(streamed_dm(path, missing="drop").counts.values()) == len(table) - 1
    with pytest.raises(DataError, match="oversample needs the table in memory"):
        streamed_dm(path, balance="oversample")
    with pytest.raises(DataError, match="data.target: column 'nope' not in"):
        streamed_dm(path, target="nope")
