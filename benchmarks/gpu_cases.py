"""The case matrix of benchmarks/gpu.py: three models, each at 32-true / bf16-mixed / 16-mixed, eager and compiled,
data on the device and on the host; the synthetic in-memory datamodules two of them train on; each case's overrides.

Sizes: "gpu" (an H200: a few seconds of steady state per case) and "tiny" (CPU, CI: the same cases, seconds in all).
"""
from __future__ import annotations

from dataclasses import dataclass
import torch

from datamodules.base import BaseDataModule, DataSpec

MODELS = ("digits_cnn", "wide_cnn", "transformer")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")

# per size and model: batch size, training batches per epoch, epochs (the first is warm-up/compile, not timed),
# and what shapes the net. gpu: ~4 TFLOP per transformer step, ~1.9 per wide-CNN step, so that a bf16 epoch lasts
# about half a second on an H200 (several NVML samples) and a 32-true one a few seconds
SIZES = {
    "gpu": {"digits_cnn": dict(batch=64, steps=19, epochs=6),      # the whole digits train split (1257 // 64)
            "wide_cnn": dict(batch=512, steps=40, epochs=4, channels=[128, 256, 512], head=[512]),
            "transformer": dict(batch=128, steps=40, epochs=4, seq=256, vocab=8192, d_model=512, nhead=8,
                                layers=6, ff=2048)},
    "tiny": {"digits_cnn": dict(batch=32, steps=3, epochs=3, limit=400),   # 400 images: val and test 60 each
             "wide_cnn": dict(batch=16, steps=3, epochs=3, channels=[8, 16], head=[16]),
             "transformer": dict(batch=8, steps=3, epochs=3, seq=256, vocab=256, d_model=32, nhead=2,
                                 layers=1, ff=64)},
}


@dataclass(frozen=True)
class Case:
    model: str
    precision: str
    compile: bool = False
    on_device: bool = True
    matmul_precision: str = "highest"

    @property
    def name(self) -> str:
        mm = "" if self.matmul_precision == "highest" else f"+mm-{self.matmul_precision}"
        return (f"{self.model}/{self.precision}{mm}/{'compile' if self.compile else 'eager'}/"
                f"{'device' if self.on_device else 'host'}")


def matrix() -> list:
    """Every case, in the order they run: the cheap eager ones first, then the compiled ones by importance
    (bf16-mixed, then 32-true, then 16-mixed), so that a time guard drops the least needed."""
    eager = []
    for m in MODELS:
        eager += [Case(m, p) for p in PRECISIONS]
        eager += [Case(m, p, on_device=False) for p in ("32-true", "bf16-mixed")]
    eager.append(Case("transformer", "32-true", matmul_precision="high"))   # 32-true with TF32 matmuls
    compiled = [Case(m, p, compile=True) for p in ("bf16-mixed", "32-true", "16-mixed")
                for m in ("transformer", "wide_cnn", "digits_cnn")]
    return eager + compiled


def overrides(case: Case, size: str, accelerator: str, output_dir: str, deterministic: bool) -> list:
    """The dlp config overrides of one case (the config is composed and validated as `dlp train` does)."""
    s = SIZES[size][case.model]
    common = [f"trainer.precision={case.precision}", f"trainer.compile={str(case.compile).lower()}",
              f"trainer.matmul_precision={case.matmul_precision}", f"data.on_device={str(case.on_device).lower()}",
              f"trainer.accelerator={accelerator}", "trainer.devices=1", f"trainer.max_epochs={s['epochs']}",
              f"trainer.limit_train_batches={s['steps']}", "trainer.limit_val_batches=1",
              "trainer.early_stopping.patience=0", "trainer.progress_bar=false", "mlflow.system_metrics=false",
              f"trainer.deterministic={str(deterministic).lower()}", f"output_dir={output_dir}",
              f"data.batch_size={s['batch']}",
              # tiny: one thread, as the tests do (2 threads on a shared 2-core machine run many times slower)
              f"trainer.threads={1 if size == 'tiny' else 0}"]
    if case.model == "digits_cnn":
        return ["experiment=digits_cnn", *common, *([f"data.limit={s['limit']}"] if "limit" in s else [])]
    if case.model == "wide_cnn":
        return ["model=cnn", "data=digits", "data.augment.enabled=false", "monitor.metric=val/acc",
                "monitor.mode=max", f"model.channels=[{','.join(map(str, s['channels']))}]",
                f"model.head_hidden=[{','.join(map(str, s['head']))}]", *common]
    return ["model=transformer", "data=rotten_tomatoes", f"data.max_length={s['seq']}", "monitor.metric=val/acc",
            "monitor.mode=max", f"model.d_model={s['d_model']}", f"model.nhead={s['nhead']}",
            f"model.num_layers={s['layers']}", f"model.dim_feedforward={s['ff']}", "model.pooling=cls", *common]


class SyntheticData(BaseDataModule):
    """Random in-memory data of a fixed shape: (C, H, W) float images or (L,) token ids (no padding), 10 or 2
    classes; every split a whole number of batches, so no partial batch makes torch.compile recompile."""

    def __init__(self, cfg, seed: int, train_batches: int, input_shape: tuple, vocab_size: int = 0):
        super().__init__(cfg, seed)
        self.train_batches, self.input_shape, self.vocab_size = train_batches, tuple(input_shape), vocab_size

    def _load(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        classes = 2 if self.vocab_size else 10
        bs = int(self.cfg.batch_size)
        for split, n in (("train", self.train_batches * bs), ("val", bs), ("test", bs)):
            if self.vocab_size:
                x = torch.randint(1, self.vocab_size, (n, *self.input_shape), generator=g)
            else:
                x = torch.randn(n, *self.input_shape, generator=g)
            y = torch.randint(0, classes, (n,), generator=g)
            self._tensors[split] = (x, y)
            self._raw[split] = (x[:1].numpy(), y[:1].numpy())   # what the split hash reads: kept small
        self.spec = DataSpec(task="classification", num_classes=classes, input_shape=self.input_shape,
                             class_names=[str(c) for c in range(classes)], vocab_size=self.vocab_size, pad_index=0)
        self.prep, self.source = {}, "synthetic"


def datamodule(case: Case, cfg, size: str) -> BaseDataModule:
    """The data of a case: the synthetic datamodule, or scikit-learn's digits as `dlp train` builds them."""
    s = SIZES[size][case.model]
    if case.model == "wide_cnn":
        return SyntheticData(cfg.data, cfg.seed, s["steps"], (3, 32, 32))
    if case.model == "transformer":
        return SyntheticData(cfg.data, cfg.seed, s["steps"], (s["seq"],), vocab_size=s["vocab"])
    import datamodules

    dm = datamodules.build(cfg.data, cfg.seed)
    trim_eval_splits(dm)
    return dm


def trim_eval_splits(dm: BaseDataModule) -> None:
    """Cut the val and test splits of a real datamodule to whole batches (a partial last batch makes a compiled
    network recompile for the new shape, which the benchmark would time as training)."""
    dm.setup("fit")
    bs = int(dm.cfg.batch_size)
    for split in ("val", "test"):
        x, y = dm._tensors[split]
        keep = len(y) // bs * bs or len(y)
        dm._tensors[split] = (x[:keep], y[:keep])
