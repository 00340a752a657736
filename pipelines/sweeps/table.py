"""The console view of a running sweep: a compact table of trials instead of Tune's raw logs."""
from __future__ import annotations

import sys
from typing import Any, Dict, List

from ray.tune import Callback

from pipelines.tracking import names

class TrialTable(Callback):
    """A compact table of trials (status, epoch, metric, parameters) instead of Tune's raw logs.

    On a terminal it redraws in place on every result; in a log it is printed when a trial starts or ends.
    """

    def __init__(self, metric: str, keys: List[str], max_epochs: int):
        self.metric, self.keys, self.max_epochs = metric, keys, max_epochs
        self.rows: Dict[str, Dict[str, Any]] = {}
        self._drawn = 0

    def _row(self, trial) -> Dict[str, Any]:
        return self.rows.setdefault(trial.trial_id, {"status": "PENDING", "epoch": 0, "metric": None,
                                                     "params": {k: trial.config.get(k) for k in self.keys}})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "RUNNING"
        self._draw(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["epoch"] = int(result.get(names.EPOCH_KEY, -1)) + 1
        row["metric"] = result.get(self.metric, row["metric"])
        self._draw(force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row["status"] = "done" if row["epoch"] >= self.max_epochs else "stopped"
        self._draw(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "ERROR"
        self._draw(force=True)

    def render(self) -> List[str]:
        head = f"{'trial':<12} {'status':<8} {'epoch':>7} {self.metric:>10}  " + "  ".join(self.keys)
        lines = [head]
        for trial_id, row in self.rows.items():
            metric = f"{row['metric']:.4f}" if isinstance(row["metric"], (int, float)) else "-"
            params = "  ".join(short(row["params"].get(k)) for k in self.keys)
            lines.append(f"{trial_id[-12:]:<12} {row['status']:<8} {row['epoch']:>3}/{self.max_epochs:<3} "
                         f"{metric:>10}  {params}")
        return lines

    def _draw(self, force: bool) -> None:
        tty = sys.stdout.isatty()
        if not (tty or force):
            return
        lines = self.render()
        if tty and self._drawn:
            sys.stdout.write(f"\x1b[{self._drawn}F\x1b[J")   # back to the table's first line, clear below
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self._drawn = len(lines) if tty else 0


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
