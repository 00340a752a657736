"""Throughput and utilisation of a training run, as perf/ metrics per epoch (names.SAMPLES_PER_SECOND ...).

No MLflow here: the metrics go into Lightning's callback metrics, which the MLflow epoch logger and a Ray
worker's report pass on.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional

from lightning.pytorch.callbacks import Callback

from pipelines.tracking import names
from pipelines.training import peaks


def inputs(batch: Any):
    """The network's input in a training batch: (x, y) -> x."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def count_flops(net, x, autocast=None) -> int:
    """FLOPs of one forward and one backward pass of `net` on input `x` (the whole batch), as PyTorch's
    FlopCounterMode counts them (matmuls, convolutions, attention: 2 per multiply-add).

    Nothing of the real training changes: the pass runs on a deep copy of `net` (eagerly, when `net` was compiled
    in place), under a forked RNG (CPU and `x`'s CUDA device), so the network's parameters, gradients, BatchNorm
    statistics and every random stream are as before. It runs in the dtypes training would: `x` as Lightning
    hands it to the module (bf16-true: bfloat16), the forward pass under `autocast` (the precision plugin's
    forward context; *-mixed: autocast). The count does not depend on the dtype, only on the shapes.
    """
    import copy
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        twin = copy.deepcopy(net)
        for module in twin.modules():   # eager: nn.Module.compile's call (torch 2.13's deepcopy drops it already)
            module._compiled_call_impl = None
        twin.zero_grad(set_to_none=True)
        counter = FlopCounterMode(display=False)
        with counter:
            with autocast if autocast is not None else contextlib.nullcontext():
                out = twin(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            if out.requires_grad:
                out.float().sum().backward()   # the loss's own FLOPs are not counted: a sum is as good
        return int(counter.get_total_flops())


class Throughput(Callback):
    """Per training epoch: samples/s over all ranks and optimiser steps/s, timed from the first training batch's
    start to the last one's end (the GPU synchronised at both ends); FLOPs per sample, counted once per fit on the
    first training batch; the achieved TFLOP/s, and MFU where peaks.py knows the device's peak.

    Logged with pl_module.log (on_epoch, synchronised: the mean over ranks) into trainer.callback_metrics, where
    the checkpoint-type callbacks that run after this one (the MLflow epoch logger, a Ray worker's report) find
    them. Not checkpoint state: a resumed fit counts again.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.flops_per_sample: Optional[float] = None
        self.peak: Optional[float] = None
        self._counted = False
        self._start = self._end = None
        self._samples = self._steps = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.peak = device_peak(pl_module.device, self.cfg.trainer.precision, self.cfg.trainer.matmul_precision)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._end = None
        self._samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._counted:
            self._counted = True
            self.flops_per_sample = self._count(trainer, pl_module, inputs(batch))
        if self._start is None:
            _synchronize(pl_module.device)
            self._start, self._steps = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None or self._end is not None:   # timed until the epoch's first validation
            return
        self._samples += len(inputs(batch))
        if batch_idx + 1 >= trainer.num_training_batches:
            self._stop(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._start is not None and self._end is None:   # an epoch cut short of num_training_batches
            self._stop(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is None:
            return
        if self._end is None:
            self._stop(trainer, pl_module)
        for key, value in self.metrics(trainer.world_size).items():
            pl_module.log(key, float(value), on_step=False, on_epoch=True, sync_dist=True)

    def metrics(self, world_size: int) -> Dict[str, float]:
        """The epoch's perf/ metrics from its samples (this rank's), steps and seconds."""
        seconds = max(self._end - self._start, 1e-9)
        samples_per_second = self._samples * world_size / seconds
        out = {names.SAMPLES_PER_SECOND: samples_per_second, names.STEPS_PER_SECOND: self._steps / seconds}
        if self.flops_per_sample:
            tflops = self.flops_per_sample * samples_per_second / 1e12
            out.update({names.FLOPS_PER_SAMPLE: self.flops_per_sample, names.TFLOPS: tflops})
            if self.peak:
                out[names.MFU] = tflops / self.peak
        return out

    def _stop(self, trainer, pl_module) -> None:
        _synchronize(pl_module.device)
        self._end = time.perf_counter()
        self._steps = trainer.global_step - self._steps

    def _count(self, trainer, pl_module, x) -> Optional[float]:
        net = getattr(pl_module, "net", None)
        if net is None or not hasattr(x, "shape") or len(x) == 0:
            return None
        try:
            return count_flops(net, x, trainer.precision_plugin.forward_context()) / len(x)
        except Exception as e:  # noqa: BLE001 - a network FlopCounterMode cannot run: no FLOP metrics, training goes on
            print(f"dlp: warning: perf: could not count the network's FLOPs ({type(e).__name__}: {e}); "
                  "no perf/tflops or perf/mfu", file=sys.stderr, flush=True)
            return None


def device_peak(device, precision: str, matmul_precision: str) -> Optional[float]:
    """The dense peak TFLOP/s of a CUDA `device` at this precision (peaks.py), None on a CPU or an unknown part."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    return peaks.peak_tflops(torch.cuda.get_device_name(device), precision, matmul_precision)


def _synchronize(device) -> None:
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)
