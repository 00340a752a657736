"""Typed schemas for every config group; `pipelines.config` validates composed configs against them.

A key missing here is an unknown key; a value that does not fit the annotation is a wrong type;
a value outside CHOICES is an unknown option. All three fail at compose time, before any compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# Allowed values of string-valued keys, checked after the merge (OmegaConf has no Literal type).
CHOICES: Dict[str, tuple] = {
    "model.activation": ("relu", "leaky_relu", "prelu", "elu", "gelu", "tanh", "sigmoid"),
    "model.init": ("default", "xavier", "kaiming"),
    "model.norm": ("none", "batch", "layer"),
    "model.pool": ("max", "avg"),
    "model.cell": ("lstm", "gru"),
    "model.pooling": ("last", "mean", "max", "cls"),
    "model.positional": ("sinusoidal", "learned"),
    "data.tokenizer": ("word", "char"),
    "data.empty": ("error", "drop"),
    "data.gaps": ("error", "interpolate", "ffill"),
    "data.task": ("auto", "classification", "regression"),
    "data.missing": ("error", "drop", "impute"),
    "data.balance": ("none", "weights", "oversample"),
    "optim.name": ("sgd", "adam", "adamw", "rmsprop", "adagrad"),
    "sched.name": ("constant", "step", "exponential", "cosine", "onecycle", "plateau"),
    "loss.name": ("auto", "cross_entropy", "bce", "mse", "huber"),
    "monitor.mode": ("min", "max"),
    "trainer.precision": ("32-true", "bf16-mixed", "16-mixed", "64-true"),
    "trainer.lr_scaling": ("none", "linear", "sqrt"),
}


@dataclass
class MLPConfig:
    """Feed-forward net for tabular rows. hidden=[] is linear / logistic regression."""
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [128, 64])
    activation: str = "relu"
    norm: str = "none"          # none | batch | layer, after each hidden linear layer
    dropout: float = 0.0
    init: str = "default"       # default | xavier | kaiming


@dataclass
class CNNConfig:
    """Conv blocks (conv -> norm -> act [-> conv -> norm -> act] -> pool -> dropout) then an MLP head."""
    name: str = "cnn"
    channels: List[int] = field(default_factory=lambda: [32, 64])   # one block per entry
    convs_per_block: int = 1
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
    max_classes: int = 50             # an integer target with more distinct values is regression under task=auto


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
    task: str = "classification"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    limit: Optional[int] = None       # keep only the first N training images (quick runs)


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
    task: str = "classification"
    limit: Optional[int] = None       # keep only the first N rows (quick runs)


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
    task: str = "regression"
    balance: str = "none"
    limit: Optional[int] = None       # keep only the last N time steps (quick runs)


@dataclass
class EarlyStoppingConfig:
    patience: int = 0                 # epochs without improvement; 0 disables early stopping
    min_delta: float = 0.0


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    accelerator: str = "auto"         # auto | cpu | gpu
    devices: Any = "auto"
    precision: str = "32-true"
    gradient_clip_val: float = 0.0    # 0 disables clipping (by norm)
    accumulate_grad_batches: int = 1
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    save_top_k: int = 1
    deterministic: bool = True
    threads: int = 0                  # torch intra-op threads; 0 keeps torch's default
    progress_bar: bool = True
    limit_train_batches: Optional[float] = None  # fraction (<=1.0) or count, for smoke runs
    limit_val_batches: Optional[float] = None
    # distributed (Ray Train); 0 = in-process
    num_workers: int = 0
    use_gpu: bool = False
    resources_per_worker: Dict[str, float] = field(default_factory=dict)
    lr_scaling: str = "none"
    max_failures: int = 0
    storage_path: Optional[str] = None


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0         # L2 (decoupled for adamw)
    l1: float = 0.0                   # L1 penalty coefficient on weights, added to the loss
    momentum: float = 0.9             # sgd, rmsprop
    nesterov: bool = False            # sgd
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SchedConfig:
    name: str = "constant"
    warmup_epochs: int = 0            # linear warm-up before cosine/step/exponential/constant
    step_size: int = 10               # step
    gamma: float = 0.5                # step / exponential decay factor
    min_lr: float = 0.0               # cosine floor
    factor: float = 0.5               # plateau
    patience: int = 3                 # plateau
    max_lr: Optional[float] = None    # onecycle peak (default: optim.lr)


@dataclass
class LossConfig:
    name: str = "auto"                # auto: cross_entropy (classification) / mse (regression)
    label_smoothing: float = 0.0
    huber_delta: float = 1.0


@dataclass
class MonitorConfig:
    """The one monitored metric: checkpointing, early stopping, Tune and promotion all read it."""
    metric: str = "val/loss"
    mode: str = "min"


@dataclass
class MLflowConfig:
    tracking_uri: Optional[str] = None   # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment_name: Optional[str] = None  # default: the experiment preset's name
    run_name: Optional[str] = None
    log_model: bool = True
    registered_model_name: Optional[str] = None


@dataclass
class RootConfig:
    model: Any = None                 # validated against MODEL_SCHEMAS[model.name]
    data: Any = None                  # validated against DATA_SCHEMAS[data.kind]
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    name: str = "run"                 # preset name (experiment/*.yaml sets it); default MLflow experiment
    seed: int = 42
    resume: Optional[str] = None      # path to a .ckpt, "last", or "auto" (num_workers >= 1: the unfinished run, if any)
    output_dir: str = "outputs"       # checkpoints live under <output_dir>/checkpoints/<run_id>/
    tags: Dict[str, str] = field(default_factory=dict)   # extra MLflow run tags: +tags.team=vision


MODEL_SCHEMAS: Dict[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig, "rnn_classifier": RNNClassifierConfig,
                                   "forecaster": ForecasterConfig, "transformer": TransformerConfig}
DATA_SCHEMAS: Dict[str, type] = {"tabular": TabularDataConfig, "image": ImageDataConfig, "text": TextDataConfig,
                                  "timeseries": TimeSeriesDataConfig}


@dataclass
class SweepConfig:
    """conf/tune/<name>.yaml: what `dlp tune` searches, how, and with what budget.

    space maps any config key to one distribution: {choice: [...]}, {grid: [...]}, {uniform: [lo, hi]},
    {loguniform: [lo, hi]}, {randint: [lo, hi]} (hi exclusive), or the quantised {quniform: [lo, hi, q]},
    {qloguniform: [lo, hi, q]}, {qrandint: [lo, hi, q]}.
    """
    space: Dict[str, Any] = field(default_factory=dict)
    search: str = "optuna"            # grid | random | optuna (TPE)
    scheduler: str = "asha"           # fifo | asha | hyperband
    num_samples: int = 8              # trials to sample (grid: repeats of the whole grid)
    max_concurrent_trials: int = 2
    metric: Optional[str] = None      # null -> the experiment's monitor.metric
    mode: Optional[str] = None        # null -> the experiment's monitor.mode
    grace_period: int = 1             # asha/hyperband: epochs every trial gets before it can be stopped
    reduction_factor: int = 2         # asha/hyperband: keep the best 1/reduction_factor at each rung
    seed: int = 0                     # the searcher's seed (each trial trains with the experiment's seed)
    overrides: List[str] = field(default_factory=list)   # applied to every trial before its sampled values
    trial_memory_mb: int = 64         # the logical memory a trial's driver reserves (it holds no CPU: see tune.py)


SWEEP_CHOICES: Dict[str, tuple] = {"search": ("grid", "random", "optuna"), "scheduler": ("fifo", "asha", "hyperband")}
SPACE_KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform", "qloguniform", "qrandint")
