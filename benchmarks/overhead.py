"""Per-epoch training time of dlpipe's training path against the plain PyTorch loop a user would write.

    .venv/bin/python benchmarks/overhead.py                      # both cases, 3 alternating repeats
    .venv/bin/python benchmarks/overhead.py --only breast_cancer_mlp --repeats 5
    .venv/bin/python benchmarks/overhead.py --profile digits_cnn # cProfile one dlpipe fit, top functions

Both sides train the same network (models.build(cfg, spec).net, same init seed) on the same
preprocessed train tensors, no augmentation, same batch size, the preset's optimiser (Adam or AdamW)
with its lr and weight decay, one torch thread, the same number of epochs. dlpipe runs `pipelines.training.fit.fit` (no MLflow);
its epochs are timed from on_train_epoch_start to on_validation_start, which in Lightning 2.x is
called from inside the training epoch after its last batch (fit_loop calls on_train_epoch_end only
after validation), so the validation pass, checkpointing and epoch-end hooks are excluded.
The first epochs of each run are dropped (warm-up); s/epoch is the median over repeats of each
run's median epoch. dlpipe and plain runs alternate, and the ratio is the median of the per-repeat
ratios: each pairs two adjacent runs, so load from other processes on a shared machine mostly cancels.
Writes benchmarks/results/overhead.json and, after a full run, the results block of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

CASES = {
    "digits_cnn": ["experiment=digits_cnn", "data.augment.enabled=false"],  # augmentation is work the plain loop lacks
    "breast_cancer_mlp": ["experiment=breast_cancer_mlp"],
}
TARGET_RATIO = 1.10
THREADS = 1  # both sides; 2 shared cores make multi-thread timings mostly scheduler noise


def compose_case(name: str, epochs: int, output_dir: Path):
    from pipelines.config.compose import compose

    return compose([*CASES[name], f"trainer.max_epochs={epochs}", "trainer.early_stopping.patience=0",
                    f"trainer.threads={THREADS}", "trainer.progress_bar=false", f"output_dir={output_dir}"])


def epoch_timer():
    """A Lightning callback collecting the seconds of each epoch's training batches."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = None

        def on_train_epoch_start(self, trainer, pl_module):
            # callbacks run before the LightningModule's hook, so its on_train_epoch_start is timed too
            self._start = time.perf_counter()

        def on_validation_start(self, trainer, pl_module):
            self._stop()

        def on_train_epoch_end(self, trainer, pl_module):
            self._stop()  # only matters if an epoch ran without validation

        def _stop(self):
            if self._start is not None:
                self.seconds.append(time.perf_counter() - self._start)
                self._start = None

    return EpochTimer()


def dlpipe_epochs(cfg, dm) -> list[float]:
    from pipelines.training.fit import fit

    timer = epoch_timer()
    fit(cfg, run_id=None, datamodule=dm, extra_callbacks=[timer])
    return timer.seconds


def plain_epochs(cfg, dm) -> list[float]:
    """The loop a user writes by hand: DataLoader over a TensorDataset, zero_grad/forward/loss/backward/step."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import models

    torch.use_deterministic_algorithms(False)  # dlpipe's Trainer(deterministic=...) turned it on process-wide
    torch.set_num_threads(THREADS)
    torch.manual_seed(cfg.seed)  # fit() seeds the same way right before models.build: same initial weights
    net = models.build(cfg, dm.spec).net
    x, y = dm._tensors["train"]
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.data.batch_size, shuffle=True)
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optim.name]  # the cases' presets use these
    opt = adam(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    if dm.spec.task == "classification":
        loss_fn = F.cross_entropy
    else:
        def loss_fn(out, target):
            return F.mse_loss(out.squeeze(-1), target)

    net.train()
    seconds = []
    for _ in range(cfg.trainer.max_epochs):
        start = time.perf_counter()
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(name: str, epochs: int, repeats: int, warmup: int, tmp: Path) -> dict:
    import datamodules

    cfg = compose_case(name, epochs, tmp / name)
    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")  # once: loading and preprocessing are not part of an epoch
    runs = {"dlpipe": [], "plain": []}
    sides = {"dlpipe": dlpipe_epochs, "plain": plain_epochs}
    for r in range(repeats):
        order = ("dlpipe", "plain") if r % 2 == 0 else ("plain", "dlpipe")  # alternate who goes first
        for side in order:
            seconds = sides[side](cfg, dm)
            runs[side].append(seconds)
            print(f"[overhead] {name} repeat {r} {side:<6} median {statistics.median(seconds[warmup:]) * 1000:7.2f} ms/epoch",
                  flush=True)
    medians = {side: [statistics.median(s[warmup:]) for s in runs[side]] for side in runs}
    ratios = [a / b for a, b in zip(medians["dlpipe"], medians["plain"])]
    n, bs = len(dm._tensors["train"][1]), cfg.data.batch_size
    return {"case": name, "overrides": list(CASES[name]), "optimizer": cfg.optim.name, "train_rows": n, "batch_size": bs,
            "batches_per_epoch": len(dm.train_dataloader()), "dlpipe_s_per_epoch": statistics.median(medians["dlpipe"]),
            "plain_s_per_epoch": statistics.median(medians["plain"]), "ratio": statistics.median(ratios),
            # what the framework adds per optimiser step: a fixed cost, so the ratio depends on how long a step is
            "overhead_ms_per_step": (statistics.median(medians["dlpipe"]) - statistics.median(medians["plain"]))
            * 1000 / len(dm.train_dataloader()),
            "ratio_per_repeat": ratios,
            "dlpipe_median_per_repeat": medians["dlpipe"], "plain_median_per_repeat": medians["plain"],
            "dlpipe_epoch_seconds": runs["dlpipe"], "plain_epoch_seconds": runs["plain"]}


def profile(name: str, epochs: int, tmp: Path, top: int = 25) -> None:
    """cProfile one dlpipe fit and print where the time goes (validation and checkpointing included)."""
    import cProfile
    import pstats

    import datamodules

    cfg = compose_case(name, epochs, tmp / name)
    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")
    prof = cProfile.Profile()
    prof.runcall(dlpipe_epochs, cfg, dm)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def print_table(results: list[dict]) -> None:
    rows = [[r["case"], r["batches_per_epoch"], f"{r['dlpipe_s_per_epoch'] * 1000:.2f}", f"{r['plain_s_per_epoch'] * 1000:.2f}",
             f"{r['ratio']:.3f}", f"{r['overhead_ms_per_step']:.2f}", " ".join(f"{x:.2f}" for x in r["ratio_per_repeat"]), f"<= {TARGET_RATIO:.2f}",
             "yes" if r["ratio"] <= TARGET_RATIO else "NO"] for r in results]
    print(common.table(["case", "batches", "dlpipe ms/epoch", "plain ms/epoch", "ratio", "added ms/step", "per repeat", "target", "met"],
                       rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=list(CASES), help="run just this case (repeatable)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="epochs dropped from the start of every run")
    parser.add_argument("--repeats", type=int, default=5, help="alternating dlpipe/plain runs per case")
    parser.add_argument("--profile", choices=list(CASES), help="cProfile one dlpipe fit of this case instead")
    args = parser.parse_args(argv)
    if args.epochs <= args.warmup:
        parser.error("--epochs must exceed --warmup")
    common.quiet()
    machine = common.machine_info()  # before any run: torch's default thread count, the load we start under

    with common.temp_store() as (tmp, _):
        if args.profile:
            profile(args.profile, args.epochs, tmp)
            return 0
        results = [measure(name, args.epochs, args.repeats, args.warmup, tmp) for name in args.only or CASES]

    print()
    print_table(results)
    path = common.save_json("overhead.json", {
        "command": " ".join(["python benchmarks/overhead.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "target_ratio": TARGET_RATIO,
        "settings": {"threads": THREADS, "epochs": args.epochs, "warmup_epochs": args.warmup, "repeats": args.repeats,
                     "optimizer": "the preset's Adam/AdamW, lr and weight_decay", "timed": "on_train_epoch_start -> on_validation_start",
                     "ratio": "median of per-repeat ratios of adjacent dlpipe/plain runs",
                     "deterministic": "dlpipe: preset trainer.deterministic; plain: torch default (off)",
                     "plain_loader": "torch DataLoader(TensorDataset, shuffle=True)"},
        "results": results})
    print(f"\nwrote {path.relative_to(common.ROOT)}")
    if args.only:
        print("README left alone: a partial run (--only); run benchmarks/report.py to publish it anyway")
    else:
        from benchmarks import report

        report.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
