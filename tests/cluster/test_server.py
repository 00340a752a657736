"""The team's `dlp server` as the cluster tests run it (PostgreSQL backend, artifacts proxied to S3, basic-auth):
it refuses anonymous clients, stores artifacts in S3 although clients hold no S3 keys, and refuses a backend it
cannot log in to in one line before starting."""
from __future__ import annotations

import pytest

from tests.cluster.services import S3_PORT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_anonymous_clients_are_refused_and_artifacts_land_in_s3(stack):
    url = stack.tracking["MLFLOW_TRACKING_URI"]
    codes = stack.laptop.python(f"""
import json, urllib.request, urllib.error, base64, os
def code(headers):
    try:
        return urllib.request.urlopen(urllib.request.Request({url + SEARCH!r}, headers=headers), timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
basic = base64.b64encode(f"admin:{{os.environ['MLFLOW_TRACKING_PASSWORD']}}".encode()).decode()
print(json.dumps([code({{}}), code({{"Authorization": "Basic " + basic}})]))""", stack.laptop_env())
    assert codes == [401, 200]
    run_id = stack.query("""
mlflow.set_experiment("server-check")
with mlflow.start_run() as run:
    mlflow.log_text("hello", "notes/hello.txt")
print(json.dumps(run.info.run_id))""")
    keys = stack.head.python("""
import boto3, json
out = boto3.client("s3").list_objects_v2(Bucket="dlp", Prefix="mlflow/")
print(json.dumps([o["Key"] for o in out.get("Contents", [])]))""", stack.s3)
    assert any(k.endswith(f"{run_id}/artifacts/notes/hello.txt") for k in keys), keys
    assert "AWS_ACCESS_KEY_ID" not in stack.laptop_env()


def test_a_backend_with_a_wrong_password_is_one_line(stack):
    bad = stack.backend.replace(stack.backend.split(":")[2].split("@")[0], "wrong-password")
    env = {**stack.s3, "MLFLOW_S3_ENDPOINT_URL": f"http://{stack.services.ip}:{S3_PORT}"}
    proc = stack.services.run(["dlp", "server", "--host", stack.services.ip, "--port", "5001",
                               "--backend-store-uri", bad, "--artifacts-destination", "s3://dlp/mlflow",
                               "--dir", "/tmp/dlp-private/bad-server"], env, timeout=60)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-3000:]
    assert "does not answer" in err and "password authentication failed" in err, err
    assert "wrong-password" not in err and "dlp:***@" in err
