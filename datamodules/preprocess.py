"""Raw rows -> model inputs, described by a JSON-serialisable `prep` dict.

The datamodules fit `prep` on the train split; the logged MLflow model ships this file alone
(imported as the top-level module `preprocess`, with preprocess_text.py beside it) so `dlp predict` and serving
apply exactly the transform training used. Keep both free of torch and of package-relative imports.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

try:  # the text half; inside a logged model, code_paths puts preprocess_text.py beside this file on sys.path
    from preprocess_text import PAD, UNK, clean_text, encode, fit_vocab, text_inputs, tokenize, tokenize_texts  # noqa: F401
except ImportError:  # pragma: no cover - running from the repository
    from datamodules.preprocess_text import (PAD, UNK, clean_text, encode, fit_vocab,  # noqa: F401
                                             text_inputs, tokenize, tokenize_texts)


def transform(data, prep: dict) -> np.ndarray:
    """Apply `prep` to raw rows (DataFrame or array); returns float32 model inputs.

    Raises ValueError when the input cannot be transformed (missing column, bad values, wrong width).
    """
    kinds = {"tabular": _tabular, "image": _image, "text": text_inputs, "timeseries": _timeseries}
    if prep["kind"] not in kinds:
        raise ValueError(f"unknown preprocessing kind {prep['kind']!r}")
    return kinds[prep["kind"]](data, prep)


def as_frame(data, columns: list, dtype=None) -> pd.DataFrame:
    """Rows as a DataFrame holding `columns` (an array is read in that column order); ValueError if one is missing."""
    if not isinstance(data, pd.DataFrame):
        arr = np.asarray(data, dtype=dtype)
        if arr.ndim != 2 or arr.shape[1] != len(columns):
            raise ValueError(f"expected {len(columns)} columns ({', '.join(columns)}), got shape {arr.shape}")
        data = pd.DataFrame(arr, columns=columns)
    for c in columns:
        if c not in data.columns:
            raise ValueError(f"input is missing column '{c}'")
    return data


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
    data = as_frame(data, columns)
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
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 0), dtype=np.float32)


def _numeric(s: pd.Series, name: str) -> np.ndarray:
    """Column as float64; strings from JSON are parsed; anything unparseable, and ±inf (NaN outputs), is an error."""
    numbers = pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
    out = (s if numbers else pd.to_numeric(s, errors="coerce")).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isinf(out) if numbers else ~np.isfinite(out) & s.notna().to_numpy()   # numbers: only ±inf is bad
    if bad.any():
        first = s[bad].iloc[0].item() if isinstance(s[bad].iloc[0], np.generic) else s[bad].iloc[0]
        raise ValueError(f"column '{name}' has non-numeric or infinite values such as {first!r}")
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


# ---- timeseries ----------------------------------------------------------------------------

def ts_columns(prep: dict) -> list:
    """The raw history columns a forecaster takes: time, group (if any), target, features."""
    group = [prep["group"]] if prep.get("group") else []
    return [prep["time"], *group, prep["target"], *prep["features"]]


def ts_calendar(freq: str) -> list:
    """Calendar cycles that change between steps of `freq`: hour (step < 1 day), week (< 7 days), year."""
    grid = pd.date_range("2001-01-01", periods=2, freq=freq)
    step = grid[1] - grid[0]
    day, week = pd.Timedelta(days=1), pd.Timedelta(days=7)
    return (["hour"] if step < day else []) + (["week"] if step < week else []) + ["year"]


def ts_groups(data, prep: dict) -> list:
    """Raw history -> [(series key or None, its rows sorted by time)], keys sorted; times parsed, values float.

    Raises ValueError for a missing column, unparseable times, non-numeric values or repeated timestamps.
    """
    columns = ts_columns(prep)
    data = as_frame(data, columns, dtype=object)
    data = data.reset_index(drop=True)
    time, group = prep["time"], prep.get("group")
    try:
        t = pd.to_datetime(data[time], errors="coerce")
    except (ValueError, TypeError) as e:
        raise ValueError(f"column '{time}' cannot be read as timestamps: {e}") from e
    if t.isna().any():
        sample = data[time][t.isna()].iloc[0]
        raise ValueError(f"column '{time}' has values that are not timestamps, such as {sample!r}")
    frame = pd.DataFrame({time: t})
    if group:
        if data[group].isna().any():
            raise ValueError(f"column '{group}' has rows without a series id")
        frame[group] = data[group]
    for c in [prep["target"], *prep["features"]]:
        frame[c] = _numeric(data[c], c)
    parts = frame.groupby(group, sort=True) if group else [(None, frame)]
    out = []
    for key, rows in parts:
        rows = rows.sort_values(time, kind="stable").reset_index(drop=True)
        repeated = rows[time].duplicated()
        if repeated.any():
            raise ValueError(f"{_ts_name(key)}timestamp {rows[time][repeated].iloc[0]} appears more than once")
        out.append((key, rows[columns]))
    return out


def ts_regular(rows: pd.DataFrame, prep: dict) -> pd.DataFrame:
    """One series (sorted, unique times) on the regular prep["freq"] grid from its first to its last
    timestamp; a missing step becomes a row of NaN values. Raises ValueError for an off-grid timestamp."""
    time, group = prep["time"], prep.get("group")
    t = pd.DatetimeIndex(rows[time])
    grid = pd.date_range(t[0], t[-1], freq=prep["freq"])
    on_grid = t.isin(grid)
    if len(grid) == 0 or grid[0] != t[0] or not on_grid.all():
        bad = t[~on_grid][0] if not on_grid.all() else t[0]
        raise ValueError(f"timestamp {bad} is not on the '{prep['freq']}' grid of its series")
    out = rows.set_index(time).reindex(grid).rename_axis(time).reset_index()
    if group:
        out[group] = rows[group].iloc[0]
    return out[ts_columns(prep)]


def ts_fill(frame: pd.DataFrame, prep: dict) -> pd.DataFrame:
    """Fill the NaN values of one regular series as prep["gaps"] says: interpolate (linear in time, nearest
    value at the edges) or ffill (then back fill at the start); with "error" any gap raises ValueError."""
    columns = [prep["target"], *prep["features"]]
    values = frame[columns]
    holes = values.isna().any(axis=1).to_numpy()
    if not holes.any():
        return frame
    if prep["gaps"] == "error":
        first, n = frame[prep["time"]][holes].iloc[0], int(holes.sum())
        raise ValueError(f"the history has {n} time step{'s' * (n != 1)} with missing values (first {first}); "
                         "the model was trained with gaps=error")
    empty = [c for c in columns if values[c].isna().all()]
    if empty:
        raise ValueError(f"column '{empty[0]}' has no values to fill its gaps from")
    if prep["gaps"] == "interpolate":
        values = values.set_axis(pd.DatetimeIndex(frame[prep["time"]]))
        values = values.interpolate(method="time", limit_area="inside").ffill().bfill()
    elif prep["gaps"] == "ffill":
        values = values.ffill().bfill()
    else:
        raise ValueError(f"unknown gaps mode {prep['gaps']!r}; expected error, interpolate or ffill")
    out = frame.copy()
    out[columns] = values.to_numpy()
    return out


def ts_features(frame: pd.DataFrame, prep: dict) -> np.ndarray:
    """Model inputs of each step of one filled series, (T, F) float32: the scaled target, the scaled
    features, then sin and cos of each calendar cycle (ts_calendar) when prep["calendar"]."""
    blocks = []
    for c in [prep["target"], *prep["features"]]:
        mean, std = prep["scale"][c]
        blocks.append((frame[c].to_numpy(dtype=np.float64) - mean) / std)
    if prep["calendar"]:
        t = pd.DatetimeIndex(frame[prep["time"]])
        hours = np.asarray(t.hour + t.minute / 60 + t.second / 3600, dtype=np.float64)
        phase = {"hour": hours / 24, "week": (np.asarray(t.day_of_week) + hours / 24) / 7,
                 "year": (np.asarray(t.day_of_year) - 1 + hours / 24) / 365.25}
        for cycle in ts_calendar(prep["freq"]):
            angle = 2 * np.pi * phase[cycle]
            blocks += [np.sin(angle), np.cos(angle)]
    return np.stack(blocks, axis=1).astype(np.float32)


def _timeseries(data, prep: dict) -> np.ndarray:
    """History -> (G, lookback, F): the last lookback steps of each series (sorted keys), as in training."""
    lookback = prep["lookback"]
    out = []
    for key, rows in ts_groups(data, prep):
        frame = ts_fill(ts_regular(rows, prep), prep)
        if len(frame) < lookback:
            raise ValueError(f"{_ts_name(key)}history has {len(frame)} time steps; the model needs the last "
                             f"{lookback} of each series")
        out.append(ts_features(frame.iloc[-lookback:], prep))
    if not out:
        raise ValueError(f"empty history; the model needs the last {lookback} time steps of each series")
    return np.stack(out)


def forecast_frame(data, prep: dict, values) -> pd.DataFrame:
    """Forecast rows for history `data` and predicted raw-unit `values` (G, horizon), series in transform's
    order: [group column,] time (last timestamp + k steps), step k = 1..horizon, prediction."""
    groups = ts_groups(data, prep)
    horizon, time, group = prep["horizon"], prep["time"], prep.get("group")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1 and len(groups) == 1:
        values = values[None]
    if values.shape != (len(groups), horizon):
        raise ValueError(f"expected forecasts of shape ({len(groups)}, {horizon}), got {values.shape}")
    step = pd.tseries.frequencies.to_offset(prep["freq"])
    parts = []
    for (key, rows), v in zip(groups, values):
        last = rows[time].iloc[-1]
        part = {group: [key] * horizon} if group else {}
        part[time] = pd.DatetimeIndex([last + k * step for k in range(1, horizon + 1)])
        parts.append(pd.DataFrame({**part, "step": np.arange(1, horizon + 1), "prediction": v}))
    return pd.concat(parts, ignore_index=True)


def _ts_name(key) -> str:
    return "" if key is None else f"series {key.item() if isinstance(key, np.generic) else key!r}: "
