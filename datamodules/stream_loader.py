"""The in-process loader of a streamed table: blocks in a seeded order per epoch, read ahead in a thread, mixed in
a bounded shuffle buffer, cut into batches.

Memory is bounded by the buffer (data.shuffle_buffer rows) plus a few read batches, whatever the table's size.
The order is a function of (seed, epoch) only, so a run resumed at epoch E serves the batches the uninterrupted
run served at epoch E.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, List

import numpy as np
import torch

READ_AHEAD = 4   # read batches queued ahead of training


def batch_count(n: int, batch_size: int, drop_single: bool = True) -> int:
    """Batches of `n` rows; a final batch of one row is dropped in training (it breaks BatchNorm)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > (1 if drop_single else 0) else 0)


class StreamLoader:
    """Iterable over (x, y) tensor batches of one split, read block by block through `reader`."""

    def __init__(self, reader, split: str, blocks: List, batch_size: int, shuffle: bool, seed: int,
                 buffer_rows: int, rows: int, cache=None):
        self.reader, self.split, self.blocks = reader, split, list(blocks)
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.buffer_rows, self.rows = int(buffer_rows), int(rows)
        self.cache = cache   # a stream_cache.BlockCache, or None: every epoch reads the source
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batch_count(self.rows, self.batch_size, drop_single=self.shuffle)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1   # as BatchLoader: Lightning never calls set_epoch here
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.blocks)) if self.shuffle else range(len(self.blocks))
        chunks = read_ahead(lambda: (c for i in order for c in self._block(int(i))))
        batches = shuffled(chunks, self.buffer_rows, self.batch_size, rng) if self.shuffle else \
            sequential(chunks, self.batch_size)
        for x, y in batches:
            yield torch.from_numpy(x), torch.from_numpy(y)

    def _block(self, i: int):
        source = self.reader.read(self.blocks[i], self.split)
        return self.cache.read(f"{i}-{self.split}", source) if self.cache is not None else source


def shuffled(chunks, buffer_rows: int, batch_size: int, rng: np.random.Generator) -> Iterator[tuple]:
    """Batches drawn at random from a pool of at most buffer_rows + one read batch of rows."""
    pool = None
    for chunk in chunks:
        pool = chunk if pool is None else tuple(np.concatenate([p, c]) for p, c in zip(pool, chunk))
        n = len(pool[0])
        if n < buffer_rows + batch_size:
            continue
        take = (n - buffer_rows) // batch_size * batch_size
        perm = rng.permutation(n)
        out, keep = perm[:take], perm[take:]
        for start in range(0, take, batch_size):
            rows = out[start:start + batch_size]
            yield tuple(p[rows] for p in pool)
        pool = tuple(p[keep] for p in pool)
    if pool is None:
        return
    perm = rng.permutation(len(pool[0]))
    for start in range(0, len(perm), batch_size):
        rows = perm[start:start + batch_size]
        if len(rows) > 1:   # a final batch of one row breaks BatchNorm in training mode
            yield tuple(p[rows] for p in pool)


def sequential(chunks, batch_size: int) -> Iterator[tuple]:
    """Batches in reading order (evaluation)."""
    carry = None
    for chunk in chunks:
        pool = chunk if carry is None else tuple(np.concatenate([p, c]) for p, c in zip(carry, chunk))
        n = len(pool[0])
        full = n // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield tuple(p[start:start + batch_size] for p in pool)
        carry = tuple(p[full:] for p in pool) if full < n else None
    if carry is not None:
        yield carry


def read_ahead(make, depth: int = READ_AHEAD):
    """Iterate make()'s generator in a background thread, `depth` items ahead; its errors re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run():
        try:
            for item in make():
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", done))
        except BaseException as e:  # handed to the consumer
            q.put(("error", e))

    thread = threading.Thread(target=run, name="dlp-stream-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
