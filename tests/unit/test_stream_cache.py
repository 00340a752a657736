"""data.cache: the in-process streamed loader keeps epoch 1's model inputs on local disk; later epochs serve the
batches the source would have (same chunks, so the same shuffle), a warm cache reads no source, a block read in
part or a disk without room leaves nothing half-written, and the folder goes with its run."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf

import datamodules
from datamodules import stream_cache, streamed
from pipelines.config.data_schema import TabularDataConfig
from tests.datafiles import synthetic_table, write_shards


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.setattr(streamed, "READ_ROWS", 150)   # several read batches (chunks) in each 400-row block
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return write_shards(tmp_path / "shards", synthetic_table(3000, seed=1), shards=3, row_group_size=400)


def dm(path, cache: bool):
    cfg = OmegaConf.structured(TabularDataConfig(source="parquet", path=str(path), target="label", streaming=True,
                                                 batch_size=64, shuffle_buffer=500, cache=cache))
    module = datamodules.build(cfg, 0)
    module.setup()
    return module


def epoch(loader, limit=None):
    out = []
    for x, y in loader:
        out.append((x.numpy().copy(), y.numpy().copy()))
        if limit is not None and len(out) == limit:
            break
    return out


def same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_cached_epochs_serve_the_batches_the_source_would(shards):
    cached, plain = dm(shards, True), dm(shards, False)
    train_c, train_p = cached.train_dataloader(), plain.train_dataloader()
    val_c, val_p = cached.val_dataloader(), plain.val_dataloader()
    for _ in range(3):
        same(epoch(train_c), epoch(train_p))
        same(epoch(val_c), epoch(val_p))
    assert plain.cache is None
    assert len(list(cached.cache.dir.glob("*.json"))) == 2 * len(cached.reader.source.blocks)
    assert not list(cached.cache.dir.glob("*.partial"))


def test_a_warm_cache_reads_no_source(shards):
    cached, plain = dm(shards, True), dm(shards, False)
    train_c, train_p = cached.train_dataloader(), plain.train_dataloader()
    epoch(train_c), epoch(train_p)
    expected = epoch(train_p)
    for f in sorted(__import__("pathlib").Path(shards).glob("*.parquet")):
        f.unlink()
    same(epoch(train_c), expected)
    with pytest.raises(Exception):
        epoch(plain.train_dataloader())


def test_a_block_read_in_part_is_not_kept_and_the_next_epochs_are_unchanged(shards):
    cached, plain = dm(shards, True), dm(shards, False)
    train_c, train_p = cached.train_dataloader(), plain.train_dataloader()
    epoch(train_c, limit=3), epoch(train_p, limit=3)
    assert not list(cached.cache.dir.glob("*.partial"))
    for _ in range(2):
        same(epoch(train_c), epoch(train_p))


def test_a_block_read_in_part_leaves_nothing_and_a_whole_one_keeps_its_chunks(shards):
    cache = stream_cache.BlockCache()
    chunks = [(np.full((n, 2), n, np.float32), np.arange(n)) for n in (5, 3, 7)]
    reading = cache.read("0-train", iter(chunks))
    next(reading)
    reading.close()                                    # the consumer stopped inside the block
    assert not list(cache.dir.iterdir())
    got = list(cache.read("0-train", iter(chunks)))    # read through, then from the cache
    assert [len(x) for x, _ in got] == [5, 3, 7]
    got = list(cache.read("0-train", iter(())))        # the source is not touched
    assert [len(x) for x, _ in got] == [5, 3, 7]
    same(got, chunks)
    cache.close()


def test_a_disk_without_room_caches_nothing_and_says_so_once(shards, monkeypatch):
    monkeypatch.setattr(stream_cache, "RESERVE_SHARE", 1.0)   # keep the whole disk free: never room
    cached, plain = dm(shards, True), dm(shards, False)
    train_c, train_p = cached.train_dataloader(), plain.train_dataloader()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            same(epoch(train_c), epoch(train_p))
    said = [w for w in seen if "data.cache" in str(w.message)]
    assert len(said) == 1 and "free" in str(said[0].message)
    assert not list(cached.cache.dir.iterdir())


def test_the_folder_goes_with_its_run_and_a_killed_runs_folder_is_swept(shards, tmp_path):
    cached = dm(shards, True)
    epoch(cached.train_dataloader())
    folder = cached.cache.dir
    cached.teardown("fit")
    assert not folder.exists() and cached.cache is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    parent = tmp_path / "tmp" / stream_cache.PARENT
    (parent / f"{dead.stdout.strip()}-left").mkdir()
    live = stream_cache.BlockCache()
    assert not (parent / f"{dead.stdout.strip()}-left").exists() and live.dir.exists()
    live.close()
    assert not live.dir.exists()
