"""Pieces every datamodule shares: the DataSpec handed to models.build,
seeded (stratified) splits, and the BaseDataModule that ties them to loader.py's batch-at-a-time BatchLoader
(setup once, loaders, fingerprint, raw rows for MLflow input examples and `dlp predict`).
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional

import lightning as L
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from . import preprocess
from . import loader as loading
from .loader import BatchLoader
from .errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class DataSpec:
    """What a model needs to know about the data (models.build reads it)."""
    task: str                                   # classification | regression
    num_classes: int                            # 0 for regression
    input_shape: tuple                          # (n_features,) or (C, H, W)
    class_names: list[str] = field(default_factory=list)     # str(original label) per class id
    class_weights: Optional[list[float]] = None              # balance=weights: inverse train frequency, mean 1
    feature_names: list[str] = field(default_factory=list)   # raw input columns of the logged model
    target_name: str = "target"
    target_scale: Optional[list[float]] = None   # regression: [mean, std] of the train target; the net learns
                                                 # the standardised target, metrics and predictions are in raw units
    # text: inputs are (N, L) int64 token ids, right-padded with pad_index; vocab[i] is token i
    vocab_size: int = 0
    pad_index: int = 0
    vocab: Optional[list[str]] = None
    # time series: inputs are (N, lookback, n_features) windows, feature 0 the (scaled) target;
    # targets are (N, horizon) future values of it
    lookback: int = 0
    horizon: int = 0


# ---- splits --------------------------------------------------------------------------------

def split_indices(y: np.ndarray, val_fraction: float, test_fraction: Optional[float], seed: int,
                  stratify: bool) -> tuple:
    """Seeded train/val/test row indices (each sorted), stratified on `y` when `stratify`.

    test_fraction=None means the source brings its own test set: only val is carved out.
    """
    n = len(y)
    sizes = {"val": _split_size(n, val_fraction, "val")}
    if test_fraction is not None:
        sizes["test"] = _split_size(n, test_fraction, "test")
    if n - sum(sizes.values()) < 1:
        raise DataError(f"data: {n} rows leave the train split empty; lower data.val_fraction/data.test_fraction")
    rest = np.arange(n)
    out = {}
    for name in ("test", "val"):
        if name in sizes:
            rest, out[name] = _carve(rest, y, sizes[name], seed, stratify, name)
    test = np.sort(out["test"]) if "test" in out else np.array([], dtype=np.int64)
    return np.sort(rest), np.sort(out["val"]), test


def _split_size(n: int, fraction: float, name: str) -> int:
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.{name}_fraction: {fraction} is not between 0 and 1 (exclusive)")
    size = int(round(n * fraction))
    if size < 1:
        raise DataError(f"data.{name}_fraction: {fraction} of {n} rows leaves the {name} split empty; "
                        f"raise data.{name}_fraction or use more data")
    return size


def _carve(idx: np.ndarray, y: np.ndarray, size: int, seed: int, stratify: bool, name: str) -> tuple:
    if stratify:
        try:
            keep, take = train_test_split(idx, test_size=size, random_state=seed, stratify=y[idx])
            return keep, take
        except ValueError as e:
            # too few rows of some class for a stratified split: a plain split still works
            warnings.warn(f"data.stratify: cannot stratify the {name} split ({e}); splitting without it")
    keep, take = train_test_split(idx, test_size=size, random_state=seed)
    return keep, take


def class_balance(y_train: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequency on the train labels, normalised to mean 1."""
    counts = np.bincount(y_train, minlength=num_classes).astype(np.float64)
    w = 1.0 / np.maximum(counts, 1.0)
    return w * num_classes / w.sum()


# ---- datamodule ----------------------------------------------------------------------------

class BaseDataModule(L.LightningDataModule):
    """Loads, validates and splits once in setup(); subclasses implement `_load`.

    `_load` must set: self.spec, self.prep, self.source (str), self._raw[split] = (raw rows as a
    DataFrame or ndarray, raw labels) and self._tensors[split] = (x, y).
    """

    def __init__(self, cfg, seed: int):
        super().__init__()
        self.cfg = cfg
        self.seed = int(seed)
        self.spec: Optional[DataSpec] = None
        self.prep: Optional[dict] = None
        self.source = ""
        self._raw: dict = {}
        self._tensors: dict = {}
        self._sample_weights: Optional[torch.Tensor] = None
        self._hash: Optional[str] = None
        self._split_hashes: Dict[str, str] = {}
        # the epoch the training loader's shuffle count starts at: a resumed run sets it to the next epoch, so
        # the order continues as the uninterrupted run's (Lightning makes the first iterator before any hook runs)
        self.first_epoch = 0
        self._placement: Optional[torch.device] = None
        self._on_device: dict = {}

    def _load(self) -> None:
        raise NotImplementedError

    def _train_transform(self):
        """Batch augmentation for training; None by default."""
        return None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.spec is not None:
            return
        self._load()
        self._balance()
        self._hash, self._split_hashes = _hash_splits(self._raw)
        # the logged model needs these to turn network outputs into labels or raw-unit values
        self.prep.update(task=self.spec.task, class_names=list(self.spec.class_names),
                         target_scale=self.spec.target_scale)

    def _balance(self) -> None:
        balance = self.cfg.balance
        if balance == "none":
            return
        if self.spec.task != "classification":
            raise DataError(f"data.balance: '{balance}' needs a classification task; set data.balance=none")
        y = self._tensors["train"][1].numpy()
        w = class_balance(y, self.spec.num_classes)
        if balance == "weights":
            self.spec.class_weights = [float(v) for v in w]
        elif balance == "oversample":
            self._sample_weights = torch.as_tensor(w[y], dtype=torch.float64)
        else:
            raise DataError(f"data.balance: unknown '{balance}'; choose none, weights or oversample")

    # -- loaders --
    def train_dataloader(self) -> BatchLoader:
        self.setup()
        x, y = self._tensors["train"]
        _, world = loading._world()
        n, bs = math.ceil(len(x) / world), max(1, self.cfg.batch_size // world)
        # a final batch of one sample breaks BatchNorm in training mode
        drop_last = n > bs and n % bs == 1
        loader = BatchLoader(self._placed("train"), self.cfg.batch_size, shuffle=True, seed=self.seed,
                             drop_last=drop_last, transform=self._train_transform(),
                             sample_weights=self._sample_weights, pin=self._pin())
        loader.set_epoch(self.first_epoch)
        return loader

    def val_dataloader(self) -> BatchLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> BatchLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> BatchLoader:
        self.setup()
        return BatchLoader(self._placed(split), self.cfg.batch_size, shuffle=False, seed=self.seed, pin=self._pin())

    # -- placement (data.on_device) --
    def _device(self) -> torch.device:
        """The training device: the attached Trainer's, else the host."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def placement(self) -> torch.device:
        """Where the split tensors live while training: the training device or the host (data.on_device)."""
        if self.trainer is None:
            return torch.device("cpu")   # outside training (checks, plots): the host
        if self._placement is None:
            self._placement = loading.placement(getattr(self.cfg, "on_device", "auto"), self._device(),
                                        sum(t.numel() * t.element_size() for ts in self._tensors.values() for t in ts))
        return self._placement

    def _placed(self, split: str) -> tuple:
        device = self.placement()
        if split not in self._on_device:   # no copy where the device is the host
            self._on_device[split] = tuple(t.to(device) for t in self._tensors[split])
        return self._on_device[split]

    def _pin(self) -> bool:
        return self.placement().type == "cpu" and self._device().type == "cuda"

    # -- records --
    def fingerprint(self) -> dict:
        """Where the data came from, split sizes and a sha256 over the raw split contents."""
        self.setup()
        sizes = {f"n_{s}": int(len(self._tensors[s][1])) for s in SPLITS}
        return {"source": self.source, **sizes, "hash": self._hash}

    def split_digests(self) -> Dict[str, str]:
        """{split: sha256 of its raw rows and labels}: what MLflow shows as each dataset's digest."""
        self.setup()
        return dict(self._split_hashes)

    def raw_frame(self, split: str, limit: Optional[int] = None) -> tuple:
        """Raw (un-preprocessed) input rows of a split, columns spec.feature_names, and raw labels (the first
        `limit` of them)."""
        self.setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rows, labels = self._raw[split]
        if limit is not None:
            rows, labels = rows[:limit], labels[:limit]
        if isinstance(rows, pd.DataFrame):
            frame = rows[self.spec.feature_names].reset_index(drop=True)
        else:
            frame = pd.DataFrame(rows.reshape(len(rows), -1), columns=self.spec.feature_names)
        return frame, np.asarray(labels)

    def transform_frame(self, df) -> np.ndarray:
        """Raw rows -> float32 model inputs, exactly as the logged model will do it."""
        self.setup()
        return preprocess.transform(df, self.prep)


def _hash_splits(raw: dict) -> tuple:
    """(sha256 over every split, {split: its own sha256}), from one serialisation of the raw splits."""
    whole, each = hashlib.sha256(), {}
    for split in SPLITS:
        own = hashlib.sha256()
        _hash_split((whole, own), split, *raw[split])
        each[split] = own.hexdigest()
    return whole.hexdigest(), each


def _hash_split(hashes: tuple, split: str, rows, labels) -> None:
    def update(data: bytes) -> None:
        for h in hashes:
            h.update(data)

    update(split.encode())
    for part in (rows, labels):
        if isinstance(part, pd.DataFrame):
            update("\x1f".join(map(str, part.columns)).encode())
            update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
        elif isinstance(part, np.ndarray) and part.dtype != object:
            update(str((part.shape, part.dtype.str)).encode())
            update(np.ascontiguousarray(part).tobytes())
        else:
            update(pd.util.hash_pandas_object(pd.Series(part), index=False).to_numpy().tobytes())
