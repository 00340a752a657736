"""Transformer encoder for text classification or forecasting: `dlp train model=transformer data=rotten_tomatoes`
(or `data=seattle_temps`); the data spec decides which.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from models.base import Spec, TaskModule
from models.layers import init_weights, naive_forecast, output_size, pool_positions, real_lengths
from models.embeddings import setup_embedding
from models.errors import ModelError


def sinusoidal_table(positions: int, d_model: int) -> torch.Tensor:
    """(positions, d_model) fixed encodings of Vaswani et al. (2017): sin on even, cos on odd features."""
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(positions, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table


class TransformerEncoderNet(nn.Module):
    """Token ids (N, L) (vocab_size > 0) or feature windows (N, L, F) -> encoder -> pooled -> (N, out_features).

    Text: embedding * sqrt(d_model) and a key padding mask on the right padding (pads never reach a real
    position, so extra padding leaves the outputs unchanged). Windows: a linear projection, no mask.
    pooling: cls (a learned token prepended, never masked) | mean | last, over real positions.
    residual (forecasting): adds a naive forecast (last value, or the last `season` steps) to the outputs,
    as model=forecaster.
    patch (forecasting): each token is `patch` consecutive steps (PatchTST, Nie et al. 2023): a shorter
    sequence whose tokens carry local shape, not one noisy point each; the oldest lookback % patch steps
    are dropped.
    """

    def __init__(self, input_shape: Sequence[int], out_features: int, vocab_size: int = 0, pad_index: int = 0,
                 d_model: int = 64, nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 128,
                 dropout: float = 0.1, activation: str = "gelu", pooling: str = "cls",
                 positional: str = "sinusoidal", max_length: int = 512, norm_first: bool = True,
                 residual: bool = False, init: str = "default", season: int = 0, patch: int = 1):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"model.d_model={d_model} must be divisible by model.nhead={nhead}")
        if activation not in ("relu", "gelu"):
            raise ValueError(f"model.activation={activation!r} does not fit transformer; choose relu or gelu")
        if pooling not in ("cls", "mean", "last"):
            raise ValueError(f"model.pooling={pooling!r} does not fit transformer; choose one of cls, mean, last")
        if positional not in ("sinusoidal", "learned"):
            raise ValueError(f"model.positional={positional!r} is unknown; choose sinusoidal or learned")
        self.text, self.pad_index, self.pooling = vocab_size > 0, pad_index, pooling
        self.residual = residual and not self.text
        self.horizon, self.season = out_features, season
        self.patch = 1 if self.text else max(1, int(patch))
        if self.patch > int(input_shape[0]):
            raise ModelError(f"model.patch={patch} is longer than the {input_shape[0]} input steps; lower it")
        positions = int(input_shape[0]) // self.patch + (pooling == "cls")
        if positions > max_length:
            raise ModelError(f"model.max_length={max_length} is shorter than the data's {positions} positions "
                            f"({int(input_shape[0]) // self.patch} tokens{' + CLS' if pooling == 'cls' else ''}); "
                            f"set model.max_length={positions}")
        if self.text:
            self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_index)
            # std d_model^-1/2 so that the sqrt(d_model) scale gives unit-variance tokens, on a par with the
            # positional encoding (the default N(0, 1) would drown it)
            nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
            with torch.no_grad():
                self.embed.weight[pad_index].zero_()
            self.scale = math.sqrt(d_model)
        else:
            self.embed = nn.Linear(int(input_shape[-1]) * self.patch, d_model)
            self.scale = 1.0
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if pooling == "cls" else None
        self.learned = positional == "learned"
        if self.learned:
            self.positions = nn.Embedding(max_length, d_model)
        else:   # rebuilt from the config, so kept out of the state dict
            self.register_buffer("table", sinusoidal_table(max_length, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
                                           batch_first=True, norm_first=norm_first)
        # pre-LN leaves the residual stream unnormalised: one LayerNorm after the last layer
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model) if norm_first else None,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d_model, out_features)
        init_weights(self, init, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch > 1:  # (N, L, F) -> (N, L // patch, patch * F), newest steps kept
            steps = x.shape[1] // self.patch * self.patch
            h = self.embed(x[:, x.shape[1] - steps:].reshape(x.shape[0], steps // self.patch, -1))
        else:
            h = self.embed(x) * self.scale
        lengths = padding = None
        if self.text:
            lengths = real_lengths(x, self.pad_index)
            padding = torch.arange(x.shape[1], device=x.device) >= lengths[:, None]   # True = ignore
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], 1)
            if padding is not None:
                padding = torch.cat([padding.new_zeros(padding.shape[0], 1), padding], 1)
        steps = h.shape[1]
        h = h + (self.positions.weight[:steps] if self.learned else self.table[:steps].to(h.dtype))
        h = self.encoder(self.dropout(h), src_key_padding_mask=padding)
        pooled = h[:, 0] if self.cls is not None else pool_positions(h, lengths, self.pooling)
        out = self.head(pooled)
        return out + naive_forecast(x, self.horizon, self.season) if self.residual else out


class TransformerModule(TaskModule):
    """TransformerEncoderNet sized from cfg.model (TransformerConfig) and a text or time-series spec."""

    def __init__(self, spec: Spec, cfg: DictConfig):
        m = cfg.model
        vocab_size = int(getattr(spec, "vocab_size", 0) or 0)
        if vocab_size == 0 and len(spec.input_shape) != 2:
            raise ValueError(f"model=transformer needs token ids or time-series windows; the data has "
                             f"input_shape {tuple(spec.input_shape)}")
        if vocab_size == 0 and m.embedding_path:
            raise ModelError("model.embedding_path is for text data and this data has no vocabulary; "
                            "set model.embedding_path=null")
        net = TransformerEncoderNet(tuple(spec.input_shape), output_size(spec), vocab_size,
                                    int(getattr(spec, "pad_index", 0) or 0), m.d_model, m.nhead, m.num_layers,
                                    m.dim_feedforward, m.dropout, m.activation, m.pooling, m.positional,
                                    m.max_length, m.norm_first, m.residual and spec.task == "regression", m.init,
                                    m.season, m.patch)
        if vocab_size:
            setup_embedding(net.embed, spec, m.embedding_path, m.freeze_embedding, dim_key="model.d_model")
        super().__init__(net, spec, cfg)
