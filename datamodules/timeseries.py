"""Time series for forecasting: shipped series (vega_datasets' Seattle hourly temperatures of 2010 and
monthly stock prices, statsmodels' weekly Mauna Loa CO2) or CSV / Parquet files, as sliding windows.

Used by `dlp train model=forecaster data=seattle_temps ...`. Each series is put on a regular time grid
(gaps filled or refused per data.gaps), split chronologically into train | val | test, standardised with
train statistics, and cut into (lookback inputs, horizon targets) windows that never cross a split
boundary. The cleaning, scaling and calendar features live in preprocess.py so the logged model applies
them to a raw history exactly as here.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pandas.api import types as ptypes
from pandas.tseries.frequencies import to_offset

from . import preprocess, validate
from .base import SPLITS, BaseDataModule, DataError, DataSpec
from .tabular import _listing, read_table

# shipped source -> default (time, target, group) columns
SHIPPED = {"seattle_temps": ("date", "temp", None), "stocks": ("date", "price", "symbol"), "co2": ("date", "co2", None)}
SOURCES = (*SHIPPED, "csv", "parquet")
GAPS = ("error", "interpolate", "ffill")
FREQ_HINT = "a pandas alias such as h, D, W-SAT or MS"


def read_series(source: str, path) -> tuple:
    """Load the raw frame: (DataFrame, default (time, target, group) columns, source description)."""
    if source in ("seattle_temps", "stocks"):
        from vega_datasets import data

        dataset = getattr(data, source)
        if not dataset.is_local:  # never fall back to vega_datasets' download
            raise DataError(f"data.source: this vega_datasets does not ship '{source}'; use data.source=csv")
        return dataset(use_local=True), SHIPPED[source], f"vega_datasets:{Path(dataset.filepath).stem}"
    if source == "co2":
        from statsmodels.datasets import co2

        frame = co2.load_pandas().data.rename_axis("date").reset_index()
        return frame, SHIPPED["co2"], "statsmodels:co2"
    if source not in ("csv", "parquet"):
        raise DataError(f"data.source: unknown '{source}'; choose one of {', '.join(SOURCES)}")
    frame, _, description = read_table(source, path)
    return frame, (None, None, None), description


class TimeSeriesDataModule(BaseDataModule):
    """Windows x (N, lookback, F) = [scaled target, scaled features, calendar], y (N, horizon) = scaled target."""

    def _load(self) -> None:
        cfg = self.cfg
        if cfg.task != "regression":
            raise DataError(f"data.task: forecasting is regression, not '{cfg.task}'; set data.task=regression")
        if cfg.gaps not in GAPS:
            raise DataError(f"data.gaps: unknown '{cfg.gaps}'; choose {', '.join(GAPS)}")
        if cfg.limit is not None and cfg.limit < 1:
            raise DataError(f"data.limit: {cfg.limit} keeps no time steps; set it >= 1 or null")
        frame, (time, target, group), self.source = read_series(cfg.source, cfg.path)
        self._where = Path(cfg.path).name if cfg.source in ("csv", "parquet") else cfg.source
        time, target, group = cfg.time or time, cfg.target or target, cfg.group or group
        features = list(cfg.features or [])
        frame = self._parse(frame, time, target, group, features)
        self.prep = prep = {"kind": "timeseries", "time": time, "group": group, "target": target, "features": features,
                            "calendar": bool(cfg.calendar), "freq": self._frequency(frame, time, group),
                            "lookback": int(cfg.lookback), "horizon": int(cfg.horizon), "scale": {}, "gaps": cfg.gaps}
        series = [(key, self._clean(key, rows)) for key, rows in preprocess.ts_groups(frame, prep)]
        cuts = [self._cuts(key, len(rows)) for key, rows in series]

        # statistics of the train rows of every series, pooled
        train = pd.concat([rows.iloc[:cut[0]] for (_, rows), cut in zip(series, cuts)])
        for c in [target, *features]:
            v = train[c].to_numpy(dtype=np.float64)
            std = float(v.std())
            prep["scale"][c] = [float(v.mean()), std if std > 0 else 1.0]
        feats = [preprocess.ts_features(rows, prep) for _, rows in series]

        names = preprocess.ts_columns(prep)
        self._series, self._index = {}, {}
        for i, split in enumerate(SPLITS):
            xs, ys, index, rows_of = [], [], [], []
            for (key, rows), cut, f in zip(series, cuts, feats):
                lo, hi = (0, *cut)[i], cut[i]
                x, y, first = _windows(f[lo:hi], prep["lookback"], prep["horizon"], cfg.stride)
                t = rows[time].iloc[lo:hi].reset_index(drop=True)
                xs.append(x)
                ys.append(y)
                index.append(pd.DataFrame({"group": pd.Series([key] * len(first), dtype=object),
                                           "origin": t.iloc[first + prep["lookback"] - 1].to_numpy(),
                                           "start": t.iloc[first + prep["lookback"]].to_numpy()}))
                rows_of.append(rows.iloc[lo:hi])
            part = pd.concat(rows_of, ignore_index=True)
            self._series[split] = part
            self._index[split] = pd.concat(index, ignore_index=True)
            self._raw[split] = (part[names], part[target].to_numpy(dtype=np.float64))
            self._tensors[split] = (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))
        self.spec = DataSpec(task="regression", num_classes=0, input_shape=(prep["lookback"], feats[0].shape[1]),
                             feature_names=names, target_name=str(target), target_scale=list(prep["scale"][target]),
                             lookback=prep["lookback"], horizon=prep["horizon"])

    # -- public helpers (forecast plots, baselines) --
    def series(self, split: str) -> pd.DataFrame:
        """Cleaned (gap-filled, unscaled) rows of a split: [group column if any], time, target, features."""
        self.setup()
        prep = self.prep
        group = [prep["group"]] if prep["group"] else []
        return self._series[split][[*group, prep["time"], prep["target"], *prep["features"]]].copy()

    def window_index(self, split: str) -> pd.DataFrame:
        """One row per window of a split, in tensor order: group (None without a group column),
        origin (time of the last input step), start (time of the first target step)."""
        self.setup()
        return self._index[split].copy()

    # -- loading steps --
    def _parse(self, frame: pd.DataFrame, time, target, group, features) -> pd.DataFrame:
        """Check the columns, parse the times, sort by (group, time) and refuse repeated timestamps."""
        where, columns = self._where, frame.columns
        for key, name in (("time", time), ("target", target)):
            if not name:
                raise DataError(f"data.{key}: required for data.source={self.cfg.source}; "
                                f"set data.{key}=<column> (columns: {_listing(columns)})")
        for key, names in (("time", [time]), ("target", [target]), ("group", [group] if group else []),
                           ("features", features)):
            for name in names:
                if name not in columns:
                    raise DataError(f"data.{key}: column '{name}' not in {where} (columns: {_listing(columns)})")
        clash = [c for c in features if c in (time, target, group)]
        if clash:
            raise DataError(f"data.features: lists '{clash[0]}', which is the time, target or group column; remove it")
        if ptypes.is_numeric_dtype(frame[time].dtype):
            raise DataError(f"data.time: column '{time}' of {where} holds numbers, not timestamps; "
                            "convert it to dates (e.g. 2020-01-31 or 2020-01-31 13:00)")
        out = frame[[time, *([group] if group else []), target, *features]].reset_index(drop=True)
        try:
            t = pd.to_datetime(out[time], errors="coerce")
        except (ValueError, TypeError) as e:
            raise DataError(f"data.time: column '{time}' of {where} cannot be read as timestamps ({e})") from e
        if t.isna().any():
            raise DataError(f"data.time: column '{time}' of {where} has {int(t.isna().sum())} values that are not "
                            f"timestamps, such as {validate.plain(out[time][t.isna()].iloc[0])!r}; "
                            "fix them or drop those rows")
        out[time] = t
        for key, names in (("target", [target]), ("features", features)):
            validate.check_numbers_as_text(out, names, where, "fix them or drop those rows", key=f"data.{key}")
            for name in names:
                if not ptypes.is_numeric_dtype(out[name].dtype):
                    raise DataError(f"data.{key}: column '{name}' of {where} is not numeric (values like "
                                    f"{validate.plain(out[name].dropna().iloc[0])!r}); forecasting needs numbers")
                out[name] = out[name].astype(np.float64)
            # ±inf is no gap (data.gaps leaves it): it would train to NaN losses
            validate.check_finite(out, names, where, "clean them or drop those rows", key=f"data.{key}")
        if group and out[group].isna().any():
            raise DataError(f"data.group: column '{group}' of {where} has rows without a series id; fill or drop them")
        keys = [group, time] if group else [time]
        out = out.sort_values(keys, kind="stable").reset_index(drop=True)
        repeated = out.duplicated(keys)
        if repeated.any():
            row = out[repeated].iloc[0]
            hint = "" if group else " (set data.group if the file holds several series)"
            raise DataError(f"data.time: {_name(where, row[group] if group else None)} has {int(repeated.sum())} "
                            f"repeated timestamps (first {row[time]}); keep one row per time step{hint}")
        return out

    def _frequency(self, frame: pd.DataFrame, time, group) -> str:
        """data.freq, else pd.infer_freq when every series agrees, else the most common step."""
        freq = self.cfg.freq
        if freq:
            try:
                return to_offset(freq).freqstr
            except ValueError:
                raise DataError(f"data.freq: '{freq}' is not a pandas frequency; use {FREQ_HINT}") from None
        times = [rows[time] for _, rows in frame.groupby(group, sort=True)] if group else [frame[time]]
        found = set()
        with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset
            warnings.simplefilter("ignore")
            for t in times:
                f = pd.infer_freq(pd.DatetimeIndex(t)) if len(t) >= 3 else None
                found.add(getattr(f, "freqstr", f))
        if len(found) == 1 and None not in found:
            return found.pop()
        steps = pd.concat([t.diff() for t in times]).dropna()
        if steps.empty:
            raise DataError(f"data.freq: cannot infer the time step of {self._where}; set data.freq to {FREQ_HINT}")
        return to_offset(steps.mode().iloc[0]).freqstr

    def _clean(self, key, rows: pd.DataFrame) -> pd.DataFrame:
        """One series on its regular grid, cut to data.limit steps, gaps refused or filled."""
        prep, cfg, name = self.prep, self.cfg, _name(self._where, key)
        try:
            grid = preprocess.ts_regular(rows, prep)
        except ValueError as e:
            raise DataError(f"data.freq: {name}: {e}; set data.freq to the data's step ({FREQ_HINT})") from None
        missing_step = ~grid[prep["time"]].isin(rows[prep["time"]]).to_numpy()
        if cfg.limit is not None:
            grid, missing_step = grid.iloc[-cfg.limit:].reset_index(drop=True), missing_step[-cfg.limit:]
        columns = [prep["target"], *prep["features"]]
        holes = grid[columns].isna().any(axis=1).to_numpy()
        if not holes.any():
            return grid
        if cfg.gaps == "error":
            steps, values = int(missing_step.sum()), int(grid.loc[~missing_step, columns].isna().to_numpy().sum())
            found = ([f"{steps} missing time step{'s' * (steps != 1)}"] if steps else []) + \
                    ([f"{values} missing value{'s' * (values != 1)}"] if values else [])
            first = grid[prep["time"]][holes].iloc[0]
            raise DataError(f"data.gaps: {name} has {' and '.join(found)} (first {first}); "
                            "set data.gaps=interpolate or ffill")
        try:
            return preprocess.ts_fill(grid, prep)
        except ValueError as e:
            raise DataError(f"data: {name}: {e}; choose other data.features or data.target") from None

    def _cuts(self, key, n: int) -> tuple:
        """(end of train, end of val, end) of a series of n steps; every split must hold one window."""
        cfg, name = self.cfg, _name(self._where, key)
        need = int(cfg.lookback) + int(cfg.horizon)
        n_val, n_test = round(n * cfg.val_fraction), round(n * cfg.test_fraction)
        sizes = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
        if n < 3 * need:
            longer = "raise data.limit" if cfg.limit is not None else "use a longer series"
            raise DataError(f"data: {name} has {n} time steps, too few for train, val and test splits of "
                            f"lookback+horizon={need} steps each; lower data.lookback/data.horizon or {longer}")
        for split, size in sizes.items():
            if size < need:
                fix = ("lower data.lookback/data.horizon or data.val_fraction/data.test_fraction, "
                       "or use a longer series" if split == "train" else
                       f"lower data.lookback/data.horizon, raise data.{split}_fraction or use a longer series")
                raise DataError(f"data: the {split} split of {name} has {size} time steps, fewer than "
                                f"lookback+horizon={need}; {fix}")
        return sizes["train"], sizes["train"] + n_val, n


def _windows(feats: np.ndarray, lookback: int, horizon: int, stride: int) -> tuple:
    """Every stride-th window of one split of one series: (x (N, lookback, F), y (N, horizon), first steps)."""
    first = np.arange(0, len(feats) - lookback - horizon + 1, stride)
    x = feats[first[:, None] + np.arange(lookback)]
    y = feats[first[:, None] + lookback + np.arange(horizon), 0]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32), first


def _name(where: str, key) -> str:
    return f"'{where}'" if key is None else f"'{where}' series '{key}'"
