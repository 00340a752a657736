"""dlpipe's training path on a GPU: samples/s, NVML utilisation, MFU and peak memory of fit() (in-process, no
MLflow) for the digits CNN, a wide CNN on synthetic 3x32x32 images and a Transformer on synthetic 256-token
sequences, at 32-true / bf16-mixed / 16-mixed, eager and compiled, data on the device and on the host; one DDP
run at world size 1 (NCCL). Without CUDA the same cases run at a tiny size on the CPU (CI checks the file).

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--budget SECONDS]   (make gpu-check)

Cases run cheap-first under a time budget; a case that would overrun it is recorded as skipped, not run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

START = time.perf_counter()   # total_seconds counts the imports too
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:   # `python benchmarks/gpu.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from benchmarks import common, gpu_cases, gpu_ddp, gpu_measure  # noqa: E402

# seconds a case is assumed to take before one like it (same model, same compile) has run
GUESS = {"gpu": {False: 20.0, True: 90.0, "ddp": 45.0}, "tiny": {False: 4.0, True: 45.0, "ddp": 15.0}}
BUDGET = {"gpu": 400.0, "tiny": 55.0}   # the limit is 8 minutes on one GPU (a last case may overrun); ~1 min on CPU
THRESHOLD_BF16, THRESHOLD_UTIL = 1.8, 90.0


def environment(cuda: bool) -> dict:
    import lightning
    import omegaconf
    import torch

    info = {"device": "cuda" if cuda else "cpu", "python": platform.python_version(), "torch": torch.__version__,
            "lightning": lightning.__version__, "omegaconf": omegaconf.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "driver": None,
            "device_name": torch.cuda.get_device_name(0) if cuda else common.cpu_model(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), **common.git_commit()}
    try:
        import hydra

        info["hydra"] = hydra.__version__
        if cuda:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception as e:   # noqa: BLE001 - a missing version is recorded, not fatal
        info["driver_error"] = str(e)[:200]
    return info


def quiet() -> None:
    importlib.import_module("lightning")   # sets its loggers' levels on import; override them after
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def run_all(size: str, accelerator: str, budget: float, deterministic: bool, only: list) -> tuple:
    """(case records, the DDP record) of every case that fits the budget."""
    import torch

    cases = [c for c in gpu_cases.matrix() if not only or any(o in c.name for o in only)]
    util = gpu_measure.GpuUtil(torch.cuda.current_device() if accelerator == "gpu" else 0)
    records, seen, start = [], {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlp-gpu-") as tmp:
        ddp = _ddp(accelerator, tmp, size, budget, start)   # first: it proves a path, the rest only measure
        for i, case in enumerate(cases):
            guess = seen.get((case.model, case.compile), GUESS[size][case.compile])
            left = budget - (time.perf_counter() - start)
            if guess > left:
                records.append({"name": case.name, "model": case.model, "precision": case.precision,
                                "compile": case.compile, "on_device": case.on_device,
                                "matmul_precision": case.matmul_precision, "status": "skipped",
                                "error": f"time budget: {left:.0f} s left, a case like it takes ~{guess:.0f} s"})
            else:
                records.append(gpu_measure.run_case(case, size, accelerator, f"{tmp}/{i}", deterministic, util))
                seen[(case.model, case.compile)] = records[-1]["case_seconds"]
            _print_line(records[-1])
    util.close()
    return records, ddp


def _ddp(accelerator: str, tmp: str, size: str, budget: float, start: float) -> dict:
    left = budget - (time.perf_counter() - start)
    if GUESS[size]["ddp"] > left:
        return {"status": "skipped", "error": f"time budget: {left:.0f} s left"}
    ddp = gpu_ddp.run(accelerator, f"{tmp}/ddp", timeout=max(60.0, min(180.0, left)))
    print(f"ddp ({ddp.get('requested_backend', '?')}, world size 1): {ddp['status']} "
          f"{ddp.get('error', '')} {ddp.get('seconds', 0):.1f} s", flush=True)
    return ddp


def _print_line(r: dict) -> None:
    if r["status"] != "ok":
        print(f"{r['name']:<46} {r['status']}: {r.get('error', '')}", flush=True)
        return
    print(f"{r['name']:<46} {r['samples_per_second']:>10.0f} samples/s  {r['case_seconds']:5.1f} s", flush=True)


def _rate(records: list, **want):
    for r in records:
        if r["status"] == "ok" and all(r[k] == v for k, v in want.items()):
            return r["samples_per_second"]
    return None


def _ratio(a, b):
    return a / b if a is not None and b else None


def ratios(records: list) -> dict:
    """Speed-ups measured in this run, each the ratio of two cases' steady-state samples/s (None: one missing)."""
    out = {}
    for m in gpu_cases.MODELS:
        def rate(precision, compile=False, on_device=True, mm="highest"):
            return _rate(records, model=m, precision=precision, compile=compile, on_device=on_device,
                         matmul_precision=mm)

        for mode, c in (("eager", False), ("compile", True)):
            out[f"{m}/bf16-mixed_vs_32-true/{mode}"] = _ratio(rate("bf16-mixed", c), rate("32-true", c))
            out[f"{m}/16-mixed_vs_32-true/{mode}"] = _ratio(rate("16-mixed", c), rate("32-true", c))
        for p in gpu_cases.PRECISIONS:
            out[f"{m}/compile_vs_eager/{p}"] = _ratio(rate(p, True), rate(p))
        for p in ("32-true", "bf16-mixed"):
            out[f"{m}/device_vs_host/{p}"] = _ratio(rate(p), rate(p, on_device=False))
    out["transformer/tf32_vs_fp32/32-true"] = _ratio(
        _rate(records, model="transformer", precision="32-true", compile=False, on_device=True, matmul_precision="high"),
        _rate(records, model="transformer", precision="32-true", compile=False, on_device=True, matmul_precision="highest"))
    return out


def same_metrics(records: list, model: str, atol: float = 1e-4):
    """Data on the device and on the host train the same batches in the same order: equal test metrics (32-true,
    eager; atol covers kernels that are not bitwise deterministic on a GPU). None if either case is missing."""
    pair = [r for r in records if r["status"] == "ok" and r["model"] == model and r["precision"] == "32-true"
            and not r["compile"] and r["matmul_precision"] == "highest"]
    by_place = {r["on_device"]: r["test_metrics"] for r in pair}
    if set(by_place) != {True, False}:
        return None
    on, off = by_place[True], by_place[False]
    return on.keys() == off.keys() and all(abs(on[k] - off[k]) <= atol for k in on)


def checks(cuda: bool, records: list, rat: dict, ddp: dict) -> dict:
    """The issue's Done-when thresholds as booleans (None on CPU or when a case is missing)."""
    def at_least(value, threshold):
        return None if not cuda or value is None else value >= threshold

    util = [r.get("gpu_util_mean") for r in records if r["status"] == "ok" and r["model"] == "transformer"
            and r["precision"] == "bf16-mixed" and r["on_device"] and r["matmul_precision"] == "highest"]
    mfu = [r.get("mfu") for r in records if r["status"] == "ok"]
    return {"wide_cnn_bf16_at_least_1.8x_32-true": at_least(rat["wide_cnn/bf16-mixed_vs_32-true/eager"], THRESHOLD_BF16),
            "transformer_bf16_at_least_1.8x_32-true": at_least(rat["transformer/bf16-mixed_vs_32-true/eager"],
                                                               THRESHOLD_BF16),
            "transformer_gpu_util_at_least_90": at_least(max((u for u in util if u is not None), default=None),
                                                         THRESHOLD_UTIL),
            "mfu_reported": (bool(mfu) and all(m is not None for m in mfu)) if cuda else None,
            "digits_on_device_gain": at_least(rat["digits_cnn/device_vs_host/32-true"], 1.0),
            "digits_on_device_same_metrics": same_metrics(records, "digits_cnn"),
            "ddp_initialises": ddp.get("status") == "ok"}


def table(records: list) -> str:
    def f(value, fmt):
        return "-" if value is None else format(value, fmt)

    rows = [[r["name"], r["status"], f(r.get("samples_per_second"), ".0f"), f(r.get("steps_per_second"), ".1f"),
             f(r.get("gpu_util_mean"), ".0f"), f(r.get("mfu"), ".3f"), f(r.get("tflops"), ".1f"),
             f((r.get("peak_memory_bytes") or 0) / 2**30 or None, ".2f"), f(r.get("first_epoch_seconds"), ".1f")]
            for r in records]
    return common.table(["case", "status", "samples/s", "steps/s", "util %", "MFU", "TFLOP/s", "peak GiB",
                         "1st epoch s"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(common.RESULTS / "gpu.json"))
    p.add_argument("--budget", type=float, default=None, help="seconds for all cases (default: 400 GPU, 55 CPU)")
    p.add_argument("--deterministic", action="store_true", help="trainer.deterministic=true (default: false)")
    p.add_argument("--only", action="append", default=[], help="run only cases whose name contains this")
    args = p.parse_args(argv)
    quiet()
    import torch

    cuda = torch.cuda.is_available()
    size, accelerator = ("gpu", "gpu") if cuda else ("tiny", "cpu")
    budget = args.budget if args.budget is not None else BUDGET[size]
    env = environment(cuda)
    print(f"dlpipe gpu check: {env['device_name']} ({env['device']}), torch {env['torch']}, budget {budget:.0f} s",
          flush=True)
    records, ddp = run_all(size, accelerator, budget, args.deterministic, args.only)
    rat = ratios(records)
    payload = {"command": "python benchmarks/gpu.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
               **env, "size": size, "budget_seconds": budget,
               "settings": {"warmup_epochs": gpu_measure.WARMUP_EPOCHS, "deterministic": args.deterministic,
                            "timed": "training batches of each epoch after the first (synchronised edges); "
                                     "validation, checkpoints and the test pass excluded",
                            "sizes": gpu_cases.SIZES[size]},
               "cases": records, "ddp": ddp, "ratios": rat, "checks": checks(cuda, records, rat, ddp),
               "total_seconds": time.perf_counter() - START}
    print("\n" + table(records))
    print("\nratios: " + ", ".join(f"{k} {v:.2f}" for k, v in rat.items() if v is not None))
    print("checks: " + json.dumps(payload["checks"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out} in {payload['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
