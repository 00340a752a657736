"""The PNGs a run logs under `plots/`: learning curve, confusion matrix, forecast and per-horizon error.

Written on the driver after fit (pipelines/training/outputs.py) and after a sweep (pipelines/sweeps/report.py);
matplotlib runs headless (Agg).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(client, run_id: str, monitor: str, path: Path) -> Optional[Path]:
    """Plot train/val loss and the monitored metric per epoch from the run's own history."""
    plt = _pyplot()

    def series(key):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        return [m.step for m in hist], [m.value for m in hist]

    panels = [("loss", ["train/loss", "val/loss"])]
    if monitor not in ("val/loss", "train/loss"):
        panels.append((monitor.split("/")[-1], [monitor.replace("val/", "train/"), monitor]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    plotted = False
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            x, y = series(key)
            if x:
                ax.plot(x, y, marker="o", ms=3, label=key)
                plotted = True
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    if plotted:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if plotted else None


CELL_LABELS = 30     # count labels in the cells up to this many classes (k² texts are what made 1000 classes slow)
TICK_LABELS = 40     # at most this many labelled ticks per axis
MAX_CELLS = 1000     # past this many classes, neighbouring classes share a cell (a figure has ~1300 pixels anyway)
MAX_INCHES = 12.0


def confusion_matrix(y_true, y_pred, class_names, path: Path) -> Path:
    """Test counts per (true, predicted) class, in time linear in the rows and size capped for many classes:
    cell labels only up to CELL_LABELS classes, thinned tick labels, at most MAX_CELLS² cells, a 12-inch figure."""
    plt = _pyplot()
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(class_names)
    block = -(-k // MAX_CELLS)          # classes per cell: 1 up to MAX_CELLS classes
    m = -(-k // block)
    cm = np.zeros((m, m), dtype=np.int64)
    np.add.at(cm, (y_true // block, y_pred // block), 1)
    size = min(MAX_INCHES, max(4.0, 0.45 * m + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues", interpolation="nearest")
    ticks = np.arange(m) if m <= TICK_LABELS else np.unique(np.linspace(0, m - 1, TICK_LABELS).round().astype(int))
    labels = [str(class_names[t * block]) for t in ticks]
    small = {} if m <= CELL_LABELS else {"fontsize": 6}
    ax.set_xticks(ticks, labels, rotation=45 if m <= CELL_LABELS else 90, ha="right", **small)
    ax.set_yticks(ticks, labels, **small)
    ax.set_xlabel("predicted" + (f" (classes in blocks of {block})" if block > 1 else ""))
    ax.set_ylabel("true")
    acc = float(np.mean(y_true == y_pred)) if len(y_true) else 0.0
    ax.set_title(f"test confusion matrix (acc {acc:.3f})")
    if m <= CELL_LABELS:
        half = (cm.min() + cm.max()) / 2    # mid-colour of imshow's min..max scale; once, not per cell
        for i, j in np.ndindex(m, m):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > half else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_horizon_errors(pred: np.ndarray, truth: np.ndarray) -> dict:
    """MAE and RMSE at each forecast step (1-based) over all windows: {"mae": [...], "rmse": [...]}."""
    err = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {"mae": np.abs(err).mean(0).tolist(), "rmse": np.sqrt((err ** 2).mean(0)).tolist()}


def forecast(series, index, pred: np.ndarray, target: str, time: str, group_col: Optional[str], path: Path,
             max_windows: int = 8) -> Path:
    """Test-split truth of one series with the forecasts of non-overlapping windows drawn over it.

    Args:
        series: the test split's rows (dm.series("test")): time, target and, for grouped data, group_col;
            only the first series is drawn.
        index: dm.window_index("test"), one row per window in the order of `pred`.
        pred: (windows, horizon) forecasts in the target's units.
    """
    plt = _pyplot()
    horizon = pred.shape[1]
    group = index["group"].iloc[0]
    rows = np.flatnonzero((index["group"] == group).to_numpy()) if group is not None else np.arange(len(index))
    truth = series if group is None else series[series[group_col] == group]
    # non-overlapping windows spread over the split, so the forecasts tile the truth instead of piling up
    tiles = rows[::horizon]
    tiles = tiles[np.linspace(0, len(tiles) - 1, min(max_windows, len(tiles))).round().astype(int)]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(truth[time], truth[target], color="0.3", lw=1, label="truth (test split)")
    freq = truth[time].diff().median()
    for k, i in enumerate(tiles):
        start = index["start"].iloc[i]
        ax.plot([start + j * freq for j in range(horizon)], pred[i], color="tab:orange", lw=1.5,
                label="forecast" if k == 0 else None)
        ax.axvline(index["origin"].iloc[i], color="tab:orange", alpha=0.25, lw=0.8)
    ax.set_title(f"{target}: test forecasts ({horizon} steps from each marked origin)"
                 + (f" · {group}" if group is not None else ""))
    fig.autofmt_xdate()
    return _finish(fig, ax, path, legend_loc="upper left")


def horizon_errors(errors: dict, target: str, path: Path) -> Path:
    """MAE and RMSE against the forecast step."""
    plt = _pyplot()
    steps = np.arange(1, len(errors["mae"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, errors["mae"], marker="o", ms=3, label="MAE")
    ax.plot(steps, errors["rmse"], marker="o", ms=3, label="RMSE")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel(f"{target} error")
    ax.set_title("test error by forecast horizon")
    return _finish(fig, ax, path)


def _finish(fig, ax, path: Path, legend_loc: str = "best") -> Path:
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def influence(frame, param: str, metric: str) -> float:
    """How much `param` moves `metric` across trials, in [0, 1]: |Spearman rho| for numbers, the correlation
    ratio (share of the metric's variance between categories) for anything else."""
    import pandas as pd

    data = frame[[param, metric]].dropna()
    if len(data) < 3 or data[param].nunique() < 2:
        return 0.0
    if pd.api.types.is_numeric_dtype(data[param]):
        rho = data[param].rank().corr(data[metric].rank())
        return 0.0 if np.isnan(rho) else abs(float(rho))
    groups = data.groupby(data[param].astype(str))[metric]
    total = ((data[metric] - data[metric].mean()) ** 2).sum()
    between = (groups.count() * (groups.mean() - data[metric].mean()) ** 2).sum()
    return float(between / total) if total > 0 else 0.0


def sweep(frame, params: list, metric: str, mode: str, path: Path) -> Optional[Path]:
    """The trials' best `metric` against each hyperparameter, most influential first; the best trial starred."""
    import pandas as pd

    plt = _pyplot()
    data = frame[frame[metric].notna()] if metric in frame else frame.iloc[0:0]
    if data.empty:
        return None
    ranked = sorted(params, key=lambda p: influence(data, p, metric), reverse=True)
    fig, axes = plt.subplots(1, len(ranked), figsize=(4.2 * len(ranked), 3.8), squeeze=False, sharey=True)
    best = data[metric].idxmax() if mode == "max" else data[metric].idxmin()
    colors = {"completed": "tab:blue", "stopped": "tab:orange", "errored": "tab:red"}
    for ax, param in zip(axes[0], ranked):
        numeric = pd.api.types.is_numeric_dtype(data[param])
        labels = sorted(data[param].astype(str).unique())
        x = data[param] if numeric else data[param].astype(str).map(labels.index)
        for status, part in data.groupby("status"):
            ax.scatter(x[part.index], part[metric], color=colors.get(status, "gray"), label=status, alpha=0.8)
        ax.scatter([x[best]], [data.loc[best, metric]], marker="*", s=220, color="gold", edgecolor="black",
                   label="best", zorder=3)
        if numeric and (data[param] > 0).all() and data[param].max() / data[param].min() >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_xlabel(f"{param}  (influence {influence(data, param, metric):.2f})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"best {metric}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"sweep: best {metric} per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
