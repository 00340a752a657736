"""Reading a streamed text table (stream_text.py) block by block: the one pass's counts (split sizes, the train
split's token counts for the vocabulary, the classes) and the reader that turns a block's rows of one split into
token ids. numpy, pandas and pyarrow only: Ray Data's read tasks unpickle TextBlockReader."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import pandas as pd

from . import preprocess_text
from .errors import DataError
from .streamed import SPLIT_CODES, Block, Source, split_codes


@dataclass
class TextBlockReader:
    """Block -> (int64 token ids (N, max_length), int64 labels) of one split; picklable."""
    source: Source
    text: str
    target: str
    tokenizer: str
    lowercase: bool
    empty: str                    # error | drop
    seed: int
    val_fraction: float
    test_fraction: float
    prep: Optional[dict] = None   # set once the vocabulary is fitted
    classes: Optional[list] = None

    @property
    def columns(self) -> List[str]:
        return [self.text, self.target]

    def batches(self, block: Block) -> Iterator[tuple]:
        """(raw frame, split codes, token lists) of every read batch of `block`, empty texts checked or dropped."""
        for batch, first in self.source.batches(block, self.columns):
            frame = batch.to_pandas()
            codes = split_codes(block.rel, first, batch.num_rows, self.seed, self.val_fraction, self.test_fraction)
            missing = frame[self.target].isna().to_numpy()
            if missing.any():
                row = first + int(np.flatnonzero(missing)[0])
                raise DataError(f"data.target: column '{self.target}' has missing labels ('{block.rel}' row {row}); "
                                "remove those rows from the data")
            tokens = preprocess_text.tokenize_texts(frame[self.text].tolist(), self.tokenizer, self.lowercase)
            empty = np.array([not t for t in tokens], dtype=bool)
            if empty.any():
                if self.empty != "drop":
                    row = first + int(np.flatnonzero(empty)[0])
                    raise DataError(f"data.text: '{block.rel}' row {row} has empty or missing text; clean it or set "
                                    "data.empty=drop")
                keep = ~empty
                frame, codes = frame[keep], codes[keep]
                tokens = [t for t, k in zip(tokens, keep) if k]
            yield frame, codes, tokens

    def raw(self, block: Block, split: str) -> Iterator[pd.DataFrame]:
        code = SPLIT_CODES[split]
        for frame, codes, _ in self.batches(block):
            if (codes == code).any():
                yield frame[codes == code]

    def read(self, block: Block, split: str) -> Iterator[tuple]:
        code = SPLIT_CODES[split]
        p = self.prep
        for frame, codes, tokens in self.batches(block):
            keep = codes == code
            if keep.any():
                ids = preprocess_text.encode([t for t, k in zip(tokens, keep) if k], p["vocab"], p["max_length"],
                                             p["pad"], p["unk"])
                labels = pd.Categorical(frame[self.target][keep].to_numpy(), categories=self.classes).codes
                yield ids, labels.astype(np.int64)


class TextCounts:
    """The one pass: rows per split, the train split's token counts, the labels seen and their train counts."""

    def __init__(self):
        self.rows = Counter()
        self.tokens: Counter = Counter()
        self.labels: Counter = Counter()
        self.train_labels: Counter = Counter()

    def add(self, frame: pd.DataFrame, codes: np.ndarray, tokens: list, target: str) -> None:
        self.rows.update(codes.tolist())
        for t, c in zip(tokens, codes):
            if c == 0:
                self.tokens.update(t)
        labels = frame[target].to_numpy().tolist()
        self.labels.update(labels)
        self.train_labels.update(v for v, c in zip(labels, codes) if c == 0)


def count(reader: TextBlockReader) -> TextCounts:
    out = TextCounts()
    for block in reader.source.blocks:
        for frame, codes, tokens in reader.batches(block):
            out.add(frame, codes, tokens, reader.target)
    return out
