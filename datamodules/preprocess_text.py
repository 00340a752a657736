"""Text -> token ids: cleaning, tokenising, the vocabulary and encoding (the text half of `preprocess`).

Shipped inside every logged model beside preprocess.py; keep it free of torch and of package-relative imports.
"""
from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter

import numpy as np
import pandas as pd

PAD, UNK = "<pad>", "<unk>"
_TAG = re.compile(r"<\s*/?\s*[A-Za-z][^<>]*>")        # <br />, <i>, </p>: IMDB reviews are full of them
_WORD = re.compile(r"[\w']+|[^\w\s]")                  # words ("don't" stays whole) and single punctuation marks
_SPACE = re.compile(r"\s+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'"})   # curly apostrophes would split "don’t"


def clean_text(text, lowercase: bool = True) -> str:
    """NFKC-normalised text without HTML tags or entities, straight apostrophes and single spaces.

    Missing values (None, NaN) become "".
    """
    if not isinstance(text, str):
        try:
            missing = bool(pd.isna(text))
        except (TypeError, ValueError):
            missing = False
        if missing:
            return ""
        text = str(text)
    text = html.unescape(_TAG.sub(" ", text))
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    if lowercase:
        text = text.lower()
    return _SPACE.sub(" ", text).strip()


def tokenize(text: str, tokenizer: str) -> list:
    """Tokens of cleaned text: `word` = words and punctuation marks, `char` = characters (spaces included)."""
    if tokenizer == "word":
        return _WORD.findall(text)
    if tokenizer == "char":
        return list(text)
    raise ValueError(f"unknown tokenizer {tokenizer!r}; choose word or char")


def tokenize_texts(texts, tokenizer: str, lowercase: bool) -> list:
    """clean_text + tokenize for every text; a list of token lists."""
    return [tokenize(clean_text(t, lowercase), tokenizer) for t in texts]


def fit_vocab(token_lists, min_freq: int, max_vocab: int) -> list:
    """Vocabulary from TRAIN token lists: <pad>, <unk>, then tokens seen >= min_freq times, most frequent
    first (ties alphabetical), at most max_vocab entries in all."""
    return vocab_from_counts(Counter(t for tokens in token_lists for t in tokens), min_freq, max_vocab)


def vocab_from_counts(counts: Counter, min_freq: int, max_vocab: int) -> list:
    """fit_vocab from token counts already made (a streamed pass counts a batch at a time)."""
    kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)),
                  key=lambda t: (-counts[t], t))
    return [PAD, UNK] + kept[:max(0, max_vocab - 2)]


def encode(token_lists, vocab: list, max_length: int, pad: int = 0, unk: int = 1) -> np.ndarray:
    """Token ids, truncated to max_length and right-padded with `pad`: int64 (N, max_length)."""
    index = {t: i for i, t in enumerate(vocab) if i not in (pad, unk)}
    out = np.full((len(token_lists), max_length), pad, dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        ids = [index.get(t, unk) for t in tokens[:max_length]]
        out[row, :len(ids)] = ids
    return out


def text_inputs(data, prep: dict) -> np.ndarray:
    """Texts (column prep["column"] of a frame, or a 1-d array) -> int64 token ids; missing text -> all pad."""
    column = prep["column"]
    if isinstance(data, pd.DataFrame):
        if column not in data.columns:
            raise ValueError(f"input is missing column '{column}'")
        texts = data[column].tolist()
    elif isinstance(data, pd.Series):
        texts = data.tolist()
    else:
        arr = np.asarray(data, dtype=object)
        arr = arr.reshape(1) if arr.ndim == 0 else arr
        arr = arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr
        if arr.ndim != 1:
            raise ValueError(f"expected one text per row (column '{column}'), got shape {arr.shape}")
        texts = arr.tolist()
    tokens = tokenize_texts(texts, prep["tokenizer"], prep["lowercase"])
    return encode(tokens, prep["vocab"], prep["max_length"], prep["pad"], prep["unk"])
