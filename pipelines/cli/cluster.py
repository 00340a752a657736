"""`dlp submit`, `dlp jobs`, `dlp logs`, `dlp stop`: dlp commands as Ray jobs on a cluster (Ray Jobs API)."""
from __future__ import annotations

import argparse
import sys

from pipelines.cli.common import command
from pipelines.errors import UserError

NOT_SUBMITTABLE = {"submit", "jobs", "logs", "stop", "ui", "server"}  # client-side or interactive


def register(sub) -> None:
    p = command(sub, "submit", cmd_submit, "run a dlp command as a Ray job: dlp submit [options] -- train ...",
                "Submit `dlp CMD` to a Ray cluster through the Ray Jobs API, e.g. dlp submit -- train "
                "experiment=digits_cnn trainer.num_workers=2. The job runs in a copy of this repository (its runtime "
                "env's working_dir, without .venv, .git, stores, outputs and what .gitignore lists), so relative paths "
                "in CMD resolve there; the MLflow store ($MLFLOW_TRACKING_URI, a local path made absolute) goes with "
                "it. A token in $RAY_AUTH_TOKEN or ~/.ray/auth_token is sent when present.")
    p.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeds")
    p.add_argument("--env", choices=["local", "pip"], default="local",
                   help="local (default): the cluster's own Python env, the first `python` on the PATH of "
                        "`ray start` (activate the .venv of scripts/setup.sh before it), which needs no download; "
                        "pip: install pyproject's dependencies into a job env first (a bare cluster with internet; "
                        "minutes and several GB with torch)")
    p.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- CMD", help="the dlp command to run")
    parsers = [p, command(sub, "jobs", cmd_jobs, "list the Ray cluster's submitted jobs")]
    p = command(sub, "logs", cmd_logs, "print a job's logs")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="stream them until the job ends")
    parsers += [p, command(sub, "stop", cmd_stop, "stop a running job")]
    parsers[-1].add_argument("job_id")
    for p in parsers:
        p.add_argument("--address", help="the cluster's dashboard, http://HOST:8265 "
                                         "(default: $RAY_ADDRESS, else http://127.0.0.1:8265 of `ray start --head`)")


def cmd_submit(args) -> int:
    from pipelines.cluster import jobs

    command_ = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    if not command_:
        raise UserError("submit: nothing to run; put a dlp command after `--`, e.g. "
                        "dlp submit -- train experiment=digits_cnn trainer.num_workers=2")
    runnable = sorted(set(args.commands) - NOT_SUBMITTABLE)
    if command_[0] not in runnable:
        raise UserError(f"submit: '{command_[0]}' is not a dlp command a job can run; one of {', '.join(runnable)}")
    address = jobs.resolve_address(args.address)
    if command_[0] == "train":
        jobs.prepare_train(command_[1:], address)  # config and store errors here, before any upload
    else:
        jobs.check_store_reachable(address)
    job_id = jobs.submit(command_, address, env=args.env)
    print(f"submitted {job_id} to {address}: dlp {' '.join(command_)}")
    if not args.wait:
        print(jobs.follow_hint(job_id, address))
        return 0
    return _follow(job_id, address)


def _follow(job_id: str, address: str) -> int:
    from pipelines.cluster import jobs

    try:
        status = jobs.logs(job_id, address, follow=True)
    except KeyboardInterrupt:
        print(f"dlp: stopped following; {job_id} keeps running (dlp stop {job_id})", file=sys.stderr)
        return 130
    if status != "SUCCEEDED":
        error = jobs.user_error(job_id, address) if status == "FAILED" else ""
        if error:   # the job refused its input (exit 2, one line): so does this command
            print(f"dlp: error: job {job_id}: {error}", file=sys.stderr)
            return 2
        why = jobs.failure(job_id, address)
        print(f"dlp: job {job_id} {status}" + (f": {why}" if why else ""), file=sys.stderr)
        return 1
    print(f"job {job_id} SUCCEEDED")
    return 0


def cmd_jobs(args) -> int:
    from pipelines.cluster import jobs

    print(jobs.format_jobs(jobs.list_jobs(jobs.resolve_address(args.address))))
    return 0


def cmd_logs(args) -> int:
    from pipelines.cluster import jobs

    address = jobs.resolve_address(args.address)
    if args.follow:
        return _follow(args.job_id, address)
    jobs.logs(args.job_id, address)
    return 0


def cmd_stop(args) -> int:
    from pipelines.cluster import jobs

    stopped = jobs.stop(args.job_id, jobs.resolve_address(args.address))
    print(f"stopping {args.job_id}" if stopped else f"{args.job_id} had already ended")
    return 0
