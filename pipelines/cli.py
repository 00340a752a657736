"""`dlp`: the one command line for dlpipe.

    dlp train [overrides]                      train one model, tracked in MLflow
    dlp tune experiment=X tune=Y [overrides]   a Ray Tune sweep of X over conf/tune/Y.yaml
    dlp pipeline experiment=X [tune=Y]         prepare -> train|tune -> evaluate -> register -> promote, cached
    dlp evaluate MODEL_URI [--metric m]        score a logged model on its frozen test split
    dlp config show [overrides]                print the resolved config
    dlp config groups                          list config groups and their options
    dlp predict MODEL_URI INPUT -o OUT         batch predictions from a logged model
    dlp register runs:/ID/model --name M       register a run's model as a version of M, alias challenger
    dlp promote M [--metric m] [--min-delta x] challenger -> champion if it scores better on the frozen test split
    dlp rollback M                             champion back to the version that held it before
    dlp models                                 registered models, versions, aliases and test metrics
    dlp ui [--port N]                          MLflow UI on 127.0.0.1 over the same store
    dlp submit [--address A] [--wait] -- CMD   run `dlp CMD` on a Ray cluster (Ray Jobs API)
    dlp jobs | dlp logs ID [--follow] | dlp stop ID    the cluster's jobs

Overrides use Hydra's syntax: key=value, group=option, +new_key=value.
User errors print one line and exit 2; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from pipelines.errors import UserError


def _quiet_libraries() -> None:
    # Lightning's banner lines ("GPU available: False ...") and MLflow's store/validation chatter
    # would bury the summary; real warnings and errors still show.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (configures its loggers on import; override them after)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*deterministic.*")
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def overrides(args) -> list:
    """The command's overrides, with any argument that holds several (`mlflow run -P overrides="a=1 b=2"`
    passes them as one quoted word) split the way a shell would."""
    import re
    import shlex

    out = []
    for arg in args.overrides:
        out += shlex.split(arg) if re.search(r"\s+[\w.+~/-]+=", arg) else [arg]
    return out


def cmd_train(args) -> int:
    from pipelines.config import compose

    cfg = compose(overrides(args))  # config errors: before any import of torch
    if cfg.trainer.num_workers >= 1:
        from pipelines import raycluster

        # start the local Ray cluster now, in a thread, so its ~4 s start overlaps the imports, data checks and
        # MLflow setup below; distributed.run's connect() waits for it (and raises its error, if any)
        raycluster.start_in_background()
    whole_process = getattr(args, "whole_process", False)
    if whole_process:
        # importing torch, Lightning, MLflow and Ray makes ~1M objects and the collector walks them again and
        # again while they load (~1.5 s of CPU); collect none during the imports, then freeze what they made
        # (no cycles to find there) so later collections, and the one at interpreter exit, skip it
        gc.disable()
    try:
        from pipelines.train import summary, train

        _quiet_libraries()
    finally:
        if whole_process:
            gc.freeze()
            gc.enable()
    if whole_process and cfg.trainer.num_workers >= 1:
        from pipelines import distributed

        distributed.COMMAND_PROCESS = True  # its run may time the phases from the process's own start
    start = time.perf_counter()
    try:
        out = train(cfg)
    finally:
        if cfg.trainer.num_workers >= 1:
            raycluster.abandon()  # a cluster started above that the run never used (it failed before training)
    print(summary(cfg, out, time.perf_counter() - start))
    return 0


def cmd_tune(args) -> int:
    from pipelines import tune

    sweep = tune.prepare(overrides(args))  # config and search-space errors: before Ray or MLflow start
    _quiet_libraries()
    print(tune.summary(tune.run(sweep)))
    return 0


def cmd_pipeline(args) -> int:
    from pipelines import pipeline

    p = pipeline.prepare(overrides(args))  # config, sweep and step-parameter errors: before any run
    _quiet_libraries()
    print(pipeline.summary(pipeline.run(p)))
    return 0


def cmd_evaluate(args) -> int:
    from pipelines import pipeline, tracking

    tracking.configure()
    _quiet_libraries()
    out = pipeline.evaluate(args.model_uri, args.metric)
    run_id = os.environ.get("MLFLOW_RUN_ID")   # under `mlflow run -e evaluate`: record it on that run
    if run_id:
        from mlflow import MlflowClient

        MlflowClient().log_metric(run_id, f"eval/{out['metric']}", out["value"])
    print(f"{args.model_uri}: test {out['metric']} = {out['value']:.4f} on {out['n_test']} rows of the frozen "
          f"test split of run {out['run_id']}")
    return 0


def cmd_config(args) -> int:
    from pipelines.config import CONF_DIR, compose, to_yaml

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
    import pandas as pd

    from pipelines import tracking

    tracking.configure()
    src = Path(args.input)
    if not src.is_file():
        raise UserError(f"predict: input file '{src}' does not exist")
    frame = pd.read_parquet(src) if src.suffix == ".parquet" else pd.read_csv(src)
    _quiet_libraries()
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(args.model_uri)
    except (MlflowException, OSError) as e:
        raise UserError(f"predict: cannot load model '{args.model_uri}': {str(e).splitlines()[0]}") from None
    schema = model.metadata.get_input_schema()
    needed = [name for name in (schema.input_names() if schema is not None else []) if isinstance(name, str)]
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise UserError(f"predict: {src} lacks column(s) {', '.join(missing)}; the model takes {', '.join(needed)}")
    try:
        preds = model.predict(frame)
    except (MlflowException, ValueError, KeyError) as e:
        raise UserError(f"predict: {src} does not fit the model's input: {str(e).splitlines()[0]}") from None
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    preds.to_csv(out, index=False)
    print(f"wrote {len(preds)} predictions to {out}")
    return 0


def cmd_register(args) -> int:
    _quiet_libraries()
    from pipelines import registry

    version, tags = registry.register(args.model_uri, args.name)
    shown = "  ".join(f"{k[len('dlp.'):]} {v}" for k, v in sorted(tags.items()) if k.startswith("dlp.test/"))
    print(f"registered {args.model_uri} as models:/{args.name}/{version} (alias {registry.CHALLENGER})"
          + (f"\n  {shown}" if shown else ""))
    print(f"  next: dlp promote {args.name}")
    return 0


def cmd_promote(args) -> int:
    """Exit 0 when the challenger became champion, 1 when it was refused for its score (recorded either way)."""
    _quiet_libraries()
    from pipelines import registry

    decision = registry.promote(args.model, metric=args.metric, min_delta=args.min_delta, version=args.version)
    print(decision.line())
    if decision.promoted:
        print(f"  serving: models:/{args.model}@{registry.CHAMPION}")
    return 0 if decision.promoted else 1


def cmd_rollback(args) -> int:
    _quiet_libraries()
    from pipelines import registry

    leaving, back = registry.rollback(args.model)
    print(f"champion of {args.model}: v{leaving} -> v{back}")
    return 0


def cmd_models(args) -> int:
    _quiet_libraries()
    from pipelines import registry

    print(registry.format_models(registry.list_models()))
    return 0


def cmd_ui(args) -> int:
    from pipelines import tracking

    uri = tracking.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {uri}; training runs: #/experiments/<id>/runs)")
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def cmd_submit(args) -> int:
    from pipelines import jobs

    command = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    if not command:
        raise UserError("submit: nothing to run; put a dlp command after `--`, e.g. "
                        "dlp submit -- train experiment=digits_cnn trainer.num_workers=2")
    runnable = sorted(set(_subcommands()) - NOT_SUBMITTABLE)
    if command[0] not in runnable:
        raise UserError(f"submit: '{command[0]}' is not a dlp command a job can run; one of {', '.join(runnable)}")
    if command[0] == "train":
        jobs.prepare_train(command[1:])  # config errors here, before any upload
    address = jobs.resolve_address(args.address)
    job_id = jobs.submit(command, address, env=args.env)
    print(f"submitted {job_id} to {address}: dlp {' '.join(command)}")
    if not args.wait:
        print(jobs.follow_hint(job_id, address))
        return 0
    return _follow(jobs, job_id, address)


def _follow(jobs, job_id: str, address: str) -> int:
    try:
        status = jobs.logs(job_id, address, follow=True)
    except KeyboardInterrupt:
        print(f"dlp: stopped following; {job_id} keeps running (dlp stop {job_id})", file=sys.stderr)
        return 130
    if status != "SUCCEEDED":
        why = jobs.failure(job_id, address)
        print(f"dlp: job {job_id} {status}" + (f": {why}" if why else ""), file=sys.stderr)
        return 1
    print(f"job {job_id} SUCCEEDED")
    return 0


def cmd_jobs(args) -> int:
    from pipelines import jobs

    print(jobs.format_jobs(jobs.list_jobs(jobs.resolve_address(args.address))))
    return 0


def cmd_logs(args) -> int:
    from pipelines import jobs

    address = jobs.resolve_address(args.address)
    if args.follow:
        return _follow(jobs, args.job_id, address)
    jobs.logs(args.job_id, address)
    return 0


def cmd_stop(args) -> int:
    from pipelines import jobs

    stopped = jobs.stop(args.job_id, jobs.resolve_address(args.address))
    print(f"stopping {args.job_id}" if stopped else f"{args.job_id} had already ended")
    return 0


NOT_SUBMITTABLE = {"submit", "jobs", "logs", "stop", "ui"}  # client-side or interactive


def _subcommands():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _add_address(p) -> None:
    p.add_argument("--address", help="the cluster's dashboard, http://HOST:8265 "
                                     "(default: $RAY_ADDRESS, else http://127.0.0.1:8265 of `ray start --head`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlp", description="dlpipe: train, track and serve deep-learning models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model (overrides: key=value group=option +key=value)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="a Ray Tune sweep: dlp tune experiment=X tune=Y [overrides] [resume=true]",
                       description="Sweep the search space of conf/tune/<Y>.yaml over experiment X; every trial is a "
                                   "(possibly distributed) training run nested under one MLflow sweep run, and the "
                                   "best trial's model is registered with alias `challenger`.")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("pipeline", help="prepare -> train|tune -> evaluate -> register -> promote, steps cached",
                       description="Run the step graph of conf/pipeline.yaml for an experiment: each step is an "
                                   "MLflow run nested under one pipeline run; a step whose inputs match a finished "
                                   "one is reused. Arguments: experiment=X [tune=Y] [training overrides] "
                                   "[pipeline.<step>.<key>=value].")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("evaluate", help="score a logged model on the frozen test split of the run that trained it")
    p.add_argument("model_uri", help="runs:/<id>/model or models:/<name>@<alias>")
    p.add_argument("--metric", default=None, help="acc, f1, precision, recall, log_loss, r2, mae, rmse "
                                                   "(default: the monitored metric, else acc / r2 / mae)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("config", help="show the resolved config or the available groups")
    p.add_argument("action", choices=["show", "groups"])
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("predict", help="batch predictions from runs:/<id>/model or models:/<name>@<alias>")
    p.add_argument("model_uri")
    p.add_argument("input", help="CSV or Parquet file of raw input rows")
    p.add_argument("-o", "--output", required=True, help="CSV file to write")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("register", help="register runs:/<id>/model as a new version of --name, alias challenger")
    p.add_argument("model_uri", help="runs:/<run id>/model, as dlp train prints it")
    p.add_argument("--name", required=True, help="registered model name (created if new)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("promote", help="move alias champion to the challenger if it scores better on the test split",
                       description="Re-score the challenger and the current champion on the same frozen test split "
                                   "(rebuilt from the training config; dataset fingerprints must match) and move "
                                   "`champion` only if the challenger is better by at least --min-delta. Exit 0 when "
                                   "promoted, 1 when refused for its score; the decision is recorded on the version.")
    p.add_argument("model")
    p.add_argument("--metric", help="acc, f1, precision, recall, log_loss (classification); r2, mae, rmse, mse "
                                    "(regression, forecasts). Default: the monitored metric if computable, else acc, "
                                    "r2 or mae")
    p.add_argument("--min-delta", type=float, default=0.0, help="least improvement that promotes (default 0)")
    p.add_argument("--version", help="promote this version instead of the one aliased challenger")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="move alias champion back to the version that held it before")
    p.add_argument("model")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("models", help="list registered models: versions, aliases, test metrics, last decision")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the tracking store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("submit", help="run a dlp command as a Ray job: dlp submit [options] -- train ...",
                       description="Submit `dlp CMD` to a Ray cluster through the Ray Jobs API, e.g. "
                                   "dlp submit -- train experiment=digits_cnn trainer.num_workers=2. The job runs in "
                                   "a copy of this repository (its runtime env's working_dir, without .venv, .git, "
                                   "stores, outputs and what .gitignore lists), so relative paths in CMD resolve "
                                   "there; the MLflow store ($MLFLOW_TRACKING_URI, a local path made absolute) goes "
                                   "with it. A token in $RAY_AUTH_TOKEN or ~/.ray/auth_token is sent when present.")
    _add_address(p)
    p.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeds")
    p.add_argument("--env", choices=["local", "pip"], default="local",
                   help="local (default): the cluster's own Python env, the first `python` on the PATH of "
                        "`ray start` (activate the .venv of scripts/setup.sh before it), which needs no download; "
                        "pip: install pyproject's dependencies into a job env first (a bare cluster with internet; "
                        "minutes and several GB with torch)")
    p.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- CMD", help="the dlp command to run")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list the Ray cluster's submitted jobs")
    _add_address(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("logs", help="print a job's logs")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="stream them until the job ends")
    _add_address(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a running job")
    p.add_argument("job_id")
    _add_address(p)
    p.set_defaults(func=cmd_stop)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.whole_process = argv is None  # the process's own command line (not a call from a test or a script)
    try:
        return args.func(args)
    except UserError as e:
        print(f"dlp: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dlp: interrupted; the MLflow run is marked KILLED", file=sys.stderr)
        return 130
    finally:
        if args.whole_process:
            # the process exits next: its final garbage collection over every object torch, Lightning, MLflow
            # and Ray made took ~2 s after `dlp train` printed its summary; frozen objects are skipped (they are
            # still freed; only cycles among them are left to the OS)
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
