"""`dlp train` / `dlp predict` end to end for the sequence families: raw texts in, labels out; a raw history
in, future values with timestamps out. In-process CLI against a temporary MLflow store."""
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from tests.conftest import SMOKE, assert_one_line_error, dlp_in_process, runs_with_status


def _finished_run(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in runs]
    return client, runs[0]


def _reviews(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good, bad = ["great", "moving", "funny", "superb"], ["dull", "boring", "awful", "tedious"]
    filler = ["the", "film", "plot", "was", "and", "a", "really", "story"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(filler, size=rng.integers(3, 12))) + list(rng.choice(good if i % 2 else bad, size=2))
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "sentiment": label})
    return pd.DataFrame(rows)


def test_text_csv_trains_and_predicts_from_raw_strings(store, tmp_path, capsys):
    _reviews().to_csv(tmp_path / "reviews.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=rnn_classifier", "data=text_csv", "data.path=reviews.csv",
                          "data.text=review", "data.target=sentiment", "data.min_freq=1", "model.hidden_size=16",
                          "model.embedding_dim=16", "optim.lr=0.01", "trainer.max_epochs=8",
                          "trainer.progress_bar=false", "trainer.threads=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _finished_run(store)
    assert run.data.metrics["test/acc"] >= 0.9  # two sentiment words per text: easy once learned
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/learning_curve.png", "plots/confusion_matrix.png"}

    texts = pd.DataFrame({"review": ["a superb and moving film", "dull , boring and tedious",
                                     "", "words it never saw: zyzzyva"]})
    texts.to_csv(tmp_path / "texts.csv", index=False)
    proc = dlp_in_process(capsys, "predict", f"runs:/{run.info.run_id}/model", "texts.csv", "-o", "preds.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert list(preds.columns) == ["prediction", "prob_neg", "prob_pos"]
    assert list(preds["prediction"][:2]) == ["pos", "neg"]
    assert np.allclose(preds[["prob_neg", "prob_pos"]].sum(axis=1), 1.0, atol=1e-5)

    proc = dlp_in_process(capsys, "predict", f"runs:/{run.info.run_id}/model", "reviews.csv", "-o", "p.csv")
    assert proc.returncode == 0  # extra columns (the label) are ignored
    pd.DataFrame({"other": ["x"]}).to_csv(tmp_path / "wrong.csv", index=False)
    proc = dlp_in_process(capsys, "predict", f"runs:/{run.info.run_id}/model", "wrong.csv", "-o", "p.csv")
    assert_one_line_error(proc, "wrong.csv", "review")


def _series(n: int, start: str = "2024-01-01") -> pd.DataFrame:
    t = np.arange(n)
    rng = np.random.default_rng(0)
    return pd.DataFrame({"ts": pd.date_range(start, periods=n, freq="h").astype(str),
                         "load": 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(0, 0.1, n),
                         "temp": np.cos(2 * np.pi * t / 24)})


def test_forecaster_trains_logs_forecast_plots_and_predicts_future_timestamps(store, tmp_path, capsys):
    _series(600).to_csv(tmp_path / "load.csv", index=False)
    common = ["data=timeseries_csv", "data.path=load.csv", "data.time=ts", "data.target=load",
              "data.features=[temp]", "data.lookback=24", "data.horizon=6", "trainer.progress_bar=false",
              "trainer.threads=1", "monitor.metric=val/mae"]
    proc = dlp_in_process(capsys, "train", "model=forecaster", "model.hidden_size=16", *common, "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _finished_run(store)
    run_id = run.info.run_id
    assert run.data.tags["dlp.task"] == "regression"
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {
        "plots/learning_curve.png", "plots/forecast.png", "plots/error_by_horizon.png"}
    by_h = client.get_metric_history(run_id, "test/mae_by_horizon")
    assert sorted(m.step for m in by_h) == [1, 2, 3, 4, 5, 6]
    assert np.isclose(np.mean([m.value for m in by_h]), run.data.metrics["test/mae"], rtol=1e-3)
    table = pd.read_csv(client.download_artifacts(run_id, "forecast/per_horizon.csv", str(tmp_path)))
    assert list(table.columns) == ["steps_ahead", "mae", "rmse"] and len(table) == 6

    history = _series(700).tail(30)  # raw rows, timestamps as strings, more than lookback
    history.to_csv(tmp_path / "history.csv", index=False)
    proc = dlp_in_process(capsys, "predict", f"runs:/{run_id}/model", "history.csv", "-o", "future.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    future = pd.read_csv(tmp_path / "future.csv")
    assert list(future["step"]) == [1, 2, 3, 4, 5, 6]
    last = pd.Timestamp(history["ts"].iloc[-1])
    assert list(pd.to_datetime(future["ts"])) == [last + pd.Timedelta(hours=k) for k in range(1, 7)]
    assert np.isfinite(future["prediction"]).all()

    history.head(10).to_csv(tmp_path / "short.csv", index=False)  # fewer rows than lookback
    proc = dlp_in_process(capsys, "predict", f"runs:/{run_id}/model", "short.csv", "-o", "x.csv")
    assert_one_line_error(proc, "short.csv", "24")


def test_a_series_shorter_than_lookback_plus_horizon_is_one_line_and_starts_no_run(store, tmp_path, capsys):
    _series(60).to_csv(tmp_path / "short.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=forecaster", "data=timeseries_csv", "data.path=short.csv",
                          "data.time=ts", "data.target=load", "data.lookback=24", "data.horizon=6", *SMOKE)
    assert_one_line_error(proc, "lookback+horizon=30")
    assert runs_with_status(store, "RUNNING") == [] and runs_with_status(store, "FINISHED") == []


def test_transformer_on_text_and_windows_through_the_cli(store, tmp_path, capsys):
    _reviews(120).to_csv(tmp_path / "reviews.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=transformer", "data=text_csv", "data.path=reviews.csv",
                          "data.text=review", "data.target=sentiment", "model.d_model=16", "model.nhead=2",
                          "model.dim_feedforward=32", "mlflow.experiment_name=text", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _series(300).to_csv(tmp_path / "load.csv", index=False)
    proc = dlp_in_process(capsys, "train", "model=transformer", "data=timeseries_csv", "data.path=load.csv",
                          "data.time=ts", "data.target=load", "data.lookback=24", "data.horizon=6", "model.patch=6",
                          "model.d_model=16", "model.nhead=2", "model.dim_feedforward=32",
                          "mlflow.experiment_name=series", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(runs_with_status(store, "FINISHED")) == 2
