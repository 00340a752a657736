"""Streamed tables (data.streaming): a CSV/Parquet file, folder of shards or s3:// prefix that never has to fit
in memory. setup() lists the files and makes one pass over them for the split sizes and the train statistics
(stream_stats.py); the loaders then read block by block through a BlockReader, the same object the Ray Data
datasets of a distributed run map over their blocks (pipelines/training/ray_data.py).

The model, its `prep` and `dlp predict` are the in-memory tabular path's: only how rows reach the network differs.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from . import stream_stats, streamed
from .base import SPLITS, BaseDataModule, DataSpec, class_balance
from .errors import DataError
from .stream_loader import StreamLoader, batch_count


class StreamingTableDataModule(BaseDataModule):
    """A table read in blocks: same spec and prep as TabularDataModule, never the whole table in memory."""

    streams = True

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        self.reader: Optional[streamed.BlockReader] = None
        self.counts: Dict[str, int] = {}
        self.skipped: list = []    # (file, why) left out under data.on_error=skip
        self.loaders = None   # a Ray Train worker's: {split: loader over its Ray Data shard} (ray_data.py)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.spec is not None:
            return
        cfg = self.cfg
        if cfg.balance == "oversample":
            raise DataError("data.balance: oversample needs the table in memory; use data.balance=weights or "
                            "data.streaming=false")
        source = streamed.discover(cfg.path, cfg.source, cfg.on_error)
        target, features, categorical = self._columns(source)
        while True:   # a file that fails mid-read under on_error=skip is left out and the pass starts again
            stats = stream_stats.TableStats([c for c in features if c not in categorical], categorical, target,
                                            cfg.missing)
            try:
                stream_stats.scan(source, features + [target], stats, self.seed, cfg.val_fraction,
                                  cfg.test_fraction)
                break
            except streamed.ReadError as e:
                if cfg.on_error != "skip":
                    raise
                source.drop(e.rel, str(e))
        if source.skipped:
            warnings.warn(f"data.on_error=skip: left out {len(source.skipped)} unreadable file(s) of {cfg.path}: "
                          + ", ".join(rel for rel, _ in source.skipped[:5]) + (" ..." * (len(source.skipped) > 5)))
        self._finish(source, stats, features, target)

    def _columns(self, source: streamed.Source) -> tuple:
        cfg = self.cfg
        names = [f.name for f in source.schema]
        listing = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        if not cfg.target or cfg.target not in names:
            what = f"column '{cfg.target}' not in {cfg.path}" if cfg.target else f"required for data.source={cfg.source}"
            raise DataError(f"data.target: {what} (columns: {listing})")
        features = list(cfg.features) if cfg.features else [n for n in names if n != cfg.target]
        unknown = [c for c in features if c not in names]
        if unknown:
            raise DataError(f"data.features: column '{unknown[0]}' not in {cfg.path} (columns: {listing})")
        if not features or cfg.target in features:
            raise DataError(f"data.features: needs columns besides the target '{cfg.target}', and not the target")
        declared = set(cfg.categorical or [])
        types = {f.name: f.type for f in source.schema}
        categorical = [c for c in features if c in declared or not stream_stats.numeric_type(types[c])]
        return cfg.target, features, categorical

    def _finish(self, source: streamed.Source, stats: stream_stats.TableStats, features: List[str],
                target: str) -> None:
        cfg = self.cfg
        self.counts = {split: stats.rows[streamed.SPLIT_CODES[split]] for split in SPLITS}
        empty = [s for s in SPLITS if not self.counts[s]]
        if empty:
            raise DataError(f"data: the {empty[0]} split of {cfg.path} is empty ({self.counts}); use more rows or "
                            "other data.val_fraction/data.test_fraction")
        prep = {"kind": "tabular", "columns": features, "impute": {},
                "numeric": {c: [m.mean, m.std() or 1.0] for c, m in stats.moments.items()},
                "categorical": {c: sorted(v) for c, v in stats.levels.items()}}
        task, classes, scale = self._target(stats, target)
        self.prep, self.source = prep, f"{source.fmt}:{source.uri}"
        self.reader = streamed.BlockReader(source, features + [target], prep, classes, scale, self.seed,
                                           cfg.val_fraction, cfg.test_fraction, cfg.missing)
        width = len(stats.numeric) + sum(len(v) for v in prep["categorical"].values())
        self.spec = DataSpec(task=task, num_classes=len(classes or []), input_shape=(width,),
                             class_names=[str(c) for c in classes or []], feature_names=features,
                             target_name=target, target_scale=scale)
        if task == "classification" and cfg.balance == "weights":
            y = np.repeat(np.arange(len(classes)), [stats.train_values.get(c, 0) for c in classes])
            self.spec.class_weights = [float(w) for w in class_balance(y, len(classes))]
        self._hash = hashlib.sha256(f"{source.digest()}\x1f{self.seed}\x1f{cfg.val_fraction}\x1f{cfg.test_fraction}"
                                    f"\x1f{features}\x1f{target}\x1f{cfg.missing}".encode()).hexdigest()
        self._split_hashes = {s: hashlib.sha256(f"{self._hash}\x1f{s}".encode()).hexdigest() for s in SPLITS}
        self.skipped = source.skipped
        self.prep.update(task=task, class_names=list(self.spec.class_names), target_scale=scale)

    def _target(self, stats: stream_stats.TableStats, target: str) -> tuple:
        """(task, classes in code order or None, regression [mean, std] or None), as TabularDataModule decides."""
        cfg = self.cfg
        numeric = stats.target_moments.n > 0
        task = cfg.task
        if task == "auto":
            few = not stats.capped and len(stats.values) <= cfg.max_classes
            task = "classification" if not numeric or (stats.integral and few) else "regression"
        if task == "regression":
            if not numeric:
                raise DataError(f"data.task: regression needs a numeric target; '{target}' is not; "
                                "set data.task=classification")
            return task, None, [stats.target_moments.mean, stats.target_moments.std() or 1.0]
        if stats.capped:
            raise DataError(f"data.target: '{target}' has over {stream_stats.MAX_DISTINCT} distinct values; "
                            "set data.task=regression")
        values = list(stats.values)
        if numeric and stats.integral:
            values = sorted({int(v) for v in values})
        else:
            values = sorted(values, key=lambda v: (str(type(v)), v))
        if len(values) < 2:
            raise DataError(f"data.target: column '{target}' has a single class; classification needs at least two")
        return task, values, None

    # -- loaders --
    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def _eval_loader(self, split: str):
        return self._loader(split, shuffle=False)

    def _loader(self, split: str, shuffle: bool):
        self.setup()
        if self.loaders is not None:
            return self.loaders(split, shuffle)
        loader = StreamLoader(self.reader, split, self.reader.source.blocks, self.cfg.batch_size, shuffle,
                              self.seed, self.cfg.shuffle_buffer, self.counts[split])
        loader.set_epoch(self.first_epoch if shuffle else 0)
        return loader

    # -- records --
    def fingerprint(self) -> dict:
        self.setup()
        skipped = {"skipped_files": len(self.skipped)} if self.skipped else {}
        return {"source": self.source, **{f"n_{s}": self.counts[s] for s in SPLITS}, "hash": self._hash, **skipped}

    def raw_frame(self, split: str, limit: Optional[int] = None) -> tuple:
        """The split's raw rows (all of them: this reads the whole table; `limit` stops after that many)."""
        self.setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        frames, have = [], 0
        code = streamed.SPLIT_CODES[split]
        r = self.reader
        for block in r.source.blocks:
            for batch, first in r.source.batches(block, r.columns):
                codes = streamed.split_codes(block.rel, first, batch.num_rows, self.seed, r.val_fraction,
                                             r.test_fraction)
                frame = batch.to_pandas()[codes == code]
                if r.missing == "drop":
                    frame = frame.dropna()
                frames.append(frame)
                have += len(frame)
                if limit is not None and have >= limit:
                    break
            if limit is not None and have >= limit:
                break
        frame = pd.concat(frames, ignore_index=True).head(limit) if limit else pd.concat(frames, ignore_index=True)
        return frame[self.spec.feature_names], frame[self.spec.target_name].to_numpy()

    def batches_per_epoch(self, split: str, world: int = 1) -> int:
        return batch_count(self.counts[split] // world, max(1, self.cfg.batch_size // world))
