"""The promotion lock: one `dlp promote` or `dlp rollback` of a model at a time moves its `champion` alias."""
from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path

from pipelines.tracking import store
from pipelines.tracking.store_checks import file_lock


def lock_path(registry_uri: str) -> Path:
    """Where the promotion lock lives: beside a local store (sqlite:/// or a file store), so every
    process using that store finds it; for a remote registry, in this machine's temp directory."""
    if registry_uri.startswith("sqlite:///"):
        db = Path(store.absolute_uri(registry_uri)[len("sqlite:///"):])
        return db.with_name(db.name + ".dlp-registry.lock")
    if registry_uri.startswith("file:") or "://" not in registry_uri:
        root = Path(registry_uri[len("file://"):] if registry_uri.startswith("file://") else registry_uri)
        return root.resolve() / ".dlp-registry.lock"
    digest = hashlib.sha256(registry_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dlp-registry-{digest}.lock"


@contextlib.contextmanager
def champion_lock(name: str, timeout: float = 600.0):
    """Exclusive lock on moving `champion` of model `name` (flock on a per-model lock file).

    MLflow's alias update is last-writer-wins: two promotions that each compare against the champion
    they read, then set the alias, can leave the worse model serving. Under this lock a promotion reads
    the champion, scores it, decides and moves the alias while no other dlp promotion or rollback of the
    same model can, so each decision is made against the champion of that moment.

    Limits: flock only excludes processes that see the same lock file — those on this machine, or on a
    shared filesystem whose flock is honoured (local disks yes; NFS often not). A promoter on another
    machine against a remote registry, or anyone moving the alias by hand (UI, API), is not excluded;
    `promote` re-reads the alias after moving it and reports such an overwrite, but cannot undo it.
    A crashed holder releases the lock with its process (flock is tied to the open file; store_checks.file_lock).
    """
    import mlflow

    base = lock_path(mlflow.get_registry_uri() or store.tracking_uri())
    path = base.with_name(f"{base.name}.{hashlib.sha256(name.encode()).hexdigest()[:12]}")
    with file_lock(path, timeout, lambda: f"promote: '{name}' stayed locked by another promotion for {timeout:.0f} s"):
        yield
