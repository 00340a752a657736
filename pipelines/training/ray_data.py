"""Streamed tables in a distributed run (data.streaming): Ray Data datasets over the table's blocks, split evenly
across the Ray Train workers by Ray Train's DataConfig (`streaming_split(equal=True)`: every rank gets the same
number of rows, so DDP never waits on a rank that ran out), read in Ray Data tasks by the datamodule's own
BlockReader — the code the in-process loader reads with, so rows, splits and preprocessing are the same.

On the driver: `datasets(dm)` and `data_config()` go into the TorchTrainer, `state(dm)` into the workers' config.
In a worker: `adopt(dm, state)` gives the worker's datamodule the driver's statistics (no second pass over the
data) and loaders over its shard of each split.

Ordering: the training blocks come in one seeded order (Ray Data executes the same plan each epoch), read in
order (preserve_order), and each rank mixes its rows in a local shuffle buffer seeded by (seed, rank, epoch) --
the in-process loader's buffer, on whole blocks, one shuffle code for both paths.

Speed: a read task takes a run of consecutive blocks of that order (`units`: about UNIT_BYTES of one split's model
inputs, yet at least 2 x READERS tasks per split), not one: Ray Data's cost is per block (a task, a trip through
the split coordinator, a fetch), and a Parquet row group is often ~1 MB. With one block per task, and the local
cluster's read-task workers restarted for every epoch and split (pipelines/cluster/local.py), 2 workers trained at
0.4-0.6x the in-memory path's samples/s; with both fixed, at about its speed (benchmarks/README.md).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Sequence

import numpy as np

READERS = 2      # read tasks at once: without a CPU request nothing else bounds how many worker processes start
DATA_CPUS = 0   # read tasks take no CPU of their own: on a node the training workers fill, a CPU request would never be met
UNIT_BYTES = 16 << 20   # model inputs one read task aims to yield (a Ray Data block)


def trainer_kwargs(dm, config: Dict[str, Any]) -> Dict[str, Any]:
    """TorchTrainer's datasets and dataset_config for a streamed datamodule `dm` (adding its state to the workers'
    `config`); {} for an in-memory one."""
    if not getattr(dm, "streams", False):
        return {}
    config["stream"] = state(dm)
    return {"datasets": datasets(dm), "dataset_config": data_config()}


def datasets(dm) -> Dict[str, Any]:
    """{split: Ray Data dataset of {"x", "y"} rows} over the blocks of `dm` (a set-up streamed datamodule)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False      # one bar per operator, every second, on every rank
    context.print_on_execution_start = False  # three lines per split per epoch
    blocks = dm.reader.source.blocks
    order = np.random.default_rng([dm.seed]).permutation(len(blocks))
    row_bytes = 4 * math.prod(dm.spec.input_shape)
    share = {"train": 1.0 - dm.cfg.val_fraction - dm.cfg.test_fraction, "val": dm.cfg.val_fraction,
             "test": dm.cfg.test_fraction}
    out = {}
    for split in ("train", "val", "test"):
        groups = units(blocks, order if split == "train" else range(len(blocks)), row_bytes * share[split])
        ds = ray.data.from_items([{"unit": k} for k in range(len(groups))], override_num_blocks=len(groups))
        out[split] = ds.map_batches(functools.partial(_read, reader=dm.reader, split=split, groups=groups),
                                    batch_size=1, batch_format="numpy", num_cpus=DATA_CPUS,
                                    compute=ray.data.TaskPoolStrategy(size=READERS))
    return out


def units(blocks: Sequence, order: Sequence[int], row_bytes: float) -> List[List[int]]:
    """`order` (block indices) cut into runs of consecutive blocks of about UNIT_BYTES of model inputs each
    (`row_bytes` per source row: a row's input size times the split's share of rows), at least 2 x READERS runs
    where there are that many blocks. Blocks whose row counts are unknown (CSV files) are read one per task."""
    order = [int(i) for i in order]
    known = [blocks[i].rows for i in order if getattr(blocks[i], "rows", -1) >= 0]
    if len(known) < len(order) or not order:
        return [[i] for i in order]
    per_block = max(1.0, sum(known) / len(known) * row_bytes)
    size = max(1, min(round(UNIT_BYTES / per_block), math.ceil(len(order) / (2 * READERS))))
    return [order[s:s + size] for s in range(0, len(order), size)]


def _read(batch: Dict[str, np.ndarray], reader, split: str, groups: List[List[int]]):
    """One unit of blocks, read and turned into model inputs, as one Ray Data block."""
    for k in batch["unit"]:
        parts = [c for i in groups[int(k)] for c in reader.read(reader.source.blocks[i], split)]
        if parts:
            yield {"x": np.concatenate([x for x, _ in parts]), "y": np.concatenate([y for _, y in parts])}


def data_config():
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    return DataConfig(datasets_to_split="all", execution_options=ExecutionOptions(preserve_order=True))


def state(dm) -> Dict[str, Any]:
    """What a worker's datamodule needs of the driver's setup (statistics, spec, counts, fingerprint)."""
    return {"cls": type(dm), "reader": dm.reader, "spec": dm.spec, "prep": dm.prep, "counts": dm.counts,
            "source": dm.source, "hash": dm._hash, "split_hashes": dm._split_hashes}


def adopt(dm, shared: Dict[str, Any]) -> None:
    """Set up a worker's streamed datamodule from the driver's `state`, its loaders reading this rank's shards."""
    import ray.train

    dm.reader, dm.spec, dm.prep, dm.counts, dm.source = (shared[k] for k in
                                                         ("reader", "spec", "prep", "counts", "source"))
    dm._hash, dm._split_hashes = shared["hash"], shared["split_hashes"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    def loaders(split: str, shuffle: bool):
        return ShardLoader(ray.train.get_dataset_shard(split), max(1, dm.cfg.batch_size // world), shuffle,
                           dm.cfg.shuffle_buffer, (dm.seed, rank), dm.first_epoch if shuffle else 0,
                           dm.counts[split] // world)

    dm.loaders = loaders


class ShardLoader:
    """(x, y) batches of this rank's shard of one split, per epoch."""

    def __init__(self, shard, batch_size: int, shuffle: bool, buffer_rows: int, seed: tuple, first_epoch: int,
                 rows: int):
        self.shard, self.batch_size, self.shuffle, self.buffer_rows = shard, batch_size, shuffle, buffer_rows
        self.seed, self.epoch, self.rows = seed, first_epoch, rows

    def __len__(self) -> int:
        from datamodules.stream_loader import batch_count

        return batch_count(self.rows, self.batch_size, drop_single=self.shuffle)

    def __iter__(self):
        """Whole blocks from Ray Data as NumPy (no per-batch formatting there), cut into batches by the in-process
        loader's code: mixed in a bounded buffer seeded by (seed, rank, epoch) when shuffling, in order otherwise."""
        import torch

        from datamodules.stream_loader import sequential, shuffled

        epoch, self.epoch = self.epoch, self.epoch + 1
        blocks = self.shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        chunks = ((b["x"], b["y"]) for b in blocks)
        if self.shuffle:
            batches = shuffled(chunks, self.buffer_rows, self.batch_size, np.random.default_rng([*self.seed, epoch]))
        else:
            batches = sequential(chunks, self.batch_size)
        for x, y in batches:   # shuffled batches are fresh copies; in-order ones may be views of read-only blocks
            convert = torch.from_numpy if x.flags.writeable else torch.tensor
            yield convert(x), convert(y)
