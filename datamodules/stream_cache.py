"""The in-process streamed loader's local cache (data.cache): each block's model inputs for one split, as epoch 1
read them, kept on this machine's disk, so epochs 2+ and every val pass read arrays instead of decoding and
preprocessing the source again (an s3:// source is downloaded once).

- The same chunks as the source read (their lengths are kept), so the shuffle buffer draws the same batches: a
  run whose cache is cold (a resumed run) trains on the order a warm one would.
- A block is written to temporary files and renamed when complete; a block read only in part, or a write that
  fails, leaves nothing behind. Writing stops, with one warning, when the disk would keep less than
  max(RESERVE_BYTES, RESERVE_SHARE of the disk) free; reading goes on from the source.
- Read back through memory maps, one chunk at a time: memory stays bounded as on the source path.
- One folder per datamodule under <tmp>/dlp-stream-cache, removed by close() or at exit; a folder whose process is
  gone (a killed run) is removed by the next cache made on the machine.

numpy and the standard library only.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

RESERVE_BYTES = 1 << 30
RESERVE_SHARE = 0.10
PARENT = "dlp-stream-cache"


class BlockCache:
    """Model inputs of (block, split) on local disk; `read(key, source)` serves them or reads `source` through."""

    def __init__(self, root: Optional[str] = None):
        parent = Path(root or tempfile.gettempdir()) / PARENT
        parent.mkdir(parents=True, exist_ok=True)
        _sweep(parent)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
        self.writing = True
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        atexit.register(self._finalizer)

    def close(self) -> None:
        """Remove the folder; a loader still holding this cache reads the source from now on."""
        self.writing = False
        self._finalizer()

    def read(self, key: str, source: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple]:
        """The chunks (x, y) of block-and-split `key`: from the cache when complete there, else from `source`,
        written through while the disk allows."""
        meta = self.dir / f"{key}.json"
        if meta.is_file():
            yield from self._cached(key, json.loads(meta.read_text()))
            return
        if not self.writing:
            yield from source
            return
        yield from self._write_through(key, source)

    def _cached(self, key: str, meta: dict) -> Iterator[tuple]:
        rows = sum(meta["chunks"])
        if not rows:
            return
        x = np.memmap(self.dir / f"{key}.x", dtype=meta["x_dtype"], mode="r", shape=(rows, *meta["x_shape"]))
        y = np.memmap(self.dir / f"{key}.y", dtype=meta["y_dtype"], mode="r", shape=(rows, *meta["y_shape"]))
        start = 0
        for n in meta["chunks"]:
            yield np.array(x[start:start + n]), np.array(y[start:start + n])
            start += n

    def _write_through(self, key: str, source) -> Iterator[tuple]:
        paths = {part: self.dir / f"{key}.{part}.partial" for part in ("x", "y")}
        files = {part: open(path, "wb") for part, path in paths.items()}
        meta: dict = {"chunks": []}
        complete = False
        try:
            for x, y in source:
                if files and self._write(files, x, y):
                    meta["chunks"].append(len(x))
                    meta.setdefault("x_dtype", str(x.dtype)), meta.setdefault("x_shape", list(x.shape[1:]))
                    meta.setdefault("y_dtype", str(y.dtype)), meta.setdefault("y_shape", list(y.shape[1:]))
                elif files:
                    _close(files)
                yield x, y
            complete = bool(files)
        finally:
            _close(files)
            if complete:
                self._commit(key, paths, meta)
            for path in paths.values():
                path.unlink(missing_ok=True)

    def _write(self, files: dict, x: np.ndarray, y: np.ndarray) -> bool:
        usage = shutil.disk_usage(self.dir)
        if usage.free - x.nbytes - y.nbytes < max(RESERVE_BYTES, RESERVE_SHARE * usage.total):
            return self._stop("the disk would keep less than "
                              f"{max(RESERVE_BYTES, RESERVE_SHARE * usage.total) / 2**30:.1f} GiB free")
        try:
            files["x"].write(np.ascontiguousarray(x).tobytes())
            files["y"].write(np.ascontiguousarray(y).tobytes())
        except OSError as e:
            return self._stop(f"a write failed ({e})")
        return True

    def _commit(self, key: str, paths: dict, meta: dict) -> None:
        try:
            for part, path in paths.items():
                os.replace(path, self.dir / f"{key}.{part}")
            tmp = self.dir / f"{key}.json.partial"
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, self.dir / f"{key}.json")   # last: a block counts as cached only once complete
        except OSError as e:
            self._stop(f"a write failed ({e})")

    def _stop(self, why: str) -> bool:
        """No more writing in this run (one warning); False."""
        if self.writing:
            warnings.warn(f"data.cache: no more blocks are cached in {self.dir}: {why}; the rest of the run reads "
                          "them from the source")
        self.writing = False
        return False


def _close(files: dict) -> None:
    for f in files.values():
        f.close()
    files.clear()


def _sweep(parent: Path) -> None:
    """Remove the cache folders of processes that are gone (a run killed before it could clean up)."""
    for entry in parent.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
