"""Image folders larger than memory: a `root/<class>/<image>` tree (local or s3://) listed once, cut into blocks
of files and decoded one block at a time.

Each file's split comes from a seeded hash of its path relative to the root (streamed.split_codes of its row 0):
no global shuffle, no membership list, the same answer in every process. The fingerprint comes from the listing
(names, sizes, modification times), never from a read. Files are ordered into blocks by an unseeded hash of their
path, not by path: a block of a sorted tree would hold one class, and the loaders' bounded shuffle buffer could
not mix classes back into every batch.

Pure numpy/PIL/pyarrow (no torch, no Lightning): the ImageReader is pickled into the Ray Data read tasks of a
distributed run (pipelines/training/ray_data.py) as well as read in process (stream_loader.py).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd

from . import preprocess, streamed
from .errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}  # image.py's
BLOCK_FILES = 512    # files per block: the unit a read task decodes
CHUNK = 256          # images per (x, y) pair yielded by ImageReader.read


@dataclass(frozen=True)
class ImageBlock:
    """A unit of reading: `entries` = ((relative path, class code, split code), ...)."""
    index: int
    entries: Tuple[Tuple[str, int, int], ...]

    @property
    def rows(self) -> int:
        return len(self.entries)


@dataclass
class ImageSource:
    """The files of one image tree; `skipped` lists (file, why) left out under data.on_error=skip."""
    uri: str
    root: str                              # the root's path in its filesystem
    classes: List[str]                     # folder names, sorted: class code k is classes[k]
    files: List[Tuple[str, int, int]]      # (relative path, size, mtime ns), sorted
    blocks: List[ImageBlock]
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def digest(self) -> str:
        """sha256 of the listing: changes when an image is added, removed or rewritten (or a class renamed)."""
        return hashlib.sha256(json.dumps({"classes": self.classes, "files": self.files}).encode()).hexdigest()

    def drop(self, rels) -> None:
        """Leave the files `rels` ({relative path: why}) out; other files keep their blocks."""
        if not rels:
            return
        self.files = [f for f in self.files if f[0] not in rels]
        self.blocks = [ImageBlock(b.index, tuple(e for e in b.entries if e[0] not in rels)) for b in self.blocks]
        self.blocks = [b for b in self.blocks if b.entries]
        self.skipped += sorted(rels.items())
        if not self.files:
            raise DataError(f"data.path: no readable image in '{self.uri}' ({len(self.skipped)} skipped)")


def discover(uri: str, seed: int, val_fraction: float, test_fraction: float) -> ImageSource:
    """The tree's class folders and image files, each file's split, and blocks of BLOCK_FILES files."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    fs, root = streamed.filesystem(uri)
    root = root.rstrip("/")
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"data.path: directory '{uri}' does not exist")
        if info.type == pafs.FileType.File:
            raise DataError(f"data.path: '{uri}' is a file; expected a directory <path>/<class>/<image files>")
        listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"data.path: cannot list '{uri}': {streamed._reason(e)}") from None
    folders, files = set(), []
    for i in listed:
        parts = i.path[len(root):].strip("/").split("/")
        if any(p.startswith(".") for p in parts):
            continue
        if i.type == pafs.FileType.Directory and len(parts) == 1:
            folders.add(parts[0])
        elif i.type == pafs.FileType.File and len(parts) == 2 and _is_image(parts[1]):
            folders.add(parts[0])
            files.append(("/".join(parts), int(i.size or 0), int(i.mtime_ns or 0)))
    classes = sorted(folders)
    if not classes:
        raise DataError(f"data.path: '{uri}' has no class folders; expected <path>/<class>/<image files>")
    files.sort()
    have = {rel.split("/", 1)[0] for rel, _, _ in files}
    empty = [c for c in classes if c not in have]
    if empty:
        raise DataError(f"data.path: class folder '{root}/{empty[0]}' has no images; remove it or add images")
    return ImageSource(uri, root, classes, files, make_blocks(files, classes, seed, val_fraction, test_fraction))


def _is_image(name: str) -> bool:
    return any(name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS)


def file_splits(rels: List[str], seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """0 (train), 1 (val), 2 (test) per file: streamed.split_codes(rel, 0, 1, ...) for every file at once."""
    keys = np.array([streamed.file_key(r, seed) for r in rels], dtype=np.uint64)
    u = (streamed._mix(keys) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    out = np.zeros(len(rels), dtype=np.int8)
    out[u < test_fraction + val_fraction] = 1
    out[u < test_fraction] = 2
    return out


def make_blocks(files: list, classes: List[str], seed: int, val_fraction: float, test_fraction: float,
                size: int = BLOCK_FILES) -> List[ImageBlock]:
    rels = [rel for rel, _, _ in files]
    codes = file_splits(rels, seed, val_fraction, test_fraction)
    code_of = {c: k for k, c in enumerate(classes)}
    # an unseeded hash orders the files: blocks hold every class, and do not change with the seed
    order = sorted(range(len(rels)), key=lambda i: hashlib.blake2b(rels[i].encode(), digest_size=8).digest())
    entries = [(rels[i], code_of[rels[i].split("/", 1)[0]], int(codes[i])) for i in order]
    return [ImageBlock(k, tuple(entries[s:s + size])) for k, s in enumerate(range(0, len(entries), size))]


# ---- decoding ------------------------------------------------------------------------------

class ShapeError(DataError):
    """Images of different sizes and no data.image_size."""


@dataclass
class ImageReader:
    """Block -> (x float32 NCHW model inputs, y int64 class codes) of one split: picklable, for Ray Data too."""
    source: ImageSource
    prep: dict                 # preprocess's image prep ("shape" [C, H, W] is the size every image must have)
    image_size: Optional[int]
    grayscale: bool

    def read(self, block: ImageBlock, split: str) -> Iterator[tuple]:
        code = streamed.SPLIT_CODES[split]
        for images, labels, _ in self.decode(block, code):
            yield preprocess.transform(images, self.prep), labels

    def raw(self, block: ImageBlock, split: str) -> Iterator:
        """The split's raw pixel rows p0.. (uint8, as ImageDataModule's) with their class codes ("label")."""
        for images, labels, _ in self.decode(block, streamed.SPLIT_CODES[split]):
            frame = pd.DataFrame(images.reshape(len(images), -1), columns=[f"p{i}" for i in range(images[0].size)])
            yield frame.assign(label=labels)

    def decode(self, block: ImageBlock, split: Optional[int] = None, bad: Optional[dict] = None,
               shape: Optional[tuple] = None) -> Iterator[tuple]:
        """(uint8 NCHW images, int64 class codes, int8 split codes) of the block's files (of split code `split`
        only, when given), CHUNK at a time. A file that cannot be read raises ReadError, or, where `bad` is a dict,
        is noted there ({relative path: why}) and left out. Every image must have `shape` (default: prep's)."""
        fs, _ = streamed.filesystem(self.source.uri)
        local = type(fs).__name__ == "LocalFileSystem"
        shape = tuple(shape or self.prep["shape"])
        images, labels, codes = [], [], []
        for rel, label, code in block.entries:
            if split is not None and code != split:
                continue
            try:
                arr = self._decode_one(fs, local, rel)
            except streamed.ReadError as e:
                if bad is None:
                    raise
                bad[rel] = str(e)
                continue
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if arr.shape != shape:
                raise ShapeError(f"data.image_size: images differ in size ('{rel}' is {arr.shape[2]}x{arr.shape[1]}, "
                                 f"others {shape[2]}x{shape[1]}); set data.image_size=<n> to resize them")
            images.append(arr)
            labels.append(label)
            codes.append(code)
            if len(images) == CHUNK:
                yield _stack(images, labels, codes)
                images, labels, codes = [], [], []
        if images:
            yield _stack(images, labels, codes)

    def _decode_one(self, fs, local: bool, rel: str) -> np.ndarray:
        from PIL import Image

        path = f"{self.source.root}/{rel}"
        try:
            if local:
                handle = open(path, "rb")
            else:
                with fs.open_input_file(path) as f:
                    handle = io.BytesIO(f.read())
            with handle, Image.open(handle) as im:
                want = "L" if self.grayscale else "RGB"
                im = im if im.mode == want else im.convert(want)
                if self.image_size:
                    im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - PIL and pyarrow raise many types for a bad or vanished file
            raise streamed.ReadError(f"data.path: cannot read image '{rel}' of {self.source.uri}: "
                                     f"{streamed._reason(e)}; fix or remove the file, or set data.on_error=skip",
                                     rel) from None

    def first_shape(self) -> tuple:
        """(C, H, W) of the first readable image in listing order (unreadable ones are skipped here)."""
        fs, _ = streamed.filesystem(self.source.uri)
        local = type(fs).__name__ == "LocalFileSystem"
        for rel, _, _ in self.source.files:
            try:
                arr = self._decode_one(fs, local, rel)
            except streamed.ReadError:
                continue
            return (1, *arr.shape) if arr.ndim == 2 else (arr.shape[2], arr.shape[0], arr.shape[1])
        raise DataError(f"data.path: no readable image in '{self.source.uri}'")


def _stack(images, labels, codes) -> tuple:
    return np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(codes, dtype=np.int8)


# ---- statistics ----------------------------------------------------------------------------

class ImageStats:
    """Split sizes, class counts per split and per-channel value histograms of the train split (exact mean/std in
    bounded memory: 256 counts per channel)."""

    def __init__(self, channels: int, classes: int):
        self.hist = np.zeros((channels, 256), dtype=np.int64)
        self.counts = np.zeros((3, classes), dtype=np.int64)   # [split code, class]

    def add(self, images: np.ndarray, labels: np.ndarray, codes: np.ndarray) -> None:
        np.add.at(self.counts, (codes.astype(np.int64), labels), 1)
        train = images[codes == 0]
        for c in range(train.shape[1]):
            self.hist[c] += np.bincount(train[:, c].ravel(), minlength=256)

    def mean_std(self) -> tuple:
        """As image.channel_stats: per-channel mean and std of the train pixels (raw 0..255 values)."""
        values = np.arange(256, dtype=np.float64)
        mean, std = [], []
        for counts in self.hist.astype(np.float64):
            total = counts.sum() or 1.0
            m = float(values @ counts / total)
            mean.append(m)
            std.append(float(np.sqrt(((values - m) ** 2) @ counts / total)))
        return mean, std


def scan(reader: ImageReader, shape: tuple, skip: bool) -> tuple:
    """One pass over every block: (ImageStats, {relative path: why} of unreadable files, left out under skip)."""
    stats = ImageStats(shape[0], len(reader.source.classes))
    bad: dict = {}
    for block in reader.source.blocks:
        for images, labels, codes in reader.decode(block, None, bad if skip else None, shape):
            stats.add(images, labels, codes)
    return stats, bad
