"""Test-set quality of dlpipe's presets against classical baselines on the same split.

    .venv/bin/python benchmarks/quality.py                     # every preset, its own seed (42)
    .venv/bin/python benchmarks/quality.py --seeds 5           # mean ± std over seeds 0..4
    .venv/bin/python benchmarks/quality.py --only diabetes_mlp

Each preset runs through the real tracked path (`pipelines.training.driver.train`) into a throw-away MLflow
store, with the preset's own settings. Tabular and image baselines (scikit-learn) are fitted on the
datamodule's own preprocessed train + val tensors and scored on its test tensors; forecast baselines
(seasonal naive, SARIMA) forecast the same test windows from the same inputs; the text baseline
(TF-IDF + logistic regression) reads the same raw train + val texts (benchmarks/baselines.py). The
run's data hash (an MLflow tag) is checked against the baselines' to prove they share the split.
`seed=` draws both the split and the initial weights (time series split by time: only the init), and
the tabular test splits are small (85 to 270 rows), so one seed is one sample: --seeds N shows the spread.
Writes benchmarks/results/quality.json (one run at the preset's seed, what `make bench` publishes)
or quality_seeds.json (--seeds N > 1), then, after a full run, the results block of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import baselines, common


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
    metric: str                   # dlpipe test metric; every baseline computes the same quantity
    baselines: dict               # label -> (set-up datamodule) -> baseline score on the run's test split
    target: Optional[float] = None   # an absolute promise (README): dlpipe must reach it
    lower_is_better: bool = False
    beat_baselines: bool = False  # the promise: better than every baseline
    within: Optional[tuple] = None   # (other preset, fraction): no worse than that preset's score by more than fraction


def tensors(fit: Callable) -> Callable:
    """A scikit-learn baseline on the datamodule's preprocessed tensors (flattened), scored like the run.

    Regression targets are standardised by the datamodule; R^2 is invariant to that affine map,
    so it is computed on the standardised scale.
    """
    def score(dm, metric: str) -> float:
        from sklearn.metrics import accuracy_score, r2_score

        def arrays(split):
            x, y = dm._tensors[split]
            return x.reshape(len(x), -1).numpy(), y.numpy()  # images: flattened normalised pixels

        (xt, yt), (xv, yv), (xs, ys) = arrays("train"), arrays("val"), arrays("test")
        model = fit(xt, yt, xv, yv)
        return float((accuracy_score if metric == "test/acc" else r2_score)(ys, model.predict(xs)))
    return score


CO2_SARIMA = "SARIMA(1,1,1)(0,1,1)52"
EXPERIMENTS = {
    "digits_cnn": Bench("test/acc", {"SVC(rbf, C in {1,10} on val)": tensors(svc)}, target=0.98),
    "breast_cancer_mlp": Bench("test/acc", {"LogisticRegression": tensors(fixed(logreg))}, target=0.96),
    "diabetes_mlp": Bench("test/r2", {"Ridge(alpha=1)": tensors(fixed(ridge))}, target=0.45),
    "co2_lstm": Bench("test/mae", {"seasonal naive (52 weeks)": lambda dm, _: baselines.seasonal_naive(dm, 52),
                                   CO2_SARIMA: lambda dm, _: baselines.sarima(dm, (1, 1, 1), (0, 1, 1, 52))},
                      lower_is_better=True, beat_baselines=True),
    "co2_transformer": Bench("test/mae", {}, lower_is_better=True, within=("co2_lstm", 0.10)),
    "seattle_temps_lstm": Bench("test/mae", {"seasonal naive (24 h)": lambda dm, _: baselines.seasonal_naive(dm, 24),
                                             "SARIMA(2,0,0)(0,1,1)24": lambda dm, _: baselines.sarima(
                                                 dm, (2, 0, 0), (0, 1, 1, 24))},
                                lower_is_better=True),   # reported, not promised: see the README
    "rotten_tomatoes_rnn": Bench("test/acc", {"TF-IDF 1-2-grams + LogisticRegression":
                                              lambda dm, _: baselines.tfidf_logreg(dm)}, beat_baselines=True),
    "rotten_tomatoes_transformer": Bench("test/acc", {"TF-IDF 1-2-grams + LogisticRegression":
                                                      lambda dm, _: baselines.tfidf_logreg(dm)}, beat_baselines=True),
}
_BASELINE_CACHE: dict = {}  # (label, data hash) -> score: presets on the same split share their baselines


def run_one(name: str, seed: int | None, store_overrides: list[str]) -> dict:
    """One tracked dlpipe run and its baselines, on the split that `seed` draws (None: the preset's seed)."""
    from mlflow import MlflowClient

    import datamodules
    from pipelines.tracking import store as tracking
    from pipelines.config.compose import compose
    from pipelines.training.driver import train

    bench = EXPERIMENTS[name]
    cfg = compose([f"experiment={name}", *([f"seed={seed}"] if seed is not None else []), *store_overrides])
    start = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - start

    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")
    data_hash = dm.fingerprint()["hash"]
    scores, seconds = {}, {}
    for label, score in bench.baselines.items():
        start = time.perf_counter()
        if (label, data_hash) not in _BASELINE_CACHE:
            _BASELINE_CACHE[label, data_hash] = score(dm, bench.metric)
        scores[label], seconds[label] = _BASELINE_CACHE[label, data_hash], time.perf_counter() - start
    run_hash = MlflowClient(tracking.tracking_uri(cfg)).get_run(out.run_id).data.tags.get("dlp.data.hash")
    return {"seed": cfg.seed, "dlpipe": out.fit.test_metrics[bench.metric], "baselines": scores,
            "epochs": out.fit.epochs, "fit_seconds": out.fit.fit_seconds, "wall_seconds": wall,
            "baseline_seconds": seconds, "same_split": run_hash == data_hash, "run_id": out.run_id}


def better(bench: Bench, a: float, b: float) -> bool:
    return a < b if bench.lower_is_better else a > b


def verdict(bench: Bench, value: float, baseline_values: dict, other: Optional[float]) -> Optional[bool]:
    """Whether `value` keeps the preset's promise; None when it makes none (or `within` lacks its reference)."""
    checks = []
    if bench.target is not None:
        checks.append(value <= bench.target if bench.lower_is_better else value >= bench.target)
    if bench.beat_baselines:
        checks += [better(bench, value, b) for b in baseline_values.values()]
    if bench.within is not None:
        if other is None:
            return None
        frac = bench.within[1]
        checks.append(value <= other * (1 + frac) if bench.lower_is_better else value >= other * (1 - frac))
    return all(checks) if checks else None


def promise(bench: Bench) -> str:
    parts = []
    if bench.target is not None:
        parts.append(f"{'≤' if bench.lower_is_better else '≥'} {bench.target}")
    if bench.beat_baselines:
        parts.append("beat every baseline")
    if bench.within is not None:
        other, frac = bench.within
        parts.append(f"within {frac:.0%} of {other}")
    return "; ".join(parts) or "(reported only)"


def summarise(name: str, runs: list[dict], done: dict) -> dict:
    """Mean ± std over seeds; `done` holds the summaries already made (for `within`)."""
    bench = EXPERIMENTS[name]
    d_mean, d_std = common.mean_std(r["dlpipe"] for r in runs)
    base = {label: dict(zip(("mean", "std"), common.mean_std(r["baselines"][label] for r in runs)))
            for label in bench.baselines}
    ref = done.get(bench.within[0]) if bench.within else None
    ref_by_seed = {r["seed"]: r["dlpipe"] for r in ref["runs"]} if ref else {}
    per_seed = [verdict(bench, r["dlpipe"], r["baselines"], ref_by_seed.get(r["seed"])) for r in runs]
    passed = verdict(bench, d_mean, {k: v["mean"] for k, v in base.items()}, ref["dlpipe_mean"] if ref else None)
    return {"experiment": name, "metric": bench.metric, "promise": promise(bench),
            "lower_is_better": bench.lower_is_better, "dlpipe_mean": d_mean, "dlpipe_std": d_std,
            "baselines": base, "reference": {"experiment": bench.within[0], "mean": ref["dlpipe_mean"]} if ref else None,
            "pass": passed, "seeds_passing": sum(v is True for v in per_seed), "seeds": len(runs),
            "epochs_mean": common.mean_std(r["epochs"] for r in runs)[0],
            "fit_seconds_mean": common.mean_std(r["fit_seconds"] for r in runs)[0],
            "wall_seconds_mean": common.mean_std(r["wall_seconds"] for r in runs)[0],
            "same_split": all(r["same_split"] for r in runs), "runs": runs}


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def outcome(r: dict) -> str:
    text = {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]
    return text + (f" ({r['seeds_passing']}/{r['seeds']} seeds)" if r["seeds"] > 1 and r["pass"] is not None else "")


def baseline_cell(r: dict) -> str:
    cells = [f"{fmt(v['mean'], v['std'], r['seeds'])} {label}" for label, v in r["baselines"].items()]
    if r.get("reference"):
        cells.append(f"{r['reference']['mean']:.4f} {r['reference']['experiment']}")
    return "; ".join(cells)


def print_table(results: list[dict]) -> None:
    rows = [[r["experiment"], r["metric"], fmt(r["dlpipe_mean"], r["dlpipe_std"], r["seeds"]), baseline_cell(r),
             r["promise"], outcome(r), f"{r['epochs_mean']:.0f}", f"{r['fit_seconds_mean']:.1f}",
             f"{r['wall_seconds_mean']:.1f}"] for r in results]
    print(common.table(["experiment", "metric", "dlpipe", "baselines", "promise", "pass", "epochs", "fit s", "wall s"],
                       rows))
    for r in results:
        if not r["same_split"]:
            print(f"  WARNING {r['experiment']}: the run's data hash differs from the baseline's")


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
                shown = "  ".join(f"{k} {v:.4f}" for k, v in r["baselines"].items())
                print(f"[quality]   seed {r['seed']}: dlpipe {r['dlpipe']:.4f}  {shown}  "
                      f"{r['epochs']} epochs  fit {r['fit_seconds']:.1f}s  wall {r['wall_seconds']:.1f}s", flush=True)
            results.append(summarise(name, runs, {r["experiment"]: r for r in results}))

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
