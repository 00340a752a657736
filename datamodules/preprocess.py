"""Raw rows -> model inputs, described by a JSON-serialisable `prep` dict.

The datamodules fit `prep` on the train split; the logged MLflow model ships this file alone
(imported as the top-level module `preprocess`) so `dlp predict` and serving apply exactly the
transform training used. Keep it free of torch and of package-relative imports.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def transform(data, prep: dict) -> np.ndarray:
    """Apply `prep` to raw rows (DataFrame or array); returns float32 model inputs.

    Raises ValueError when the input cannot be transformed (missing column, bad values, wrong width).
    """
    if prep["kind"] == "tabular":
        return _tabular(data, prep)
    if prep["kind"] == "image":
        return _image(data, prep)
    raise ValueError(f"unknown preprocessing kind {prep['kind']!r}")


# ---- tabular -------------------------------------------------------------------------------

def fit_tabular(df: pd.DataFrame, columns: list, categorical: list, missing: str) -> dict:
    """Fit the tabular `prep` on TRAIN rows: mean/std per numeric column, categories per categorical one.

    With missing="impute" every column gets an impute value (train median / most frequent), so a
    value missing at prediction time is filled the same way.
    """
    categorical = [c for c in columns if c in set(categorical)]
    numeric = [c for c in columns if c not in set(categorical)]
    prep = {"kind": "tabular", "columns": list(columns), "numeric": {}, "categorical": {}, "impute": {}}
    for c in numeric:
        v = _numeric(df[c], c)
        if missing == "impute":
            if np.isnan(v).all():
                raise ValueError(f"column '{c}' has no values in the train split to impute from")
            prep["impute"][c] = float(np.nanmedian(v))
            v = np.where(np.isnan(v), prep["impute"][c], v)
        std = float(v.std())
        prep["numeric"][c] = [float(v.mean()), std if std > 0 else 1.0]
    for c in categorical:
        s = pd.Series(_as_str(df[c]))
        if missing == "impute":
            counts = s.value_counts()
            if counts.empty:
                raise ValueError(f"column '{c}' has no values in the train split to impute from")
            # ties broken by the smallest value so the fit is deterministic
            top = counts[counts == counts.max()].index
            prep["impute"][c] = str(sorted(top)[0])
            s = s.fillna(prep["impute"][c])
        prep["categorical"][c] = sorted(s.dropna().unique().tolist())
    return prep


def _tabular(data, prep: dict) -> np.ndarray:
    columns = prep["columns"]
    if not isinstance(data, pd.DataFrame):
        arr = np.asarray(data)
        if arr.ndim != 2 or arr.shape[1] != len(columns):
            raise ValueError(f"expected {len(columns)} columns ({', '.join(columns)}), got shape {arr.shape}")
        data = pd.DataFrame(arr, columns=columns)
    for c in columns:
        if c not in data.columns:
            raise ValueError(f"input is missing column '{c}'")
    impute = prep.get("impute", {})
    blocks = []
    for c in columns:
        if c not in prep["numeric"]:
            continue
        v = _numeric(data[c], c)
        if c in impute:
            v = np.where(np.isnan(v), impute[c], v)
        elif np.isnan(v).any():
            raise ValueError(f"column '{c}' has missing values and the model was trained without imputation")
        mean, std = prep["numeric"][c]
        blocks.append(((v - mean) / std)[:, None])
    n = len(data)
    for c, cats in prep["categorical"].items():
        text = _as_str(data[c])
        if c in impute:
            text[pd.isna(text)] = impute[c]
        # unseen and missing values get code -1 -> an all-zero block
        codes = pd.Categorical(text, categories=cats).codes
        onehot = np.zeros((n, len(cats)))
        known = codes >= 0
        onehot[np.flatnonzero(known), codes[known]] = 1.0
        blocks.append(onehot)
    if not blocks:
        return np.zeros((n, 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _numeric(s: pd.Series, name: str) -> np.ndarray:
    """Column as float64; strings from JSON are parsed, anything unparseable is an error."""
    v = pd.to_numeric(s, errors="coerce")
    out = v.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(out) & s.notna().to_numpy()
    if bad.any():
        raise ValueError(f"column '{name}' has non-numeric values such as {s[bad].iloc[0]!r}")
    return out


def _as_str(s: pd.Series) -> np.ndarray:
    """Category values as an object array of strings (None where missing).

    3.0 and 3 are one category: JSON payloads and NaNs turn integer columns into floats.
    """
    missing = s.isna().to_numpy()
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(v) & (v == np.trunc(v)) & (np.abs(v) < 2**53)
        text = s.astype(str).to_numpy(dtype=object)
        text[whole] = v[whole].astype(np.int64).astype(str)
    else:
        text = s.astype(str).to_numpy(dtype=object)
    text[missing] = None
    return text


# ---- image ---------------------------------------------------------------------------------

def _image(data, prep: dict) -> np.ndarray:
    c, h, w = prep["shape"]
    if isinstance(data, pd.DataFrame):
        names = [f"p{i}" for i in range(c * h * w)]
        # pixel columns by name when present, so a reordered frame still works
        data = data[names] if set(names).issubset(data.columns) else data
        data = data.to_numpy()
    x = np.asarray(data, dtype=np.float32)
    if x.size != len(x) * c * h * w:
        raise ValueError(f"expected {c * h * w} pixels per image ({c}x{h}x{w}), got shape {x.shape}")
    x = x.reshape(-1, c, h, w) / np.float32(prep["scale"])
    mean = np.asarray(prep["mean"], dtype=np.float32).reshape(1, c, 1, 1)
    std = np.asarray(prep["std"], dtype=np.float32).reshape(1, c, 1, 1)
    return ((x - mean) / std).astype(np.float32)
