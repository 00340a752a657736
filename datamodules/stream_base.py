"""What every streamed datamodule shares (tables: stream_table.py, texts: stream_text.py): setup's one pass over
the source with files that fail left out under data.on_error=skip, loaders that read block by block (in process:
StreamLoader; in a Ray Train worker: its Ray Data shard, pipelines/training/ray_data.py), a fingerprint from the
file listing, and raw rows read on demand.

A subclass's setup() calls `_pass` and then sets spec, prep, source, counts and `reader` — an object with
`.source.blocks`, `.read(block, split)` -> (x, y) arrays and `.raw(block, split)` -> raw frames, which must
pickle and import no Lightning (Ray Data's read tasks run it).
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Callable, Dict, Optional

import pandas as pd

from . import streamed
from .base import SPLITS, BaseDataModule
from .stream_cache import BlockCache
from .stream_loader import StreamLoader


class StreamedDataModule(BaseDataModule):
    """Never the whole source in memory: bounded reads, one statistics pass, seeded hash splits."""

    streams = True

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        self.reader = None
        self.counts: Dict[str, int] = {}
        self.skipped: list = []    # (file, why) left out under data.on_error=skip
        self.loaders = None        # a Ray Train worker's: (split, shuffle) -> loader over its Ray Data shard
        self.cache = None          # in process, with data.cache: the blocks' inputs on local disk (stream_cache.py)

    def _pass(self, source: streamed.Source, one_pass: Callable[[], object]):
        """one_pass()'s result; a file that fails mid-read under on_error=skip is left out and the pass restarts
        (its rows must not count), warned about in one line."""
        while True:
            try:
                result = one_pass()
                break
            except streamed.ReadError as e:
                if self.cfg.on_error != "skip":
                    raise
                source.drop(e.rel, str(e))
        if source.skipped:
            names = ", ".join(rel for rel, _ in source.skipped[:5]) + (" ..." * (len(source.skipped) > 5))
            warnings.warn(f"data.on_error=skip: left out {len(source.skipped)} unreadable file(s) of "
                          f"{self.cfg.path}: {names}")
        self.skipped = source.skipped
        return result

    def _set_hashes(self, source: streamed.Source, *settings) -> None:
        """The content hash from the listing (never a second read) and what decides the splits and inputs."""
        cfg = self.cfg
        text = "\x1f".join(map(str, (source.digest(), self.seed, cfg.val_fraction, cfg.test_fraction, *settings)))
        self._hash = hashlib.sha256(text.encode()).hexdigest()
        self._split_hashes = {s: hashlib.sha256(f"{self._hash}\x1f{s}".encode()).hexdigest() for s in SPLITS}

    # -- loaders --
    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def _eval_loader(self, split: str):
        return self._loader(split, shuffle=False)

    def _loader(self, split: str, shuffle: bool):
        self.setup()
        if self.loaders is not None:
            return self.loaders(split, shuffle)
        cached = self.cfg.cache and split != "test"   # the test split is read once
        if cached and self.cache is None:
            self.cache = BlockCache()
        loader = StreamLoader(self.reader, split, self.reader.source.blocks, self.cfg.batch_size, shuffle,
                              self.seed, self.cfg.shuffle_buffer, self.counts[split], self.cache if cached else None)
        loader.set_epoch(self.first_epoch if shuffle else 0)
        return loader

    def teardown(self, stage: Optional[str] = None) -> None:
        if self.cache is not None:   # the next loader (a test after fit) starts a new one
            self.cache.close()
            self.cache = None

    # -- records --
    def fingerprint(self) -> dict:
        self.setup()
        skipped = {"skipped_files": len(self.skipped)} if self.skipped else {}
        return {"source": self.source, **{f"n_{s}": self.counts[s] for s in SPLITS}, "hash": self._hash, **skipped}

    def raw_frame(self, split: str, limit: Optional[int] = None) -> tuple:
        """The split's raw rows and labels: the first `limit`, or all of them (a whole read of the source)."""
        self.setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        frames, have = [], 0
        for block in self.reader.source.blocks:
            for frame in self.reader.raw(block, split):
                frames.append(frame)
                have += len(frame)
                if limit is not None and have >= limit:
                    break
            if limit is not None and have >= limit:
                break
        columns = [*self.spec.feature_names, self.spec.target_name]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        frame = frame.head(limit) if limit is not None else frame
        return frame[self.spec.feature_names], frame[self.spec.target_name].to_numpy()
