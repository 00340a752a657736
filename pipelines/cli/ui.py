"""`dlp ui [--port N]`: the MLflow UI on 127.0.0.1 over the store every other command uses."""
from __future__ import annotations

import os
import sys

from pipelines.cli.common import command
from pipelines.tracking.console import UI_HOST, UI_PORT


def register(sub) -> None:
    p = command(sub, "ui", cmd_ui, "start the MLflow UI on 127.0.0.1 over the tracking store")
    p.add_argument("--host", default=UI_HOST)
    p.add_argument("--port", type=int, default=UI_PORT)


def cmd_ui(args) -> int:
    from pipelines.tracking import store

    uri = store.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {uri}; training runs: #/experiments/<id>/runs)")
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover
