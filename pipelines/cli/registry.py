"""`dlp register`, `dlp promote`, `dlp rollback`, `dlp models`: the MLflow model registry, aliases only."""
from __future__ import annotations

from pipelines.cli.common import command, quiet


def register(sub) -> None:
    p = command(sub, "register", cmd_register, "register runs:/<id>/model as a new version of --name, alias challenger")
    p.add_argument("model_uri", help="runs:/<run id>/model, as dlp train prints it")
    p.add_argument("--name", required=True, help="registered model name (created if new)")
    p = command(sub, "promote", cmd_promote, "move alias champion to the challenger if it scores better on the test "
                "split", "Re-score the challenger and the current champion on the same frozen test split (rebuilt "
                "from the training config; dataset fingerprints must match) and move `champion` only if the "
                "challenger is better by at least --min-delta. Exit 0 when promoted, 1 when refused for its score; the "
                "decision is recorded on the version.")
    p.add_argument("model")
    p.add_argument("--metric", help="acc, f1, precision, recall, log_loss (classification); r2, mae, rmse, mse "
                                    "(regression, forecasts). Default: the monitored metric if computable, else acc, "
                                    "r2 or mae")
    p.add_argument("--min-delta", type=float, default=0.0, help="least improvement that promotes (default 0)")
    p.add_argument("--version", help="promote this version instead of the one aliased challenger")
    command(sub, "rollback", cmd_rollback, "move alias champion back to the version that held it before"
            ).add_argument("model")
    command(sub, "models", cmd_models, "list registered models: versions, aliases, test metrics, last decision")


def cmd_register(args) -> int:
    quiet()
    from pipelines.registry import versions
    from pipelines.tracking import names

    version, tags = versions.register(args.model_uri, args.name)
    shown = "  ".join(f"{k[len('dlp.'):]} {v}" for k, v in sorted(tags.items()) if k.startswith(names.TEST_TAG_PREFIX))
    print(f"registered {args.model_uri} as models:/{args.name}/{version} (alias {names.CHALLENGER})"
          + (f"\n  {shown}" if shown else ""))
    print(f"  next: dlp promote {args.name}")
    return 0


def cmd_promote(args) -> int:
    """Exit 0 when the challenger became champion, 1 when it was refused for its score (recorded either way)."""
    quiet()
    from pipelines.registry import promotion
    from pipelines.tracking import names

    decision = promotion.promote(args.model, metric=args.metric, min_delta=args.min_delta, version=args.version)
    print(decision.line())
    if decision.promoted:
        print(f"  serving: models:/{args.model}@{names.CHAMPION}")
    return 0 if decision.promoted else 1


def cmd_rollback(args) -> int:
    quiet()
    from pipelines.registry import promotion

    leaving, back = promotion.rollback(args.model)
    print(f"champion of {args.model}: v{leaving} -> v{back}")
    return 0


def cmd_models(args) -> int:
    quiet()
    from pipelines.registry import versions

    print(versions.format_models(versions.list_models()))
    return 0
