"""One Lightning DDP run of fit() at world size 1, in its own process: proves the process group initialises and
communicates (NCCL on CUDA, gloo on CPU). benchmarks/gpu.py runs it; alone: python benchmarks/gpu_ddp.py gpu|cpu DIR

Prints one line `DDP_RESULT {json}` with the backend, world size, the all-reduce's result and the fit's seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "DDP_RESULT "


def main(accelerator: str, output_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy

    from pipelines.config.compose import compose
    from pipelines.training.fit import fit

    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            t = torch.ones(1, device=pl_module.device)
            dist.all_reduce(t)
            seen.update(initialized=dist.is_initialized(), backend=str(dist.get_backend()),
                        world_size=dist.get_world_size(), all_reduce=float(t.item()),
                        strategy=type(trainer.strategy).__name__, device=str(pl_module.device))

    backend = "nccl" if accelerator == "gpu" else "gloo"
    cfg = compose(["experiment=digits_cnn", f"trainer.accelerator={accelerator}", "trainer.devices=1",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                   "trainer.progress_bar=false", "data.limit=400", f"output_dir={output_dir}",
                   *(["trainer.threads=1"] if accelerator == "cpu" else [])])
    start = time.perf_counter()
    fit(cfg, None, strategy=DDPStrategy(process_group_backend=backend), extra_callbacks=[Probe()])
    print(MARK + json.dumps({**seen, "requested_backend": backend, "fit_seconds": time.perf_counter() - start}),
          flush=True)


def run(accelerator: str, output_dir: str, timeout: float = 240) -> dict:
    """Run main() in a subprocess; its record (status ok | failed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, accelerator, output_dir], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout:.0f} s", "seconds": timeout}
    seconds = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"status": "failed", "error": f"exit {proc.returncode}", "output_tail": tail, "seconds": seconds}
    found = json.loads(lines[-1][len(MARK):])
    ok = found.get("initialized") and found.get("backend") == found["requested_backend"] and found.get(
        "world_size") == 1 and found.get("all_reduce") == 1.0
    return {"status": "ok" if ok else "failed", **found, "seconds": seconds}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
