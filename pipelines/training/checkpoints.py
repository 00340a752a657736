"""How fit() keeps its checkpoints so that nothing is lost: every write is atomic, last.ckpt holds the last
finished epoch, and a checkpoint carries the random-number state, so a resumed run continues exactly as the
uninterrupted one would have.

- AtomicCheckpointIO: a checkpoint is serialised in memory, written to a temporary file in its destination
  directory, flushed to disk and renamed over the old one. An interrupt or a full disk leaves the previous file
  whole (Lightning's own writer stages the bytes in /tmp and copies them across filesystems, truncating in place).
- LastCheckpoint: last.ckpt after every finished epoch (ModelCheckpoint's save_last rewrites it only when the
  monitored metric improves), after the epoch's metrics are logged (fit() orders the callbacks so).
- RngState: torch's (CPU and CUDA), numpy's and Python's generators, per rank, saved in the checkpoint and restored
  on resume: dropout and augmentation draw the same numbers after a restart.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any, Dict

from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint

LAST = "last.ckpt"


def atomic_write(path: Path, data: bytes) -> None:
    """`data` into `path` or nothing at all: a temporary file beside it, fsync, rename, fsync of the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic on a local filesystem; remote URIs (s3://) keep Lightning's writer,
    where an object appears whole or not at all anyway."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        import torch

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(Path(str(path).removeprefix("file://")), buffer.getbuffer())


class LastCheckpoint(Checkpoint):
    """<dirpath>/last.ckpt after every finished training epoch (every rank calls save_checkpoint; rank 0 writes)."""

    def __init__(self, dirpath: Path):
        self.path = Path(dirpath) / LAST

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(str(self.path))

    def state_dict(self) -> Dict:
        return {}


def _rng_state() -> Dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def _set_rng_state(state: Dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RngState(Callback):
    """Every rank's generator states in the checkpoint (gathered to rank 0, which writes it), each rank's own
    restored on resume; a checkpoint from another world size restores rank 0's on every rank."""

    def state_dict(self) -> Dict[str, Any]:
        import torch.distributed as dist

        state = _rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, state)
            return {"ranks": gathered}
        return {"ranks": [state]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        import torch.distributed as dist

        ranks = state_dict.get("ranks") or []
        if not ranks:
            return
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        _set_rng_state(ranks[rank] if rank < len(ranks) else ranks[0])
