"""Artifacts written into a local store whole or not at all.

MLflow's LocalArtifactRepository writes a single file through a temporary file and a rename, but a directory
(log_artifacts: a logged model's files) with shutil.copy2 straight into place, so a full disk or a kill leaves a
truncated net.pt2 behind. Registered for plain paths and file:// URIs, this subclass copies a directory file by
file through the atomic single-file path. Remote stores (s3://, mlflow-artifacts:) are left as they are: an
object appears whole or not at all.
"""
from __future__ import annotations

import os
import posixpath

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository


class AtomicLocalArtifactRepository(LocalArtifactRepository):
    def log_artifacts(self, local_dir, artifact_path=None):
        for dirpath, dirnames, filenames in os.walk(local_dir):
            rel = os.path.relpath(dirpath, local_dir)
            parts = [p for p in (artifact_path, None if rel == "." else rel.replace(os.sep, "/")) if p]
            sub = posixpath.join(*parts) if parts else None
            self._get_or_create_artifact_dir(sub)
            for name in sorted(filenames):
                self.log_artifact(os.path.join(dirpath, name), sub)


def use_atomic_local_writes() -> None:
    """From now on, in this process, a local store's artifacts are written atomically (idempotent)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry as registry

    for scheme in ("", "file"):
        registry.register(scheme, AtomicLocalArtifactRepository)
