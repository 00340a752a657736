"""Image classification data for the CNN: scikit-learn digits, ImageFolder trees, MNIST IDX files
and CIFAR-10 python batches, all read from disk (never downloaded).

Used by `dlp train data=image ...`. Pixels stay uint8 (raw) until preprocess.transform scales them
and normalises each channel with statistics fitted on the train split; training batches can be
augmented with random shifts / rotations / flips applied to the whole batch at once.
"""
from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import preprocess
from .base import BaseDataModule, DataError, DataSpec, split_indices

SOURCES = ("digits", "image_folder", "mnist", "cifar10")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MIN_SIZE = 8


# ---- readers: each returns (train uint8 NCHW, train labels, test or None, test labels or None, class names)

def read_digits(limit=None) -> tuple:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images[:limit].astype(np.uint8)[:, None]     # values 0..16
    return images, d.target[:limit].astype(np.int64), None, None, [str(c) for c in d.target_names]


def read_image_folder(root, image_size=None, grayscale=False, limit=None, seed=0) -> tuple:
    """A `root/<class>/<image>` tree read with PIL; classes are the sorted folder names."""
    from PIL import Image

    root = _directory(root, "image_folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.path: '{root}' has no class folders; expected <path>/<class>/<image files>")
    files, labels = [], []
    for k, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(f"data.path: class folder '{root / name}' has no images; remove it or add images")
        files += found
        labels += [k] * len(found)
    labels = np.asarray(labels, dtype=np.int64)
    if limit is not None and limit < len(files):
        # files are grouped by class, so "the first N" would be one class; a seeded subset also
        # spares reading the images a quick run does not use
        keep = np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])
        files, labels = [files[i] for i in keep], labels[keep]
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if grayscale else "RGB")
                if image_size:
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(f"data.path: cannot read image '{f}': {e}; remove or replace the file") from e
        if images and arr.shape != images[0].shape:
            raise DataError(f"data.image_size: images differ in size ('{files[0].name}' is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}, '{f.name}' is {arr.shape[1]}x{arr.shape[0]}); "
                            "set data.image_size=<n> to resize them")
        images.append(arr)
    x = np.stack(images)
    x = x[:, None] if grayscale else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, labels, None, None, classes


def read_mnist(path, limit=None) -> tuple:
    """The four IDX files (optionally .gz) in `path` or `path/MNIST/raw` (torchvision's layout)."""
    root = _directory(path, "mnist")
    for candidate in (root, root / "MNIST" / "raw"):
        if _idx_file(candidate, "train-images-idx3-ubyte", required=False):
            root = candidate
            break
    x = _read_idx(_idx_file(root, "train-images-idx3-ubyte"), 3)[:limit]
    y = _read_idx(_idx_file(root, "train-labels-idx1-ubyte"), 1)[:limit]
    xt = _read_idx(_idx_file(root, "t10k-images-idx3-ubyte"), 3)
    yt = _read_idx(_idx_file(root, "t10k-labels-idx1-ubyte"), 1)
    for images, labels, part in ((x, y, "train"), (xt, yt, "t10k")):
        if len(images) != len(labels):
            raise DataError(f"data.path: MNIST {part} files disagree ({len(images)} images, {len(labels)} labels)")
    return x[:, None], y.astype(np.int64), xt[:, None], yt.astype(np.int64), [str(i) for i in range(10)]


def _idx_file(root: Path, name: str, required: bool = True):
    for f in (root / name, root / f"{name}.gz"):
        if f.is_file():
            return f
    if required:
        raise DataError(f"data.path: MNIST file '{root / name}' (or .gz) does not exist")
    return None


def _read_idx(file: Path, ndim: int) -> np.ndarray:
    with (gzip.open if file.suffix == ".gz" else open)(file, "rb") as fh:
        data = fh.read()
    # IDX header: two zero bytes, type code 0x08 (ubyte), number of dimensions, then big-endian int32 sizes
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"data.path: '{file}' is not an MNIST IDX file with {ndim} dimension(s)")
    shape = struct.unpack(f">{ndim}i", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):
        raise DataError(f"data.path: '{file}' is truncated ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


def read_cifar10(path, limit=None) -> tuple:
    """The python batches (data_batch_1..5, test_batch, batches.meta) in `path` or `path/cifar-10-batches-py`."""
    root = _directory(path, "cifar10")
    if not (root / "batches.meta").is_file() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"

    def images(name):
        batch, f = _cifar_batch(root, name, {b"data", b"labels"}), root / name
        x, y = batch[b"data"], batch[b"labels"]
        y = np.asarray(y) if isinstance(y, list) and all(isinstance(v, (int, np.integer)) for v in y) else y
        if not (_numeric(x) and x.size % 3072 == 0 and _numeric(y) and y.ndim == 1 and len(y) == x.size // 3072):
            raise DataError(f"data.path: CIFAR-10 file '{f}' is not a CIFAR-10 batch (b'data' must be an array of "
                            "N x 3072 pixels and b'labels' N integers); replace it with the official file")
        return x.astype(np.uint8).reshape(-1, 3, 32, 32), y.astype(np.int64)

    parts = [images(f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])[:limit]
    y = np.concatenate([p[1] for p in parts])[:limit]
    xt, yt = images("test_batch")
    names = _cifar_batch(root, "batches.meta", {b"label_names"})[b"label_names"]
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"data.path: CIFAR-10 file '{root / 'batches.meta'}' has no list of b'label_names'; "
                        "replace it with the official file")
    return x, y, xt, yt, [n.decode() if isinstance(n, bytes) else n for n in names]


_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")   # numpy 1 and numpy 2 pickles


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's batches hold: dicts, lists, bytes, numbers and numpy arrays. Any other
    global a pickle names (os.system, builtins.exec, ...) is refused before it is looked up, so nothing runs."""

    ALLOWED = {**{(m, "_reconstruct"): np.ndarray((0,)).__reduce__()[0] for m in _MULTIARRAY},
               **{(m, "scalar"): np.int64(0).__reduce__()[0] for m in _MULTIARRAY},
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which the format never needs")
        return self.ALLOWED[(module, name)]


def _cifar_batch(root: Path, name: str, required: set) -> dict:
    """One CIFAR-10 pickle read with _BatchUnpickler: a dict with the `required` keys, else one DataError line."""
    f = root / name
    if not f.is_file():
        raise DataError(f"data.path: CIFAR-10 file '{f}' does not exist")
    try:
        with open(f, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises almost any type
        raise DataError(f"data.path: CIFAR-10 file '{f}' is not a CIFAR-10 python batch ({e}); "
                        "only the official files are read, and pickled code is refused") from None
    if not isinstance(batch, dict) or not required <= set(batch):
        raise DataError(f"data.path: CIFAR-10 file '{f}' is not a dict with keys {', '.join(map(str, sorted(required)))}; "
                        "replace it with the official file")
    return batch


def _numeric(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind in "ui"


def _directory(path, source: str) -> Path:
    if not path:
        raise DataError(f"data.path: required for data.source={source}; set data.path=<directory>")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: directory '{path}' does not exist")
    return root


def channel_stats(images: np.ndarray) -> tuple:
    """Exact per-channel mean and std of uint8 NCHW images from value histograms (no float copy)."""
    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        m = float(values @ counts / counts.sum())
        mean.append(m)
        std.append(float(np.sqrt(((values - m) ** 2) @ counts / counts.sum())))
    return mean, std


# ---- augmentation --------------------------------------------------------------------------

class Augment:
    """Random shift / rotation / horizontal flip of a normalised NCHW batch, one affine warp per batch.

    Padding is raw black (0 before normalisation), like torchvision's RandomAffine.
    """

    def __init__(self, cfg, mean, std, seed: int):
        self.max_shift = float(cfg.max_shift)
        self.max_rotation = float(cfg.max_rotation)
        self.hflip = bool(cfg.hflip)
        self.fill = (-torch.tensor(mean) / torch.tensor(std)).float().view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, g = len(x), self.generator
        angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(self.max_rotation)
        # affine_grid works in [-1, 1] coordinates, so a shift of f * width is 2f
        shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 2 * self.max_shift
        flip = torch.ones(n)
        if self.hflip:
            flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                             torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        fill = self.fill.to(x.device, x.dtype)   # drawn on the host, applied where the batch is (data.on_device)
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


# ---- datamodule ----------------------------------------------------------------------------

class ImageDataModule(BaseDataModule):
    """uint8 images -> normalised float NCHW tensors; the logged model takes raw pixel rows p0..pN.

    data.limit caps the labelled pool val is carved from: the first N training images of MNIST /
    CIFAR-10 (their test files stay whole), the first N digits, or a seeded N-image ImageFolder subset.
    """

    def _load(self) -> None:
        cfg = self.cfg
        if cfg.task != "classification":
            raise DataError("data.task: image data supports classification only; set data.task=classification")
        if cfg.image_size is not None and cfg.image_size < MIN_SIZE:
            raise DataError(f"data.image_size: {cfg.image_size} is below the minimum {MIN_SIZE}; "
                            f"set {MIN_SIZE} or larger")
        if cfg.limit is not None and cfg.limit < 1:
            raise DataError(f"data.limit: {cfg.limit} keeps no images; set a positive number or null")
        x, y, xt, yt, classes = self._read()
        c, h, w = x.shape[1:]
        if h < MIN_SIZE or w < MIN_SIZE:
            raise DataError(f"data.image_size: images are {w}x{h}; at least {MIN_SIZE}x{MIN_SIZE} is needed "
                            f"(set data.image_size={MIN_SIZE} or larger)")
        stratify = bool(cfg.stratify)
        if xt is None:
            train, val, test = split_indices(y, cfg.val_fraction, cfg.test_fraction, self.seed, stratify)
            parts = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
        else:
            train, val, _ = split_indices(y, cfg.val_fraction, None, self.seed, stratify)
            parts = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (xt, yt)}

        scale = 16.0 if cfg.source == "digits" else 255.0
        mean, std = channel_stats(parts["train"][0])
        self.prep = {"kind": "image", "shape": [int(c), int(h), int(w)], "scale": scale,
                     "mean": [m / scale for m in mean], "std": [max(s, 1e-8) / scale for s in std]}
        for name, (images, labels) in parts.items():
            self._raw[name] = (images, labels)
            self._tensors[name] = (torch.from_numpy(preprocess.transform(images, self.prep)),
                                   torch.from_numpy(labels))
        self.spec = DataSpec(task="classification", num_classes=len(classes), input_shape=(int(c), int(h), int(w)),
                             class_names=list(classes), feature_names=[f"p{i}" for i in range(c * h * w)],
                             target_name="label")

    def _read(self) -> tuple:
        cfg = self.cfg
        readers = {
            "digits": lambda: read_digits(cfg.limit),
            "image_folder": lambda: read_image_folder(cfg.path, cfg.image_size, cfg.grayscale, cfg.limit, self.seed),
            "mnist": lambda: read_mnist(cfg.path, cfg.limit),
            "cifar10": lambda: read_cifar10(cfg.path, cfg.limit),
        }
        if cfg.source not in readers:
            raise DataError(f"data.source: unknown '{cfg.source}'; choose one of {', '.join(SOURCES)}")
        if cfg.source == "digits":
            self.source = "sklearn:digits"
        else:
            self.source = f"{cfg.source}:{Path(cfg.path).expanduser().resolve()}" if cfg.path else cfg.source
        return readers[cfg.source]()

    def _train_transform(self):
        aug = self.cfg.augment
        if not aug.enabled or (aug.max_shift == 0 and aug.max_rotation == 0 and not aug.hflip):
            return None
        return Augment(aug, self.prep["mean"], self.prep["std"], self.seed)
