"""Test-set quality of dlpipe's presets against a scikit-learn baseline on the same split.

    .venv/bin/python benchmarks/quality.py                     # every preset, its own seed (42)
    .venv/bin/python benchmarks/quality.py --seeds 5           # mean ± std over seeds 0..4
    .venv/bin/python benchmarks/quality.py --only diabetes_mlp

Each preset runs through the real tracked path (`pipelines.train.train`) into a throw-away MLflow
store, with the preset's own settings. The baseline is fitted on the datamodule's own preprocessed
train + val tensors and scored on its test tensors, so both see the same rows and the same scaling;
the run's data hash (an MLflow tag) is checked against the baseline's to prove it.
`seed=` draws both the split and the initial weights, and the test splits are small (66 to 270
rows), so one seed is one sample: --seeds N shows the spread.
Writes benchmarks/results/quality.json (one run at the preset's seed, what `make bench` publishes)
or quality_seeds.json (--seeds N > 1), then, after a full run, the README results block.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common


def svc(x_train, y_train, x_val, y_val):
    """RBF SVC with C picked on val from a small grid, then refitted on train + val."""
    import numpy as np
    from sklearn.svm import SVC

    best_c = max((1.0, 10.0), key=lambda c: SVC(C=c).fit(x_train, y_train).score(x_val, y_val))
    return SVC(C=best_c).fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]))


def fixed(make: Callable):
    """A baseline with fixed settings, fitted on train + val (dlpipe only uses val to pick its checkpoint)."""
    def fit(x_train, y_train, x_val, y_val):
        import numpy as np

        return make().fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]))
    return fit


def logreg():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000)


def ridge():
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0)


@dataclass
class Bench:
    metric: str        # dlpipe test metric; the baseline computes the same quantity
    target: float      # the preset's promise (README): dlpipe must reach it
    baseline: str      # what the sklearn side is, for the table
    fit: Callable      # (x_train, y_train, x_val, y_val) -> fitted estimator


EXPERIMENTS = {
    "digits_cnn": Bench("test/acc", 0.98, "SVC(rbf, C in {1,10} on val)", svc),
    "breast_cancer_mlp": Bench("test/acc", 0.96, "LogisticRegression(max_iter=5000)", fixed(logreg)),
    "diabetes_mlp": Bench("test/r2", 0.45, "Ridge(alpha=1.0)", fixed(ridge)),
}


def baseline_score(bench: Bench, dm) -> float:
    """The baseline's test metric on the datamodule's preprocessed tensors.

    Regression targets are standardised by the datamodule; R^2 is invariant to that affine map,
    so it is computed on the standardised scale.
    """
    from sklearn.metrics import accuracy_score, r2_score

    def arrays(split):
        x, y = dm._tensors[split]
        return x.reshape(len(x), -1).numpy(), y.numpy()  # images: flattened normalised pixels

    (xt, yt), (xv, yv), (xs, ys) = arrays("train"), arrays("val"), arrays("test")
    model = bench.fit(xt, yt, xv, yv)
    score = accuracy_score if bench.metric == "test/acc" else r2_score
    return float(score(ys, model.predict(xs)))


def run_one(name: str, seed: int | None, store_overrides: list[str]) -> dict:
    """One tracked dlpipe run and its baseline, on the split that `seed` draws (None: the preset's seed)."""
    from mlflow import MlflowClient

    import datamodules
    from pipelines import tracking
    from pipelines.config import compose
    from pipelines.train import train

    bench = EXPERIMENTS[name]
    cfg = compose([f"experiment={name}", *([f"seed={seed}"] if seed is not None else []), *store_overrides])
    start = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - start

    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")
    start = time.perf_counter()
    base = baseline_score(bench, dm)
    base_seconds = time.perf_counter() - start
    run_hash = MlflowClient(tracking.tracking_uri(cfg)).get_run(out.run_id).data.tags.get("dlp.data.hash")
    return {"seed": cfg.seed, "dlpipe": out.fit.test_metrics[bench.metric], "baseline": base,
            "epochs": out.fit.epochs, "fit_seconds": out.fit.fit_seconds, "wall_seconds": wall,
            "baseline_seconds": base_seconds, "same_split": run_hash == dm.fingerprint()["hash"],
            "run_id": out.run_id}


def summarise(name: str, runs: list[dict]) -> dict:
    bench = EXPERIMENTS[name]
    d_mean, d_std = common.mean_std(r["dlpipe"] for r in runs)
    b_mean, b_std = common.mean_std(r["baseline"] for r in runs)
    return {"experiment": name, "metric": bench.metric, "target": bench.target, "baseline_model": bench.baseline,
            "dlpipe_mean": d_mean, "dlpipe_std": d_std, "baseline_mean": b_mean, "baseline_std": b_std,
            "pass": d_mean >= bench.target, "seeds_passing": sum(r["dlpipe"] >= bench.target for r in runs),
            "seeds": len(runs), "epochs_mean": common.mean_std(r["epochs"] for r in runs)[0],
            "fit_seconds_mean": common.mean_std(r["fit_seconds"] for r in runs)[0],
            "wall_seconds_mean": common.mean_std(r["wall_seconds"] for r in runs)[0],
            "same_split": all(r["same_split"] for r in runs), "runs": runs}


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def print_table(results: list[dict]) -> None:
    rows = [[r["experiment"], r["metric"], fmt(r["dlpipe_mean"], r["dlpipe_std"], r["seeds"]),
             fmt(r["baseline_mean"], r["baseline_std"], r["seeds"]), f">= {r['target']}",
             ("PASS" if r["pass"] else "FAIL") + (f" ({r['seeds_passing']}/{r['seeds']} seeds)" if r["seeds"] > 1 else ""),
             f"{r['epochs_mean']:.0f}", f"{r['fit_seconds_mean']:.1f}", f"{r['wall_seconds_mean']:.1f}"]
            for r in results]
    print(common.table(["experiment", "metric", "dlpipe", "sklearn", "target", "pass", "epochs", "fit s", "wall s"],
                       rows))
    for r in results:
        print(f"  {r['experiment']}: baseline {r['baseline_model']}"
              + ("" if r["same_split"] else "  WARNING: the run's data hash differs from the baseline's"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=list(EXPERIMENTS), help="run just this preset (repeatable)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="1: the preset's own seed; N > 1: seeds 0..N-1 (seed= sets both the split and the init)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    common.quiet()
    machine = common.machine_info()  # before any run: torch's default thread count, the load we start under

    names = args.only or list(EXPERIMENTS)
    results = []
    with common.temp_store() as (_, store_overrides):
        for name in names:
            runs = []
            for seed in ([None] if args.seeds == 1 else range(args.seeds)):
                print(f"[quality] {name} seed={'preset' if seed is None else seed} ...", flush=True)
                runs.append(run_one(name, seed, store_overrides))
                r = runs[-1]
                print(f"[quality]   seed {r['seed']}: dlpipe {r['dlpipe']:.4f}  sklearn {r['baseline']:.4f}  "
                      f"{r['epochs']} epochs  fit {r['fit_seconds']:.1f}s  wall {r['wall_seconds']:.1f}s", flush=True)
            results.append(summarise(name, runs))

    print()
    print_table(results)
    path = common.save_json("quality.json" if args.seeds == 1 else "quality_seeds.json", {
        "command": " ".join(["python benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "seeds": args.seeds,
        "seed_values": sorted({r["seed"] for res in results for r in res["runs"]}), "results": results})
    print(f"\nwrote {path.relative_to(common.ROOT)}")
    if args.only:
        print("README left alone: a partial run (--only); run benchmarks/report.py to publish it anyway")
    else:
        from benchmarks import report

        report.main([])
    return 0  # a missed target is a result to read, not a crash: `make bench` goes on to overhead.py


if __name__ == "__main__":
    sys.exit(main())
