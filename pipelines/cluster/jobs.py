"""`dlp submit`, `dlp jobs`, `dlp logs`, `dlp stop`: run `dlp` commands on a Ray cluster through the Ray Jobs API.

    ray start --head --dashboard-host=127.0.0.1          # a local cluster (or RAY_ADDRESS=http://head:8265)
    dlp submit -- train experiment=digits_cnn trainer.num_workers=2
    dlp jobs  ·  dlp logs ID --follow  ·  dlp stop ID

The job runs `python -m pipelines.cli <args>` in a copy of this repository (the runtime env's
working_dir) on the head node; the MLflow store is passed through so the run lands where `dlp ui` looks.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from pipelines.cluster import local, server
from pipelines.errors import UserError, first_line
from pipelines.tracking.store import DEFAULT_TRACKING_URI, REPO, absolute_uri

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the dashboard of `ray start --head` on this machine
# Kept out of the working_dir upload (Ray also skips what .gitignore lists): envs, stores, outputs.
EXCLUDES = [".venv", ".git", "mlruns", "mlartifacts", "mlflow.db", "outputs", "checkpoints", "*.ckpt",
            "benchmarks/results", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info"]
PASSED_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "DLP_OUTPUT_DIR")
OUTPUT_ENV = "DLP_OUTPUT_DIR"              # conf/config.yaml's output_dir default
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
COMMAND_KEY = "dlp.command"                # a job's metadata: the dlp command it runs, for `dlp jobs`
START_HINT = "start one with `ray start --head --dashboard-host=127.0.0.1`, or pass --address / set RAY_ADDRESS"


def resolve_address(explicit: Optional[str] = None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else the local dashboard."""
    addr = (explicit or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
            or DEFAULT_ADDRESS)
    return addr.rstrip("/")


def auth_headers() -> Dict[str, str]:
    """`Authorization: Bearer <token>` from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

    Ray >= 2.59 turns token auth on for local clusters once a token file exists; a cluster without
    auth ignores the header, so sending it whenever a token is at hand works both ways.
    """
    token = local.auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def _without_address_env():
    # The SDK lets $RAY_ADDRESS override the address it is given; --address must win.
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str):
    """A JobSubmissionClient for the cluster at `address`; UserError when none answers there."""
    import logging

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # Ray's SDK logs every packaging step and websocket close at INFO on its own handler.
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with _without_address_env():
            return JobSubmissionClient(address, headers=auth_headers())
    except AuthenticationError as e:
        problem = "rejected the auth token" if "failed" in str(e).lower() else "requires an auth token"
        raise UserError(f"the Ray cluster at {address} {problem}: set RAY_AUTH_TOKEN or put it in "
                        "~/.ray/auth_token (`ray get-auth-token` on the head node prints it)") from None
    except ConnectionError:
        raise UserError(f"no Ray cluster reachable at {address}; {START_HINT}") from None
    except (RuntimeError, ValueError) as e:  # an address that is not a Ray dashboard, or a malformed one
        raise UserError(f"no Ray cluster reachable at {address} ({first_line(e)}); {START_HINT}") from None


def runtime_env(env: str = "local", address: str = DEFAULT_ADDRESS) -> Dict:
    """working_dir = this repository; env 'pip' adds pyproject's dependencies for a bare cluster. Its env_vars:
    cluster.env's defaults from here (AWS_*, MLFLOW_*, ...; values never printed), the store made absolute, and
    for a cluster on this machine the output folder here (a job's working_dir is deleted after it)."""
    env_vars = local.passed_env(local.DEFAULT_ENV)
    env_vars.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    env_vars["MLFLOW_TRACKING_URI"] = absolute_tracking_uri()
    if is_loopback(address):
        env_vars[OUTPUT_ENV] = str(Path(os.environ.get(OUTPUT_ENV) or "outputs").resolve())
    out = {"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env_vars}
    if env == "pip":
        out["pip"] = project_dependencies()
    return out


def is_loopback(url: str) -> bool:
    """Whether `url` (http://host:port, host:port or a bare host) names this machine's loopback."""
    return server.is_loopback(urlsplit(url if "//" in url else f"//{url}").hostname or "")


def check_store_reachable(address: str, uri: Optional[str] = None) -> None:
    """A job on a cluster elsewhere cannot reach a store on this machine's disk or loopback: refuse it here."""
    uri = absolute_tracking_uri(uri)
    local_file = uri.startswith(("sqlite:", "file:"))
    if is_loopback(address) or not (local_file or uri.startswith("http") and is_loopback(uri)):
        return
    what = "a file on this machine" if local_file else "a server on this machine's loopback"
    raise UserError(f"submit: the tracking store {uri} is {what}, which the cluster at {address} cannot reach; "
                    "start a team server (`dlp server --host <address the nodes reach>`) and set "
                    "MLFLOW_TRACKING_URI to it")


def absolute_tracking_uri(uri: Optional[str] = None) -> str:
    """The store `dlp` would use here, with a local path made absolute (the job runs elsewhere)."""
    return absolute_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


def project_dependencies() -> List[str]:
    """pyproject.toml's [project.dependencies], the `pip` list of a runtime env for a bare cluster."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def prepare_train(overrides: Sequence[str], address: str = DEFAULT_ADDRESS) -> None:
    """Check a `train` command's config and store here, and create its experiment in a local store here.

    A config error then costs no upload; and an experiment created by the job would put its
    artifacts under the job's temporary working_dir, where `dlp ui` cannot find them.
    """
    from pipelines.config.compose import compose

    cfg = compose(list(overrides))
    check_store_reachable(address, cfg.mlflow.tracking_uri)
    uri = absolute_tracking_uri(cfg.mlflow.tracking_uri)
    if not uri.startswith(("sqlite:", "file:")):
        return
    from mlflow import MlflowClient

    from pipelines.tracking import store_checks

    store_checks.prepare(uri)   # one line for a broken store; a new one is created under its lock
    client = MlflowClient(uri)
    name = cfg.mlflow.experiment_name or cfg.name
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name)


def submit(args: Sequence[str], address: str, env: str = "local") -> str:
    """Submit `python -m pipelines.cli <args>`; return the submission id."""
    client = connect(address)
    job_id = f"dlp-{args[0]}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    try:
        return client.submit_job(entrypoint=entrypoint(args), runtime_env=runtime_env(env, address), submission_id=job_id,
                                 metadata={COMMAND_KEY: shlex.join(["dlp", *args])})
    except RuntimeError as e:
        raise UserError(f"submit: the cluster at {address} refused the job: {first_line(e)}") from None


def entrypoint(args: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "pipelines.cli", *args])


def list_jobs(address: str) -> List:
    """Submitted jobs (not plain drivers), oldest first."""
    jobs = [j for j in connect(address).list_jobs() if j.submission_id]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def format_jobs(jobs: Sequence) -> str:
    if not jobs:
        return "no jobs"
    lines = [f"{'ID':<34} {'STATUS':<10} {'STARTED':<19} COMMAND"]
    for j in jobs:
        started = datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S") if j.start_time else "-"
        command = (j.metadata or {}).get(COMMAND_KEY) or j.entrypoint
        command = command if len(command) <= 70 else command[:67] + "..."
        lines.append(f"{j.submission_id:<34} {j.status.value!s:<10} {started:<19} {command}")
    return "\n".join(lines)


def info(client, job_id: str, address: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise UserError(f"no job '{job_id}' on the cluster at {address}; `dlp jobs` lists them") from None
        raise


def logs(job_id: str, address: str, follow: bool = False, out=None) -> str:
    """Print the job's logs (following them until it ends); return its final or current status."""
    out = out or sys.stdout
    client = connect(address)
    status = info(client, job_id, address).status.value
    if not follow:
        out.write(client.get_job_logs(job_id))
        out.flush()
        return status
    return follow_logs(client, job_id, out)


def follow_logs(client, job_id: str, out=None) -> str:
    """Stream logs until the job reaches a terminal state; return that state."""
    out = out or sys.stdout

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    # The log stream closes when the driver exits; the status may lag it by a moment.
    deadline = time.monotonic() + 30
    while (status := client.get_job_status(job_id).value) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


def user_error(job_id: str, address: str) -> str:
    """The one-line error of a job whose `dlp` command exited 2 (a user error), without its `dlp: error: `."""
    client = connect(address)
    if "exit code 2" not in (client.get_job_info(job_id).message or ""):
        return ""
    lines = [line for line in client.get_job_logs(job_id).splitlines() if line.startswith("dlp: error: ")]
    return lines[-1][len("dlp: error: "):] if lines else ""


def failure(job_id: str, address: str) -> str:
    """Ray's one-line account of why the job ended badly ('' if it has none)."""
    message = (connect(address).get_job_info(job_id).message or "").strip()
    return message.splitlines()[0].split(", last available logs")[0] if message else ""


def stop(job_id: str, address: str) -> bool:
    """Ask the job to stop; False when it had already ended."""
    client = connect(address)
    info(client, job_id, address)
    return client.stop_job(job_id)


def follow_hint(job_id: str, address: str) -> str:
    flag = "" if address == resolve_address() else f" --address {address}"
    return "\n".join([f"  follow:    dlp logs {job_id} --follow{flag}",
                      f"  list:      dlp jobs{flag}",
                      f"  stop:      dlp stop {job_id}{flag}",
                      f"  dashboard: {address}/#/jobs" if address.startswith("http") else ""]).rstrip()
