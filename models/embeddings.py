"""Pretrained word vectors (GloVe / word2vec text files) for the text families' token embeddings.

`dlp train model=rnn_classifier data=rotten_tomatoes model.embedding_path=glove.6B.100d.txt model.embedding_dim=100`
"""
from __future__ import annotations

import gzip
import logging
import os
from typing import Optional, Sequence

import torch
from torch import nn

from models.errors import ModelError

log = logging.getLogger(__name__)


def _open(path: str):
    opener = gzip.open if str(path).endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8", errors="replace")


def _vectors(path: str, dim: int, dim_key: str):
    """(token, its `dim` values as strings) for every vector line of a GloVe/word2vec text file."""
    file_dim = None
    with _open(path) as f:
        for n, line in enumerate(f):
            parts = line.rstrip("\n\r ").split(" ")
            if n == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue   # word2vec header: "count dim"
            if len(parts) < 2:
                continue
            if file_dim is None:
                file_dim = len(parts) - 1
                if file_dim != dim:
                    raise ModelError(f"model.embedding_path: '{path}' has {file_dim}-dimensional vectors but "
                                     f"{dim_key}={dim}; set {dim_key}={file_dim}")
            # a few GloVe tokens contain spaces: the vector is always the last `dim` fields
            yield (" ".join(parts[:-dim]) if len(parts) > dim + 1 else parts[0]), parts[-dim:]


def load_pretrained(path: str, vocab: Optional[Sequence[str]], dim: int, init: Optional[torch.Tensor] = None,
                    pad_index: Optional[int] = None, dim_key: str = "model.embedding_dim") -> tuple[torch.Tensor, int]:
    """Vectors for `vocab` from a "token v1 ... vd" text file (a word2vec "count dim" header line is skipped).

    A token is looked up as is, then ignoring case; rows of tokens the file lacks keep `init` (default zeros).
    Only matching lines are parsed, so a multi-gigabyte file costs one pass and len(vocab) vectors of memory.

    Args:
        vocab: token per id (spec.vocab).
        dim: the embedding width the model expects; `dim_key` names it in errors.
        pad_index: row zeroed at the end (default: the id of "<pad>", if any).

    Returns:
        (weights (len(vocab), dim), how many vocabulary tokens were found).
    """
    if not path or not os.path.isfile(path):
        raise ModelError(f"model.embedding_path: '{path}' is not a file; give a GloVe/word2vec text file "
                         "or set model.embedding_path=null")
    if not vocab:
        raise ModelError("model.embedding_path needs the data's vocabulary and this data has none; "
                         "use text data or set model.embedding_path=null")
    exact = {tok: i for i, tok in enumerate(vocab)}
    lower: dict[str, list[int]] = {}
    for i, tok in enumerate(vocab):
        lower.setdefault(tok.lower(), []).append(i)
    weights = init.detach().clone().float() if init is not None else torch.zeros(len(vocab), dim)
    found, fallback = set(), {}
    for token, values in _vectors(path, dim, dim_key):
        if token in exact and exact[token] not in found:
            weights[exact[token]] = torch.tensor([float(v) for v in values])
            found.add(exact[token])
        key = token.lower()
        if key in lower:   # case-insensitive fallback; the file's first (most frequent) casing wins
            for i in lower[key]:
                if i not in found and i not in fallback:
                    fallback[i] = [float(v) for v in values]
    for i, vec in fallback.items():
        if i not in found:
            weights[i] = torch.tensor(vec)
            found.add(i)
    if not found:
        raise ModelError(f"model.embedding_path: none of the {len(vocab)} vocabulary tokens is in '{path}'; "
                         "check the file's language and tokenisation or set model.embedding_path=null")
    if pad_index is None and "<pad>" in exact:
        pad_index = exact["<pad>"]
    if pad_index is not None:
        weights[pad_index] = 0.0
    return weights, len(found)


def setup_embedding(embedding: nn.Embedding, spec, path: Optional[str], freeze: bool,
                    dim_key: str = "model.embedding_dim") -> None:
    """Copy pretrained vectors from `path` (if any) into `embedding`, then freeze it when `freeze`."""
    if path:
        vocab = getattr(spec, "vocab", None)
        with torch.no_grad():
            weights, found = load_pretrained(path, vocab, embedding.embedding_dim, embedding.weight,
                                             getattr(spec, "pad_index", 0), dim_key)
            embedding.weight.copy_(weights)
        log.info("model.embedding_path: %d of %d vocabulary tokens (%.1f%%) found in %s",
                 found, len(vocab), 100.0 * found / len(vocab), path)
    if freeze:
        embedding.weight.requires_grad_(False)
