"""Typed schemas of the root config and its fixed groups (trainer, optim, sched, loss, monitor, mlflow), and the
allowed values of string keys; the model and data groups have theirs in model_schema.py and data_schema.py.

`pipelines.config.compose` validates every composed config against them: a key missing here is an unknown key,
a value that does not fit the annotation a wrong type, a value outside CHOICES an unknown option. All three fail
at compose time, before any compute. Every default lives here, once: conf/ lists only what its options change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

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
    "trainer.precision": ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true"),
    "trainer.matmul_precision": ("highest", "high", "medium"),
    "trainer.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "data.on_device": ("auto", True, False),
    "data.streaming": ("auto", True, False),
    "data.on_error": ("error", "skip"),
    "trainer.lr_scaling": ("none", "linear", "sqrt"),
}


@dataclass
class EarlyStoppingConfig:
    patience: int = 0                 # epochs without improvement; 0 disables early stopping
    min_delta: float = 0.0


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    accelerator: str = "auto"         # auto | cpu | gpu
    devices: Any = "auto"
    precision: str = "32-true"        # 32-true | 16-mixed (gradient scaling) | bf16-mixed | bf16-true | 64-true
    matmul_precision: str = "highest"  # float32 matmuls: highest | high | medium (TF32 / bf16 passes on Ampere+)
    compile: bool = False             # torch.compile the network (no backend: one warning, eager)
    compile_mode: str = "default"     # torch.compile mode: default | reduce-overhead | max-autotune | ...
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
    storage_path: Optional[str] = None   # Ray's checkpoints; on several nodes s3://… or a shared filesystem
    label_selector: Any = None          # Ray node labels for the workers: one dict, or one per worker (rank order)


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
    system_metrics: bool = True          # CPU, memory, disk, network and (NVML) GPU use as system/<node>/... metrics
    system_metrics_interval: float = 10.0  # seconds between samples


@dataclass
class ClusterConfig:
    """What the processes of a Ray cluster that `dlp train`, `dlp tune` or `dlp submit` joins get from the driver."""
    # environment variables passed through Ray's runtime env (shell-style patterns); values are never printed
    env: List[str] = field(default_factory=lambda: ["AWS_*", "MLFLOW_*", "GLOO_SOCKET_IFNAME", "NCCL_*", "HF_*"])


@dataclass
class RootConfig:
    model: Any = None                 # validated against model_schema.MODEL_SCHEMAS[model.name]
    data: Any = None                  # validated against data_schema.DATA_SCHEMAS[data.kind]
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # the run's name and default MLflow experiment: conf/config.yaml makes it ${model.name}-${data.source},
    # an experiment preset names itself
    name: str = MISSING
    seed: int = 42
    resume: Optional[str] = None      # path to a .ckpt, "last", or "auto" (num_workers >= 1: the unfinished run, if any)
    # checkpoints live under <output_dir>/checkpoints/<run_id>/; DLP_OUTPUT_DIR: where a cluster's jobs write
    output_dir: str = "${oc.env:DLP_OUTPUT_DIR,outputs}"
    tags: Dict[str, str] = field(default_factory=dict)   # extra MLflow run tags: +tags.team=vision
