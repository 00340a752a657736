"""What every `dlp` command module shares: its Hydra overrides, quiet libraries, and a whole process's
garbage-collector settings."""
from __future__ import annotations

import contextlib
import gc
import logging
import re
import shlex
from typing import List


def overrides(args) -> List[str]:
    """The command's overrides. An argument holding several (`mlflow run -P overrides="a=1 b=2"` passes them as
    one quoted word) is split the way a shell would; an empty one (MLproject's default `overrides: ""`, which
    `mlflow run` passes as '') is dropped."""
    out = []
    for arg in args.overrides:
        if not arg.strip():
            continue
        out += shlex.split(arg) if re.search(r"\s+[\w.+~/-]+=", arg) else [arg]
    return out


def quiet() -> None:
    """Libraries' chatter down to warnings; dlp's own lines (logger "dlp") as plain messages."""
    from pipelines.tracking.console import quiet_libraries

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")


@contextlib.contextmanager
def heavy_imports(whole_process: bool):
    """Around the imports of torch, Lightning, MLflow and Ray in a whole `dlp` process: they make ~1M objects,
    and the collector walks them again and again while they load (~1.5 s of CPU). Collect none meanwhile, then
    freeze what they made (no cycles to find there) so later collections, and the one at exit, skip it."""
    if not whole_process:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def command(sub, name: str, func, help: str, description: str = "", takes_overrides: bool = False):
    """Add subcommand `name` (run by `func(args)`) to the parser's subcommands; returns its parser."""
    p = sub.add_parser(name, help=help, description=description or None)
    if takes_overrides:
        p.add_argument("overrides", nargs="*")
    p.set_defaults(func=func)
    return p
