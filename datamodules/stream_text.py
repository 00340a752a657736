"""Streamed text tables (data.streaming for data.source=csv|parquet of data.kind=text): labelled texts in a CSV or
Parquet file, a folder of shards or an s3:// prefix that never has to fit in memory. setup() makes one pass
(text_blocks.py) for the split sizes, the classes and the train split's token counts, and fits the vocabulary
from them exactly as TextDataModule does from the train texts in memory; batches are padded to data.max_length
(no length bucketing: that needs every length up front). The logged model, its `prep` and `dlp predict` are the
in-memory text path's.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import preprocess_text, streamed, text_blocks
from .base import DataSpec, class_balance
from .errors import DataError
from .stream_base import StreamedDataModule


class StreamingTextDataModule(StreamedDataModule):
    """Texts read in blocks -> int64 token ids (N, max_length) with a train-only vocabulary; labels 0..K-1."""

    def setup(self, stage: Optional[str] = None) -> None:
        if self.spec is not None:
            return
        cfg = self.cfg
        if cfg.task != "classification":
            raise DataError("data.task: text data supports classification only; set data.task=classification")
        if cfg.limit is not None:
            raise DataError("data.limit: keeps the first rows of a table in memory; set data.streaming=false, or "
                            "data.limit=null to stream the whole source")
        if cfg.balance == "oversample":
            raise DataError("data.balance: oversample needs the texts in memory; use data.balance=weights or "
                            "data.streaming=false")
        source = streamed.discover(cfg.path, cfg.source, cfg.on_error)
        text, target = self._columns(source)
        reader = text_blocks.TextBlockReader(source, text, target, cfg.tokenizer, bool(cfg.lowercase), cfg.empty,
                                             self.seed, cfg.val_fraction, cfg.test_fraction)
        counts = self._pass(source, lambda: text_blocks.count(reader))
        self.counts = {split: int(counts.rows[code]) for split, code in streamed.SPLIT_CODES.items()}
        empty = [s for s, n in self.counts.items() if not n]
        if empty:
            raise DataError(f"data: the {empty[0]} split of {cfg.path} is empty ({self.counts}); use more rows or "
                            "other data.val_fraction/data.test_fraction")
        classes = self._classes(counts, target)
        vocab = preprocess_text.vocab_from_counts(counts.tokens, cfg.min_freq, cfg.max_vocab)
        self.prep = {"kind": "text", "column": text, "tokenizer": cfg.tokenizer, "lowercase": bool(cfg.lowercase),
                     "max_length": int(cfg.max_length), "vocab": vocab, "pad": 0, "unk": 1}
        reader.prep, reader.classes = self.prep, classes
        self.reader, self.source = reader, f"{source.fmt}:{source.uri}"
        names = [str(c) for c in classes]
        self.spec = DataSpec(task="classification", num_classes=len(classes), input_shape=(int(cfg.max_length),),
                             class_names=names, feature_names=[text], target_name=str(target),
                             vocab_size=len(vocab), pad_index=0, vocab=vocab)
        if cfg.balance == "weights":
            y = np.repeat(np.arange(len(classes)), [counts.train_labels.get(c, 0) for c in classes])
            self.spec.class_weights = [float(w) for w in class_balance(y, len(classes))]
        self._set_hashes(source, text, target, cfg.tokenizer, cfg.lowercase, cfg.empty, cfg.min_freq, cfg.max_vocab,
                         cfg.max_length)
        self.prep.update(task="classification", class_names=names, target_scale=None)

    def _columns(self, source: streamed.Source) -> tuple:
        cfg = self.cfg
        names = [f.name for f in source.schema]
        listing = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        text, target = cfg.text or "text", cfg.target or "label"
        for key, column in (("text", text), ("target", target)):
            if column not in names:
                raise DataError(f"data.{key}: column '{column}' not in {cfg.path} (columns: {listing})")
        if text == target:
            raise DataError(f"data.target: '{target}' is also data.text; choose a separate label column")
        return text, target

    def _classes(self, counts: text_blocks.TextCounts, target: str) -> list:
        """The label values in code order: sorted (by their text when the types mix)."""
        try:
            classes = sorted(counts.labels)
        except TypeError:
            classes = sorted(counts.labels, key=str)
        if len(classes) < 2:
            raise DataError(f"data.target: column '{target}' has a single class; classification needs at least two")
        return classes
