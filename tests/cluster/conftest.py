"""The team stack the cluster tests share (module `stack` fixture, started once per session):

    namespace A, 10.200.0.1                                  namespace B, 10.200.0.2
    ├─ services host: PostgreSQL, SeaweedFS S3 (bucket dlp), `dlp server` (basic-auth)
    ├─ head host:   Ray head (1 CPU, label role=head); drivers run here
    └─ laptop host: a client with its own disk, no Ray, no S3 keys   worker host: Ray node (1 CPU, role=worker)

Every host has a private disk (tests/cluster/hosts.py), so a path written on one exists on no other. The Ray nodes
get what a cluster's nodes would be configured with: the S3 endpoint and keys, GLOO_SOCKET_IFNAME, the Ray token,
and DLP_OUTPUT_DIR (where submitted jobs write). Everything is stopped by PID at the end.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict
from urllib.parse import urlsplit

import pytest

from pipelines.cluster.local import IDLE_TASK_WORKERS
from tests.cluster import hosts, services
from tests.cluster.hosts import IFACE, PRIVATE, Host, Network

RAY_PORT, DASHBOARD_PORT, MLFLOW_PORT, PG_PORT = 6379, 8265, 5000, 5432
STACK_TIMEOUT = 240


@dataclass
class Stack:
    net: Network
    head: Host
    worker: Host
    laptop: Host
    services: Host
    backend: str                # the PostgreSQL URI of the team server's backend store
    s3: Dict[str, str]          # the S3 endpoint and keys (what the nodes have)
    tracking: Dict[str, str]    # MLFLOW_TRACKING_URI / USERNAME / PASSWORD of the team server
    token: str                  # the Ray cluster's auth token
    logs: Path

    @property
    def ray_address(self) -> str:
        return f"{self.head.ip}:{RAY_PORT}"

    @property
    def services_ip(self) -> str:
        return urlsplit(self.tracking["MLFLOW_TRACKING_URI"]).hostname

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def driver_env(self, **extra: str) -> Dict[str, str]:
        """A user's shell on the head: the cluster's address and token, the team store, S3 keys."""
        return {"RAY_ADDRESS": self.ray_address, "RAY_AUTH_TOKEN": self.token, **self.s3, **self.tracking, **extra}

    def laptop_env(self, **extra: str) -> Dict[str, str]:
        """A user's laptop: the team store and the Ray token, no storage credentials."""
        return {"RAY_AUTH_TOKEN": self.token, **self.tracking, **extra}

    def query(self, code: str):
        """Run `code` against the team store from the laptop (mlflow imported, `client` an MlflowClient); it
        prints one JSON document."""
        return self.laptop.python("import json, mlflow\nfrom mlflow import MlflowClient\nclient = MlflowClient()\n"
                                  + code, self.laptop_env())

    def running_runs(self) -> list:
        return self.query("exps = [e.experiment_id for e in client.search_experiments()]\n"
                          "print(json.dumps([r.info.run_id for r in client.search_runs(exps) "
                          "if r.info.status == 'RUNNING'] if exps else []))")


def _start_ray(stack_net: Network, head: Host, worker: Host, node_env: Dict[str, str], logs: Path) -> None:
    ray = [f"{hosts.VENV_BIN}/ray", "start", "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={PRIVATE}/ray"]
    proc = head.run([*ray, "--head", f"--node-ip-address={head.ip}", f"--port={RAY_PORT}",
                     f"--dashboard-host={head.ip}", f"--dashboard-port={DASHBOARD_PORT}", "--labels=role=head"],
                    node_env, timeout=120)
    (logs / "ray-head.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = worker.run([*ray, f"--address={head.ip}:{RAY_PORT}", f"--node-ip-address={worker.ip}",
                       "--labels=role=worker"], node_env, timeout=120)
    (logs / "ray-worker.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    deadline = time.monotonic() + 60
    count = "import ray, json; ray.init(); print(json.dumps(sum(n['Alive'] for n in ray.nodes())))"
    while head.python(count, {"RAY_ADDRESS": f"{head.ip}:{RAY_PORT}", **node_env}) < 2:
        assert time.monotonic() < deadline, "the worker node did not join"
        time.sleep(1)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    why = hosts.can_run()
    if why:   # in CI a missing part is a failure: the cluster tests must run there
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"the cluster tests {why}")
    root = tmp_path_factory.mktemp("cluster")
    logs = root / "logs"
    logs.mkdir()
    started = []
    with Network() as net:
        try:
            svc = net.host("services", net.a)
            head, worker, laptop = net.host("head", net.a), net.host("worker", net.b), net.host("laptop", net.a)
            pg = services.postgres(root / "pg", svc, PG_PORT)
            started.append(pg)
            s3 = services.seaweed_s3(root / "s3", svc)
            started.append(s3)
            server = services.dlp_server(root / "server", svc, MLFLOW_PORT, pg.uri, "s3://dlp/mlflow", s3.env)
            started.append(server)
            token = secrets.token_hex(16)
            node_env = {**s3.env, "GLOO_SOCKET_IFNAME": IFACE, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                        "DLP_OUTPUT_DIR": f"{PRIVATE}/outputs", "RAY_num_workers_soft_limit": IDLE_TASK_WORKERS}
            _start_ray(net, head, worker, node_env, logs)
            yield Stack(net, head, worker, laptop, svc, pg.uri, dict(s3.env), dict(server.env), token, logs)
        finally:
            for service in reversed(started):
                service.stop()
