"""`dlp ui [--port N]`: the MLflow UI on 127.0.0.1 over the store every other command uses.

The UI is MLflow's tracking server with no authentication: whoever reaches it can read and change (delete) every
run and model in the store. So it listens on loopback only, unless --allow-remote says to expose it, and then it
says so on stderr. A team server with passwords is `dlp server`. Store URIs are printed with passwords masked.
"""
from __future__ import annotations

import os
import sys

from pipelines.cli.common import command
from pipelines.tracking.console import UI_HOST, UI_PORT


def register(sub) -> None:
    p = command(sub, "ui", cmd_ui, "start the MLflow UI on 127.0.0.1 over the tracking store",
                "Serve the MLflow UI over the tracking store. It has no authentication and can change the store, so "
                "it listens on loopback; --host beyond loopback needs --allow-remote (dlp server is the team server, "
                "with passwords).")
    p.add_argument("--host", default=UI_HOST, help=f"address to listen on (default {UI_HOST}); beyond loopback "
                                                   "needs --allow-remote")
    p.add_argument("--port", type=int, default=UI_PORT)
    p.add_argument("--allow-remote", action="store_true",
                   help="listen beyond loopback anyway: anyone who reaches the port can read and change the store")


def cmd_ui(args) -> int:
    from pipelines.cluster.server import is_loopback, mask
    from pipelines.errors import UserError
    from pipelines.tracking import store

    uri = store.tracking_uri()
    where = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    if not is_loopback(args.host):
        exposed = (f"the store {mask(uri)} read/write, with no authentication, to anyone who can reach "
                   f"{where}")
        if not args.allow_remote:
            raise UserError(f"ui: --host {args.host} is beyond loopback: the UI would serve {exposed}; use "
                            f"--host {UI_HOST} (the default), dlp server --host {args.host} for a server with "
                            "passwords, or add --allow-remote to expose it anyway")
        print(f"dlp: warning: --allow-remote: serving {exposed} (MLflow's basic-auth app is off; dlp server "
              "turns it on)", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    # flushed: execv replaces this process, and with it anything still in stdout's buffer (a pipe's, say)
    print(f"MLflow UI on {where}  (store: {mask(uri)}; training runs: #/experiments/<id>/runs)", flush=True)
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover
