"""Checks that refuse data which would otherwise train silently into nonsense: a data.path that is not a file,
±inf values (NaN losses), numbers stored as text with a few typos (one-hot encoded into hundreds of levels).

The datamodules call them from setup, so bad data fails before the driver opens any MLflow run. NaN is not
checked here: it means "missing" and data.missing / data.gaps decide what happens to it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from .errors import DataError

NUMERIC_SHARE = 0.9   # a text column whose values parse as numbers at least this often is a numeric one with typos


def plain(value):
    """A numpy scalar as the Python value it holds, so a message reads 1, not np.int64(1)."""
    return value.item() if isinstance(value, np.generic) else value


def check_file(path, key: str = "data.path") -> Path:
    """The file `path` names; DataError saying what it is instead (a directory, a device, nothing)."""
    file = Path(path).expanduser()
    if file.is_file():
        return file
    if file.is_dir():
        raise DataError(f"{key}: '{path}' is a directory, not a file; name a CSV or Parquet file in it")
    if file.exists():
        raise DataError(f"{key}: '{path}' is not a regular file (a device, socket or pipe); "
                        "name a CSV or Parquet file")
    raise DataError(f"{key}: file '{path}' does not exist")


def infinite_counts(frame: pd.DataFrame, columns) -> dict:
    """{column: its number of ±inf values} for the numeric `columns` that hold any (NaN is missing: not counted)."""
    out = {}
    for c in columns:
        s = frame[c]
        if ptypes.is_numeric_dtype(s.dtype) and not ptypes.is_bool_dtype(s.dtype):
            n = int(np.isinf(s.to_numpy(dtype=np.float64, na_value=np.nan)).sum())
            if n:
                out[c] = n
    return out


def check_finite(frame: pd.DataFrame, columns, where: str, fix: str, key: str = "data") -> None:
    """DataError naming the numeric columns that hold ±inf and how many: they train to NaN losses."""
    counts = infinite_counts(frame, columns)
    if not counts:
        return
    if len(counts) == 1:
        (c, n), = counts.items()
        found = f"column '{c}' of {where} holds {n} non-finite value{'s' * (n != 1)} (inf/-inf)"
    else:
        listed = ", ".join(f"'{c}' ({n})" for c, n in counts.items())
        found = f"columns {listed} of {where} hold non-finite values (inf/-inf)"
    raise DataError(f"{key}: {found}; {fix}")


def non_numbers(s: pd.Series) -> tuple:
    """(count, up to 3 distinct values) of the entries of a text column that is mostly numbers (at least
    NUMERIC_SHARE of its non-missing values parse) but not only; (0, []) for any other column."""
    if ptypes.is_numeric_dtype(s.dtype) or ptypes.is_datetime64_any_dtype(s.dtype):
        return 0, []
    values = s.dropna()
    if values.empty:
        return 0, []
    text = values.astype(str).str.strip()
    bad = pd.to_numeric(text, errors="coerce").isna().to_numpy()
    if not bad.any() or 1 - bad.mean() < NUMERIC_SHARE:
        return 0, []
    return int(bad.sum()), [plain(v) for v in pd.unique(values[bad])[:3]]


def check_numbers_as_text(frame: pd.DataFrame, columns, where: str, fix: str, key: str = "data") -> None:
    """DataError for the first of `columns` that is numeric but for a few non-numbers, naming up to 3 of them."""
    for c in columns:
        n, sample = non_numbers(frame[c])
        if n:
            shown = ", ".join(repr(v) for v in sample)
            raise DataError(f"{key}: column '{c}' of {where} is numeric but holds {n} non-number{'s' * (n != 1)} "
                            f"({shown}); {fix}")
