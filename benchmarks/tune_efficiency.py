"""Does TPE + ASHA find what an exhaustive grid finds, for a fraction of its training?

    .venv/bin/python benchmarks/tune_efficiency.py            # both sweeps of conf/tune/digits_space.yaml

Runs, through the real `dlp tune` command, the same digits-CNN space twice: an exhaustive grid (every
combination trained for every epoch, FIFO) and Optuna TPE proposing with ASHA stopping. Reports each
sweep's best validation and test accuracy, its trial-epochs (epochs trained, summed over trials) and its
wall-clock time (the whole `dlp tune` process), and
checks the target: TPE + ASHA within 0.5 accuracy points of the grid's best while spending <= 35 % of the
grid's trial-epochs. TPE + ASHA runs with several seeds (--seeds): its outcome depends on the seed and on the
order in which concurrent trials reach ASHA's rungs, so one sweep is a sample, and the target is judged on the
median. Writes benchmarks/results/tune_efficiency.json, and the grid's learning curves (every config's
validation accuracy per epoch) to benchmarks/results/tune_grid_curves.json for benchmarks/tune_sim.py.
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

from omegaconf import OmegaConf

from benchmarks import common

BASE = ["experiment=digits_cnn", "tune=digits_space"]
SWEEPS = {"grid": ["tune.search=grid", "tune.scheduler=fifo"],
          "tpe_asha": ["tune.search=optuna", "tune.scheduler=asha"]}
SWEEP_RUN = re.compile(r"sweep run: (\w+)")


def dlp_tune(args: list[str], store: list[str]) -> dict:
    """One sweep in a fresh interpreter; its parent run's summary metrics and the wall time."""
    from mlflow import MlflowClient

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "tune", *BASE, *args, *store],
                          capture_output=True, text=True, cwd=common.ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    match = SWEEP_RUN.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"dlp tune {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    print(proc.stdout.split("dlpipe · ", 1)[-1], flush=True)
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(match.group(1))
    m = run.data.metrics
    return {"run_id": run.info.run_id, "wall_seconds": wall, "trial_epochs": int(m["trials/epochs"]),
            "trials": int(m["trials/completed"] + m["trials/stopped"] + m["trials/errored"]),
            "stopped": int(m["trials/stopped"]), "best_val_acc": m["best/val/acc"], "best_test_acc": m["best/test/acc"],
            "best_params": {k[len("best."):]: v for k, v in run.data.params.items() if k.startswith("best.")},
            "overrides": [*BASE, *args]}


def grid_curves(run_id: str) -> dict:
    """Every grid trial's params (as Ray Tune sees them), validation accuracy per epoch, epoch and start-up time."""
    from mlflow import MlflowClient

    from pipelines.sweeps import spec as tune
    from pipelines.tracking import names

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(run_id)
    sweep = tune.prepare([*BASE, *SWEEPS["grid"]])
    trials = []
    for child in client.search_runs([parent.info.experiment_id], f"tags.`{names.SWEEP_RUN}` = '{run_id}'"):
        params = json.loads(child.data.tags["dlp.trial_params"])
        history = sorted(client.get_metric_history(child.info.run_id, "val/acc"), key=lambda m: m.step)
        epoch = (history[-1].timestamp - history[0].timestamp) / 1000 / max(1, len(history) - 1)
        trials.append({"params": {k: json.dumps(v) if k in sweep.encoded else v for k, v in params.items()},
                       "val": [m.value for m in history], "epoch_seconds": epoch,
                       "start_seconds": (history[0].timestamp - child.info.start_time) / 1000 - epoch})
    return {"sweep_run_id": run_id, "max_epochs": sweep.cfg.trainer.max_epochs, "encoded": sweep.encoded,
            "space": OmegaConf.to_container(sweep.spec.space), "trials": trials}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=None,
                        help="TPE + ASHA trials per sweep (default: tune.num_samples of conf/tune/digits_space.yaml)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="TPE + ASHA sweeps, with tune.seed 0..N-1 (its outcome depends on the seed and on the "
                             "order trials reach ASHA's rungs); the target is judged on the median sweep")
    args = parser.parse_args(argv)
    machine = common.machine_info()
    out = {}
    with common.temp_store() as (tmp, store):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        out["grid"] = dlp_tune(SWEEPS["grid"], store)
        common.save_json("tune_grid_curves.json", grid_curves(out["grid"]["run_id"]))
        for seed in range(args.seeds):
            samples = [f"tune.num_samples={args.samples}"] if args.samples else []
            out[f"tpe_asha_seed{seed}"] = dlp_tune([*SWEEPS["tpe_asha"], *samples, f"tune.seed={seed}"], store)
    grid = out["grid"]
    smart = {name: r for name, r in out.items() if name != "grid"}
    for r in smart.values():
        r["gap_points_val"] = 100 * (grid["best_val_acc"] - r["best_val_acc"])
        r["gap_points_test"] = 100 * (grid["best_test_acc"] - r["best_test_acc"])
        r["trial_epoch_fraction"] = r["trial_epochs"] / grid["trial_epochs"]
    gap_val = statistics.median(r["gap_points_val"] for r in smart.values())
    gap_test = statistics.median(r["gap_points_test"] for r in smart.values())
    budget = statistics.median(r["trial_epoch_fraction"] for r in smart.values())
    met = gap_val <= 0.5 and budget <= 0.35
    wall = statistics.median(r["wall_seconds"] for r in smart.values())
    print(common.table(["sweep", "trials", "stopped", "trial-epochs", "best val acc", "gap (points)", "its test acc",
                        "wall s"], [
        [name, r["trials"], r["stopped"], r["trial_epochs"], f"{r['best_val_acc']:.4f}",
         f"{r.get('gap_points_val', 0):+.2f}", f"{r['best_test_acc']:.4f}", f"{r['wall_seconds']:.0f}"]
        for name, r in out.items()]))
    print(f"\nTPE + ASHA, median of {len(smart)} sweeps: {gap_val:+.2f} accuracy points behind the grid's best on "
          f"validation ({gap_test:+.2f} on test), {budget:.0%} of its trial-epochs -> target (<= 0.5 points, <= 35 %) "
          f"{'met' if met else 'NOT met'}; {sum(r['gap_points_val'] <= 0.5 and r['trial_epoch_fraction'] <= 0.35 for r in smart.values())}"
          f" of {len(smart)} sweeps meet it on their own")
    print(f"wall clock, whole `dlp tune` processes: TPE + ASHA median {wall:.0f} s, the grid {grid['wall_seconds']:.0f} s "
          f"({wall / grid['wall_seconds']:.0%} of it)")
    path = common.save_json("tune_efficiency.json", {
        "command": " ".join(["python benchmarks/tune_efficiency.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "sweeps": out, "median_gap_points_val": gap_val, "median_gap_points_test": gap_test,
        "median_trial_epoch_fraction": budget, "median_wall_seconds": wall, "grid_wall_seconds": grid["wall_seconds"],
        "median_wall_fraction": wall / grid["wall_seconds"],
        "target": {"gap_points": 0.5, "trial_epoch_fraction": 0.35},
        "met": met})
    print(f"wrote {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
