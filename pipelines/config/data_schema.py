"""Typed schemas of the data group (conf/data/*.yaml): one dataclass per data.kind.

The defaults live here, once; a conf/data/ option lists only what makes it that option (its source, the keys it
requires, what it changes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class TabularDataConfig:
    """CSV/Parquet files or scikit-learn's shipped tables (breast_cancer, wine, diabetes, iris)."""
    kind: str = "tabular"
    source: str = "csv"               # csv | parquet | breast_cancer | wine | diabetes | iris
    path: Optional[str] = None        # file for csv/parquet
    target: Optional[str] = None      # target column (shipped sets know their own)
    task: str = "auto"                # auto | classification | regression
    features: Optional[List[str]] = None   # default: every column but the target
    categorical: Optional[List[str]] = None  # default: non-numeric columns
    missing: str = "error"            # error | drop | impute (median / most frequent)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    stratify: bool = True
    balance: str = "none"             # none | weights (class-weighted loss) | oversample
    batch_size: int = 64              # global batch size
    on_device: Any = "auto"          # auto | true | false: the tensors live on the training device (auto: CUDA, if they fit)
    max_classes: int = 50             # an integer target with more distinct values is regression under task=auto
    # larger than memory (csv/parquet): read block by block, never whole (auto: a folder of shards, an s3:// prefix,
    # or a file over stream_above of this machine's memory)
    streaming: Any = "auto"           # auto | true | false
    stream_above: float = 0.25
    shuffle_buffer: int = 10000       # streamed: rows mixed at random per epoch (blocks come in a seeded order)
    on_error: str = "error"           # streamed: a file that cannot be read, or has another schema: error | skip
    cache: bool = True                # streamed, in process: epoch 1's inputs kept on local disk for later epochs


@dataclass
class AugmentConfig:
    enabled: bool = True
    max_shift: float = 0.1            # fraction of width/height
    max_rotation: float = 10.0        # degrees
    hflip: bool = False


@dataclass
class ImageDataConfig:
    """Images: scikit-learn digits (default, ships offline), ImageFolder trees, MNIST / CIFAR-10 files."""
    kind: str = "image"
    source: str = "digits"            # digits | image_folder | mnist | cifar10
    path: Optional[str] = None        # root directory for image_folder / mnist / cifar10
    image_size: Optional[int] = None  # resize ImageFolder images to this square size
    grayscale: bool = False           # ImageFolder: load as 1 channel
    val_fraction: float = 0.15
    test_fraction: float = 0.15       # mnist/cifar10 use their own test files
    stratify: bool = True
    balance: str = "none"
    batch_size: int = 64
    on_device: Any = "auto"          # auto | true | false: the tensors live on the training device (auto: CUDA, if they fit)
    task: str = "classification"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    limit: Optional[int] = None       # keep only the first N training images (quick runs)
    # larger than memory (image_folder): decoded block by block, never whole (auto: an s3:// tree, or a folder whose
    # files total over stream_above of this machine's memory); no augmentation when streaming
    streaming: Any = "auto"           # auto | true | false
    stream_above: float = 0.25
    shuffle_buffer: int = 10000       # streamed: images mixed at random per epoch (blocks come in a seeded order)
    on_error: str = "error"           # streamed: an image that cannot be read: error | skip
    cache: bool = True                # streamed, in process: epoch 1's inputs kept on local disk for later epochs


@dataclass
class TextDataConfig:
    """Labelled text: the shipped Rotten Tomatoes reviews, CSV/Parquet files, or Hugging Face datasets."""
    kind: str = "text"
    source: str = "rotten_tomatoes"   # rotten_tomatoes | csv | parquet | huggingface
    path: Optional[str] = None        # csv/parquet file; huggingface: hub name (imdb) or a local dataset directory
    text: Optional[str] = None        # text column (shipped / huggingface default: "text")
    target: Optional[str] = None      # label column (shipped / huggingface default: "label")
    hf_config: Optional[str] = None   # huggingface: dataset configuration name
    tokenizer: str = "word"           # word | char
    lowercase: bool = True
    min_freq: int = 2                 # vocabulary: tokens seen fewer times in TRAIN become <unk>
    max_vocab: int = 20000            # vocabulary size cap, <pad> and <unk> included
    max_length: int = 128             # tokens kept per text (longer texts are truncated)
    empty: str = "error"              # error | drop: rows whose text is empty or missing
    bucket: bool = True               # length-bucketed training batches (less padding)
    val_fraction: float = 0.15
    test_fraction: float = 0.15       # huggingface sources with a test split use it
    stratify: bool = True
    balance: str = "none"
    batch_size: int = 64
    on_device: Any = "auto"          # auto | true | false: the tensors live on the training device (auto: CUDA, if they fit)
    task: str = "classification"
    limit: Optional[int] = None       # keep only the first N rows (quick runs)
    # larger than memory (csv/parquet): read block by block, never whole (auto: a folder of shards, an s3:// prefix,
    # or a file over stream_above of this machine's memory); batches padded to max_length, not bucketed
    streaming: Any = "auto"           # auto | true | false
    stream_above: float = 0.25
    shuffle_buffer: int = 10000       # streamed: texts mixed at random per epoch (blocks come in a seeded order)
    on_error: str = "error"           # streamed: a file that cannot be read, or has another schema: error | skip
    cache: bool = True                # streamed, in process: epoch 1's inputs kept on local disk for later epochs


@dataclass
class TimeSeriesDataConfig:
    """Time series: shipped series (Seattle hourly temperatures, monthly stock prices, CO2) or CSV/Parquet."""
    kind: str = "timeseries"
    source: str = "seattle_temps"     # seattle_temps | stocks | co2 | csv | parquet
    path: Optional[str] = None
    time: Optional[str] = None        # timestamp column (shipped sources know theirs)
    target: Optional[str] = None      # the column to forecast
    features: Optional[List[str]] = None   # exogenous input columns (their past values feed the model)
    group: Optional[str] = None       # series id column for long-format files (stocks: symbol)
    calendar: bool = False            # add hour/day-of-week/day-of-year sin-cos features from the timestamps
    lookback: int = 48                # input steps per window
    horizon: int = 24                 # future steps predicted at once
    stride: int = 1                   # steps between consecutive windows
    freq: Optional[str] = None        # pandas frequency (h, D, MS...); inferred when null
    gaps: str = "error"               # error | interpolate | ffill: missing timestamps or values
    val_fraction: float = 0.15        # chronological: train | val | test, in time order
    test_fraction: float = 0.15
    batch_size: int = 128
    on_device: Any = "auto"          # auto | true | false: the tensors live on the training device (auto: CUDA, if they fit)
    task: str = "regression"
    balance: str = "none"
    limit: Optional[int] = None       # keep only the last N time steps (quick runs)


DATA_SCHEMAS: Dict[str, type] = {"tabular": TabularDataConfig, "image": ImageDataConfig, "text": TextDataConfig,
                                  "timeseries": TimeSeriesDataConfig}
