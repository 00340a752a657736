"""Distributed training costs, measured through the real `dlp train` command (Ray Train workers).

    .venv/bin/python benchmarks/scaling.py              # launch overhead + weak scaling on this machine
    .venv/bin/python benchmarks/scaling.py --repeats 3

- launch overhead: a tiny one-epoch `dlp train trainer.num_workers=1`; the whole command's wall time
  minus the fit time it reports (interpreter start, imports, Ray cluster and worker-group start,
  MLflow run, model logging). Target <= 10 s (raw Ray Train + Lightning measured here: about 20 s).
  Beside it, the launch's floor on this machine: the busy CPU seconds (all processes, /proc/stat) of
  the parts no arrangement of dlp's code avoids, each measured alone (a local Ray cluster's start and
  stop, the Lightning imports a Train worker needs, TorchTrainer.fit of a function that does nothing),
  divided by the cores; and the same launch joining a cluster already up (`ray start --head` here,
  RAY_ADDRESS set), the setup that takes the cluster's start off every command.
- weak scaling: 2 workers x 1 thread against 1 worker x 1 thread on a CNN wide enough to be
  compute-bound (two blocks of 2 x 128-channel 3x3 convolutions on the 8x8 digits and a linear head
  after the 2x2 average pool: ~0.45 M parameters to all-reduce per step against ~200 ms of one-thread
  compute per 209-image step). Weak scaling holds each worker's work fixed: the per-worker batch B and
  the per-worker steps per epoch (--steps, through trainer.limit_train_batches) are the same in both
  runs, so the 2-worker run trains 2 x steps x B images per epoch and the 1-worker run half that, and
  each epoch's fixed costs (loader, sampler, epoch hooks) weigh the same in both. B is the largest
  batch for which the 2-worker epochs are all full batches. Efficiency is
  (samples/s with 2 workers) / (2 x samples/s with 1 worker), from the time of each epoch's training
  batches after the first epoch (`perf/train_seconds` in the run). Target >= 0.85. The same ratio over
  whole epochs (`perf/epoch_seconds`: validation, which 2 workers split, and the per-epoch checkpoint
  commit included) is reported beside it, and so is the ceiling: bare torch DDP (gloo, no Ray, no
  Lightning, no data loading) stepping the same model and batch, and the same bare loop inside Ray Train
  workers (what Ray's worker processes cost before any Lightning or dlp code). Each of --rounds rounds
  measures the ceiling, the loop in Ray, then 1 worker and 2 workers, in turn first (this VM's speed
  drifts by 10-20 % between runs), and dlp's share of the ceiling is the median of the rounds' paired ratios.
- mixed precision on a GPU (32-true vs bf16-mixed samples/s) needs a GPU machine: recorded as
  not measured when none is present.
Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

LAUNCH = ["experiment=digits_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
          "trainer.limit_val_batches=2", "trainer.threads=1", "mlflow.log_model=false"]
WIDE = ["experiment=digits_cnn", "model.channels=[128,128]", "model.head_hidden=[]", "data.augment.enabled=false",
        "trainer.threads=1", "sched.warmup_epochs=0", "mlflow.log_model=false"]
SUMMARY = re.compile(r"(\d+) epochs in ([\d.]+)s \(wall ([\d.]+)s\)")


def busy_cpu_seconds() -> float:
    """CPU seconds this whole machine has spent busy since boot (/proc/stat: every process, Ray's included)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def dlp_train(args: list[str], store: list[str], env: Optional[dict] = None) -> dict:
    """Run `dlp train` in a fresh interpreter (with `env` added to this one's); its wall time, the fit time it
    reports, and the CPU seconds the machine was busy meanwhile (its Ray processes included)."""
    busy = busy_cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", *args, *store],
                          capture_output=True, text=True, cwd=common.ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    wall = time.perf_counter() - start
    busy = busy_cpu_seconds() - busy
    match = SUMMARY.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"dlp train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run_id = re.search(r"run id:\s+(\w+)", proc.stdout).group(1)
    return {"wall_seconds": wall, "fit_seconds": float(match.group(2)), "epochs": int(match.group(1)), "run_id": run_id,
            "busy_cpu_seconds": busy}


def epoch_seconds(uri: str, run_id: str, key: str) -> list[float]:
    from mlflow import MlflowClient

    history = sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in history]


PHASES = [("to_ray_fit_seconds", "process start -> TorchTrainer.fit (imports, local cluster start, data, MLflow run)"),
          ("ray_train_start_seconds", "TorchTrainer.fit -> rank 0 in the train function (Ray Train actors, imports)"),
          ("worker_setup_seconds", "rank 0 outside Lightning's fit (data, model, process group, test pass)"),
          ("ray_train_stop_seconds", "rank 0 returns -> TorchTrainer.fit returns"),
          ("after_fit_seconds", "the rest: outputs logged, cluster shutdown, interpreter exit")]


def launches(store: list[str], repeats: int, label: str, env: Optional[dict] = None) -> tuple[list, list]:
    """`repeats` tiny one-epoch 1-worker `dlp train` runs, each printed: (the runs, their overheads: wall - fit)."""
    runs, overhead = [], []
    for _ in range(repeats):
        r = dlp_train([*LAUNCH, "trainer.num_workers=1"], store, env)
        runs.append(r)
        overhead.append(r["wall_seconds"] - r["fit_seconds"])
        print(f"[scaling] {label}: wall {r['wall_seconds']:.1f}s  fit {r['fit_seconds']:.1f}s  "
              f"overhead {overhead[-1]:.1f}s", flush=True)
    return runs, overhead


def launch_overhead(store: list[str], uri: str, repeats: int) -> dict:
    from mlflow import MlflowClient

    runs, overhead = launches(store, repeats, "launch")
    for r in runs:
        metrics = MlflowClient(uri).get_run(r["run_id"]).data.metrics
        r["phases"] = {k: metrics[f"perf/launch/{k}"] for k, _ in PHASES[:-1]}
        # the command's wall clock starts a few ms after the process (subprocess start), close enough
        r["phases"]["after_fit_seconds"] = r["wall_seconds"] - r["fit_seconds"] - sum(r["phases"].values())
    phases = {k: statistics.median(r["phases"][k] for r in runs) for k, _ in PHASES}
    print(common.table(["launch phase (median)", "seconds"], [[why, f"{phases[k]:.1f}"] for k, why in PHASES]))
    return {"median_overhead_seconds": statistics.median(overhead), "target_seconds": 10.0,
            "median_phases_seconds": phases, "runs": runs, "overrides": [*LAUNCH, "trainer.num_workers=1"]}


def launch_on_running_cluster(store: list[str], repeats: int) -> dict:
    """The same launch joining a cluster that is already up (`ray start --head` on this machine, its CPUs, token
    auth on; RAY_ADDRESS set, as a user with a long-lived cluster runs it): the cluster's start and stop leave
    the command. Ray's defaults apply there (dlp trims Train's extras only on the cluster it starts itself)."""
    from tests.raynodes import running_cluster

    with running_cluster(nodes=1, cpus=os.cpu_count() or 1) as cluster:
        _settled()
        env = {"RAY_ADDRESS": cluster.gcs, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
        runs, overhead = launches(store, repeats, "launch on a running cluster", env)
    return {"median_overhead_seconds": statistics.median(overhead), "runs": runs}


FLOOR_PARTS = [("cluster", "start a local Ray cluster (GCS, raylet, dashboard and its modules, agents), let it settle, stop it"),
               ("worker_imports", "import Lightning and Ray Train's Lightning glue (torch is in the next part)"),
               ("train_actors", "TorchTrainer.fit of a train function that does nothing, 1 worker, on a running cluster")]


def run_part(call: str) -> dict:
    """Run `call` (a function of this script, with its arguments) in a fresh interpreter and return the JSON
    object it prints last: a measurement that must not share this process's imports or Ray session."""
    code = f"import sys; sys.path.insert(0, {str(common.ROOT)!r}); import benchmarks.scaling as s; s.{call}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=common.ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{call} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def launch_floor() -> dict:
    """What the launch's unavoidable parts cost this machine, measured alone: busy CPU seconds (every process) and
    wall time of each. Their CPU seconds over the cores is the least wall time they need even if perfectly
    overlapped; dlp's own work (its imports, config, data checks, MLflow) comes on top."""
    parts = {part: run_part(f"_floor_part({part!r})") for part, _ in FLOOR_PARTS}
    busy = sum(p["busy_cpu_seconds"] for p in parts.values())
    cores = os.cpu_count() or 1
    print(common.table(["unavoidable part, alone", "busy CPU s", "wall s"],
                       [[why, f"{parts[k]['busy_cpu_seconds']:.1f}", f"{parts[k]['wall_seconds']:.1f}"]
                        for k, why in FLOOR_PARTS]))
    print(f"[scaling] launch floor: {busy:.1f} busy CPU s over {cores} cores -> at least {busy / cores:.1f} s of wall "
          f"time, before any of dlp's own work", flush=True)
    return {"parts": parts, "busy_cpu_seconds": busy, "cores": cores, "floor_seconds": busy / cores}


def _settled(quiet_share: float = 0.1, window: float = 1.0, limit: float = 30.0) -> None:
    """Wait until the machine's busy share over `window` seconds drops below `quiet_share` of one core."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        before = busy_cpu_seconds()
        time.sleep(window)
        if busy_cpu_seconds() - before < quiet_share * window:
            return


def _floor_part(part: str) -> None:
    """Run one FLOOR_PARTS measurement in this (fresh) interpreter; print {"busy_cpu_seconds", "wall_seconds"}."""
    if part == "worker_imports":
        import torch  # noqa: F401  (not counted: train_actors' worker imports it for its process group)

        busy, start = busy_cpu_seconds(), time.perf_counter()
        import lightning.pytorch  # noqa: F401
        import ray.train.lightning  # noqa: F401
        measured = {"busy_cpu_seconds": busy_cpu_seconds() - busy, "wall_seconds": time.perf_counter() - start}
    else:
        import ray

        from pipelines.cluster import local as raycluster

        busy, start = busy_cpu_seconds(), time.perf_counter()
        raycluster.connect()  # as `dlp train` starts its cluster, with the Ray Train settings it runs with
        _settled()
        if part == "train_actors":  # count only the fit, on the settled cluster
            from ray.train import RunConfig, ScalingConfig
            from ray.train.torch import TorchTrainer

            with tempfile.TemporaryDirectory(prefix="dlp-floor-") as storage:
                busy, start = busy_cpu_seconds(), time.perf_counter()
                TorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1),
                             run_config=RunConfig(storage_path=storage)).fit()
                measured = {"busy_cpu_seconds": busy_cpu_seconds() - busy, "wall_seconds": time.perf_counter() - start}
            ray.shutdown()
        else:  # the cluster's start and stop
            ray.shutdown()
            measured = {"busy_cpu_seconds": busy_cpu_seconds() - busy, "wall_seconds": time.perf_counter() - start}
    print(json.dumps(measured), flush=True)


def weak_scaling(store: list[str], uri: str, epochs: int, batch: int, steps: int, rounds: int) -> dict:
    """Per round: the bare torch DDP ceiling (1 then 2 processes), the same loop in Ray Train workers, then dlp
    train with 1 and then 2 workers. The machine's speed drifts between runs, so rounds alternate everything and
    each round's dlp efficiency is also compared with the ceiling measured minutes before it (`of_reference`:
    the median of the paired ratios)."""
    out = {1: {"train_seconds": [], "epoch_seconds": [], "runs": []},
           2: {"train_seconds": [], "epoch_seconds": [], "runs": []}}
    reference = {1: [], 2: []}
    in_ray = {1: [], 2: []}
    rounds_out = []
    for round_ in range(rounds):
        ceiling = torch_ddp_reference(batch)
        ray_ddp = ray_ddp_reference(batch)
        for w in (1, 2):
            reference[w].append(ceiling[w])
            in_ray[w].append(ray_ddp[w])
        medians = {}
        for workers in ((1, 2) if round_ % 2 == 0 else (2, 1)):  # alternate, so a drift in speed cancels
            args = [*WIDE, f"trainer.num_workers={workers}", f"data.batch_size={batch * workers}",
                    f"trainer.limit_train_batches={steps}", f"trainer.max_epochs={epochs}"]
            run = dlp_train(args, store)
            train = epoch_seconds(uri, run["run_id"], "perf/train_seconds")[1:]  # the first epoch pays warm-up
            whole = epoch_seconds(uri, run["run_id"], "perf/epoch_seconds")[1:]
            out[workers]["train_seconds"] += train
            out[workers]["epoch_seconds"] += whole
            out[workers]["runs"].append({**run, "overrides": args})
            medians[workers] = statistics.median(train)
            print(f"[scaling] {workers} worker(s), global batch {batch * workers}: training "
                  f"{medians[workers]:.2f} s/epoch, whole epoch {statistics.median(whole):.2f} s", flush=True)
        dlp, bare = medians[1] / medians[2], ceiling[1] / ceiling[2]  # equal per-worker work: t1 / t2
        in_ray_ratio = ray_ddp[1] / ray_ddp[2]
        rounds_out.append({"efficiency": dlp, "ceiling": bare, "of_ceiling": dlp / bare,
                           "bare_in_ray_workers": in_ray_ratio, "of_bare_in_ray_workers": dlp / in_ray_ratio})
        print(f"[scaling] round {len(rounds_out)}: dlp {dlp:.2f}, bare torch DDP {bare:.2f}, "
              f"bare torch DDP in Ray Train workers {in_ray_ratio:.2f}", flush=True)
    for w in (1, 2):
        images = w * steps * batch  # per epoch
        out[w]["samples_per_second"] = images / statistics.median(out[w]["train_seconds"])
        out[w]["samples_per_second_whole_epoch"] = images / statistics.median(out[w]["epoch_seconds"])
    efficiency = out[2]["samples_per_second"] / (2 * out[1]["samples_per_second"])
    whole = out[2]["samples_per_second_whole_epoch"] / (2 * out[1]["samples_per_second_whole_epoch"])
    ceiling = {"efficiency": statistics.median(r["ceiling"] for r in rounds_out),
               "seconds_per_step": {str(w): t for w, t in reference.items()},
               "per_worker_batch": batch, "steps": REFERENCE_STEPS}
    return {"efficiency": efficiency, "efficiency_whole_epoch": whole, "target": 0.85, "per_worker_batch": batch,
            "steps_per_worker_epoch": steps, "rounds": rounds, "one_worker": out[1], "two_workers": out[2],
            "torch_ddp_reference": ceiling,
            "torch_ddp_in_ray_workers": {"efficiency": statistics.median(r["bare_in_ray_workers"] for r in rounds_out),
                                         "seconds_per_step": {str(w): t for w, t in in_ray.items()}},
            "of_reference": statistics.median(r["of_ceiling"] for r in rounds_out),
            "of_bare_in_ray_workers": statistics.median(r["of_bare_in_ray_workers"] for r in rounds_out),
            "per_round": rounds_out}


def train_rows() -> int:
    import datamodules
    from pipelines.config.compose import compose

    dm = datamodules.build(compose(WIDE).data, 42)
    dm.setup("fit")
    return len(dm._tensors["train"][1])


def per_worker_batch(steps: int, rows: int) -> int:
    """The largest per-worker batch for which 2 workers' `steps` steps per epoch over `rows` training rows are all
    full batches (a ragged last batch would cost a whole step's all-reduce and fixed costs for a fraction of its
    compute)."""
    return rows // (2 * steps)


REFERENCE_STEPS = 60


def torch_ddp_reference(batch: int, steps: int = REFERENCE_STEPS) -> dict:
    """The ceiling dlp's weak scaling is judged against: the same model and per-worker batch stepped by bare
    torch DistributedDataParallel over gloo (1 and then 2 processes x 1 thread, AdamW, no Ray, no Lightning, no
    data loading). What it loses is DDP's own cost on this machine (the gradient all-reduce sharing each worker's
    one core with its compute). Returns {processes: seconds per step}."""
    import torch.multiprocessing as mp

    from tests.conftest import free_ports

    ctx = mp.get_context("spawn")
    times = {}
    for world in (1, 2):
        queue = ctx.SimpleQueue()
        port = free_ports()[0]  # a fixed one can be taken by Ray's processes
        procs = [ctx.Process(target=_ddp_steps, args=(rank, world, port, batch, steps, queue))
                 for rank in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"torch DDP reference with {world} process(es) failed")
        times[world] = max(queue.get() for _ in range(world))
    print(f"[scaling] bare torch DDP reference: {times[1] * 1000:.0f} ms/step alone, {times[2] * 1000:.0f} ms/step "
          f"with 2 processes -> efficiency {times[1] / times[2]:.2f}", flush=True)
    return times


def _ddp_steps(rank: int, world: int, port: int, batch: int, steps: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    queue.put(_bare_ddp_loop(rank, batch, steps))
    dist.destroy_process_group()


def _bare_ddp_loop(rank: int, batch: int, steps: int) -> float:
    """Seconds per step of the WIDE model under torch DDP (process group already up), after 5 warm-up steps."""
    import torch
    import torch.distributed as dist

    import datamodules
    import models
    from pipelines.config.compose import compose

    torch.set_num_threads(1)
    torch.manual_seed(0)
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
    return (time.perf_counter() - start) / steps


def ray_ddp_reference(batch: int, steps: int = REFERENCE_STEPS) -> dict:
    """The same bare torch DDP loop, run inside Ray Train workers (TorchTrainer, 1 and then 2 workers, on a local
    cluster started as `dlp train` starts it): what Ray's worker processes cost before any Lightning or dlp code.
    Returns {workers: seconds per step}."""
    times = {int(w): t for w, t in run_part(f"_ray_ddp_part({batch}, {steps})").items()}
    print(f"[scaling] the same in Ray Train workers: {times[1] * 1000:.0f} ms/step alone, {times[2] * 1000:.0f} ms/step "
          f"with 2 workers -> efficiency {times[1] / times[2]:.2f}", flush=True)
    return times


def _ray_ddp_part(batch: int, steps: int) -> None:

    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.cluster import local as raycluster

    root = str(common.ROOT)

    def work(config):  # nested, so Ray ships it by value: the workers need not import this script
        sys.path.insert(0, root)
        from benchmarks.scaling import _bare_ddp_loop

        return _bare_ddp_loop(ray.train.get_context().get_world_rank(), config["batch"], config["steps"])

    raycluster.connect(log_to_driver=False)
    times = {}
    with tempfile.TemporaryDirectory(prefix="dlp-ray-ddp-") as storage:
        for workers in (1, 2):
            result = TorchTrainer(work, train_loop_config={"batch": batch, "steps": steps},
                                  scaling_config=ScalingConfig(num_workers=workers),
                                  run_config=RunConfig(storage_path=storage, name=f"ddp-{workers}")).fit()
            times[workers] = result.return_value  # rank 0's
    ray.shutdown()
    print(json.dumps(times), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="launch-overhead runs (median reported)")
    parser.add_argument("--epochs", type=int, default=8, help="weak-scaling epochs per run (the first is not counted)")
    parser.add_argument("--rounds", type=int, default=4, help="weak-scaling rounds (ceiling, ceiling in Ray, 1 worker, 2 workers)")
    parser.add_argument("--steps", type=int, default=3,
                        help="training steps per worker per epoch, in both runs; sets the per-worker batch")
    parser.add_argument("--batch", type=int, default=None, help="per-worker batch size (overrides --steps)")
    args = parser.parse_args(argv)
    machine = common.machine_info()
    import torch

    rows = train_rows()
    batch = args.batch or per_worker_batch(args.steps, rows)
    if 2 * args.steps * batch > rows:
        parser.error(f"--batch {batch} x --steps {args.steps} x 2 workers exceeds the {rows} training rows")
    with common.temp_store() as (tmp, store):
        uri = f"sqlite:///{tmp}/mlflow.db"
        launch = launch_overhead(store, uri, args.repeats)
        launch["floor"] = launch_floor()
        launch["on_running_cluster"] = launch_on_running_cluster(store, args.repeats)
        weak = weak_scaling(store, uri, args.epochs, batch, args.steps, args.rounds)
    reference = weak["torch_ddp_reference"]
    gpu = ({"measured": False, "why": "no CUDA device on this machine"} if not torch.cuda.is_available()
           else {"measured": False, "why": "run benchmarks/gpu_precision.py on the GPU machine"})
    print()
    print(common.table(["measure", "value", "target", "met"], [
        ["launch overhead (1 worker, 1 epoch)", f"{launch['median_overhead_seconds']:.1f} s", "<= 10 s",
         "yes" if launch["median_overhead_seconds"] <= 10 else "NO"],
        ["  its floor: the unavoidable parts' busy CPU over the cores", f"{launch['floor']['floor_seconds']:.1f} s", "", ""],
        ["  the same launch joining a running cluster (RAY_ADDRESS)",
         f"{launch['on_running_cluster']['median_overhead_seconds']:.1f} s", "", ""],
        [f"weak-scaling efficiency (2 vs 1 worker, {batch} per worker), training batches",
         f"{weak['efficiency']:.2f}", ">= 0.85", "yes" if weak["efficiency"] >= 0.85 else "NO"],
        ["  the same over whole epochs (validation, checkpoint commit)", f"{weak['efficiency_whole_epoch']:.2f}", "", ""],
        ["  bare torch DDP on the same model and batch (the ceiling; median of the rounds)",
         f"{reference['efficiency']:.2f}", "", ""],
        ["  the same bare DDP loop inside Ray Train workers (median of the rounds)",
         f"{weak['torch_ddp_in_ray_workers']['efficiency']:.2f}", "", ""],
        ["  dlp as a share of that ceiling (median of each round's pair)", f"{weak['of_reference']:.2f}", "", ""],
        ["  dlp as a share of the bare loop in Ray Train workers (median of each round's pair)",
         f"{weak['of_bare_in_ray_workers']:.2f}", "", ""]]))
    path = common.save_json("scaling.json", {
        "command": " ".join(["python benchmarks/scaling.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine, "load_average_1m_end": os.getloadavg()[0],  # timings are only as good as the idle
        "launch": launch, "weak_scaling": weak, "gpu_precision": gpu})
    print(f"\nwrote {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
