"""How benchmarks/gpu.py measures one case: fit() (in-process, run_id=None: no MLflow) with a callback that times
the steady-state training epochs itself (torch.cuda.synchronize at both edges), NVML's GPU utilisation over those
epochs, the perf/ metrics fit() logs (when its Throughput callback provides them) and the peak device memory."""
from __future__ import annotations

import statistics
import threading
import time
import traceback

import torch
from lightning.pytorch.callbacks import Callback

WARMUP_EPOCHS = 1   # the first epoch (cuDNN autotuning, torch.compile) is not timed


class GpuUtil:
    """GPU utilisation (%) over timed windows: NVML's own timestamped samples inside each window
    (nvmlDeviceGetSamples), else readings polled every 0.1 s while a window is open. Inert without NVML/CUDA."""

    def __init__(self, device_index: int):
        self.handle, self.samples, self.polled, self.source = None, [], [], None
        self._open, self._t0, self._stop = False, 0.0, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:   # noqa: BLE001 - no NVML: utilisation stays null
            return
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            if self._open:
                try:
                    self.polled.append(float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
                except Exception:   # noqa: BLE001
                    pass

    def start(self) -> None:
        self._t0, self._open = time.time(), self.handle is not None

    def stop(self) -> None:
        if not self._open:
            return
        self._open, t1 = False, time.time()
        try:
            kind, got = self.nvml.nvmlDeviceGetSamples(self.handle, self.nvml.NVML_GPU_UTILIZATION_SAMPLES,
                                                       int(self._t0 * 1e6))
            field = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal"}[kind]
            self.samples += [float(getattr(s.sampleValue, field)) for s in got
                             if self._t0 * 1e6 <= s.timeStamp <= t1 * 1e6]
        except Exception:   # noqa: BLE001 - the polled readings stand in
            pass

    def reset(self) -> None:
        self.samples, self.polled = [], []

    def result(self) -> tuple:
        """(mean %, number of samples, source) of the windows since reset()."""
        for values, source in ((self.samples, "nvml_samples"), (self.polled, "nvml_polled")):
            if values:
                return statistics.fmean(values), len(values), source
        return None, 0, None

    def close(self) -> None:
        self._stop.set()


class Capture(Callback):
    """Times each training epoch (its start to its last batch: validation and checkpoints excluded) and reads what the
    run really did: the precision Lightning chose, whether the network is compiled, where the data lives."""

    def __init__(self, util: GpuUtil, cuda: bool):
        self.util, self.cuda = util, cuda
        self.epochs, self.perf, self.facts = [], {}, {}
        self._t0, self._samples, self._steps, self._open = 0.0, 0, 0, False

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        self.facts = {"precision_used": str(trainer.precision),
                      "compiled": getattr(pl_module.net, "_compiled_call_impl", None) is not None,
                      "data_device": str(dm.placement()) if hasattr(dm, "placement") else None}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync()
        self._samples = self._steps = 0
        if trainer.current_epoch >= WARMUP_EPOCHS:
            self.util.start()
        self._t0, self._open = time.perf_counter(), True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += int(batch[-1].shape[0])
        self._steps += 1

    def _close(self) -> None:
        if self._open:
            self._sync()
            seconds, self._open = time.perf_counter() - self._t0, False
            self.util.stop()
            self.epochs.append({"seconds": seconds, "samples": self._samples, "steps": self._steps})

    def on_validation_start(self, trainer, pl_module) -> None:
        self._close()   # Lightning validates inside the training epoch, before on_train_epoch_end

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close()

    def on_train_end(self, trainer, pl_module) -> None:
        from pipelines.tracking import names

        self.perf = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(names.PERF_PREFIX)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def run_case(case, size: str, accelerator: str, output_dir: str, deterministic: bool, util: GpuUtil) -> dict:
    """Train one case with fit() and return its record (status ok | failed)."""
    from benchmarks import gpu_cases
    from pipelines.config.compose import compose
    from pipelines.training.fit import fit

    cuda = accelerator == "gpu"
    record = {"name": case.name, "model": case.model, "precision": case.precision, "compile": case.compile,
              "on_device": case.on_device, "matmul_precision": case.matmul_precision,
              **{k: gpu_cases.SIZES[size][case.model][k] for k in ("batch", "steps", "epochs")}}
    start = time.perf_counter()
    try:
        cfg = compose(gpu_cases.overrides(case, size, accelerator, output_dir, deterministic))
        dm = gpu_cases.datamodule(case, cfg, size)
        if case.compile:
            torch._dynamo.reset()   # each case compiles afresh (and no cache limit turns a later case eager)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        util.reset()
        cap = Capture(util, cuda)
        result = fit(cfg, None, datamodule=dm, extra_callbacks=[cap])
    except Exception as e:   # noqa: BLE001 - one failed case must not cost the others
        return {**record, "status": "failed", "error": _first_line(e), "traceback": traceback.format_exc()[-2000:],
                "case_seconds": time.perf_counter() - start}
    return {**record, "status": "ok", **cap.facts, **_rates(cap.epochs), **_perf(cap.perf),
            **dict(zip(("gpu_util_mean", "gpu_util_samples", "gpu_util_source"), util.result())),
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "test_metrics": result.test_metrics, "case_seconds": time.perf_counter() - start}


def _rates(epochs: list) -> dict:
    timed = epochs[WARMUP_EPOCHS:]
    seconds = sum(e["seconds"] for e in timed)
    return {"first_epoch_seconds": epochs[0]["seconds"] if epochs else None,
            "epoch_seconds": [round(e["seconds"], 4) for e in epochs], "timed_epochs": len(timed),
            "samples_per_second": sum(e["samples"] for e in timed) / seconds if seconds > 0 else None,
            "steps_per_second": sum(e["steps"] for e in timed) / seconds if seconds > 0 else None}


def _perf(perf: dict) -> dict:
    """The perf/ metrics of the last epoch as fit() logged them, None where fit() logs none (yet)."""
    from pipelines.tracking import names

    keys = {"perf_samples_per_second": names.SAMPLES_PER_SECOND, "flops_per_sample": names.FLOPS_PER_SAMPLE,
            "tflops": names.TFLOPS, "mfu": names.MFU}
    return {k: perf.get(v) for k, v in keys.items()}

