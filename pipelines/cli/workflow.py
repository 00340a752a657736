"""`dlp pipeline` (prepare -> train|tune -> evaluate -> register -> promote, steps cached) and `dlp evaluate`."""
from __future__ import annotations

import os

from pipelines.cli.common import command, overrides, quiet


def register(sub) -> None:
    command(sub, "pipeline", cmd_pipeline, "prepare -> train|tune -> evaluate -> register -> promote, steps cached",
            "Run the step graph of conf/pipeline.yaml for an experiment: each step is an MLflow run nested under one "
            "pipeline run; a step whose inputs match a finished one is reused. Arguments: experiment=X [tune=Y] "
            "[training overrides] [pipeline.<step>.<key>=value].", takes_overrides=True)
    p = command(sub, "evaluate", cmd_evaluate, "score a logged model on the frozen test split of the run that trained it")
    p.add_argument("model_uri", help="runs:/<id>/model or models:/<name>@<alias>")
    p.add_argument("--metric", default=None, help="acc, f1, precision, recall, log_loss, r2, mae, rmse "
                                                   "(default: the monitored metric, else acc / r2 / mae)")


def cmd_pipeline(args) -> int:
    from pipelines.workflow import plan, runner

    p = plan.prepare(overrides(args))  # config, sweep and step-parameter errors: before any run
    quiet()
    print(runner.summary(runner.run(p)))
    return 0


def cmd_evaluate(args) -> int:
    from pipelines.registry.evaluation import evaluate
    from pipelines.tracking import names, runs, store

    store.configure()
    quiet()
    out = evaluate(args.model_uri, args.metric)
    run_id = os.environ.get("MLFLOW_RUN_ID")   # under `mlflow run -e evaluate`: record it on that run
    if run_id:
        from mlflow import MlflowClient

        runs.log_metrics(MlflowClient(), run_id, {names.EVAL_PREFIX + out["metric"]: out["value"]})
    print(f"{args.model_uri}: test {out['metric']} = {out['value']:.4f} on {out['n_test']} rows of the frozen "
          f"test split of run {out['run_id']}")
    return 0
