"""What the nodes of a joined Ray cluster can reach, checked before any compute.

On one node everything is on one disk. On several, Ray's checkpoints must live where every node reads and
writes them (trainer.storage_path = s3://… or a shared filesystem), with the credentials those nodes need;
`check_storage` proves both with one tiny task per node, in the same runtime env as the training workers, and
names the first node that fails in one line. A local folder is seen as shared only if a file the driver puts
there is visible from every node.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from pipelines.errors import UserError, first_line

PROBE_TIMEOUT_S = 120


def alive_nodes() -> List[Dict]:
    """The alive nodes that can run work (with CPUs or GPUs): where training workers may be placed."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU") or n["Resources"].get("GPU"))]


def driver_node_ip() -> str:
    """The address of this process's node, as Ray names it (its `node:<ip>` resource)."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == me)


def on_every_node(fn: Callable, *args) -> Dict[str, Any]:
    """fn(*args) once on each alive node that can run work, as a 0-CPU task pinned there: {node ip: result}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {n["NodeManagerAddress"]: task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args)
        for n in alive_nodes()}
    return {ip: ray.get(ref, timeout=PROBE_TIMEOUT_S) for ip, ref in refs.items()}


def check_storage(storage: str) -> None:
    """On a cluster of several nodes, raise a UserError unless every node can use `storage` (Ray's storage_path)."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    marker = None
    if "://" not in storage:
        marker = Path(storage) / f".dlp-probe-{uuid.uuid4().hex[:8]}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("dlp")
    try:
        problems = on_every_node(_probe, storage, str(marker) if marker else None)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    for ip, problem in sorted(problems.items()):
        if problem is None:
            continue
        if marker is not None:
            raise UserError(f"trainer.storage_path {storage} is not shared: node {ip} cannot see it ({problem}); a "
                            f"cluster of {len(nodes)} nodes keeps Ray's checkpoints where every node reaches "
                            "them: trainer.storage_path=s3://bucket/prefix or a shared filesystem mounted at the "
                            "same path on every node")
        raise UserError(f"node {ip} cannot use trainer.storage_path {storage} ({problem}); give the nodes its "
                        "credentials: set them (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                        "AWS_ENDPOINT_URL_S3) where you run dlp, and cluster.env passes them on")


def _probe(storage: str, marker: Optional[str]) -> Optional[str]:
    """On one node: None if `storage` works there, else why not (one line)."""
    if marker is not None:
        return None if Path(marker).is_file() else f"{marker} is missing there"
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(storage)
        path = f"{root.rstrip('/')}/.dlp-probe-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(path) as f:
            f.write(b"dlp")
        fs.delete_file(path)
    except Exception as e:  # any failure is the answer: no credentials, no such bucket, unreachable endpoint
        return first_line(e)[:200]
    return None
