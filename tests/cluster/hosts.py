"""Hosts on one machine that share nothing a real cluster's hosts do not: each runs in a network namespace of its
own or of a neighbour (joined by a veth pair, 10.200.0.0/24, no route out) and in a mount namespace of its own,
with a private tmpfs at PRIVATE — its disk. A path one host writes there does not exist on any other host.

    with Network() as net:
        head = net.host("head", net.a)          # 10.200.0.1
        worker = net.host("worker", net.b)      # 10.200.0.2
        head.run(["dlp", "train", ...], env)    # nsenter into the host's namespaces

A host is a holder process (`sleep infinity`) that owns the namespaces; commands join them with nsenter. The
end stops, by PID, every process in the test's network namespaces (`ip netns pids`), then deletes them.
Needs root (ip netns, unshare, mount).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tests.raynodes import signal_pids

PRIVATE = "/tmp/dlp-private"     # every host's own disk (a tmpfs in its mount namespace)
SUBNET = "10.200.0"
IFACE = "dlp0"                   # each namespace's end of the veth pair (GLOO_SOCKET_IFNAME)
VENV_BIN = str(Path(sys.executable).parent)


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60, **kw)


def can_run() -> Optional[str]:
    """Why these tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "nsenter", "unshare", "runuser", f"{VENV_BIN}/weed"):
        if sh("which", tool, check=False).returncode != 0:
            return f"needs `{tool}`"
    if not Path("/usr/lib/postgresql").is_dir():
        return "needs PostgreSQL (/usr/lib/postgresql/*/bin)"
    return None


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    holder: subprocess.Popen
    base_env: Dict[str, str] = field(default_factory=dict)

    def argv(self, args: Sequence[str], cwd: str = PRIVATE) -> List[str]:
        # not nsenter's --wd: it opens the directory before entering the mount namespace (this host's disk)
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "env", f"--chdir={cwd}", *args]

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """A clean environment: the venv first on PATH, a private HOME, nothing of this process's Ray or MLflow."""
        keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TERM", "TZ")}
        return {**keep, "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": f"{PRIVATE}/home", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                **self.base_env, **(extra or {})}

    def run(self, args: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: str = PRIVATE,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(args, cwd), env=self.env(env), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def popen(self, args: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: str = PRIVATE,
              log: Optional[Path] = None) -> subprocess.Popen:
        out = open(log, "w") if log else subprocess.DEVNULL
        return subprocess.Popen(self.argv(args, cwd), env=self.env(env), stdout=out, stderr=subprocess.STDOUT)

    def python(self, code: str, env: Optional[Dict[str, str]] = None, timeout: float = 120):
        """Run `code` with this host's python; it prints one JSON document, returned decoded."""
        proc = self.run([sys.executable, "-c", code], env, timeout=timeout)
        assert proc.returncode == 0, f"{self.name}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def files(self, pattern: str = "*") -> List[str]:
        """Files on this host's own disk (PRIVATE) whose name matches `pattern`."""
        proc = self.run(["find", PRIVATE, "-type", "f", "-name", pattern], cwd="/")
        return sorted(proc.stdout.split())


class Network:
    """Two network namespaces joined by a veth pair: a (10.200.0.1) and b (10.200.0.2)."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.a, self.b = f"dlpa{tag}", f"dlpb{tag}"
        self.ips = {self.a: f"{SUBNET}.1", self.b: f"{SUBNET}.2"}
        self.hosts: List[Host] = []

    def __enter__(self) -> "Network":
        try:
            for ns in (self.a, self.b):
                sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", IFACE, "netns", self.a, "type", "veth", "peer", "name", IFACE, "netns", self.b)
            for ns, ip in self.ips.items():
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", IFACE)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "link", "set", IFACE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def host(self, name: str, netns: str) -> Host:
        """A host in `netns` with a mount namespace and disk of its own."""
        script = f"mkdir -p {PRIVATE} && mount -t tmpfs -o size=4g dlp-{name} {PRIVATE} && mkdir {PRIVATE}/home " \
                 "&& exec sleep infinity"
        holder = subprocess.Popen(["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
                                   "sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        host = Host(name, netns, self.ips[netns], holder)
        self.hosts.append(host)
        deadline = time.monotonic() + 10
        while f"dlp-{name} {PRIVATE}" not in _mounts(holder.pid):
            assert holder.poll() is None and time.monotonic() < deadline, f"host {name} did not start"
            time.sleep(0.05)
        return host

    def pids(self) -> List[int]:
        out = []
        for ns in (self.a, self.b):
            proc = sh("ip", "netns", "pids", ns, check=False)
            out += [int(p) for p in proc.stdout.split()]
        return out

    def close(self) -> None:
        """Stop every process in the two namespaces (TERM, then KILL), then delete them."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            signal_pids(self.pids(), sig)
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        for host in self.hosts:
            host.holder.wait(timeout=10)
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)


def _mounts(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/mounts").read_text()
    except OSError:
        return ""
