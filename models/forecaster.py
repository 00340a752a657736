"""LSTM/GRU multi-step forecaster over windows of a time series: `dlp train model=forecaster data=seattle_temps`."""
from __future__ import annotations

from typing import Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from models.base import Spec, TaskModule
from models.layers import init_recurrent, naive_forecast, output_size
from models.mlp import MLP
from models.rnn_classifier import CELLS


class Forecaster(nn.Module):
    """(N, lookback, F) windows, feature 0 the scaled target -> RNN -> last state -> [MLP] -> (N, horizon).

    All horizon steps come out at once (direct multi-output), so errors do not compound step by step.
    residual=True adds a naive forecast to the outputs, so the net learns a correction to it: the last observed
    target (season=0), or the last `season` steps repeated (seasonal naive, e.g. season=24 for hourly data with
    a daily cycle), which is already a strong forecast for smooth or strongly seasonal series.
    """

    def __init__(self, n_features: int, horizon: int, cell: str = "lstm", hidden_size: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, head_hidden: Sequence[int] = (),
                 residual: bool = True, init: str = "default", season: int = 0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"model.cell={cell!r} is unknown; choose one of {', '.join(CELLS)}")
        self.residual, self.horizon, self.season = residual, horizon, season
        self.rnn = CELLS[cell](n_features, hidden_size, num_layers, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0)
        self.head = MLP(hidden_size, horizon, head_hidden, "relu", "none", dropout, init)
        init_recurrent(self.rnn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.rnn(x)[0][:, -1])
        return out + naive_forecast(x, self.horizon, self.season) if self.residual else out


class ForecasterModule(TaskModule):
    """Forecaster sized from cfg.model (ForecasterConfig) and the time-series spec (input_shape (lookback, F))."""

    def __init__(self, spec: Spec, cfg: DictConfig):
        m = cfg.model
        if len(spec.input_shape) != 2 or int(getattr(spec, "vocab_size", 0) or 0):
            raise ValueError(f"model=forecaster needs time-series windows (lookback, features); the data has "
                             f"input_shape {tuple(spec.input_shape)}, use model=rnn_classifier for text")
        net = Forecaster(int(spec.input_shape[1]), output_size(spec), m.cell, m.hidden_size, m.num_layers,
                         m.dropout, list(m.head_hidden), m.residual, m.init, m.season)
        super().__init__(net, spec, cfg)
