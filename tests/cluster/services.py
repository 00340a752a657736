"""The team services of the cluster tests, each on a test host (tests/cluster/hosts.py) and its own disk:
PostgreSQL 15 (the tracking backend), SeaweedFS's S3 gateway (bucket `dlp`) and `dlp server` (MLflow with
proxied artifacts in S3 and basic-auth). Each returns a handle whose stop() ends it by PID."""
from __future__ import annotations

import glob
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

from tests.cluster.hosts import PRIVATE, Host

PG_BIN = (sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
          or ["/usr/lib/postgresql/15/bin"])[-1]
S3_PORT = 8333


@dataclass
class Service:
    name: str
    proc: Optional[subprocess.Popen] = None
    env: Dict[str, str] = field(default_factory=dict)    # what a client of the service sets
    uri: str = ""
    stopper: Optional[Callable[[], None]] = None

    def stop(self) -> None:
        if self.stopper:
            self.stopper()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait(what: str, ready: Callable[[], bool], proc: Optional[subprocess.Popen], log: Path,
          timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout} s: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def postgres(root: Path, host: Host, port: int) -> Service:
    """A PostgreSQL cluster in <host's disk>/pg, listening on host.ip:port; user and database `dlp`."""
    root.mkdir(parents=True, exist_ok=True)
    data, sock, pg_log = f"{PRIVATE}/pg", f"{PRIVATE}/pg-sock", f"{PRIVATE}/pg.log"
    password = secrets.token_hex(8)

    def as_postgres(*args: str, timeout: float = 120) -> str:
        proc = host.run(["runuser", "-u", "postgres", "--", *args], timeout=timeout, cwd="/")
        assert proc.returncode == 0, f"{args[0]}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return proc.stdout

    assert host.run(["sh", "-c", f"mkdir -p {data} {sock} && chown postgres {data} {sock}"], cwd="/").returncode == 0
    as_postgres(f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256")
    as_postgres("sh", "-c", f"echo 'host all all {host.ip.rsplit('.', 1)[0]}.0/24 scram-sha-256' >> {data}/pg_hba.conf")
    as_postgres(f"{PG_BIN}/pg_ctl", "-D", data, "-l", pg_log, "-w", "-o",
                f"-c listen_addresses={host.ip} -p {port} -k {sock}", "start")

    def stop() -> None:
        host.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                 cwd="/", timeout=60)

    psql = [f"{PG_BIN}/psql", "-h", sock, "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    as_postgres(*psql, f"CREATE USER dlp PASSWORD '{password}'")
    as_postgres(*psql, "CREATE DATABASE dlp OWNER dlp")
    return Service("postgres", uri=f"postgresql://dlp:{password}@{host.ip}:{port}/dlp", stopper=stop)


def seaweed_s3(root: Path, host: Host) -> Service:
    """SeaweedFS (`weed mini`) with its S3 gateway on host.ip:8333 and the bucket `dlp`; its data on the host's
    disk. `.env` is what S3 clients set: the endpoint, region and keys."""
    root.mkdir(parents=True, exist_ok=True)
    keys = {"AWS_ACCESS_KEY_ID": "dlp" + secrets.token_hex(4), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16)}
    ports = ("-master.port=9333 -master.port.grpc=19333 -volume.port=8080 -volume.port.grpc=18080 "
             f"-filer.port=8888 -filer.port.grpc=18888 -s3.port={S3_PORT} -s3.port.grpc=18333").split()
    host.run(["mkdir", "-p", f"{PRIVATE}/s3"], cwd="/")
    log = root / "weed.log"
    proc = host.popen(["weed", "mini", f"-dir={PRIVATE}/s3", f"-ip={host.ip}", f"-ip.bind={host.ip}", *ports,
                       "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                       "-admin.port=23646", "-master.telemetry=false", "-bucket=dlp"], keys, cwd="/", log=log)
    env = {**keys, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://{host.ip}:{S3_PORT}"}
    probe = ("import boto3, json; boto3.client('s3').list_objects_v2(Bucket='dlp', MaxKeys=1); "
             "print(json.dumps(True))")

    def ready() -> bool:
        return host.run(["python", "-c", probe], env, cwd="/", timeout=30).returncode == 0
    service = Service("s3", proc, env)
    try:
        _wait("weed mini", ready, proc, log)
    except BaseException:
        service.stop()
        raise
    return service


def dlp_server(root: Path, host: Host, port: int, backend_uri: str, artifacts: str, s3_env: Dict[str, str],
               auth: bool = True) -> Service:
    """`dlp server` on host.ip:port over `backend_uri`, artifacts proxied to `artifacts` (the server alone holds
    the S3 keys). `.env` is a client's MLFLOW_TRACKING_URI (and, with auth, USERNAME / PASSWORD)."""
    root.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(12)
    log = root / "server.log"
    server_env = {**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL_S3"], "DLP_SERVER_PASSWORD": password}
    args = ["dlp", "server", "--host", host.ip, "--port", str(port), "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts, "--dir", f"{PRIVATE}/server"]
    proc = host.popen(args + ([] if auth else ["--no-auth"]), server_env, cwd="/", log=log)
    env = {"MLFLOW_TRACKING_URI": f"http://{host.ip}:{port}"}
    if auth:
        env.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
    service = Service("dlp server", proc, env)
    try:
        _wait("dlp server", lambda: "export MLFLOW_TRACKING_URI" in log.read_text(errors="replace"), proc, log,
              timeout=120)
    except BaseException:
        service.stop()
        raise
    return service
