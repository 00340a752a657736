"""Datamodules: `build(cfg.data, seed)` returns the LightningDataModule for `data.kind`.

pipelines.training's fit() calls build(), then setup(), and hands `dm.spec` to models.build.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import DataError

if TYPE_CHECKING:
    from .base import BaseDataModule

__all__ = ["build", "BaseDataModule", "BatchLoader", "DataError", "DataSpec"]


def __getattr__(name: str):
    # base.py imports Lightning (~3 s): loaded on first use, so the Ray Data tasks that read a streamed table
    # (streamed.py: pyarrow, pandas, numpy) import none of it
    if name in ("BaseDataModule", "BatchLoader", "DataSpec"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")


def build(data_cfg, seed: int) -> "BaseDataModule":
    """The datamodule for `data_cfg.kind` (tabular, image, text, timeseries); nothing is loaded until setup()."""
    kind = data_cfg.kind
    if kind == "tabular":
        if streams(data_cfg):
            from .stream_table import StreamingTableDataModule

            return StreamingTableDataModule(data_cfg, seed)
        from .tabular import TabularDataModule

        return TabularDataModule(data_cfg, seed)
    if kind == "image":
        if streams(data_cfg):
            from .stream_images import StreamingImageDataModule

            return StreamingImageDataModule(data_cfg, seed)
        from .image import ImageDataModule

        return ImageDataModule(data_cfg, seed)
    if kind == "text":
        if streams(data_cfg):
            from .stream_text import StreamingTextDataModule

            return StreamingTextDataModule(data_cfg, seed)
        from .text import TextDataModule

        return TextDataModule(data_cfg, seed)
    if kind == "timeseries":
        from .timeseries import TimeSeriesDataModule

        return TimeSeriesDataModule(data_cfg, seed)
    raise DataError(f"data.kind: unknown '{kind}'; choose tabular, image, text or timeseries")


def streams(data_cfg) -> bool:
    """Whether a table or an image folder is read block by block (data.streaming; auto: a table folder, an s3://
    prefix, or a table file or image tree larger than data.stream_above of this machine's memory)."""
    value = data_cfg.get("streaming", False)
    if value not in ("auto", True, False):
        raise DataError(f"data.streaming: unknown {value!r}; choose auto, true or false")
    image = data_cfg.get("kind") == "image"
    wanted = ("image_folder",) if image else ("csv", "parquet")
    if data_cfg.get("source") not in wanted:
        if value is True:
            raise DataError(f"data.streaming: true needs data.source={' or '.join(wanted)}, "
                            f"not {data_cfg.get('source')}")
        return False
    if value != "auto":
        return value
    path = str(data_cfg.get("path") or "")
    if "://" in path:
        return True
    limit = float(data_cfg.get("stream_above", 0.25)) * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if image:
        return _tree_size(os.path.expanduser(path), limit) > limit
    if os.path.isdir(os.path.expanduser(path)):
        return True
    try:
        size = os.path.getsize(os.path.expanduser(path))
    except OSError:
        return False   # the in-memory reader names the problem
    return size > limit


def _tree_size(root: str, stop: float) -> int:
    """Bytes of the files in root/<class>/ (0 where root is no directory: the in-memory reader names that),
    counted until they pass `stop`."""
    total = 0
    try:
        classes = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return 0
    for folder in classes:
        try:
            with os.scandir(folder.path) as entries:
                for e in entries:
                    if e.is_file():
                        total += e.stat().st_size
                        if total > stop:
                            return total
        except OSError:
            continue
    return total
