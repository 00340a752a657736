"""The typed schema of a search space, conf/tune/<name>.yaml, which `dlp tune experiment=X tune=<name>` reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class SweepConfig:
    """conf/tune/<name>.yaml: what `dlp tune` searches, how, and with what budget.

    space maps any config key to one distribution: {choice: [...]}, {grid: [...]}, {uniform: [lo, hi]},
    {loguniform: [lo, hi]}, {randint: [lo, hi]} (hi exclusive), or the quantised {quniform: [lo, hi, q]},
    {qloguniform: [lo, hi, q]}, {qrandint: [lo, hi, q]}.
    """
    space: Dict[str, Any] = field(default_factory=dict)
    search: str = "optuna"            # grid | random | optuna (TPE)
    scheduler: str = "asha"           # fifo | asha | hyperband
    num_samples: int = 8              # trials to sample (grid: repeats of the whole grid)
    max_concurrent_trials: Optional[int] = None   # null: as many as fit (trials in process: one per trial's CPUs)
    in_process: Optional[bool] = None  # trials of num_workers <= 1 train in their own Tune actor, no worker group;
                                       # null: when the cluster has one node (sweeps/in_process.py)
    metric: Optional[str] = None      # null -> the experiment's monitor.metric
    mode: Optional[str] = None        # null -> the experiment's monitor.mode
    grace_period: int = 1             # asha/hyperband: epochs every trial gets before it can be stopped
    reduction_factor: int = 2         # asha/hyperband: keep the best 1/reduction_factor at each rung
    seed: int = 0                     # the searcher's seed (each trial trains with the experiment's seed)
    overrides: List[str] = field(default_factory=list)   # applied to every trial before its sampled values
    on_error: str = "fail"            # fail: `dlp tune` exits 1 if any trial errored; ignore: only if none completed
    trial_memory_mb: int = 64         # the logical memory a trial reserves (a worker group's driver holds no CPU)


SWEEP_CHOICES: Dict[str, tuple] = {"search": ("grid", "random", "optuna"),
                                   "scheduler": ("fifo", "asha", "hyperband"),
                                   "on_error": ("fail", "ignore")}
SPACE_KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform", "qloguniform", "qrandint")
