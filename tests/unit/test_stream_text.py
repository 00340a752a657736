"""Streamed text tables: the vocabulary and classes of the one pass equal the in-memory fit on the same train
texts, every train text once per epoch, empty texts and missing labels as one line naming file and row, and a
model of the streamed path trains (an RNN on shards)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import datamodules
from datamodules import DataError, preprocess_text, streamed
from pipelines.config.data_schema import TextDataConfig
from tests.datafiles import write_shards

WORDS = {"pos": ["great", "good", "lovely", "fine", "superb"], "neg": ["bad", "awful", "poor", "dull", "weak"]}


def reviews(n=900, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["neg", "pos"], n)
    filler = ["the", "film", "was", "a", "plot", "and", "acting"]
    texts = [" ".join(rng.choice(WORDS[y] * 2 + filler, rng.integers(3, 12))) + "!" for y in labels]
    return pd.DataFrame({"review": texts, "sentiment": labels})


def dm_of(path, seed=0, **kw):
    base = dict(source="parquet", path=str(path), text="review", target="sentiment", streaming=True, batch_size=32,
                min_freq=1, max_length=16)
    dm = datamodules.build(OmegaConf.structured(TextDataConfig(**{**base, **kw})), seed)
    dm.setup()
    return dm


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path / "texts", reviews(), shards=3, row_group_size=100)


def test_the_vocabulary_and_classes_equal_the_in_memory_fit_on_the_same_train_texts(shards):
    dm = dm_of(shards, seed=2)
    assert type(dm).__name__ == "StreamingTextDataModule"
    frame = reviews()
    parts = np.array_split(np.arange(len(frame)), 3)
    train = pd.concat([frame.iloc[idx][streamed.split_codes(f"part-{i:05d}.parquet", 0, len(idx), 2, .15, .15) == 0]
                       for i, idx in enumerate(parts)])
    tokens = preprocess_text.tokenize_texts(train["review"].tolist(), "word", True)
    assert dm.prep["vocab"] == preprocess_text.fit_vocab(tokens, 1, 20000)
    assert dm.spec.class_names == ["neg", "pos"] and dm.spec.vocab_size == len(dm.prep["vocab"])
    assert dm.counts["train"] == len(train) and sum(dm.counts.values()) == len(frame)


def test_each_epoch_serves_every_train_text_once_as_token_ids(shards):
    dm = dm_of(shards)
    xs, ys = zip(*dm.train_dataloader())
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.int64 and x.shape[1] == 16 and len(x) >= dm.counts["train"] - 1
    raw, labels = dm.raw_frame("train")
    expected = Counter(map(tuple, preprocess_text.text_inputs(raw, dm.prep).tolist()))
    served = Counter(map(tuple, x.tolist()))
    assert not served - expected and sum((expected - served).values()) <= 1   # at most a dropped last row
    codes = Counter(pd.Categorical(labels, categories=["neg", "pos"]).codes.tolist())
    assert not Counter(y.tolist()) - codes


def test_empty_texts_and_missing_labels_are_one_line_naming_file_and_row(tmp_path):
    frame = reviews(300)
    frame.loc[120, "review"] = "  "
    path = write_shards(tmp_path / "holes", frame, shards=2)
    with pytest.raises(DataError, match=r"data.text: 'part-00000.parquet' row 120 has empty or missing text.*"
                                        r"data.empty=drop"):
        dm_of(path)
    assert sum(dm_of(path, empty="drop").counts.values()) == 299
    frame.loc[120, "review"] = "fine"
    frame.loc[200, "sentiment"] = None
    path = write_shards(tmp_path / "nolabel", frame, shards=2)
    with pytest.raises(DataError, match=r"missing labels \('part-00001.parquet' row 50\)"):
        dm_of(path)
    with pytest.raises(DataError, match="data.text: column 'body' not in"):
        dm_of(path, text="body")
