"""Streamed tables (data.streaming): a CSV/Parquet file, folder of shards or s3:// prefix that never has to fit
in memory. setup() lists the files and makes one pass over them for the split sizes and the train statistics
(stream_stats.py); the loaders then read block by block through a BlockReader, the same object the Ray Data
datasets of a distributed run map over their blocks (pipelines/training/ray_data.py).

The model, its `prep` and `dlp predict` are the in-memory tabular path's: only how rows reach the network differs.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from . import stream_stats, streamed
from .base import SPLITS, DataSpec, class_balance
from .errors import DataError
from .stream_base import StreamedDataModule


class StreamingTableDataModule(StreamedDataModule):
    """A table read in blocks: same spec and prep as TabularDataModule, never the whole table in memory."""

    def setup(self, stage: Optional[str] = None) -> None:
        if self.spec is not None:
            return
        cfg = self.cfg
        if cfg.balance == "oversample":
            raise DataError("data.balance: oversample needs the table in memory; use data.balance=weights or "
                            "data.streaming=false")
        source = streamed.discover(cfg.path, cfg.source, cfg.on_error)
        target, features, categorical = self._columns(source)
        numeric = [c for c in features if c not in categorical]

        def one_pass():
            stats = stream_stats.TableStats(numeric, categorical, target, cfg.missing)
            return stream_stats.scan(source, features + [target], stats, self.seed, cfg.val_fraction,
                                     cfg.test_fraction)
        stats = self._pass(source, one_pass)
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
        self._set_hashes(source, features, target, cfg.missing)
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
