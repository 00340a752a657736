"""Building blocks every family shares: activations, norms, weight init, sequence pooling, the naive forecast.

The families (models/mlp.py, models/cnn.py, ...) assemble their plain nn.Module networks from these.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "elu": nn.ELU,
                "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
# torch.nn.init gain names; ELU and GELU behave like ReLU for variance purposes.
_GAIN = {"relu": ("relu", 0.0), "leaky_relu": ("leaky_relu", 0.01), "prelu": ("leaky_relu", 0.25),
         "elu": ("relu", 0.0), "gelu": ("relu", 0.0), "tanh": ("tanh", 0.0), "sigmoid": ("sigmoid", 0.0)}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module (PReLU owns a parameter, so never share one instance)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"model.activation={name!r} is unknown; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def make_norm(kind: str, features: int, dims: int = 1) -> nn.Module:
    """none | batch | layer for (N, F) activations (dims=1) or (N, C, H, W) feature maps (dims=2)."""
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm1d(features) if dims == 1 else nn.BatchNorm2d(features)
    if kind == "layer":
        return nn.LayerNorm(features) if dims == 1 else nn.GroupNorm(1, features)
    raise ValueError(f"model.norm={kind!r} is unknown; choose one of none, batch, layer")


def init_weights(module: nn.Module, scheme: str, activation: str = "relu") -> None:
    """Re-initialise every Linear/Conv weight (xavier | kaiming, gain matched to `activation`); zero biases.

    `default` keeps PyTorch's own initialisation.
    """
    if scheme == "default":
        return
    if scheme not in ("xavier", "kaiming"):
        raise ValueError(f"model.init={scheme!r} is unknown; choose one of default, xavier, kaiming")
    nonlinearity, slope = _GAIN[activation]
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(nonlinearity, slope))
            else:
                nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def sequential(*modules: nn.Module) -> nn.Sequential:
    """nn.Sequential without Identity placeholders: each one is a Python call per forward for nothing."""
    return nn.Sequential(*(m for m in modules if not isinstance(m, nn.Identity)))


def output_size(spec) -> int:
    """Logits per class for classification, `horizon` values for a forecast, else one value for regression."""
    if spec.task == "classification":
        return int(spec.num_classes)
    return int(getattr(spec, "horizon", 0) or 1)


# ---------------------------------------------------------------------------------------------- sequences

def real_lengths(x: torch.Tensor, pad_index: int) -> torch.Tensor:
    """Tokens before the right padding of each (N, L) row, at least 1 so an all-pad row pools without NaN."""
    return (x != pad_index).sum(1).clamp_min(1)


def pool_positions(h: torch.Tensor, lengths: Optional[torch.Tensor], how: str) -> torch.Tensor:
    """(N, L, D) -> (N, D): last | mean | max over the first `lengths` positions (all of them when None).

    Masks instead of slicing, so shapes never depend on tensor values and torch.export keeps a dynamic batch.
    """
    if lengths is None:
        if how == "last":
            return h[:, -1]
        return h.mean(1) if how == "mean" else h.amax(1)
    if how == "last":
        return h.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, h.shape[-1])).squeeze(1)
    real = (torch.arange(h.shape[1], device=h.device) < lengths[:, None]).unsqueeze(-1)   # (N, L, 1)
    if how == "mean":
        return (h * real.to(h.dtype)).sum(1) / lengths[:, None].to(h.dtype)
    if how == "max":
        return h.masked_fill(~real, float("-inf")).amax(1)
    raise ValueError(f"model.pooling={how!r} is unknown here; choose one of last, mean, max")


def naive_forecast(x: torch.Tensor, horizon: int, season: int = 0) -> torch.Tensor:
    """The classical no-skill forecast from windows x (N, lookback, F) whose feature 0 is the target:
    the last value repeated (season=0) or the last `season` values repeated (seasonal naive), (N, horizon).

    Forecasting nets add it to their output (model.residual), so they learn a correction to it.
    """
    if season <= 0:
        return x[:, -1, :1].expand(-1, horizon)
    steps = torch.arange(horizon, device=x.device) % season + (x.shape[1] - season)
    return x[:, steps, 0]


def init_recurrent(rnn: nn.RNNBase) -> None:
    """Orthogonal hidden-to-hidden blocks, zero biases, and forget-gate bias 1 for an LSTM.

    Orthogonal recurrences keep the gradient norm steady across time steps (Saxe et al., 2014); a forget bias
    of 1 makes a fresh LSTM remember by default, so long-range gradients flow from the first step
    (Jozefowicz et al., 2015). Input-to-hidden weights keep PyTorch's initialisation.
    """
    h = rnn.hidden_size
    for name, p in rnn.named_parameters():
        if name.startswith("weight_hh"):
            for gate in p.data.split(h, 0):
                nn.init.orthogonal_(gate)
        elif name.startswith("bias"):
            nn.init.zeros_(p)
            if isinstance(rnn, nn.LSTM) and name.startswith("bias_ih"):
                p.data[h:2 * h] = 1.0   # gate order i, f, g, o; bias_hh's forget slice stays 0, so the sum is 1
