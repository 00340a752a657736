"""Fast tests of datamodules/timeseries.py and the time-series half of preprocess.py: chronological splits
whose windows never cross a boundary, train-only scaling, gaps, calendar features, grouped series,
the logged model's transform / forecast_frame, errors, and the shipped sources (offline)."""
from __future__ import annotations

import socket

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import datamodules
from datamodules import DataError, preprocess
from pipelines.config.compose import compose
from pipelines.config.data_schema import TimeSeriesDataConfig
from tests.datafiles import build_dm, write_table

HOUR = pd.Timedelta(hours=1)


def series(seed=0, path=None, **kw):
    return build_dm(TimeSeriesDataConfig, seed, **{"source": "csv", "path": path, **kw})


write_csv = write_table


def hourly(n=200, start="2021-01-01", seed=0, level=20.0):
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=n, freq="h")
    y = level + 10 * np.sin(np.arange(n) * 2 * np.pi / 24) + np.arange(n) * 0.1 + rng.normal(0, 1, n)
    return pd.DataFrame({"time": t, "y": y.round(3), "temp": rng.normal(5, 2, n).round(3)})


def unscale(dm, v):
    mean, std = dm.spec.target_scale
    return np.asarray(v, dtype=np.float64) * std + mean


def inputs_of(dm, split, group=None):
    """The raw target each window's inputs and targets should hold, looked up by timestamp in dm.series."""
    rows = dm.series(split)
    if group is not None:
        rows = rows[rows[dm.prep["group"]] == group]
    values = rows.set_index(dm.prep["time"])[dm.prep["target"]]
    idx = dm.window_index(split)
    if group is not None:
        idx = idx[idx["group"] == group]
    look, hor = dm.spec.lookback, dm.spec.horizon
    pos = values.index.get_indexer(idx["start"])
    assert (pos >= look).all()
    v = values.to_numpy()
    return idx.index.to_numpy(), v[pos[:, None] - look + np.arange(look)], v[pos[:, None] + np.arange(hor)]


# ---- splits and windows ----------------------------------------------------------------------

def test_windows_stay_inside_their_split_in_time_order(tmp_path):
    path = write_csv(tmp_path, hourly(200))
    dm = series(path=path, time="time", target="y", lookback=10, horizon=5)
    look, hor = 10, 5
    spans = {s: (dm.series(s)["time"].min(), dm.series(s)["time"].max()) for s in ("train", "val", "test")}
    assert [len(dm.series(s)) for s in ("train", "val", "test")] == [140, 30, 30]
    assert spans["train"][1] < spans["val"][0] and spans["val"][1] < spans["test"][0]
    assert spans["train"][1] + HOUR == spans["val"][0] and spans["val"][1] + HOUR == spans["test"][0]
    for split, (lo, hi) in spans.items():
        idx = dm.window_index(split)
        x, y = dm._tensors[split]
        assert len(idx) == len(x) == len(y) == len(dm.series(split)) - look - hor + 1
        assert (idx["origin"] - (look - 1) * HOUR >= lo).all() and (idx["start"] + (hor - 1) * HOUR <= hi).all()
        assert (idx["start"] - idx["origin"] == HOUR).all() and idx["origin"].is_monotonic_increasing
        assert idx["group"].isna().all()
        _, past, future = inputs_of(dm, split)
        np.testing.assert_allclose(unscale(dm, x[:, :, 0].numpy()), past, atol=1e-4)
        np.testing.assert_allclose(unscale(dm, y.numpy()), future, atol=1e-4)
    assert x.dtype == y.dtype == torch.float32
    assert dm.spec.input_shape == (10, 1) and (dm.spec.lookback, dm.spec.horizon) == (10, 5)
    assert dm.spec.feature_names == ["time", "y"] and dm.spec.target_name == "y"
    frame, labels = dm.raw_frame("test")
    assert list(frame.columns) == ["time", "y"] and len(frame) == 30 and np.allclose(labels, frame["y"])
    assert dm.fingerprint()["n_test"] == 16 and dm.source.startswith("csv:")
    # the eval loader keeps time order, the train loader shuffles
    assert np.array_equal(next(iter(dm.test_dataloader()))[0].numpy(), x[:dm.cfg.batch_size].numpy())


def test_scaling_statistics_come_from_train_rows_only(tmp_path):
    df = hourly(300, seed=1)
    df["temp"] = np.arange(300) * 3.0           # trending: train, val and test means differ a lot
    path = write_csv(tmp_path, df)
    dm = series(path=path, time="time", target="y", features=["temp"], lookback=8, horizon=4)
    train = dm.series("train")
    for c in ("y", "temp"):
        assert dm.prep["scale"][c] == pytest.approx([train[c].mean(), train[c].std(ddof=0)])
    assert dm.spec.target_scale == pytest.approx(dm.prep["scale"]["y"])
    assert dm.prep["scale"]["temp"][0] != pytest.approx(df["temp"].mean())
    x = dm._tensors["test"][0].numpy()
    mean, std = dm.prep["scale"]["temp"]
    np.testing.assert_allclose(x[0, :, 1] * std + mean, dm.series("test")["temp"].to_numpy()[:8], rtol=1e-5)
    assert x[:, :, 1].min() > 2        # test rows lie far above the train mean, in train units


def test_stride_and_split_sizes(tmp_path):
    path = write_csv(tmp_path, hourly(200))
    dm = series(path=path, time="time", target="y", lookback=10, horizon=5, stride=3)
    idx = dm.window_index("train")
    assert len(idx) == len(range(0, 140 - 15 + 1, 3)) == 42
    assert (idx["origin"].diff().dropna() == 3 * HOUR).all()
    assert idx["origin"].iloc[0] == pd.Timestamp("2021-01-01 09:00")


def test_too_short_series_is_one_line_error(tmp_path):
    path = write_csv(tmp_path, hourly(40))
    with pytest.raises(DataError, match=r"'data.csv' has 40 time steps, too few .* lookback\+horizon=15") as e:
        series(path=path, time="time", target="y", lookback=10, horizon=5)
    assert "\n" not in str(e.value)
    path = write_csv(tmp_path, hourly(200))
    with pytest.raises(DataError, match=r"^data: the test split of 'data.csv' has 10 time steps, fewer than "
                                        r"lookback\+horizon=15; .*data.test_fraction") as e:
        series(path=path, time="time", target="y", lookback=10, horizon=5, test_fraction=0.05)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="the train split of 'data.csv' has 30 time steps"):
        series(path=path, time="time", target="y", lookback=20, horizon=15, val_fraction=0.4, test_fraction=0.45)
    with pytest.raises(DataError, match="raise data.limit"):
        series(path=path, time="time", target="y", lookback=10, horizon=5, limit=30)
    assert len(series(path=path, time="time", target="y", lookback=10, horizon=5, limit=100).series("train")) == 70


# ---- gaps ------------------------------------------------------------------------------------

def gappy(tmp_path):
    df = hourly(100)
    df.loc[0, "y"] = np.nan                                   # leading NaN: edge
    df.loc[50, "y"] = np.nan                                  # a missing value
    df = df.drop(index=20).reset_index(drop=True)             # a missing time step (2021-01-01 20:00)
    return df, write_csv(tmp_path, df)


def test_gaps_error_names_the_key_and_the_fix(tmp_path):
    _, path = gappy(tmp_path)
    with pytest.raises(DataError, match=r"^data.gaps: 'data.csv' has 1 missing time step and 2 missing values "
                                        r"\(first 2021-01-01 00:00:00\); set data.gaps=interpolate or ffill$"):
        series(path=path, time="time", target="y", lookback=5, horizon=2)


@pytest.mark.parametrize("gaps", ["interpolate", "ffill"])
def test_gaps_filled(tmp_path, gaps):
    df, path = gappy(tmp_path)
    dm = series(path=path, time="time", target="y", lookback=5, horizon=2, gaps=gaps)
    rows = dm.series("train").set_index("time")["y"]
    assert len(rows) == 70 and rows.notna().all() and (rows.index.to_series().diff().dropna() == HOUR).all()
    raw = df.set_index("time")["y"]

    def at(h):
        return rows[pd.Timestamp("2021-01-01") + h * HOUR]

    def v(h):
        return raw[pd.Timestamp("2021-01-01") + h * HOUR]
    assert at(0) == v(1)                                       # the start is back filled / nearest
    if gaps == "interpolate":
        assert at(20) == pytest.approx((v(19) + v(21)) / 2) and at(50) == pytest.approx((v(49) + v(51)) / 2)
    else:
        assert at(20) == v(19) and at(50) == v(49)


def test_shipped_gaps_are_reported():
    with pytest.raises(DataError, match=r"data.gaps: 'seattle_temps' has 1 missing time step "
                                        r"\(first 2010-03-14 03:00:00\)"):
        datamodules.build(OmegaConf.structured(TimeSeriesDataConfig(source="seattle_temps")), 0).setup()


# ---- features --------------------------------------------------------------------------------

def test_calendar_features(tmp_path):
    path = write_csv(tmp_path, hourly(200))
    dm = series(path=path, time="time", target="y", features=["temp"], lookback=6, horizon=2, calendar=True)
    assert dm.spec.input_shape == (6, 2 + 6)                  # target, temp, sin/cos of hour, week, year
    x = dm._tensors["train"][0].numpy()
    t = dm.series("train")["time"].iloc[:6]                    # first window: 2021-01-01 00:00..05:00, a Friday
    hour, week, year = (2 * np.pi * (t.dt.hour / 24), 2 * np.pi * (4 + t.dt.hour / 24) / 7,
                        2 * np.pi * (t.dt.hour / 24) / 365.25)
    expected = np.stack([np.sin(hour), np.cos(hour), np.sin(week), np.cos(week), np.sin(year), np.cos(year)], 1)
    np.testing.assert_allclose(x[0, :, 2:], expected, atol=1e-6)
    assert preprocess.ts_calendar("D") == ["week", "year"] and preprocess.ts_calendar("MS") == ["year"]
    assert preprocess.ts_calendar("W-SAT") == ["year"] and preprocess.ts_calendar("15min") == ["hour", "week", "year"]


def long_frame():
    """Two monthly series of different lengths and levels, rows shuffled."""
    a = pd.DataFrame({"date": pd.date_range("2000-01-01", periods=60, freq="MS"), "id": "a",
                      "price": np.arange(60.0)})
    b = pd.DataFrame({"date": pd.date_range("2002-06-01", periods=45, freq="MS"), "id": "b",
                      "price": 1000 + np.arange(45.0)})
    return pd.concat([b, a]).sample(frac=1.0, random_state=0)


def test_grouped_series_never_mix_in_a_window(tmp_path):
    path = write_csv(tmp_path, long_frame())
    dm = series(path=path, time="date", target="price", group="id", lookback=4, horizon=2, val_fraction=0.2,
                test_fraction=0.2)
    assert dm.prep["freq"] == "MS" and dm.spec.feature_names == ["date", "id", "price"]
    assert list(dm.series("val").columns) == ["id", "date", "price"]
    for split in ("train", "val", "test"):
        x, y = (unscale(dm, t.numpy()) for t in dm._tensors[split])
        idx = dm.window_index(split)
        assert list(idx["group"].unique()) == ["a", "b"]       # sorted keys, each series in time order
        for g in ("a", "b"):
            rows, past, future = inputs_of(dm, split, g)
            np.testing.assert_allclose(x[rows, :, 0], past, atol=1e-3)
            np.testing.assert_allclose(y[rows], future, atol=1e-3)
            assert ((x[rows] > 500) == (g == "b")).all()
    # each series is split on its own: b's test split is its last 9 months
    test = dm.series("test")
    assert test[test["id"] == "b"]["date"].min() == pd.Timestamp("2005-06-01")


# ---- the logged model's preprocessing ----------------------------------------------------------

def test_transform_equals_the_last_window(tmp_path):
    path = write_csv(tmp_path, hourly(200))
    dm = series(path=path, time="time", target="y", features=["temp"], lookback=10, horizon=5, calendar=True)
    frame, _ = dm.raw_frame("test")
    history = frame.iloc[-15:-5].sample(frac=1.0, random_state=0)   # order does not matter
    x = dm.transform_frame(history)
    assert x.shape == (1, 10, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], dm._tensors["test"][0][-1].numpy())
    # timestamps as strings (a JSON payload) give the same inputs
    history = history.assign(time=history["time"].astype(str))
    np.testing.assert_array_equal(preprocess.transform(history, dm.prep), x)
    with pytest.raises(ValueError, match="needs the last 10"):
        preprocess.transform(frame.iloc[:9], dm.prep)
    with pytest.raises(ValueError, match="missing column 'temp'"):
        preprocess.transform(frame.drop(columns="temp"), dm.prep)


def test_transform_grouped_and_forecast_frame(tmp_path):
    path = write_csv(tmp_path, long_frame())
    dm = series(path=path, time="date", target="price", group="id", lookback=4, horizon=2, val_fraction=0.2,
                test_fraction=0.2)
    frame, _ = dm.raw_frame("test")
    history = pd.concat([g.iloc[-6:-2] for _, g in frame.groupby("id")]).iloc[::-1]
    x = preprocess.transform(history, dm.prep)
    idx = dm.window_index("test")
    last = [np.flatnonzero(idx["group"] == g)[-1] for g in ("a", "b")]
    np.testing.assert_array_equal(x, dm._tensors["test"][0][last].numpy())
    out = preprocess.forecast_frame(history, dm.prep, np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert list(out.columns) == ["id", "date", "step", "prediction"]
    assert out["id"].tolist() == ["a", "a", "b", "b"] and out["step"].tolist() == [1, 2, 1, 2]
    starts = idx.loc[last, "start"]
    assert out["date"].tolist() == [t + pd.DateOffset(months=k) for t in starts for k in (0, 1)]
    assert out["prediction"].tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        preprocess.forecast_frame(history, dm.prep, np.zeros((1, 2)))


def test_transform_gaps_follow_prep(tmp_path):
    path = write_csv(tmp_path, hourly(200))
    dm = series(path=path, time="time", target="y", lookback=10, horizon=5)
    frame, _ = dm.raw_frame("test")
    history = frame.iloc[-12:].drop(index=frame.index[-3])
    with pytest.raises(ValueError, match="history has 1 time step with missing values"):
        preprocess.transform(history, dm.prep)
    x = preprocess.transform(history, {**dm.prep, "gaps": "ffill"})
    assert x.shape == (1, 10, 1) and x[0, -3, 0] == x[0, -4, 0]


# ---- sources and errors ------------------------------------------------------------------------

def test_csv_column_and_value_errors(tmp_path):
    df = hourly(100)
    path = write_csv(tmp_path, df)
    with pytest.raises(DataError, match=r"^data.target: column 'nope' not in data.csv \(columns: time, y, temp\)$"):
        series(path=path, time="time", target="nope")
    with pytest.raises(DataError, match=r"^data.time: column 'when' not in data.csv \(columns: time, y, temp\)$"):
        series(path=path, time="when", target="y")
    with pytest.raises(DataError, match="data.features: column 'rain' not in data.csv"):
        series(path=path, time="time", target="y", features=["rain"])
    with pytest.raises(DataError, match="data.group: column 'site' not in data.csv"):
        series(path=path, time="time", target="y", group="site")
    with pytest.raises(DataError, match="data.time: required for data.source=csv"):
        series(path=path, target="y")
    with pytest.raises(DataError, match="data.path: file"):
        series(path=str(tmp_path / "absent.csv"), time="time", target="y")
    bad = write_csv(tmp_path, df.assign(time=df["time"].astype(str).where(df.index != 7, "soon")), "bad.csv")
    with pytest.raises(DataError, match=r"data.time: column 'time' of bad.csv has 1 values that are not timestamps, "
                                        r"such as 'soon'"):
        series(path=bad, time="time", target="y")
    text = write_csv(tmp_path, df.assign(y="high"), "text.csv")
    with pytest.raises(DataError, match="data.target: column 'y' of text.csv is not numeric"):
        series(path=text, time="time", target="y")
    dup = write_csv(tmp_path, pd.concat([df, df.iloc[[5]]]), "dup.csv")
    with pytest.raises(DataError, match=r"data.time: 'dup.csv' has 1 repeated timestamps "
                                        r"\(first 2021-01-01 05:00:00\)"):
        series(path=dup, time="time", target="y")
    with pytest.raises(DataError, match="data.freq: 'weekly' is not a pandas frequency"):
        series(path=path, time="time", target="y", freq="weekly")
    with pytest.raises(DataError, match="data.freq: 'data.csv': timestamp 2021-01-01 01:00:00 is not on the '2h' grid"):
        series(path=path, time="time", target="y", freq="2h")
    with pytest.raises(DataError, match="data.source: unknown 'sqlite'"):
        series(source="sqlite")


def test_parquet_source(tmp_path):
    path = tmp_path / "data.parquet"
    hourly(120).to_parquet(path)
    dm = series(source="parquet", path=str(path), time="time", target="y", lookback=5, horizon=3)
    assert dm.source == f"parquet:{path.resolve()}" and len(dm.series("train")) == 84


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name,source,n_series,steps", [("seattle_temps", "vega_datasets:seattle-temps", 1, [8760]),
                                                        ("stocks", "vega_datasets:stocks", 5, [123, 123, 68, 123, 123]),
                                                        ("co2", "statsmodels:co2", 1, [2284])])
def test_shipped_sources_load_offline_with_their_configs(offline, name, source, n_series, steps):
    cfg = compose([f"data={name}", "model=mlp"])
    dm = datamodules.build(cfg.data, 42)
    dm.setup()
    assert dm.source == source and dm.spec.horizon == cfg.data.horizon
    rows = pd.concat([dm.series(s) for s in ("train", "val", "test")])
    group = dm.prep["group"]
    assert (rows.groupby(group).size().tolist() if group else [len(rows)]) == steps
    assert len(dm.window_index("test").drop_duplicates("group")) == n_series
    assert all(len(dm._tensors[s][0]) > 0 for s in ("train", "val", "test"))
