"""Model families and the one way to build them: `models.build(cfg, spec)` (used by `dlp train`)."""
from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import torch
from omegaconf import DictConfig, OmegaConf

from models.base import Spec, TaskModule
from models.metrics import metric_names

# model.name -> "module:LightningModule class"; imported on first use so `dlp config` stays fast
FAMILIES: dict[str, str] = {"mlp": "models.mlp:MLPModule", "cnn": "models.cnn:CNNModule",
                            "rnn_classifier": "models.rnn_classifier:RNNClassifierModule",
                            "forecaster": "models.forecaster:ForecasterModule",
                            "transformer": "models.transformer:TransformerModule"}


def family(name: str) -> type[TaskModule]:
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build(cfg: DictConfig, spec: Spec) -> TaskModule:
    """The LightningModule of family `cfg.model.name`, sized for the data described by `spec`."""
    name = cfg.model.name
    if name not in FAMILIES:
        raise ValueError(f"model.name={name!r} is not a model family; choose one of {', '.join(FAMILIES)}")
    return family(name)(spec, cfg)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> TaskModule:
    """Rebuild a trained model, in eval mode, from a dlpipe checkpoint alone (cfg and spec travel inside it)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    cfg = OmegaConf.create(ckpt["dlp_cfg"])
    if cfg.model.get("embedding_path"):  # the trained embedding is in the state dict; the file may be gone
        cfg.model.embedding_path = None
    model = build(cfg, SimpleNamespace(**ckpt["dlp_spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


__all__ = ["FAMILIES", "TaskModule", "build", "family", "load_checkpoint", "metric_names"]
