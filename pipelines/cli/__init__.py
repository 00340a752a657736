"""`dlp`: the one command line for dlpipe. One module per command group registers its subcommands here.

    dlp train [overrides]                      train one model, tracked in MLflow               (train.py)
    dlp config show [overrides]                print the resolved config                        (train.py)
    dlp config groups                          list config groups and their options
    dlp predict MODEL_URI INPUT -o OUT         batch predictions from a logged model
    dlp tune experiment=X tune=Y [overrides]   a Ray Tune sweep of X over conf/tune/Y.yaml      (tune.py)
    dlp pipeline experiment=X [tune=Y]         prepare -> train|tune -> evaluate -> register -> promote, cached
    dlp evaluate MODEL_URI [--metric m]        score a logged model on its frozen test split    (workflow.py)
    dlp register runs:/ID/model --name M       register a run's model as a version of M, alias challenger
    dlp promote M [--metric m] [--min-delta x] challenger -> champion if it scores better on the frozen test split
    dlp rollback M                             champion back to the version that held it before
    dlp models                                 registered models, versions, aliases and test metrics (registry.py)
    dlp ui [--port N]                          MLflow UI on 127.0.0.1 over the same store       (ui.py)
    dlp server [--host H] [--backend-store-uri] a team's tracking server: auth, proxied artifacts (server.py)
    dlp submit [--address A] [--wait] -- CMD   run `dlp CMD` on a Ray cluster (Ray Jobs API)    (cluster.py)
    dlp jobs | dlp logs ID [--follow] | dlp stop ID    the cluster's jobs

Overrides use Hydra's syntax: key=value, group=option, +new_key=value.
User errors print one line and exit 2; Ctrl-C exits 130, SIGTERM 143 (the run ends KILLED either way).
"""
from __future__ import annotations

import argparse
import gc
import sys

from pipelines import signals
from pipelines.cli import cluster, registry, server, train, tune, ui, workflow
from pipelines.errors import disk_full, exit_code

GROUPS = (train, tune, workflow, registry, ui, server, cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlp", description="dlpipe: train, track and serve deep-learning models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    parser.set_defaults(commands=sorted(sub.choices))   # what `dlp submit` may send to a cluster
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.whole_process = argv is None  # the process's own command line (not a call from a test or a script)
    if args.whole_process:
        signals.interrupt_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        cause, code = ("terminated (SIGTERM)", 143) if signals.terminated() else ("interrupted", 130)
        print(f"dlp: {cause}; the MLflow run is marked KILLED", file=sys.stderr)
        return code
    except Exception as e:
        code = exit_code(e)   # UserError, ModelError, DataError: one line, no traceback
        full = disk_full(e) if code is None else None
        if code is None and full is None:
            raise
        print(f"dlp: error: {full or e}", file=sys.stderr)
        return code or 1
    finally:
        if args.whole_process:
            # the process exits next: its final garbage collection over every object torch, Lightning, MLflow
            # and Ray made took ~2 s after `dlp train` printed its summary; frozen objects are skipped (they are
            # still freed; only cycles among them are left to the OS)
            gc.freeze()
