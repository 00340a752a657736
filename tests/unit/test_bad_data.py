"""Bad data that used to train silently (issue 17): ±inf values, numbers stored as text with typos, NaN losses,
k² confusion-matrix labels, unreadable `dlp predict` inputs, and messages that named the wrong thing.

Data errors must be one line, exit 2, and open no MLflow run at all; a NaN loss must end its run FAILED.
"""
from __future__ import annotations

import time

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules import DataError, preprocess
from pipelines.config.data_schema import TabularDataConfig, TimeSeriesDataConfig
from pipelines.errors import ConfigError
from tests.conftest import SMOKE, assert_one_line_error, dlp_in_new_store, dlp_in_process
from tests.datafiles import build_dm, write_table


def table(n=120, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.normal(size=n), "age": rng.integers(18, 80, n).astype(float),
                          "city": rng.choice(["paris", "rome", "oslo"], n)})
    frame["label"] = np.where(frame.x > 0, "yes", "no")
    return frame


def tabular(path, **kw):
    return build_dm(TabularDataConfig, 0, source="csv", path=path, target="label", **kw)


def all_runs(uri):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


# ---- ±inf in the data ------------------------------------------------------------------------

def test_inf_in_a_feature_is_refused_with_column_and_count(tmp_path):
    frame = table()
    frame.loc[[3, 7], "x"] = np.inf
    frame.loc[11, "x"] = -np.inf
    path = write_table(tmp_path, frame)
    with pytest.raises(DataError, match=r"^data: column 'x' of data.csv holds 3 non-finite values \(inf/-inf\); "
                                        r"clean them"):
        tabular(path)
    frame.loc[5, "age"] = np.inf   # two columns: both named, with their counts
    with pytest.raises(DataError, match=r"columns 'x' \(3\), 'age' \(1\) of data.csv hold non-finite"):
        tabular(write_table(tmp_path, frame))
    # left out of the features, the column is no one's business
    assert tabular(write_table(tmp_path, frame), features=["city"]).spec.input_shape == (3,)


def test_nan_stays_a_missing_value_that_data_missing_handles(tmp_path):
    frame = table()
    frame.loc[[2, 9], "x"] = np.nan
    path = write_table(tmp_path, frame)
    with pytest.raises(DataError, match="column 'x' has 2 missing values; set data.missing=drop"):
        tabular(path)
    assert tabular(path, missing="impute").spec.input_shape == (5,)
    assert tabular(path, missing="drop").fingerprint()["n_train"] < 120 - 2 - 30


def test_inf_in_a_regression_target_is_refused(tmp_path):
    frame = table().drop(columns="label")
    frame["price"] = np.linspace(1.5, 99.5, len(frame))
    frame.loc[4, "price"] = -np.inf
    path = write_table(tmp_path, frame)
    with pytest.raises(DataError, match=r"^data.target: column 'price' of data.csv holds 1 non-finite value "):
        build_dm(TabularDataConfig, 0, source="csv", path=path, target="price")


def test_values_too_large_to_standardise_are_refused(tmp_path):
    frame = table().drop(columns="label")
    frame["price"] = np.linspace(1.5, 99.5, len(frame))
    frame.loc[4, "price"] = 1e39   # finite in the file, inf as float32
    path = write_table(tmp_path, frame)
    with pytest.raises(DataError, match="too large to standardise"):
        build_dm(TabularDataConfig, 0, source="csv", path=path, target="price")


def test_inf_in_time_series_values_is_refused(tmp_path):
    t = pd.date_range("2021-01-01", periods=200, freq="h")
    frame = pd.DataFrame({"time": t, "y": np.sin(np.arange(200) / 5), "temp": np.arange(200.0)})
    frame.loc[[10, 20], "temp"] = np.inf
    path = write_table(tmp_path, frame)
    kw = dict(source="csv", path=path, time="time", target="y", lookback=8, horizon=4)
    with pytest.raises(DataError, match=r"^data.features: column 'temp' of data.csv holds 2 non-finite values"):
        build_dm(TimeSeriesDataConfig, 0, features=["temp"], **kw)
    frame.loc[50, "y"] = np.inf
    with pytest.raises(DataError, match=r"^data.target: column 'y' of data.csv holds 1 non-finite value "):
        build_dm(TimeSeriesDataConfig, 0, **{**kw, "path": write_table(tmp_path, frame)})


def test_the_logged_transform_refuses_inf_too():
    """Serving applies preprocess.py alone: an inf there must be an error, not a NaN prediction."""
    prep = preprocess.fit_tabular(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), ["x"], [], "impute")
    with pytest.raises(ValueError, match=r"column 'x' has non-numeric or infinite values such as inf"):
        preprocess.transform(pd.DataFrame({"x": [1.0, np.inf]}), prep)


# ---- numbers stored as text ------------------------------------------------------------------

def test_a_numeric_column_with_a_few_strings_is_refused_not_one_hot_encoded(tmp_path):
    frame = table().astype({"age": object})
    frame.loc[[3, 30], "age"] = "two"
    frame.loc[8, "age"] = "forty"
    path = write_table(tmp_path, frame)
    with pytest.raises(DataError, match=r"^data: column 'age' of data.csv is numeric but holds 3 non-numbers "
                                        r"\('two', 'forty'\); fix them or list the column under data.categorical$"):
        tabular(path)
    # an explicit declaration is respected: the column is categorical, typos and all
    dm = tabular(path, categorical=["age"])
    assert "age" in dm.prep["categorical"] and "two" in dm.prep["categorical"]["age"]


def test_a_text_column_and_a_mostly_text_column_stay_categorical(tmp_path):
    frame = table()
    frame["size"] = np.where(np.arange(len(frame)) % 2, "S", "10")   # half numbers: a real category
    dm = tabular(write_table(tmp_path, frame))
    assert set(dm.prep["categorical"]) == {"city", "size"}


def test_a_regression_target_with_a_typo_is_refused(tmp_path):
    frame = table().drop(columns="label")
    frame["price"] = [f"{v:.2f}" for v in np.linspace(1.5, 99.5, len(frame))]
    frame.loc[17, "price"] = "12,50"
    path = write_table(tmp_path, frame)
    with pytest.raises(DataError, match=r"^data.target: column 'price' of data.csv is numeric but holds 1 "
                                        r"non-number \('12,50'\)"):
        build_dm(TabularDataConfig, 0, source="csv", path=path, target="price")


# ---- messages --------------------------------------------------------------------------------

def test_data_path_names_what_it_is_instead_of_a_file(tmp_path):
    # a folder is a table of shards (streamed): one without any says what it should hold
    with pytest.raises(DataError, match=r"^data.path: '.*' holds no .csv or .csv.gz files; point data.path at a csv "
                                        r"file or a folder of them"):
        tabular(str(tmp_path))
    with pytest.raises(DataError, match=r"^data.path: '.*' is a directory, not a file"):
        tabular(str(tmp_path), streaming=False)
    with pytest.raises(DataError, match=r"^data.path: '/dev/null' is not a regular file"):
        tabular("/dev/null")
    with pytest.raises(DataError, match=r"^data.path: file '.*nope.csv' does not exist$"):
        tabular(str(tmp_path / "nope.csv"))


def test_numpy_scalars_do_not_leak_into_messages(tmp_path):
    frame = table()
    frame["label"] = 1
    with pytest.raises(DataError, match=r"has a single class \(1\);") as e:
        tabular(write_table(tmp_path, frame))
    assert "np." not in str(e.value)
    frame["label"] = frame.x > 0
    with pytest.raises(DataError, match=r"values like (True|False);") as e:
        tabular(write_table(tmp_path, frame), task="regression")
    assert "np." not in str(e.value)


def test_an_override_that_does_not_parse_is_named():
    from pipelines.config.compose import compose

    for bad in ("optim.lr=[1,", "data.path=foo bar)", "tags.k='a"):
        with pytest.raises(ConfigError) as e:
            compose(["model=mlp", bad])
        message = str(e.value)
        assert f"cannot parse override '{bad}'" in message and "++" not in message, message


# ---- end to end: one line, exit 2, no run --------------------------------------------------

@pytest.mark.parametrize("spoil, needle", [
    (lambda f: f.__setitem__("x", f.x.where(f.index != 5, np.inf)), "column 'x' of bad.csv holds 1 non-finite"),
    (lambda f: f.__setitem__("age", f.age.astype(object).where(f.index != 5, "two")), "column 'age' of bad.csv is "
                                                                                     "numeric but holds 1"),
])
def test_bad_data_fails_in_one_line_before_any_mlflow_run(store, tmp_path, capsys, spoil, needle):
    frame = table()
    spoil(frame)
    frame.to_csv(tmp_path / "bad.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=mlp", "data=csv", "data.path=bad.csv", "data.target=label", *SMOKE)
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)
    assert all_runs(store) == []


# ---- NaN losses --------------------------------------------------------------------------------

def test_a_nan_loss_raises_a_model_error_naming_epoch_and_step():
    import models
    from models.errors import ModelError
    from tests.unit.test_models import Spec, make_cfg

    spec = Spec(num_classes=2, input_shape=(3,))
    model = models.build(make_cfg(), spec)
    x, y = torch.randn(32, 3), torch.arange(32) % 2
    x[20] = float("nan")                     # the third batch of 8: its loss is nan
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ModelError, match=r"^train/loss is nan at epoch 1 \(step 2\): lower optim.lr, "
                                         r"enable trainer.gradient_clip_val"):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    assert ModelError.exit_code == 2


def test_an_absurd_learning_rate_fails_the_run(store, tmp_path, capsys):
    table().to_csv(tmp_path / "t.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=mlp", "data=csv", "data.path=t.csv", "data.target=label", *SMOKE,
                          "optim.lr=1e12")
    assert proc.returncode == 2
    assert_one_line_error(proc, "train/loss is nan at epoch 1", "optim.lr")
    assert [r.info.status for r in all_runs(store)] == ["FAILED"]


# ---- the confusion-matrix plot -------------------------------------------------------------

def _drawn_texts(monkeypatch):
    """The cell texts of every figure saved from now on."""
    import matplotlib.figure

    texts, save = [], matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        texts.append([t.get_text() for ax in fig.axes for t in ax.texts])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return texts


def test_a_1000_class_confusion_matrix_renders_in_seconds(tmp_path, monkeypatch):
    from pipelines.tracking import plots

    texts = _drawn_texts(monkeypatch)
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 1000, 5000), rng.integers(0, 1000, 5000)
    start = time.perf_counter()
    out = plots.confusion_matrix(y, p, [f"class_{i}" for i in range(1000)], tmp_path / "cm.png")
    assert time.perf_counter() - start < 30
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and texts == [[]]


def test_a_10_class_confusion_matrix_keeps_its_cell_labels(tmp_path, monkeypatch):
    from pipelines.tracking import plots

    texts = _drawn_texts(monkeypatch)
    y = np.repeat(np.arange(10), 3)
    plots.confusion_matrix(y, y, [str(i) for i in range(10)], tmp_path / "cm.png")
    assert len(texts[0]) == 100 and texts[0].count("3") == 10 and texts[0].count("0") == 90


# ---- dlp predict ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """(store URI, runs:/ URI, folder) of one tiny tabular model."""
    tmp = tmp_path_factory.mktemp("predict")
    table(n=80).drop(columns="city").to_csv(tmp / "t.csv", index=False)
    uri, code, out = dlp_in_new_store(tmp, "train", "model=mlp", "data=csv", "data.path=t.csv", "data.target=label",
                                      *SMOKE)
    assert code == 0, out
    run_id = all_runs(uri)[0].info.run_id
    return uri, f"runs:/{run_id}/model", tmp


def _predict(capsys, monkeypatch, logged_model, content, name="in.csv"):
    uri, model_uri, tmp = logged_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp)
    path = tmp / name
    path.write_bytes(content) if isinstance(content, bytes) else content.to_csv(path, index=False)
    (tmp / "out.csv").unlink(missing_ok=True)
    return dlp_in_process(capsys, "predict", model_uri, name, "-o", "out.csv")


def test_predict_writes_finite_predictions(capsys, monkeypatch, logged_model):
    proc = _predict(capsys, monkeypatch, logged_model, table(n=10).drop(columns=["city", "label"]))
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(logged_model[2] / "out.csv")) == 10


@pytest.mark.parametrize("content, needles", [
    (bytes(range(256)) * 8, ["cannot read 'junk.csv' as CSV"]),
    (b"x,age\n1,2\n3,4,5,6\n", ["cannot read 'junk.csv' as CSV", "line 3"]),
    (b"", ["cannot read 'junk.csv' as CSV", "No columns"]),
    (b"x,age\n\xff\xfe\xfa,1\n", ["cannot read 'junk.csv' as CSV", "codec can't decode"]),
    (b"x,age\n", ["'junk.csv' has no rows"]),
])
def test_predict_on_an_unreadable_file_is_one_line(capsys, monkeypatch, logged_model, content, needles):
    proc = _predict(capsys, monkeypatch, logged_model, content, name="junk.csv")
    assert proc.returncode == 2
    assert_one_line_error(proc, *needles)


def test_predict_names_the_rows_holding_inf(capsys, monkeypatch, logged_model):
    rows = table(n=10).drop(columns=["city", "label"])
    rows.loc[[2, 6], "age"] = np.inf
    proc = _predict(capsys, monkeypatch, logged_model, rows)
    assert proc.returncode == 2
    assert_one_line_error(proc, "column 'age' of in.csv holds non-finite values (inf/-inf) in row(s) 3, 7")
    assert not (logged_model[2] / "out.csv").exists()


def test_predict_never_writes_nan_probabilities(capsys, monkeypatch, logged_model):
    rows = table(n=10).drop(columns=["city", "label"])
    rows.loc[4, "x"] = 1e300   # finite, but inf once scaled to float32: the network returns NaN
    proc = _predict(capsys, monkeypatch, logged_model, rows)
    assert proc.returncode == 2
    assert_one_line_error(proc, "prediction row(s) 5 for in.csv are NaN or inf", "nothing was written")
    assert not (logged_model[2] / "out.csv").exists()
