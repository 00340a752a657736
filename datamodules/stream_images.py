"""Streamed image folders (data.streaming with data.source=image_folder): a `root/<class>/<image>` tree, local or
s3://, that never has to fit in memory. setup() lists the files and decodes each one once, for the split sizes,
the class counts and the exact per-channel mean/std of the train split (value histograms, image_blocks.py); the
loaders then decode block by block through an ImageReader, the object the Ray Data datasets of a distributed run
map over their blocks (pipelines/training/ray_data.py).

The model, its `prep` and `dlp predict` are the in-memory ImageDataModule's: only how images reach the network
differs. No augmentation here: data.augment is ignored when streaming (the batches come from the loaders
unchanged). Splits are a seeded hash of each file's path, not a stratified draw, so their sizes are near, not
exactly, data.val_fraction/data.test_fraction; data.limit and data.balance=oversample need the tree in memory.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional

import numpy as np

from . import image_blocks, streamed
from .base import SPLITS, DataSpec, class_balance
from .errors import DataError
from .stream_base import StreamedDataModule

MIN_SIZE = 8   # image.MIN_SIZE


class StreamingImageDataModule(StreamedDataModule):
    """An image tree decoded in blocks: same spec and prep as ImageDataModule, never every image in memory."""

    def __init__(self, cfg, seed: int):
        super().__init__(cfg, seed)
        self.class_counts: Dict[str, list] = {}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.spec is not None:
            return
        cfg = self.cfg
        if cfg.source != "image_folder":
            raise DataError(f"data.streaming: true needs data.source=image_folder, not {cfg.source}")
        if cfg.task != "classification":
            raise DataError("data.task: image data supports classification only; set data.task=classification")
        if cfg.image_size is not None and cfg.image_size < MIN_SIZE:
            raise DataError(f"data.image_size: {cfg.image_size} is below the minimum {MIN_SIZE}; "
                            f"set {MIN_SIZE} or larger")
        if cfg.balance == "oversample":
            raise DataError("data.balance: oversample needs the images in memory; use data.balance=weights or "
                            "data.streaming=false")
        if cfg.limit is not None:
            raise DataError("data.limit: a streamed image folder is read whole; set data.limit=null or "
                            "data.streaming=false")
        if not cfg.path:
            raise DataError("data.path: required for data.source=image_folder; set data.path=<directory>")
        for name in ("val", "test"):
            fraction = cfg.get(f"{name}_fraction")
            if not 0.0 < fraction < 1.0:
                raise DataError(f"data.{name}_fraction: {fraction} is not between 0 and 1 (exclusive)")
        source = image_blocks.discover(cfg.path, self.seed, cfg.val_fraction, cfg.test_fraction)
        reader = image_blocks.ImageReader(source, {}, cfg.image_size, bool(cfg.grayscale))
        shape = reader.first_shape()
        if shape[1] < MIN_SIZE or shape[2] < MIN_SIZE:
            raise DataError(f"data.image_size: images are {shape[2]}x{shape[1]}; at least {MIN_SIZE}x{MIN_SIZE} is "
                            f"needed (set data.image_size={MIN_SIZE} or larger)")
        stats, bad = image_blocks.scan(reader, shape, cfg.on_error == "skip")
        source.drop(bad)
        if source.skipped:
            warnings.warn(f"data.on_error=skip: left out {len(source.skipped)} unreadable image(s) of {cfg.path}: "
                          + ", ".join(rel for rel, _ in source.skipped[:5]) + (" ..." * (len(source.skipped) > 5)))
        self._finish(reader, stats, shape)

    def _finish(self, reader: image_blocks.ImageReader, stats: image_blocks.ImageStats, shape: tuple) -> None:
        cfg, source = self.cfg, reader.source
        per_split = stats.counts.sum(axis=1)
        self.counts = {split: int(per_split[streamed.SPLIT_CODES[split]]) for split in SPLITS}
        empty = [s for s in SPLITS if not self.counts[s]]
        if empty:
            raise DataError(f"data: the {empty[0]} split of {cfg.path} is empty ({self.counts}); use more images or "
                            "other data.val_fraction/data.test_fraction")
        self.class_counts = {split: [int(v) for v in stats.counts[streamed.SPLIT_CODES[split]]] for split in SPLITS}
        c, h, w = (int(v) for v in shape)
        mean, std = stats.mean_std()
        scale = 255.0
        self.prep = {"kind": "image", "shape": [c, h, w], "scale": scale,
                     "mean": [m / scale for m in mean], "std": [max(s, 1e-8) / scale for s in std]}
        reader.prep = self.prep
        self.reader = reader
        self.source = f"image_folder:{source.uri}"
        self.spec = DataSpec(task="classification", num_classes=len(source.classes), input_shape=(c, h, w),
                             class_names=list(source.classes), feature_names=[f"p{i}" for i in range(c * h * w)],
                             target_name="label")
        if cfg.balance == "weights":
            y = np.repeat(np.arange(len(source.classes)), self.class_counts["train"])
            self.spec.class_weights = [float(v) for v in class_balance(y, len(source.classes))]
        elif cfg.balance != "none":
            raise DataError(f"data.balance: unknown '{cfg.balance}'; choose none, weights or oversample")
        self._set_hashes(source, cfg.image_size, bool(cfg.grayscale))
        self.skipped = source.skipped
        self.prep.update(task="classification", class_names=list(self.spec.class_names), target_scale=None)

    # loaders: StreamedDataModule's (no augmentation: data.augment is ignored when streaming)
