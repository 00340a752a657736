"""Typed schemas of the model group (conf/model/*.yaml): one dataclass per family, keyed by model.name.

The defaults live here, once; a conf/model/ option lists only what makes it that option (tests/unit/test_config.py
holds the two together).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class MLPConfig:
    """Feed-forward net for tabular rows. hidden=[] is linear / logistic regression."""
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [128, 64])
    activation: str = "relu"
    norm: str = "none"          # none | batch | layer, after each hidden linear layer
    dropout: float = 0.0
    init: str = "kaiming"       # default | xavier | kaiming


@dataclass
class CNNConfig:
    """Conv blocks (conv -> norm -> act [-> conv -> norm -> act] -> pool -> dropout) then an MLP head."""
    name: str = "cnn"
    channels: List[int] = field(default_factory=lambda: [32, 64])   # one block per entry
    convs_per_block: int = 2
    kernel_size: int = 3
    pool: str = "max"           # max | avg
    norm: str = "batch"         # none | batch | layer (layer = GroupNorm(1, C))
    activation: str = "relu"
    dropout: float = 0.25       # after each block (Dropout2d) and in the head
    head_hidden: List[int] = field(default_factory=lambda: [128])
    init: str = "kaiming"


@dataclass
class RNNClassifierConfig:
    """Embedding -> (bi)LSTM/GRU stack over the real tokens only -> pooled state -> classes."""
    name: str = "rnn_classifier"
    cell: str = "lstm"                # lstm | gru
    embedding_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3              # on embeddings, between layers and before the head
    pooling: str = "max"              # last | mean | max over real (non-pad) positions
    embedding_path: Optional[str] = None   # GloVe / word2vec text file: "token v1 v2 ..." per line
    freeze_embedding: bool = False
    init: str = "default"             # default | xavier | kaiming (linear layers); RNNs get orthogonal recurrences


@dataclass
class ForecasterConfig:
    """LSTM/GRU over `lookback` steps of the target (+ exogenous features) -> `horizon` values at once."""
    name: str = "forecaster"
    cell: str = "lstm"
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    head_hidden: List[int] = field(default_factory=list)   # MLP between the last state and the horizon outputs
    residual: bool = True             # learn a correction to a naive forecast (last value, or seasonal naive)
    season: int = 0                   # with residual: steps per season for a seasonal-naive skip (24: hourly data, daily cycle)
    init: str = "default"


@dataclass
class TransformerConfig:
    """Transformer encoder for token sequences (text) or windows of features (forecasting)."""
    name: str = "transformer"
    d_model: int = 64
    nhead: int = 4
    num_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.1
    activation: str = "gelu"          # relu | gelu (feed-forward)
    pooling: str = "cls"              # cls | mean (over real positions) | last
    positional: str = "sinusoidal"    # sinusoidal | learned
    max_length: int = 512             # longest sequence the positional table covers
    norm_first: bool = True           # pre-LN: steadier training without warm-up tricks
    embedding_path: Optional[str] = None   # text only, as for rnn_classifier
    freeze_embedding: bool = False
    residual: bool = True             # forecasting only, as for forecaster
    season: int = 0                   # forecasting only, as for forecaster
    patch: int = 1                    # forecasting only: steps per token (PatchTST-style patches)
    init: str = "default"


MODEL_SCHEMAS: Dict[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig, "rnn_classifier": RNNClassifierConfig,
                                   "forecaster": ForecasterConfig, "transformer": TransformerConfig}
