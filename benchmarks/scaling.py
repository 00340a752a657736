"""Distributed training costs, measured through the real `dlp train` command (Ray Train workers).

    .venv/bin/python benchmarks/scaling.py              # launch overhead + weak scaling on this machine
    .venv/bin/python benchmarks/scaling.py --repeats 3

- launch overhead: a tiny one-epoch `dlp train trainer.num_workers=1`; the whole command's wall time
  minus the fit time it reports (interpreter start, imports, Ray cluster and worker-group start,
  MLflow run, model logging). Target <= 10 s (raw Ray Train + Lightning measured here: about 20 s).
- weak scaling: 2 workers x 1 thread against 1 worker x 1 thread on a CNN wide enough to be
  compute-bound (two blocks of 2 x 128-channel 3x3 convolutions on the 8x8 digits and a linear head
  after the 2x2 average pool: ~0.45 M parameters to all-reduce per step against ~200 ms of one-thread
  compute per 210-image step), the per-worker batch B held fixed (global batch 2B vs B) and chosen so
  both runs' epochs end on a nearly full batch (--steps); efficiency is
  (samples/s with 2 workers) / (2 x samples/s with 1 worker), from the time of each epoch's training
  batches after the first epoch (`perf/train_seconds` in the run), the 1- and 2-worker runs alternated
  --rounds times (this VM's speed drifts by 10-20 % between runs). Target >= 0.85. The same ratio over
  whole epochs (`perf/epoch_seconds`: validation and the per-epoch checkpoint commit included) is
  reported beside it, and so is the ceiling measured in the same run: bare torch DDP (gloo, no Ray, no
  Lightning, no data loading) stepping the same model and batch.
- mixed precision on a GPU (32-true vs bf16-mixed samples/s) needs a GPU machine: recorded as
  not measured when none is present.
Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

LAUNCH = ["experiment=digits_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
          "trainer.limit_val_batches=2", "trainer.threads=1", "mlflow.log_model=false"]
WIDE = ["experiment=digits_cnn", "model.channels=[128,128]", "model.head_hidden=[]", "data.augment.enabled=false",
        "trainer.threads=1", "sched.warmup_epochs=0", "mlflow.log_model=false"]
SUMMARY = re.compile(r"(\d+) epochs in ([\d.]+)s \(wall ([\d.]+)s\)")


def dlp_train(args: list[str], store: list[str]) -> dict:
    """Run `dlp train` in a fresh interpreter; its wall time and the fit time it reports."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", *args, *store],
                          capture_output=True, text=True, cwd=common.ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    match = SUMMARY.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"dlp train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run_id = re.search(r"run id:\s+(\w+)", proc.stdout).group(1)
    return {"wall_seconds": wall, "fit_seconds": float(match.group(2)), "epochs": int(match.group(1)), "run_id": run_id}


def epoch_seconds(uri: str, run_id: str, key: str) -> list[float]:
    from mlflow import MlflowClient

    history = sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in history]


PHASES = [("to_ray_fit_seconds", "process start -> TorchTrainer.fit (imports, local cluster start, data, MLflow run)"),
          ("ray_train_start_seconds", "TorchTrainer.fit -> rank 0 in the train function (Ray Train actors, imports)"),
          ("worker_setup_seconds", "rank 0 outside Lightning's fit (data, model, process group, test pass)"),
          ("ray_train_stop_seconds", "rank 0 returns -> TorchTrainer.fit returns"),
          ("after_fit_seconds", "the rest: outputs logged, cluster shutdown, interpreter exit")]


def launch_overhead(store: list[str], uri: str, repeats: int) -> dict:
    from mlflow import MlflowClient

    runs = [dlp_train([*LAUNCH, "trainer.num_workers=1"], store) for _ in range(repeats)]
    overhead = [r["wall_seconds"] - r["fit_seconds"] for r in runs]
    for r, o in zip(runs, overhead):
        metrics = MlflowClient(uri).get_run(r["run_id"]).data.metrics
        r["phases"] = {k: metrics[f"perf/launch/{k}"] for k, _ in PHASES[:-1]}
        # the command's wall clock starts a few ms after the process (subprocess start), close enough
        r["phases"]["after_fit_seconds"] = r["wall_seconds"] - r["fit_seconds"] - sum(r["phases"].values())
        print(f"[scaling] launch: wall {r['wall_seconds']:.1f}s  fit {r['fit_seconds']:.1f}s  overhead {o:.1f}s", flush=True)
    phases = {k: statistics.median(r["phases"][k] for r in runs) for k, _ in PHASES}
    print(common.table(["launch phase (median)", "seconds"], [[why, f"{phases[k]:.1f}"] for k, why in PHASES]))
    return {"median_overhead_seconds": statistics.median(overhead), "target_seconds": 10.0,
            "median_phases_seconds": phases, "runs": runs, "overrides": [*LAUNCH, "trainer.num_workers=1"]}


def weak_scaling(store: list[str], uri: str, epochs: int, batch: int, rounds: int) -> dict:
    """dlp train with 1 and then 2 workers, `rounds` times alternately (the machine's speed drifts between runs;
    alternating spreads the drift over both), efficiency from the medians over every counted epoch."""
    n_train = train_rows()
    out = {1: {"train_seconds": [], "epoch_seconds": [], "runs": []},
           2: {"train_seconds": [], "epoch_seconds": [], "runs": []}}
    for _ in range(rounds):
        for workers in (1, 2):
            args = [*WIDE, f"trainer.num_workers={workers}", f"data.batch_size={batch * workers}",
                    f"trainer.max_epochs={epochs}"]
            run = dlp_train(args, store)
            train = epoch_seconds(uri, run["run_id"], "perf/train_seconds")[1:]  # the first epoch pays warm-up
            whole = epoch_seconds(uri, run["run_id"], "perf/epoch_seconds")[1:]
            out[workers]["train_seconds"] += train
            out[workers]["epoch_seconds"] += whole
            out[workers]["runs"].append({**run, "overrides": args})
            print(f"[scaling] {workers} worker(s), global batch {batch * workers}: training "
                  f"{statistics.median(train):.2f} s/epoch, whole epoch {statistics.median(whole):.2f} s", flush=True)
    for w in (1, 2):
        out[w]["samples_per_second"] = n_train / statistics.median(out[w]["train_seconds"])
        out[w]["samples_per_second_whole_epoch"] = n_train / statistics.median(out[w]["epoch_seconds"])
    efficiency = out[2]["samples_per_second"] / (2 * out[1]["samples_per_second"])
    whole = out[2]["samples_per_second_whole_epoch"] / (2 * out[1]["samples_per_second_whole_epoch"])
    return {"efficiency": efficiency, "efficiency_whole_epoch": whole, "target": 0.85, "per_worker_batch": batch,
            "train_rows": n_train, "rounds": rounds, "one_worker": out[1], "two_workers": out[2]}


def train_rows() -> int:
    import datamodules
    from pipelines.config import compose

    dm = datamodules.build(compose(WIDE).data, 42)
    dm.setup("fit")
    return len(dm._tensors["train"][1])


def per_worker_batch(steps: int) -> int:
    """The per-worker batch that splits the training rows into `steps` nearly full global batches for 2 workers
    (and 2 x `steps` for 1): a ragged last batch would cost a whole step's all-reduce and fixed costs for a
    fraction of its compute, in the 2-worker run more than in the other."""
    return math.ceil(train_rows() / (2 * steps))


def torch_ddp_reference(batch: int, steps: int = 60, rounds: int = 2) -> dict:
    """The ceiling dlp's weak scaling is judged against: the same model and per-worker batch stepped by bare
    torch DistributedDataParallel over gloo (1 and 2 processes x 1 thread, AdamW, no Ray, no Lightning, no data
    loading), alternated `rounds` times like the dlp runs. What it loses is DDP's own cost on this machine
    (gradient all-reduce sharing each worker's one core with its compute)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    times: dict = {1: [], 2: []}
    for r in range(rounds):
        for world in (1, 2):
            queue = ctx.SimpleQueue()
            port = 29400 + 10 * r + world
            procs = [ctx.Process(target=_ddp_steps, args=(rank, world, port, batch, steps, queue))
                     for rank in range(world)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            if any(p.exitcode != 0 for p in procs):
                raise RuntimeError(f"torch DDP reference with {world} process(es) failed")
            times[world].append(max(queue.get() for _ in range(world)))
    step = {w: statistics.median(t) for w, t in times.items()}
    efficiency = step[1] / step[2]      # samples/s ratio at a fixed per-worker batch: (2B/t2) / (2 * B/t1)
    print(f"[scaling] bare torch DDP reference: {step[1] * 1000:.0f} ms/step alone, {step[2] * 1000:.0f} ms/step "
          f"with 2 processes -> efficiency {efficiency:.2f}", flush=True)
    return {"efficiency": efficiency, "seconds_per_step": {str(w): t for w, t in times.items()},
            "per_worker_batch": batch, "steps": steps}


def _ddp_steps(rank: int, world: int, port: int, batch: int, steps: int, queue) -> None:
    import torch
    import torch.distributed as dist

    import datamodules
    import models
    from pipelines.config import compose

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = compose(WIDE)
    dm = datamodules.build(cfg.data, 42)
    dm.setup("fit")
    x, y = (t[rank * batch:(rank + 1) * batch] for t in dm._tensors["train"][:2])
    model = torch.nn.parallel.DistributedDataParallel(models.build(cfg, dm.spec))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for _ in range(5):
        step()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    queue.put((time.perf_counter() - start) / steps)
    dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="launch-overhead runs (median reported)")
    parser.add_argument("--epochs", type=int, default=8, help="weak-scaling epochs per run (the first is not counted)")
    parser.add_argument("--rounds", type=int, default=2, help="weak-scaling 1-then-2-worker rounds")
    parser.add_argument("--steps", type=int, default=3,
                        help="training steps per epoch with 2 workers; sets the per-worker batch so both runs' "
                             "epochs end on a nearly full batch")
    parser.add_argument("--batch", type=int, default=None, help="per-worker batch size (overrides --steps)")
    args = parser.parse_args(argv)
    machine = common.machine_info()
    import torch

    batch = args.batch or per_worker_batch(args.steps)
    with common.temp_store() as (tmp, store):
        uri = f"sqlite:///{tmp}/mlflow.db"
        launch = launch_overhead(store, uri, args.repeats)
        reference = torch_ddp_reference(batch)
        weak = weak_scaling(store, uri, args.epochs, batch, args.rounds)
    weak["torch_ddp_reference"] = reference
    weak["of_reference"] = weak["efficiency"] / reference["efficiency"]
    gpu = ({"measured": False, "why": "no CUDA device on this machine"} if not torch.cuda.is_available()
           else {"measured": False, "why": "run benchmarks/gpu_precision.py on the GPU machine"})
    print()
    print(common.table(["measure", "value", "target", "met"], [
        ["launch overhead (1 worker, 1 epoch)", f"{launch['median_overhead_seconds']:.1f} s", "<= 10 s",
         "yes" if launch["median_overhead_seconds"] <= 10 else "NO"],
        [f"weak-scaling efficiency (2 vs 1 worker, {batch} per worker), training batches",
         f"{weak['efficiency']:.2f}", ">= 0.85", "yes" if weak["efficiency"] >= 0.85 else "NO"],
        ["  the same over whole epochs (validation, checkpoint commit)", f"{weak['efficiency_whole_epoch']:.2f}", "", ""],
        ["  bare torch DDP on the same model and batch (the ceiling)", f"{reference['efficiency']:.2f}", "", ""],
        ["  dlp as a share of that ceiling", f"{weak['of_reference']:.2f}", "", ""]]))
    path = common.save_json("scaling.json", {
        "command": " ".join(["python benchmarks/scaling.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "load_average_1m_end": os.getloadavg()[0],  # timings are only as good as the idle
        "launch": launch, "weak_scaling": weak, "gpu_precision": gpu})
    print(f"\nwrote {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
