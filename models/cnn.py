"""Convolutional network for 1- or 3-channel images of any size >= 8x8: `dlp train model=cnn data=digits`."""
from __future__ import annotations

from typing import Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from models.base import Spec, TaskModule
from models.layers import init_weights, make_activation, make_norm, output_size, sequential
from models.mlp import MLP

POOLED = 2  # feature maps end as POOLED x POOLED: keeps coarse layout (top/bottom strokes on 8x8 digits)


class CNN(nn.Module):
    """Conv blocks (convs_per_block x [conv -> norm -> act] -> 2x2 pool -> Dropout2d) -> adaptive avg pool -> MLP head.

    A block pools only while the feature map is at least 2x2, so several blocks still fit 8x8 inputs.
    """

    def __init__(self, input_shape: Sequence[int], out_features: int, channels: Sequence[int] = (32, 64),
                 convs_per_block: int = 1, kernel_size: int = 3, pool: str = "max", norm: str = "batch",
                 activation: str = "relu", dropout: float = 0.25, head_hidden: Sequence[int] = (128,),
                 init: str = "kaiming"):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"model=cnn needs images (C, H, W); the data has input_shape {tuple(input_shape)}, "
                             "use model=mlp")
        if pool not in ("max", "avg"):
            raise ValueError(f"model.pool={pool!r} is unknown; choose one of max, avg")
        width, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(width, out, kernel_size, padding="same", bias=norm != "batch"),
                           make_norm(norm, out, 2), make_activation(activation)]
                width = out
            if min(h, w) >= 2:
                # ceil_mode keeps the last row/column of odd sizes (7x7 -> 4x4)
                layers.append(nn.MaxPool2d(2, ceil_mode=True) if pool == "max" else nn.AvgPool2d(2, ceil_mode=True))
                h, w = (h + 1) // 2, (w + 1) // 2
            layers.append(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity())
        self.features = sequential(*layers, nn.AdaptiveAvgPool2d(POOLED))
        self.head = MLP(width * POOLED * POOLED, out_features, head_hidden, activation, "none", dropout)
        init_weights(self, init, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNNModule(TaskModule):
    """CNN sized from cfg.model (CNNConfig) and the data spec."""

    def __init__(self, spec: Spec, cfg: DictConfig):
        m = cfg.model
        net = CNN(tuple(spec.input_shape), output_size(spec), list(m.channels), m.convs_per_block, m.kernel_size,
                  m.pool, m.norm, m.activation, m.dropout, list(m.head_hidden), m.init)
        super().__init__(net, spec, cfg)
