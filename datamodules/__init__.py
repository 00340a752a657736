"""Datamodules: `build(cfg.data, seed)` returns the LightningDataModule for `data.kind`.

pipelines.training's fit() calls build(), then setup(), and hands `dm.spec` to models.build.
"""
from __future__ import annotations

from .base import BaseDataModule, BatchLoader, DataSpec
from .errors import DataError

__all__ = ["build", "BaseDataModule", "BatchLoader", "DataError", "DataSpec"]


def build(data_cfg, seed: int) -> BaseDataModule:
    """The datamodule for `data_cfg.kind` (tabular, image, text, timeseries); nothing is loaded until setup()."""
    kind = data_cfg.kind
    if kind == "tabular":
        from .tabular import TabularDataModule

        return TabularDataModule(data_cfg, seed)
    if kind == "image":
        from .image import ImageDataModule

        return ImageDataModule(data_cfg, seed)
    if kind == "text":
        from .text import TextDataModule

        return TextDataModule(data_cfg, seed)
    if kind == "timeseries":
        from .timeseries import TimeSeriesDataModule

        return TimeSeriesDataModule(data_cfg, seed)
    raise DataError(f"data.kind: unknown '{kind}'; choose tabular, image, text or timeseries")
