"""`dlp server`: a team's tracking server (pipelines/cluster/server.py)."""
from __future__ import annotations

import argparse

from pipelines.cli.common import command


def register(sub) -> None:
    p = command(sub, "server", cmd_server, "start a team tracking server (MLflow, proxied artifacts, basic-auth)",
                "Start MLflow's tracking server for a team and its cluster: a PostgreSQL or SQLite backend, artifacts "
                "proxied to a folder or s3:// (only the server needs storage credentials), basic-auth whenever it "
                "listens beyond loopback. Prints the MLFLOW_TRACKING_* settings clients and `dlp submit` use.")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (beyond loopback: auth is on)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--backend-store-uri", dest="backend",
                   help="postgresql://user:password@host:port/db or sqlite:///path (default: <dir>/mlflow.db)")
    p.add_argument("--artifacts-destination", dest="artifacts",
                   help="a folder or s3://bucket/prefix (default: <dir>/artifacts)")
    p.add_argument("--dir", default=".dlp-server", help="the server's own files: SQLite stores, auth, log")
    p.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                   help="basic-auth (default: on beyond loopback, where --no-auth is refused)")
    p.add_argument("--username", default="admin")
    p.add_argument("--password", help="the admin's password (default: $DLP_SERVER_PASSWORD, else generated and "
                                      "kept in <dir>/admin_password)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--allowed-hosts", help="Host headers to accept, comma-separated (a DNS name clients use; "
                                           "default: localhost and private addresses)")


def cmd_server(args) -> int:
    from pipelines.cluster.server import ServerConfig, serve

    return serve(ServerConfig(host=args.host, port=args.port, backend=args.backend, artifacts=args.artifacts,
                              dir=args.dir, auth=args.auth, username=args.username, password=args.password,
                              workers=args.workers, allowed_hosts=args.allowed_hosts))
