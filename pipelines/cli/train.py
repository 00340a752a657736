"""`dlp train`, `dlp config show|groups`, `dlp predict`: one training run, the config it would use, and batch
predictions from a logged model."""
from __future__ import annotations

import time
from pathlib import Path

from pipelines.cli.common import command, heavy_imports, overrides, quiet
from pipelines.errors import UserError, first_line


def register(sub) -> None:
    command(sub, "train", cmd_train, "train one model (overrides: key=value group=option +key=value)",
            takes_overrides=True)
    p = command(sub, "config", cmd_config, "show the resolved config or the available groups")
    p.add_argument("action", choices=["show", "groups"])
    p.add_argument("overrides", nargs="*")
    p = command(sub, "predict", cmd_predict, "batch predictions from runs:/<id>/model or models:/<name>@<alias>")
    p.add_argument("model_uri")
    p.add_argument("input", help="CSV or Parquet file of raw input rows")
    p.add_argument("-o", "--output", required=True, help="CSV file to write")


def cmd_train(args) -> int:
    from pipelines.config.compose import compose
    from pipelines.tracking import store, store_checks

    cfg = compose(overrides(args))  # config errors: before any import of torch
    store_checks.check(store.tracking_uri(cfg))  # an unusable store: one line, before the imports, data or Ray
    distributed = cfg.trainer.num_workers >= 1
    cluster = None
    if distributed:
        from pipelines.cluster.local import RayCluster

        # the local Ray cluster starts now, in a thread, so its ~4 s start overlaps the imports, data checks and
        # MLflow setup below; the Ray Train driver waits for it (and raises its error, if any)
        cluster = RayCluster(env=cfg.cluster.env).start()
    try:
        with heavy_imports(args.whole_process):
            from pipelines.training import ray_driver
            from pipelines.training.driver import summary, train

            quiet()
        # the run may time its launch phases from the process's own start (not a test's or a script's)
        started = ray_driver.process_start() if args.whole_process and distributed else None
        start = time.perf_counter()
        out = train(cfg, cluster=cluster, process_started=started)
    finally:
        if cluster is not None:
            cluster.close()  # a cluster the run never used (it failed before training) stops here
    print(summary(cfg, out, time.perf_counter() - start))
    return 0


def cmd_config(args) -> int:
    from pipelines.config.compose import CONF_DIR, compose, to_yaml

    if args.action == "groups":
        for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("cluster", "tune")):
            options = sorted(f.stem for f in group.glob("*.yaml"))
            print(f"{group.name + ':':<12} {', '.join(options)}")
        sweeps = ", ".join(sorted(f.stem for f in (CONF_DIR / "tune").glob("*.yaml")))
        print(f"(conf/tune/ holds the search spaces of `dlp tune experiment=X tune=Y`: {sweeps}; conf/pipeline.yaml "
              "the step graph of `dlp pipeline`)")
        print("(conf/cluster/ holds a Ray cluster-launcher YAML and a KubeRay RayJob manifest for `dlp submit`, "
              "not config options)")
        return 0
    print(to_yaml(compose(overrides(args))), end="")
    return 0


def cmd_predict(args) -> int:
    from pipelines.cli import predict_io
    from pipelines.tracking import store

    store.configure()
    src = Path(args.input)
    frame = predict_io.read_input(src)  # unreadable files: one line naming the file
    quiet()
    from mlflow.exceptions import MlflowException

    from pipelines.tracking.model_trust import load_verified

    model = load_verified(args.model_uri, "predict")  # files checked against their logged digests, then loaded
    schema = model.metadata.get_input_schema()
    needed = [name for name in (schema.input_names() if schema is not None else []) if isinstance(name, str)]
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise UserError(f"predict: {src} lacks column(s) {', '.join(missing)}; the model takes {', '.join(needed)}")
    predict_io.check_inputs(frame, needed or list(frame.columns), src)  # ±inf trains nothing; it predicts NaN
    try:
        preds = model.predict(frame)
    except (MlflowException, ValueError, KeyError) as e:
        raise UserError(f"predict: {src} does not fit the model's input: {first_line(e)}") from None
    out = Path(args.output)
    predict_io.check_outputs(preds, src, out)  # a NaN probability is never written
    out.parent.mkdir(parents=True, exist_ok=True)
    preds.to_csv(out, index=False)
    print(f"wrote {len(preds)} predictions to {out}")
    return 0
