"""A real Ray cluster started with `ray start` (a head, and a second node on the same machine), for the tests of
`dlp submit` and for benchmarks/scaling.py's launch on a running cluster.

The cluster runs with token auth on (its own token, not ~/.ray/auth_token), on free ports and a private
--temp-dir, and is stopped by the PIDs under that temp dir: `ray stop` would also stop any other Ray cluster on
the machine (another test process's, a user's).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_ports


@dataclass
class Cluster:
    address: str   # the head's dashboard (Ray Jobs API), http://127.0.0.1:PORT
    token: str     # its auth token (RAY_AUTH_TOKEN for a client)
    gcs: str       # its GCS, 127.0.0.1:PORT: RAY_ADDRESS for a driver (`dlp train`) that joins it


def _processes_under(temp_dir: Path) -> list:
    """PIDs whose command line names temp_dir (gcs, raylets, dashboard ...) and all their descendants."""
    parent, roots = {}, []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        pid = int(proc.name)
        parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if str(temp_dir) in cmdline and pid != os.getpid():
            roots.append(pid)
    found, frontier = set(roots), list(roots)
    while frontier:  # Ray workers rename themselves (ray::IDLE), so follow the process tree
        pid = frontier.pop()
        children = [c for c, p in parent.items() if p == pid and c not in found]
        found.update(children)
        frontier.extend(children)
    return sorted(found)


def signal_pids(pids, sig) -> None:
    """Send `sig` to each of `pids` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(temp_dir: Path, grace: float = 3.0) -> None:
    """Stop the cluster start_cluster() began under temp_dir (its processes, not any other Ray on the machine)."""
    pids = _processes_under(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        signal_pids(pids, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (pids := [p for p in pids if Path(f"/proc/{p}").exists()
                                                         and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1][:3]]):
            time.sleep(0.2)
        if not pids:
            return


def start_cluster(temp_dir: Path, nodes: int = 2, cpus: int = 1) -> Cluster:
    """A head node and nodes - 1 worker nodes (`cpus` CPUs each, at most 2 nodes), dashboard on 127.0.0.1, token
    auth on."""
    gcs, dash, client_server, agent_head, agent_worker = free_ports(5)
    token = secrets.token_hex(16)
    venv_bin = str(Path(sys.executable).parent)
    # The job's `python` is the first on the cluster's PATH, as with an activated venv before `ray start`.
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    ray = [str(Path(venv_bin) / "ray"), "start", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--disable-usage-stats"]
    # One temp dir per node: two nodes sharing one would share runtime_resources/, and the worker node's
    # runtime-env agent deletes the job's unpacked working_dir, the driver's working directory, under it.
    for extra in (["--head", f"--temp-dir={temp_dir / 'h'}", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dash}", f"--ray-client-server-port={client_server}",
                   f"--dashboard-agent-listen-port={agent_head}"],
                  [f"--address=127.0.0.1:{gcs}", f"--temp-dir={temp_dir / 'w'}",
                   f"--dashboard-agent-listen-port={agent_worker}"])[:nodes]:
        proc = subprocess.run(ray + extra, env=env, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            stop(temp_dir)
            raise RuntimeError(f"ray start failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return Cluster(f"http://127.0.0.1:{dash}", token, f"127.0.0.1:{gcs}")


@contextlib.contextmanager
def running_cluster(nodes: int = 2, cpus: int = 1):
    """start_cluster() in a fresh temp dir; stopped and removed on the way out."""
    temp_dir = Path(tempfile.mkdtemp(prefix="dlpj", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    try:
        yield start_cluster(temp_dir, nodes, cpus)
    finally:
        stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
