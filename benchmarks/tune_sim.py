"""Replay TPE + ASHA sweeps offline on the learning curves an exhaustive grid recorded.

    .venv/bin/python benchmarks/tune_sim.py                       # the settings in conf/tune/digits_space.yaml
    .venv/bin/python benchmarks/tune_sim.py --samples 12 --grace 1 --seeds 30

Every grid point of the digits-CNN space was trained for every epoch by `benchmarks/tune_efficiency.py`, which
saves each trial's per-epoch validation accuracy and epoch time in benchmarks/results/tune_grid_curves.json.
Training is seeded and single-threaded, so a config trains to the same curve in any sweep; what a TPE + ASHA
sweep then does depends only on which configs it proposes and the order its trials reach ASHA's rungs. This
script replays that with the real parts -- Ray's OptunaSearch (Optuna's TPESampler, same startup rule as
`dlp tune`) and Ray's ASHA bracket -- over a simulated clock with `max_concurrent_trials` slots, each trial
costing the start-up and epoch times the grid measured. Many seeds take seconds instead of hours, so settings
can be compared on a distribution rather than on one or three lucky sweeps; benchmarks/tune_efficiency.py
remains the measurement that counts (the real `dlp tune`, end to end).
"""
from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

CURVES = common.RESULTS / "tune_grid_curves.json"
METRIC = "val/acc"


class _Trial:  # what Ray's _Bracket reads from a trial
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def simulate(grid: dict, args: list[str], seed: int, start_seconds: float | None = None,
             distinct: bool = True) -> dict:
    """One TPE + ASHA sweep of `dlp tune experiment=digits_cnn tune=digits_space <args> tune.seed=<seed>` over
    the recorded curves (the searcher and ASHA's rungs built as `dlp tune` builds them); its best completed
    trial and its trial-epochs."""
    import optuna
    from omegaconf import OmegaConf

    from pipelines.sweeps import search as sweep_search
    from pipelines.sweeps import spec as tune

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sweep = tune.prepare(["experiment=digits_cnn", "tune=digits_space", *args, f"tune.seed={seed}"])
    assert OmegaConf.to_container(sweep.spec.space) == grid["space"], "the curves were recorded on another space"
    max_epochs, samples = grid["max_epochs"], sweep.spec.num_samples
    by_params = {json.dumps(t["params"], sort_keys=True): t for t in grid["trials"]}
    search = sweep_search.make_searcher(sweep)
    search = search if distinct else search.searcher
    search.set_search_properties(METRIC, "max", tune.tune_space(sweep.spec.space, "optuna", sweep.encoded))
    bracket = sweep_search.make_scheduler(sweep)._brackets[0]       # ASHA's one bracket, rungs as `dlp tune` sets them
    slots = sweep.spec.max_concurrent_trials or os.cpu_count() or 2
    events: list = []                      # (time, order, trial_id, epoch)
    trials: dict = {}
    clock, started, order = 0.0, 0, 0

    def start(now: float) -> None:
        nonlocal started, order
        trial_id = f"t{started:03d}"
        params = search.suggest(trial_id)
        if not isinstance(params, dict):       # every config tried
            started = samples
            return
        recorded = by_params[json.dumps(params, sort_keys=True)]
        trials[trial_id] = {"params": params, "curve": recorded["val"], "seconds": recorded["epoch_seconds"],
                            "epochs": 0, "status": "running"}
        started += 1
        order += 1
        start_up = recorded["start_seconds"] if start_seconds is None else start_seconds
        heapq.heappush(events, (now + start_up + recorded["epoch_seconds"], order, trial_id, 1))

    for _ in range(min(slots, samples)):
        start(clock)
    while events:
        clock, _, trial_id, epoch = heapq.heappop(events)
        trial = trials[trial_id]
        trial["epochs"] = epoch
        result = {METRIC: trial["curve"][epoch - 1], "training_iteration": epoch}
        search.on_trial_result(trial_id, result)
        stop = bracket.on_result(_Trial(trial_id), epoch, result[METRIC]) == "STOP"
        if stop or epoch == max_epochs:
            trial["status"] = "stopped" if stop and epoch < max_epochs else "completed"
            search.on_trial_complete(trial_id, result)
            if started < samples:
                start(clock)
        else:
            order += 1
            heapq.heappush(events, (clock + trial["seconds"], order, trial_id, epoch + 1))
    done = [t for t in trials.values() if t["status"] == "completed"]
    best = max(done, key=lambda t: max(t["curve"]))
    return {"best_val": max(best["curve"]), "best_params": best["params"],
            "trial_epochs": sum(t["epochs"] for t in trials.values()), "seconds": clock,
            "distinct": len({json.dumps(t["params"], sort_keys=True) for t in trials.values()}),
            "stopped": sum(t["status"] == "stopped" for t in trials.values())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="tune.* overrides of conf/tune/digits_space.yaml, "
                                                     "e.g. tune.num_samples=8 tune.grace_period=1")
    parser.add_argument("--curves", type=Path, default=CURVES)
    parser.add_argument("--seeds", type=int, default=50, help="sweeps, with tune.seed 0..N-1")
    parser.add_argument("--start-seconds", type=float, default=None,
                        help="a trial's start-up before its first epoch (default: as the grid's trial measured)")
    parser.add_argument("--repeats", action="store_true", help="let TPE propose a config again (no DistinctConfigs)")
    parser.add_argument("--verbose", action="store_true", help="one line per simulated sweep")
    args = parser.parse_args(argv)
    logging.getLogger("ray").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    grid = json.loads(args.curves.read_text())
    grid_best = max(max(t["val"]) for t in grid["trials"])
    grid_epochs = grid["max_epochs"] * len(grid["trials"])
    rows = [simulate(grid, args.overrides, seed, args.start_seconds, not args.repeats) for seed in range(args.seeds)]
    if args.verbose:
        for seed, r in enumerate(rows):
            print(f"seed {seed}: best val {r['best_val']:.4f} {r['best_params']}, {r['trial_epochs']} trial-epochs, "
                  f"{r['stopped']} stopped, {r['distinct']} distinct configs")
    gaps = [100 * (grid_best - r["best_val"]) for r in rows]
    fractions = [r["trial_epochs"] / grid_epochs for r in rows]
    hits = sum(g <= 0.5 and f <= 0.35 for g, f in zip(gaps, fractions))
    print(f"grid: {len(grid['trials'])} configs x {grid['max_epochs']} epochs = {grid_epochs} trial-epochs, "
          f"best val {grid_best:.4f}")
    print(f"TPE + ASHA ({' '.join(args.overrides) or 'as configured'}{', repeats allowed' if args.repeats else ''}), "
          f"{args.seeds} seeds: median gap {statistics.median(gaps):+.2f} points (mean {statistics.mean(gaps):+.2f}), "
          f"median {statistics.median(fractions):.0%} of the grid's trial-epochs (max {max(fractions):.0%}); "
          f"{hits}/{len(rows)} sweeps meet both targets; mean distinct configs "
          f"{statistics.mean(r['distinct'] for r in rows):.1f}, mean stopped "
          f"{statistics.mean(r['stopped'] for r in rows):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
