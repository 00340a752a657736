"""`dlp tune experiment=X tune=Y [overrides] [resume=true|false]`: a Ray Tune sweep, nested in MLflow."""
from __future__ import annotations

import sys

from pipelines.cli.common import command, overrides, quiet


def register(sub) -> None:
    command(sub, "tune", cmd_tune, "a Ray Tune sweep: dlp tune experiment=X tune=Y [overrides] [resume=true]",
            "Sweep the search space of conf/tune/<Y>.yaml over experiment X; every trial is a (possibly distributed) "
            "training run nested under one MLflow sweep run, and the best trial's model is registered with alias "
            "`challenger`.", takes_overrides=True)


def cmd_tune(args) -> int:
    from pipelines.sweeps import report, spec, tuner

    sweep = spec.prepare(overrides(args))  # config and search-space errors: before Ray or MLflow start
    quiet()
    result = tuner.run(sweep)
    print(report.summary(result))
    failure = result.failure()
    if failure:
        print(f"dlp: error: {failure}", file=sys.stderr)
        return 1
    return 0
