"""Does TPE + ASHA find what an exhaustive grid finds, for a fraction of its training?

    .venv/bin/python benchmarks/tune_efficiency.py            # both sweeps of conf/tune/digits_space.yaml

Runs, through the real `dlp tune` command, the same digits-CNN space twice: an exhaustive grid (every
combination trained for every epoch, FIFO) and Optuna TPE proposing with ASHA stopping. Reports each
sweep's best validation and test accuracy and its trial-epochs (epochs trained, summed over trials), and
checks the target: TPE + ASHA within 0.5 accuracy points of the grid's best while spending <= 35 % of the
grid's trial-epochs. Writes benchmarks/results/tune_efficiency.json.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=8, help="TPE + ASHA trials")
    args = parser.parse_args(argv)
    machine = common.machine_info()
    out = {}
    with common.temp_store() as (tmp, store):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        out["grid"] = dlp_tune(SWEEPS["grid"], store)
        out["tpe_asha"] = dlp_tune([*SWEEPS["tpe_asha"], f"tune.num_samples={args.samples}"], store)
    grid, smart = out["grid"], out["tpe_asha"]
    gap_val = 100 * (grid["best_val_acc"] - smart["best_val_acc"])
    gap_test = 100 * (grid["best_test_acc"] - smart["best_test_acc"])
    budget = smart["trial_epochs"] / grid["trial_epochs"]
    met = gap_val <= 0.5 and budget <= 0.35
    print(common.table(["sweep", "trials", "stopped", "trial-epochs", "best val acc", "its test acc", "wall s"], [
        [name, r["trials"], r["stopped"], r["trial_epochs"], f"{r['best_val_acc']:.4f}", f"{r['best_test_acc']:.4f}",
         f"{r['wall_seconds']:.0f}"] for name, r in out.items()]))
    print(f"\nTPE + ASHA: {gap_val:+.2f} accuracy points behind the grid's best on validation ({gap_test:+.2f} on "
          f"test), {budget:.0%} of its trial-epochs -> target (<= 0.5 points, <= 35 %) {'met' if met else 'NOT met'}")
    path = common.save_json("tune_efficiency.json", {
        "command": " ".join(["python benchmarks/tune_efficiency.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "sweeps": out, "gap_points_val": gap_val, "gap_points_test": gap_test,
        "trial_epoch_fraction": budget, "target": {"gap_points": 0.5, "trial_epoch_fraction": 0.35}, "met": met})
    print(f"wrote {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
