"""How fit() uses the device: float32 matmul precision and torch.compile of the network.

trainer.precision itself is Lightning's (32-true, 16-mixed with gradient scaling, bf16-mixed, bf16-true); a
checkpoint holds the weights in the precision it was written in and loads under any other (Lightning casts them
into the module's dtype), so a run may resume under another precision.
"""
from __future__ import annotations

import functools
import sys

from omegaconf import DictConfig


def configure(cfg: DictConfig) -> None:
    """Process-wide settings the run asks for: trainer.threads, trainer.matmul_precision (high/medium: TF32 or
    bf16 passes for float32 matmuls on Ampere and later)."""
    import torch

    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)


def compiled(model, cfg: DictConfig):
    """The model, its network compiled in place (nn.Module.compile: parameter names, checkpoints and the logged
    model stay as in eager mode) when trainer.compile is set and torch.compile works on this device; where it
    does not, one warning line and eager mode."""
    if not cfg.trainer.compile:
        return model
    device = _device_type(cfg.trainer.accelerator)
    problem = compile_problem(device)
    if problem is not None:
        print(f"dlp: warning: trainer.compile: torch.compile does not work on {device} here ({problem}); "
              "training in eager mode", file=sys.stderr, flush=True)
        return model
    model.net.compile(mode=None if cfg.trainer.compile_mode == "default" else cfg.trainer.compile_mode)
    return model


def _device_type(accelerator: str) -> str:
    import torch

    return "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=None)
def compile_problem(device: str):
    """None if a tiny function compiles and runs on `device` with the default backend, else the reason (one line):
    no C++ compiler for CPU code, no Triton for GPU code, a Python torch.compile does not support, ..."""
    import torch

    try:
        probe = torch.compile(lambda t: torch.relu(t) * 2 + 1, dynamic=False)
        out = probe(torch.linspace(-1, 1, 8, device=device))
        if not torch.allclose(out, torch.relu(torch.linspace(-1, 1, 8, device=device)) * 2 + 1):
            return "the compiled probe computed a wrong result"
    except Exception as e:   # noqa: BLE001 - any failure of the backend means eager mode
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''}"[:200]
    return None


def say_precision(cfg: DictConfig, trainer) -> None:
    """One line where Lightning trains another precision than asked (16-mixed on a CPU runs as bf16-mixed)."""
    used = str(trainer.precision)
    if used != cfg.trainer.precision:
        print(f"dlp: note: trainer.precision={cfg.trainer.precision} needs a GPU (fp16 mixed precision); "
              f"training with {used} on this {trainer.strategy.root_device.type}", file=sys.stderr, flush=True)
