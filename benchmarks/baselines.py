"""Classical baselines scored on exactly the test split a dlpipe run used (benchmarks/quality.py).

Each function takes the set-up datamodule and returns the baseline's test metric:
- forecasts: seasonal-naive and SARIMA, forecasting every test window from that window's own lookback
  inputs (the information the network gets), errors in the target's units over windows x horizon steps;
- text: TF-IDF (word 1-2-grams) + logistic regression on the raw train + val texts.
"""
from __future__ import annotations

import warnings

import numpy as np


def forecast_truth(dm) -> tuple:
    """(inputs, truth): raw-unit target histories (N, lookback) and future values (N, horizon) of the test windows."""
    x, y = (t.numpy().astype(np.float64) for t in dm._tensors["test"])
    mean, std = dm.spec.target_scale
    return x[:, :, 0] * std + mean, y * std + mean


def seasonal_naive(dm, season: int) -> float:
    """Test MAE of repeating the last `season` observed steps (season=1: persistence)."""
    history, truth = forecast_truth(dm)
    k = np.arange(truth.shape[1])
    pred = history[:, history.shape[1] - season + k % season]
    return float(np.abs(pred - truth).mean())


def sarima(dm, order: tuple, seasonal_order: tuple, fit_steps: int = 2000) -> float:
    """Test MAE of a SARIMA model fitted once on the end of the train series, then run (`apply`, parameters
    fixed) over each test window's lookback inputs and forecast `horizon` steps from its last input.

    fit_steps caps the train tail the parameters are estimated on (the Kalman filter is O(n) per likelihood
    evaluation); grouped data fits one model per series.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    history, truth = forecast_truth(dm)
    index = dm.window_index("test")
    target, group_col = dm.prep["target"], dm.prep.get("group")
    train = dm.series("train")
    pred = np.empty_like(truth)
    groups = index["group"].to_numpy()
    for g in dict.fromkeys(groups):
        rows = np.flatnonzero(groups == g) if g is not None else np.arange(len(index))
        series = train if g is None else train[train[group_col] == g]
        endog = series[target].to_numpy(dtype=np.float64)[-fit_steps:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the score says how good the fit is
            fitted = SARIMAX(endog, order=order, seasonal_order=seasonal_order).fit(disp=False)
            for i in rows:
                pred[i] = fitted.apply(history[i]).forecast(truth.shape[1])
    return float(np.abs(pred - truth).mean())


def tfidf_logreg(dm) -> float:
    """Test accuracy of TF-IDF (word uni+bigrams, sublinear tf) + logistic regression, fitted on train + val."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def texts(split):
        frame, _ = dm.raw_frame(split)
        return frame.iloc[:, 0].fillna("").astype(str).tolist(), dm._tensors[split][1].numpy()

    (xt, yt), (xv, yv), (xs, ys) = texts("train"), texts("val"), texts("test")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=4.0))
    model.fit(xt + xv, np.concatenate([yt, yv]))
    return float((model.predict(xs) == ys).mean())
