"""Model families and the one way to build them: `models.build(cfg, spec)` (used by `dlp train`)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch
from omegaconf import DictConfig, OmegaConf

from models.base import Spec, TaskModule, metric_names
from models.cnn import CNNModule
from models.mlp import MLPModule

FAMILIES: dict[str, type[TaskModule]] = {"mlp": MLPModule, "cnn": CNNModule}


def build(cfg: DictConfig, spec: Spec) -> TaskModule:
    """The LightningModule of family `cfg.model.name`, sized for the data described by `spec`."""
    name = cfg.model.name
    if name not in FAMILIES:
        raise ValueError(f"model.name={name!r} is not a model family; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name](spec, cfg)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> TaskModule:
    """Rebuild a trained model, in eval mode, from a dlpipe checkpoint alone (cfg and spec travel inside it)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = build(OmegaConf.create(ckpt["dlp_cfg"]), SimpleNamespace(**ckpt["dlp_spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


__all__ = ["FAMILIES", "TaskModule", "build", "load_checkpoint", "metric_names"]
