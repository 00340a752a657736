"""Feed-forward network for tabular rows (or flattened images): `dlp train model=mlp`."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from models.base import Spec, TaskModule
from models.layers import init_weights, make_activation, make_norm, output_size, sequential


class MLP(nn.Module):
    """(N, F) or (N, C, H, W) -> Linear -> norm -> activation -> dropout per hidden size -> (N, out_features).

    hidden=[] is a single Linear layer: linear / logistic regression.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (), activation: str = "relu",
                 norm: str = "none", dropout: float = 0.0, init: str = "default"):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            # BatchNorm subtracts the batch mean, which would cancel the bias anyway
            layers += [nn.Linear(width, size, bias=norm != "batch"), make_norm(norm, size, 1),
                       make_activation(activation), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
            width = size
        self.body = sequential(*layers)
        self.head = nn.Linear(width, out_features)
        init_weights(self, init, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


class MLPModule(TaskModule):
    """MLP sized from cfg.model (MLPConfig) and the data spec."""

    def __init__(self, spec: Spec, cfg: DictConfig):
        m = cfg.model
        net = MLP(math.prod(spec.input_shape), output_size(spec), list(m.hidden), m.activation, m.norm,
                  m.dropout, m.init)
        super().__init__(net, spec, cfg)
