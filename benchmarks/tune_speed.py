"""Does a `dlp tune` sweep cost what a plain in-process Optuna loop costs, on one machine?

    .venv/bin/python benchmarks/tune_speed.py                # 3 pairs, alternating which goes first

The same space (conf/tune/digits_space.yaml: 12 trials of the digits CNN, 8 epochs, rungs at epochs 2 and 6) two
ways, each a whole process timed from outside:
  - `dlp tune experiment=digits_cnn tune=digits_space`: TPE + ASHA on a local Ray cluster, every trial a nested
    MLflow run with its epochs, checkpoints and test pass;
  - a plain Optuna loop (`--loop`): the same TPE (seed, start-up trials), a successive-halving pruner at the same
    rungs, one trial after another calling the project's own fit() on the same configs, no tracking.
Prints the wall times, their ratio, the best configuration each found, and the per-trial overhead — a trial's wall
(dlp tune: from its trial function's start to its child run's end, or its last epoch for a stopped trial;
the loop: from the trial's start to fit()'s return) less its training time (its epochs' seconds) —
median and p90. Saves benchmarks/results/tune_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

SWEEP = ["experiment=digits_cnn", "tune=digits_space"]
SWEEP_RUN = re.compile(r"sweep run: (\w+)")


def whole(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return wall, proc


def dlp_tune(store: list[str], env: dict) -> dict:
    from mlflow import MlflowClient

    wall, proc = whole([sys.executable, "-m", "pipelines.cli", "tune", *SWEEP, *store], env)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent = client.get_run(SWEEP_RUN.search(proc.stdout).group(1))
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = []
    for child in children:
        epochs = client.get_metric_history(child.info.run_id, "perf/epoch_seconds")
        # a stopped trial's run is ended when the sweep reconciles its trials: its wall ends at its last epoch
        end = child.info.end_time if child.info.status == "FINISHED" else max(m.timestamp for m in epochs)
        started = float(child.data.tags["dlp.trial_started"]) * 1000     # the trial function's start
        trials.append({"wall": (end - started) / 1000, "status": child.info.status,
                       "training": sum(m.value for m in epochs), "epochs": len(epochs)})
    m = parent.data.metrics
    return {"wall_seconds": wall, "trials": trials, "best_val_acc": m["best/val/acc"],
            "best_params": {k[len("best."):]: v for k, v in parent.data.params.items() if k.startswith("best.")},
            "trials_in_process": parent.data.params.get("tune.trials_in_process"),
            "concurrent": parent.data.params.get("tune.max_concurrent_trials")}


def optuna_loop(store: list[str], env: dict) -> dict:
    wall, proc = whole([sys.executable, str(Path(__file__).resolve()), "--loop", *store], env)
    return {"wall_seconds": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def loop(overrides: list[str]) -> dict:
    """The baseline, in this process: TPE + successive halving over the sweep's space, calling fit()."""
    common.quiet()
    import optuna
    from lightning.pytorch.callbacks import Callback
    from omegaconf import OmegaConf

    from pipelines.config.compose import compose
    from pipelines.sweeps import spec as sweep_spec
    from pipelines.training.fit import fit

    import datamodules

    spec = sweep_spec.load_spec("digits_space")
    base = [SWEEP[0], *spec.overrides, *overrides, "trainer.num_workers=0"]
    space = {key: OmegaConf.to_container(dist["choice"]) for key, dist in spec.space.items()}
    data = {}

    probe = compose(base)
    metric, mode = spec.metric or probe.monitor.metric, spec.mode or probe.monitor.mode   # as `dlp tune`

    class Prune(Callback):
        def __init__(self, trial):
            self.trial, self.pruned, self.values = trial, False, []

        def on_train_epoch_end(self, trainer, pl_module):
            self.values.append(float(trainer.callback_metrics[metric]))
            self.trial.report(self.values[-1], trainer.current_epoch + 1)
            if self.trial.should_prune():
                self.pruned, trainer.should_stop = True, True

    trials = []

    def objective(trial):
        start = time.perf_counter()
        values = {k: trial.suggest_categorical(k, [json.dumps(v) for v in choices]) for k, choices in space.items()}
        cfg = compose([*base, *(f"{k}={v}" for k, v in values.items())])
        key = json.dumps(OmegaConf.to_container(cfg.data), sort_keys=True)
        if key not in data:                          # built once per data setting, as dlp tune's trials do
            data[key] = datamodules.build(cfg.data, cfg.seed)
        dm = data[key]
        prune = Prune(trial)
        result = fit(cfg, None, datamodule=dm, extra_callbacks=[prune])
        trials.append({"wall": time.perf_counter() - start, "training": result.fit_seconds,
                       "epochs": result.epochs})
        if prune.pruned:
            raise optuna.TrialPruned()
        return (max if mode == "max" else min)(prune.values)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = max(2, min(10, spec.num_samples // 3))       # as pipelines/sweeps/search.py
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(
                                    min_resource=spec.grace_period, reduction_factor=spec.reduction_factor))
    study.optimize(objective, n_trials=spec.num_samples)
    return {"trials": trials, "metric": metric, "best_val_acc": study.best_value,
            "best_params": {k: json.loads(v) for k, v in study.best_params.items()}}


def overhead(trials: list[dict]) -> dict:
    gaps = sorted(t["wall"] - t["training"] for t in trials)
    p90 = gaps[min(len(gaps) - 1, round(0.9 * (len(gaps) - 1)))]
    return {"median": statistics.median(gaps), "p90": p90, "trial_epochs": sum(t["epochs"] for t in trials)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of whole-process runs (order alternates)")
    parser.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.loop:
        print(json.dumps(loop(rest)))
        return 0
    machine, runs = common.machine_info(), []
    for i in range(args.repeats):
        pair = {}
        for name in (("dlp_tune", "optuna_loop") if i % 2 == 0 else ("optuna_loop", "dlp_tune")):
            with common.temp_store() as (tmp, store):
                env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
                pair[name] = (dlp_tune if name == "dlp_tune" else optuna_loop)(store, env)
            print(f"repeat {i + 1}: {name:<12} {pair[name]['wall_seconds']:6.1f} s  best val acc "
                  f"{pair[name]['best_val_acc']:.4f}  {pair[name]['best_params']}", flush=True)
        runs.append(pair)
    ratios = [r["dlp_tune"]["wall_seconds"] / r["optuna_loop"]["wall_seconds"] for r in runs]
    summary = {name: {"wall_seconds_median": statistics.median(r[name]["wall_seconds"] for r in runs),
                      "overhead_seconds": overhead([t for r in runs for t in r[name]["trials"]])}
               for name in ("dlp_tune", "optuna_loop")}
    print(common.table(["", "wall s (median)", "trial-epochs", "per-trial overhead s: median", "p90"], [
        [name, f"{s['wall_seconds_median']:.1f}", s["overhead_seconds"]["trial_epochs"] // len(runs),
         f"{s['overhead_seconds']['median']:.2f}", f"{s['overhead_seconds']['p90']:.2f}"]
        for name, s in summary.items()]))
    print(f"\ndlp tune / Optuna loop, whole processes: median {statistics.median(ratios):.2f}x "
          f"(each pair: {', '.join(f'{r:.2f}x' for r in ratios)})")
    path = common.save_json("tune_speed.json", {
        "command": " ".join(["python benchmarks/tune_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "sweep": SWEEP, "runs": runs, "summary": summary,
        "ratio_median": statistics.median(ratios), "ratios": ratios})
    print(f"wrote {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
