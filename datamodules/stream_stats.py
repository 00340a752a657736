"""One streaming pass over a table's blocks: the split sizes, the train split's preprocessing statistics (mean and
standard deviation per numeric column, the categories of the others), the target's classes or its train mean and
spread, and the checks in-memory tables get (missing and infinite values) — in bounded memory, whatever the size.

The statistics equal what preprocess.fit_tabular computes from the same train rows held in memory (means and
variances are merged per batch with Chan's formulas, in float64).
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa

from . import preprocess
from .errors import DataError
from .streamed import Source, split_codes

MAX_DISTINCT = 100_000   # target values tracked for the class list; more cannot be classes


class Moments:
    """Count, mean and M2 (sum of squared deviations) of a stream of float64 values, merged batch by batch."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, v: np.ndarray) -> None:
        if not len(v):
            return
        n, mean = len(v), float(v.mean())
        m2 = float(((v - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else 0.0


class TableStats:
    """What the pass accumulates; `add` takes one read batch with its rows' split codes."""

    def __init__(self, numeric: List[str], categorical: List[str], target: str, missing: str):
        self.numeric, self.categorical, self.target, self.missing = numeric, categorical, target, missing
        self.rows = {0: 0, 1: 0, 2: 0}
        self.dropped = 0
        self.moments: Dict[str, Moments] = {c: Moments() for c in numeric}
        self.levels: Dict[str, set] = {c: set() for c in categorical}
        self.target_moments = Moments()     # train, when the target is numeric
        self.values: Counter = Counter()    # every split's target values (capped), for the classes
        self.train_values: Counter = Counter()
        self.capped = False
        self.integral = True

    def add(self, frame: pd.DataFrame, codes: np.ndarray, where: str) -> None:
        keep = self._complete(frame, where)
        if keep is not None:
            frame, codes = frame[keep], codes[keep]
        for code in self.rows:
            self.rows[code] += int((codes == code).sum())
        train = frame[codes == 0]
        for c in self.numeric:
            v = _finite(train[c], c, where)
            self.moments[c].add(v)
        for c in self.categorical:
            self.levels[c].update(x for x in pd.unique(preprocess._as_str(train[c])) if x is not None)
        self._add_target(frame[self.target], codes)

    def _complete(self, frame: pd.DataFrame, where: str):
        """Rows to keep under data.missing (None: all); error names the first column with a missing value."""
        na = frame.isna()
        if not na.to_numpy().any():
            return None
        if self.missing == "drop":
            keep = ~na.any(axis=1).to_numpy()
            self.dropped += int((~keep).sum())
            return keep
        column = na.any().idxmax()
        fix = "set data.missing=drop" if self.missing == "error" else \
            "data.missing=impute needs the table in memory: set data.missing=drop or data.streaming=false"
        raise DataError(f"data: column '{column}' has missing values ({where}); {fix}")

    def _add_target(self, y: pd.Series, codes: np.ndarray) -> None:
        if pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(y.dtype):
            v = _finite(y, self.target, "the target", key="data.target")
            self.target_moments.add(v[codes == 0])
            self.integral = self.integral and bool(np.all(v == np.trunc(v)))
        if self.capped:
            return
        self.values.update(y.to_numpy().tolist())
        self.train_values.update(y[codes == 0].to_numpy().tolist())
        if len(self.values) > MAX_DISTINCT:
            self.capped = True
            self.values.clear()
            self.train_values.clear()


def scan(source: Source, columns: List[str], stats: TableStats, seed: int, val_fraction: float,
         test_fraction: float) -> TableStats:
    """Read every block once (only `columns`) into `stats`."""
    for block in source.blocks:
        for batch, first in source.batches(block, columns):
            codes = split_codes(block.rel, first, batch.num_rows, seed, val_fraction, test_fraction)
            stats.add(batch.to_pandas(), codes, f"in '{block.rel}'")
    return stats


def _finite(s: pd.Series, name: str, where: str, key: str = "data") -> np.ndarray:
    v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(v).any():
        raise DataError(f"{key}: column '{name}' has infinite values ({where}); clean them, drop those rows or "
                        "leave the column out of data.features")
    return v


def numeric_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
