"""Tabular data for the MLP: CSV / Parquet files or scikit-learn's shipped tables.

Used by `dlp train data=tabular ...`; a single frame is loaded, validated (target, features,
missing values), split with a seed, and standardised / one-hot encoded with statistics fitted on
the train split only (see preprocess.fit_tabular).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pandas.api import types as ptypes

from . import preprocess, validate
from .base import BaseDataModule, DataError, DataSpec, split_indices

SHIPPED = ("breast_cancer", "wine", "iris", "diabetes")
SOURCES = ("csv", "parquet") + SHIPPED


def _listing(columns, limit: int = 20) -> str:
    names = [str(c) for c in columns]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def read_table(source: str, path) -> tuple:
    """Load the raw frame: (DataFrame, default target column or None, source description)."""
    if source in SHIPPED:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{source}")(as_frame=True)
        frame = bunch.frame.copy()
        if source != "diabetes":
            # class names instead of codes, in sklearn's order (a categorical keeps its category order)
            frame["target"] = pd.Categorical.from_codes(frame["target"], categories=list(bunch.target_names))
        return frame, "target", f"sklearn:{source}"
    if source not in ("csv", "parquet"):
        raise DataError(f"data.source: unknown '{source}'; choose one of {', '.join(SOURCES)}")
    if not path:
        raise DataError(f"data.path: required for data.source={source}; set data.path=<file>")
    file = validate.check_file(path)
    parquet = source == "parquet" or file.suffix.lower() in (".parquet", ".pq")
    try:
        frame = pd.read_parquet(file) if parquet else pd.read_csv(file)
    except Exception as e:  # parser errors come in many types; all mean "not a readable table"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"data.path: cannot read '{path}' as {'Parquet' if parquet else 'CSV'}: {reason}") from e
    if frame.empty:
        raise DataError(f"data.path: '{path}' has no rows")
    return frame, None, f"{'parquet' if parquet else 'csv'}:{file.resolve()}"


def infer_task(y: pd.Series, max_classes: int) -> str:
    """classification for non-numeric, bool, or integer-valued targets with few distinct values."""
    if not ptypes.is_numeric_dtype(y.dtype) or ptypes.is_bool_dtype(y.dtype):
        return "classification"
    v = y.dropna().to_numpy(dtype=np.float64)
    integral = bool(np.all(v == np.trunc(v)))
    return "classification" if integral and len(np.unique(v)) <= max_classes else "regression"


def _check_missing(frame: pd.DataFrame, columns: list, target: str, missing: str) -> pd.DataFrame:
    """Apply data.missing; returns the rows to keep (NaN targets never survive)."""
    counts = frame[columns + [target]].isna().sum()
    counts = counts[counts > 0]
    if missing == "error":
        if len(counts):
            fix = "set data.missing=drop or data.missing=impute"
            if len(counts) == 1:
                c, k = counts.index[0], int(counts.iloc[0])
                raise DataError(f"data: column '{c}' has {k} missing value{'s' * (k != 1)}; {fix}")
            listed = ", ".join(f"'{c}' ({int(k)})" for c, k in counts.items())
            raise DataError(f"data: columns {listed} have missing values; {fix}")
        return frame
    if missing == "drop":
        frame = frame.dropna(subset=columns + [target])
    elif missing == "impute":
        frame = frame.dropna(subset=[target])
    else:
        raise DataError(f"data.missing: unknown '{missing}'; choose error, drop or impute")
    if frame.empty:
        raise DataError("data.missing: no rows left after dropping missing values; try data.missing=impute")
    return frame


class TabularDataModule(BaseDataModule):
    """One table -> standardised float features; labels 0..K-1 (sorted) or a raw float target."""

    def _load(self) -> None:
        cfg = self.cfg
        frame, default_target, self.source = read_table(cfg.source, cfg.path)
        target, features, categorical = self._columns(frame, cfg.target or default_target)
        frame = _check_missing(frame, features, target, cfg.missing).reset_index(drop=True)
        y_raw = frame[target]
        if ptypes.is_float_dtype(y_raw.dtype) and infer_task(y_raw, np.inf) == "classification":
            y_raw = y_raw.astype(np.int64)   # 1.0 -> 1: NaNs made an integer column float
        task = cfg.task if cfg.task != "auto" else infer_task(y_raw, cfg.max_classes)
        classes, y = self._encode(y_raw, task, target)

        train, val, test = split_indices(y, cfg.val_fraction, cfg.test_fraction, self.seed,
                                         cfg.stratify and task == "classification")
        try:
            self.prep = preprocess.fit_tabular(frame.iloc[train], features, categorical, cfg.missing)
        except ValueError as e:
            raise DataError(f"data: {e}; choose other data.features or data.missing") from e
        y_dtype = torch.long if task == "classification" else torch.float32
        scale = None
        if task == "regression":  # targets of any magnitude train at the same learning rate
            mean, std = float(y[train].mean()), float(y[train].std())
            scale = [mean, std if std > 0 else 1.0]
            y = (y - scale[0]) / scale[1]
        for name, idx in zip(("train", "val", "test"), (train, val, test)):
            rows = frame.iloc[idx][features].reset_index(drop=True)
            self._raw[name] = (rows, y_raw.iloc[idx].to_numpy())
            x = preprocess.transform(rows, self.prep)
            if not (np.isfinite(x).all() and np.isfinite(y[idx]).all()):  # finite, yet past float32 or the std's
                raise DataError(f"data: the {name} split holds values too large to standardise (their mean or "
                                "spread overflows); rescale those columns (e.g. log) or drop the rows")
            self._tensors[name] = (torch.from_numpy(x), torch.as_tensor(y[idx], dtype=y_dtype))
        self.spec = DataSpec(task=task, num_classes=len(classes), input_shape=(self._tensors["train"][0].shape[1],),
                             class_names=classes, feature_names=features, target_name=str(target),
                             target_scale=scale)

    def _columns(self, frame: pd.DataFrame, target) -> tuple:
        """(target, features, categorical features) of the frame, checked: names, numbers stored as text, ±inf."""
        cfg = self.cfg
        where = Path(cfg.path).name if cfg.source in ("csv", "parquet") else cfg.source
        if not target:
            raise DataError(f"data.target: required for data.source={cfg.source}; "
                            f"set data.target=<column> (columns: {_listing(frame.columns)})")
        if target not in frame.columns:
            raise DataError(f"data.target: column '{target}' not in {where} (columns: {_listing(frame.columns)})")
        features = list(cfg.features) if cfg.features else [c for c in frame.columns if c != target]
        unknown = [c for c in features if c not in frame.columns]
        if unknown:
            raise DataError(f"data.features: column '{unknown[0]}' not in {where} (columns: {_listing(frame.columns)})")
        if target in features:
            raise DataError(f"data.features: lists the target '{target}'; remove it from data.features")
        if not features:
            raise DataError(f"data.features: {where} has no feature columns besides the target '{target}'")
        declared = list(cfg.categorical) if cfg.categorical is not None else []
        stray = [c for c in declared if c not in features]
        if stray:
            raise DataError(f"data.categorical: '{stray[0]}' is not a feature; features: {_listing(features)}")
        # a few typos would make a numeric column categorical, one level per distinct number
        validate.check_numbers_as_text(frame, [c for c in features if c not in declared], where,
                                       "fix them or list the column under data.categorical")
        if cfg.task != "classification":
            validate.check_numbers_as_text(frame, [target], where, "fix them, drop those rows or set "
                                           "data.task=classification", key="data.target")
        # non-numeric columns cannot be standardised, so they are categorical whatever was declared
        auto = [c for c in features if not ptypes.is_numeric_dtype(frame[c].dtype)]
        categorical = [c for c in features if c in set(declared) | set(auto)]
        # ±inf is no missing value (data.missing leaves it): it would train to NaN losses
        validate.check_finite(frame, [c for c in features if c not in categorical], where,
                              "clean them, drop those rows or leave the column out of data.features")
        validate.check_finite(frame, [target], where, "clean them or drop those rows", key="data.target")
        return target, features, categorical

    def _encode(self, y_raw: pd.Series, task: str, target: str) -> tuple:
        """(class names, labels): codes 0..K-1 in label order, or the float target for regression."""
        if task == "regression":
            if not ptypes.is_numeric_dtype(y_raw.dtype) or ptypes.is_bool_dtype(y_raw.dtype):
                sample = y_raw.iloc[0]
                raise DataError(f"data.task: regression needs a numeric target; '{target}' has values like "
                                f"{validate.plain(sample)!r}; set data.task=classification")
            return [], y_raw.to_numpy(dtype=np.float32)
        if task != "classification":
            raise DataError(f"data.task: unknown '{task}'; choose auto, classification or regression")
        present = set(y_raw.unique())
        if isinstance(y_raw.dtype, pd.CategoricalDtype):
            classes = [c for c in y_raw.cat.categories if c in present]
        else:
            try:
                classes = sorted(present)
            except TypeError:   # mixed types: order by their text
                classes = sorted(present, key=str)
        if len(classes) < 2:
            raise DataError(f"data.target: column '{target}' has a single class ({validate.plain(classes[0])!r}); "
                            "classification needs at least two")
        codes = pd.Categorical(y_raw.to_numpy(), categories=classes).codes.astype(np.int64)
        return [str(c) for c in classes], codes
