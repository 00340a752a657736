"""(Bi)LSTM/GRU text classifier over right-padded token ids: `dlp train model=rnn_classifier data=rotten_tomatoes`."""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from models.base import Spec, TaskModule
from models.layers import init_recurrent, init_weights, output_size, pool_positions, real_lengths
from models.embeddings import setup_embedding

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def reverse_within_length(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather (N, L, D) along time with `index` from `_reverse_index`; applying it twice is the identity."""
    return h.gather(1, index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


def _reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, L): len-1-t for the real positions t < len, t itself for the padding after them."""
    t = torch.arange(steps, device=lengths.device)
    return torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)


class RNNClassifier(nn.Module):
    """Token ids (N, L) -> embedding -> dropout -> RNN stack -> pooling over real tokens -> dropout -> (N, classes).

    Every layer is one unidirectional RNN per direction, stacked by hand instead of nn.LSTM(bidirectional=True):
    the backward direction then runs over each text reversed within its own length, so it reads the last real
    token first instead of the padding. No pack_padded_sequence either: everything is masks and gathers,
    so torch.export keeps a dynamic batch dimension. Padding only ever comes after the real tokens, so it
    never reaches a real position's state: extra padding leaves the logits unchanged.
    """

    def __init__(self, vocab_size: int, num_classes: int, pad_index: int = 0, cell: str = "lstm",
                 embedding_dim: int = 128, hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.3, pooling: str = "max", init: str = "default"):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"model.cell={cell!r} is unknown; choose one of {', '.join(CELLS)}")
        if pooling not in ("last", "mean", "max"):
            raise ValueError(f"model.pooling={pooling!r} does not fit rnn_classifier; choose one of last, mean, max")
        self.pad_index, self.pooling, self.hidden_size = pad_index, pooling, hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_index)
        self.dropout = nn.Dropout(dropout)
        directions = 2 if bidirectional else 1
        sizes = [embedding_dim] + [hidden_size * directions] * (num_layers - 1)
        self.forward_rnns = nn.ModuleList(CELLS[cell](n, hidden_size, batch_first=True) for n in sizes)
        self.backward_rnns = nn.ModuleList(CELLS[cell](n, hidden_size, batch_first=True) for n in sizes
                                           if bidirectional)
        self.head = nn.Linear(hidden_size * directions, num_classes)
        for rnn in (*self.forward_rnns, *self.backward_rnns):
            init_recurrent(rnn)
        init_weights(self.head, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = real_lengths(x, self.pad_index)
        index = _reverse_index(lengths, x.shape[1]) if len(self.backward_rnns) else None
        h = self.dropout(self.embedding(x))
        for i, rnn in enumerate(self.forward_rnns):
            if i > 0:
                h = self.dropout(h)
            out = rnn(h)[0]
            if index is not None:
                back = self.backward_rnns[i](reverse_within_length(h, index))[0]
                out = torch.cat([out, reverse_within_length(back, index)], -1)
            h = out
        if self.pooling == "last" and index is not None:
            # each direction's final state: forward at the last real token, backward at the first
            k = self.hidden_size
            pooled = torch.cat([pool_positions(h[..., :k], lengths, "last"), h[:, 0, k:]], -1)
        else:
            pooled = pool_positions(h, lengths, self.pooling)
        return self.head(self.dropout(pooled))


class RNNClassifierModule(TaskModule):
    """RNNClassifier sized from cfg.model (RNNClassifierConfig) and the text spec; optional pretrained vectors."""

    def __init__(self, spec: Spec, cfg: DictConfig):
        m = cfg.model
        if not int(getattr(spec, "vocab_size", 0) or 0):
            raise ValueError("model=rnn_classifier needs text data (token ids and a vocabulary); "
                             "use model=forecaster or model=transformer for time series")
        net = RNNClassifier(int(spec.vocab_size), output_size(spec), int(spec.pad_index), m.cell, m.embedding_dim,
                            m.hidden_size, m.num_layers, m.bidirectional, m.dropout, m.pooling, m.init)
        setup_embedding(net.embedding, spec, m.embedding_path, m.freeze_embedding)
        super().__init__(net, spec, cfg)
