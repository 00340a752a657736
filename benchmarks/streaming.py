"""Streamed tables (data.streaming=true): their training speed against the in-memory path, and a table larger than a
Ray Train worker's memory trained under a hard per-worker memory cap.

    .venv/bin/python benchmarks/streaming.py                        # both parts, ~17 min on 2 cores
    .venv/bin/python benchmarks/streaming.py --cap-mib 1024 1536 --in-memory-too   # + a 1 GiB cap and the in-memory
                                                                    # controls, ~30 min
    .venv/bin/python benchmarks/streaming.py --part throughput --rows 500000 --rounds 3
    .venv/bin/python benchmarks/streaming.py --part large --cap-mib 1024 --ratio 4.5    # root + cgroup v1 only

(a) throughput: one learnable table (tests/datafiles.py synthetic_table: --rows rows, 32 float features, a
    categorical and a 3-class label) written once as a single Parquet file (read whole by pandas:
    data.streaming=false) and once as 4 shards of 8 row groups each (data.streaming=true). The same MLP, seed,
    batch size (512) and epochs (3) train on both, in process (trainer.num_workers=0) and with 2 Ray Train workers
    (trainer.num_workers=2, 1 thread each), each run a whole `dlp train` process; --rounds rounds per mode, the
    order of the two paths alternating. A run's figure is the median `perf/samples_per_second` of its epochs after
    the first (the training batches' time only: not the wait for an epoch's first batch, nor validation; the
    runs' wall times are beside it); the ratio streamed / in-memory is taken per round, and its median is held
    against the target (>= 0.8x). Test accuracy of both is reported too: same seed, but the two paths draw their
    splits differently (a seeded hash of (file, row) against a shuffled index), so they agree within noise only.
(b) large: a table of --ratio x the cap of float32 values (default 4.5 x 1 GiB = 4.9 GB: ~4.9 M rows x 250
    columns in one Parquet file of 32 MB row groups, written a row group at a time so generating it never holds
    it; a 3-class label from a linear rule on x0..x2, the other columns noise), trained for one epoch, streamed,
    by 2 Ray Train workers (data.batch_size=4096: the epoch's time goes into reading), each asking Ray for
    `memory` = the cap and held to it by a cgroup v1 memory cgroup of its own: every process whose title starts
    with "ray::RayTrainWorker" below the `dlp` process is moved into its cgroup as soon as it shows, the limit
    being the cap less what the process held then (the kernel cannot move earlier charges along), so the whole
    process stays under the cap; no swap on this machine. Each worker's RSS and its parts are sampled every 0.2 s
    from /proc: RSS counts the pages of Ray's object store the worker maps (shared memory the read tasks wrote and
    the cgroup charges to them), so "own" memory is RSS less those shared pages; the cgroup's max usage, failcnt
    and oom_kill are read at the end. The driver and Ray Data's read tasks are not capped by the worker cap (their
    peaks are recorded beside); the whole run sits in a 16 GiB cgroup so a runaway run cannot take the shared
    machine down. Before it, a probe: the same 2-worker streamed run on a small table, watched, uncapped: what a
    worker needs at all (torch + Lightning + Ray, ~0.6 GB), which the cap must leave room above.
    `--in-memory-too` then runs data.streaming=false under the same caps, on the same table (the driver, which
    loads it whole, outgrows the run's 16 GiB before a worker starts) and on one of 1x the cap (a worker loading
    it is OOM-killed by its cgroup): the controls showing the caps bite.

The large-table functions (write_wide_table, capped_train, over_cap, cgroup_unavailable) are what
tests/integration/test_streaming_memory.py runs. Saves benchmarks/results/streaming.json (a part run alone
replaces only its own section).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
WORKER_TITLE = "ray::RayTrainWorker"
GIB = 1 << 30
MIB = 1 << 20
TARGET_RATIO = 0.8
_RUNS = itertools.count()
RUN_ID = re.compile(r"run id:\s+(\w+)")
DATASET_DONE = re.compile(r"Dataset (train|val|test)_\w+ execution finished in ([\d.]+) seconds")
SUMMARY = re.compile(r"(\d+) epochs in ([\d.]+)s \(wall ([\d.]+)s\)")

COMMON = ["model=mlp", "data=csv", "data.source=parquet", "data.target=label", "data.batch_size=512",
          "trainer.progress_bar=false", "trainer.early_stopping.patience=0", "trainer.threads=1",
          "mlflow.log_model=false"]


# ---- running `dlp train` -----------------------------------------------------------------------------------

def _dlp_env(workdir: Path) -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}


def _dlp_command(overrides: Sequence[str], workdir: Path) -> List[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", *COMMON, *overrides, f"output_dir={workdir / 'outputs'}"]


def _run_metrics(workdir: Path, stdout: str) -> dict:
    """test/acc and the per-epoch samples/s of the run the output names (empty when it names none)."""
    from mlflow import MlflowClient

    match = RUN_ID.search(stdout)
    if not match:
        return {}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(match.group(1))
    history = sorted(client.get_metric_history(run.info.run_id, "perf/samples_per_second"), key=lambda m: m.step)
    epochs = sorted(client.get_metric_history(run.info.run_id, "perf/epoch_seconds"), key=lambda m: m.step)
    return {"run_id": run.info.run_id, "test_acc": run.data.metrics.get("test/acc"),
            "samples_per_second": [m.value for m in history], "epoch_seconds": [m.value for m in epochs]}


def _kill(procs: Sequence) -> None:
    """SIGKILL these psutil processes (ones this module started, found as descendants of its `dlp`), by pid."""
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()


def _leftovers(seen: Dict[int, "object"], grace: float = 15.0) -> int:
    """Wait up to `grace` s for the processes seen below a finished `dlp` to exit (Ray stops its own), then kill
    the rest, each by pid (create time checked, so a reused pid is left alone). Returns how many were killed."""
    import psutil

    deadline = time.monotonic() + grace
    while True:
        alive = [p for p in seen.values() if _same_alive(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    _kill(alive)
    psutil.wait_procs(alive, timeout=5)
    return len(alive)


def _same_alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- (b) per-worker memory cgroups --------------------------------------------------------------------------

def cgroup_unavailable() -> Optional[str]:
    """Why per-worker cgroup v1 memory caps cannot be set here, or None when they can (root, a writable
    /sys/fs/cgroup/memory where a cgroup can be made, limited and removed)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root"
    if not (CGROUP_ROOT / "memory.limit_in_bytes").is_file():
        return f"no cgroup v1 memory controller at {CGROUP_ROOT}"
    probe = CGROUP_ROOT / f"dlp-probe-{os.getpid()}"
    try:
        probe.mkdir()
        (probe / "memory.limit_in_bytes").write_text(str(64 * MIB))
    except OSError as e:
        return f"cannot make a memory cgroup under {CGROUP_ROOT}: {e}"
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return None


class _Cgroup:
    """One memory cgroup at `path` with a hard limit (memory and memory+swap), removed by close()."""

    def __init__(self, path: Path, limit: Optional[int]):
        self.path = path
        self.path.mkdir()
        self.limit = limit
        if limit is not None:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):   # absent without swap accounting; there is no swap here anyway
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def figures(self) -> dict:
        oom = dict(line.split() for line in self.read("memory.oom_control").splitlines() if len(line.split()) == 2)
        # with memory+swap limited too, a charge over the limit fails on that counter first: both failcnts count
        memsw = self.path / "memory.memsw.failcnt"
        return {"limit_bytes": self.limit, "max_usage_bytes": int(self.read("memory.max_usage_in_bytes")),
                "failcnt": int(self.read("memory.failcnt")) + (int(memsw.read_text()) if memsw.is_file() else 0),
                "oom_kill": int(oom.get("oom_kill", 0))}

    def close(self) -> None:
        """Move whatever is still inside to the root cgroup, then remove it (retrying while exits settle)."""
        for _ in range(50):
            with contextlib.suppress(OSError):
                for pid in self.read("cgroup.procs").split():
                    with contextlib.suppress(OSError):
                        (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.2)
        print(f"warning: could not remove {self.path}", file=sys.stderr)


def proc_memory(pid: int) -> Optional[Dict[str, int]]:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) of a live process, in bytes, from /proc/<pid>/status."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out if "VmRSS" in out else None


class WorkerWatch:
    """Watches the processes below one `dlp` process: each Ray Train worker is put into its own capped memory
    cgroup the moment its title shows, and every process's RSS is sampled every `interval` seconds.

    The kernel cannot move the charges a process already holds into its new cgroup (move_charge_at_immigrate is
    gone from cgroup v1 in Linux 6.x), so a worker's cgroup limit is the cap less what the process held when it
    was moved (RSS less shared memory, ~0.2 GB: a pooled Ray worker before its actor imports torch). Then the
    whole process stays under the cap, not just what it allocates after the move.

    The workers' cgroups are made inside `parent` (the run's own cgroup), or under the root without one;
    cap=None only watches: no cgroup is made."""

    def __init__(self, root_pid: int, cap: Optional[int], parent: Optional[_Cgroup] = None, interval: float = 0.2):
        self.root_pid, self.cap, self.parent, self.interval = root_pid, cap, parent, interval
        self.workers: Dict[int, dict] = {}      # pid -> figures
        self.groups: Dict[int, _Cgroup] = {}
        self.others: Dict[str, int] = {}        # title -> peak RSS of a process with that title
        self.seen: Dict[int, object] = {}       # pid -> psutil.Process, for the clean-up
        self.node_used_peak = 0
        self.errors: List[str] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-watch", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        return False

    def _loop(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                children = []
            for p in [root, *children]:
                self._sample(p)
            vm = psutil.virtual_memory()
            self.node_used_peak = max(self.node_used_peak, vm.total - vm.available)
            self._stop.wait(self.interval)

    def _sample(self, p) -> None:
        import psutil

        if p.pid in self.workers:
            mem = proc_memory(p.pid)
            if mem:
                self._peaks(self.workers[p.pid], mem)
            return
        try:
            title = " ".join(p.cmdline())[:80] or p.name()
            rss = p.memory_info().rss
        except psutil.Error:
            return
        self.seen.setdefault(p.pid, p)
        if p.pid != self.root_pid and title.startswith(WORKER_TITLE):
            mem = proc_memory(p.pid)
            if mem is None:
                return
            held = mem["VmRSS"] - mem.get("RssShmem", 0)
            w = self.workers[p.pid] = {"pid": p.pid, "rss_when_moved_bytes": mem["VmRSS"],
                                       "held_when_moved_bytes": held, "peak_rss_bytes": 0,
                                       "peak_rss_less_shmem_bytes": 0, "peak_anon_bytes": 0,
                                       "peak_shmem_bytes": 0, "capped": False,
                                       # [seconds since the run started, RSS less shared memory MiB, anon MiB,
                                       # shared memory MiB], every 5 s
                                       "timeline": []}
            if self.cap is not None:
                where = self.parent.path if self.parent else CGROUP_ROOT
                try:
                    group = _Cgroup(where / f"dlp-worker-{os.getpid()}-{len(self.groups)}", max(self.cap - held, 64 * MIB))
                    self.groups[p.pid] = group
                    group.add(p.pid)
                    w["capped"], w["cgroup"] = True, group.path.name
                except OSError as e:
                    self.errors.append(f"pid {p.pid}: {e}")
            self._peaks(w, mem)
            return
        key = "dlp driver" if p.pid == self.root_pid else title.split(" ")[0]
        self.others[key] = max(self.others.get(key, 0), rss)

    def _peaks(self, w: dict, mem: Dict[str, int]) -> None:
        t = time.monotonic() - self.started
        if not w["timeline"] or t - w["timeline"][-1][0] >= 5:
            w["timeline"].append([round(t), (mem["VmRSS"] - mem.get("RssShmem", 0)) // MIB,
                                  mem.get("RssAnon", 0) // MIB, mem.get("RssShmem", 0) // MIB])
        w["peak_rss_bytes"] = max(w["peak_rss_bytes"], mem["VmRSS"])
        w["peak_rss_less_shmem_bytes"] = max(w["peak_rss_less_shmem_bytes"], mem["VmRSS"] - mem.get("RssShmem", 0))
        w["peak_anon_bytes"] = max(w["peak_anon_bytes"], mem.get("RssAnon", 0))
        w["peak_shmem_bytes"] = max(w["peak_shmem_bytes"], mem.get("RssShmem", 0))

    def report(self) -> List[dict]:
        """Each worker's figures, with its cgroup's counters (read before the cgroups go)."""
        out = []
        for pid, w in sorted(self.workers.items()):
            group = self.groups.get(pid)
            out.append({**w, **(group.figures() if group else {})})
        return out

    def close(self) -> None:
        for group in self.groups.values():
            group.close()


def capped_train(data_path: str, cap: int, workdir: Path, streaming: bool = True, epochs: int = 1,
                 workers: int = 2, extra: Sequence[str] = (), timeout: float = 1800, cgroups: bool = True,
                 run_limit: Optional[int] = 16 * GIB) -> dict:
    """`dlp train` of the table at `data_path` with `workers` Ray Train workers, each asking Ray for `cap` bytes
    of memory and held to it by its own memory cgroup (cgroups=False: watched only, no cgroup made).

    The whole run (the `dlp` process and every process it starts) runs in a cgroup of its own limited to
    `run_limit` bytes (None: no limit), the workers' cgroups inside it: a run that would take the shared machine's
    memory (the in-memory path on a table this size) is stopped there. Returns the exit code, wall time, test
    accuracy, each worker's peaks and cgroup counters, the other processes' peaks, and the output's tail.
    `workdir` holds the run's MLflow store, outputs and log (dlp.log)."""
    import psutil

    workdir.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.path={data_path}", f"data.streaming={'true' if streaming else 'false'}",
                 f"trainer.max_epochs={epochs}", f"trainer.num_workers={workers}",
                 f"trainer.resources_per_worker={{CPU:1,memory:{int(cap)}}}", *extra]
    cmd = _dlp_command(overrides, workdir)
    log = workdir / "dlp.log"
    run_group = None
    if cgroups:
        run_group = _Cgroup(CGROUP_ROOT / f"dlp-bench-{os.getpid()}-{next(_RUNS)}", run_limit)
        # the shell joins the cgroup, then becomes `dlp` (same pid): everything it starts is born inside
        cmd = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(run_group.path / "cgroup.procs"), *cmd]
    start = time.perf_counter()
    watch = None
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=workdir, env=_dlp_env(workdir), stdout=out, stderr=subprocess.STDOUT)
        watch = WorkerWatch(proc.pid, cap if cgroups else None, parent=run_group)
        timed_out = False
        with watch:
            try:
                proc.wait(timeout=timeout)
            except BaseException as e:   # the timeout, or this process told to stop: the run's processes go too
                timed_out = isinstance(e, subprocess.TimeoutExpired)
                with contextlib.suppress(psutil.Error):
                    _kill(psutil.Process(proc.pid).children(recursive=True))
                proc.kill()
                proc.wait()
                _kill([p for p in watch.seen.values() if _same_alive(p)])
                if not timed_out:
                    raise
        wall = time.perf_counter() - start
        killed = _leftovers(watch.seen)
        workers_report = watch.report()
        run_figures = run_group.figures() if run_group else None
    finally:
        if watch is not None:
            watch.close()
        if run_group is not None:
            run_group.close()
    text = log.read_text(errors="replace")
    metrics = _run_metrics(workdir, text) if proc.returncode == 0 else {}
    summary = SUMMARY.search(text)
    return {"command": " ".join(["dlp train", *COMMON, *overrides]), "returncode": proc.returncode,
            "timed_out": timed_out, "wall_seconds": round(wall, 1),
            "fit_seconds": float(summary.group(2)) if summary else None, "test_acc": metrics.get("test_acc"),
            "samples_per_second": metrics.get("samples_per_second"), "cap_bytes": int(cap),
            "workers": workers_report, "watch_errors": watch.errors, "run_cgroup": run_figures,
            "other_peak_rss_bytes": dict(sorted(watch.others.items(), key=lambda kv: -kv[1])[:8]),
            "node_used_peak_bytes": watch.node_used_peak, "leftover_processes_killed": killed,
            # each split's Ray Data execution, as Ray logs it (a line Ray deduplicates is missing)
            "ray_data_seconds": {m.group(1): float(m.group(2)) for m in DATASET_DONE.finditer(text)},
            "output_tail": text[-4000:]}


def over_cap(result: dict) -> List[str]:
    """What in a capped run's result shows a worker over its cap (empty: none): its RSS less shared memory (Ray's
    object store, whose pages the readers wrote and the cgroup charges to them) at or over the cap, or its cgroup
    hitting its limit (failcnt) or OOM-killing."""
    cap, bad = result["cap_bytes"], []
    for w in result["workers"]:
        if w["peak_rss_less_shmem_bytes"] >= cap:
            bad.append(f"pid {w['pid']}: peak RSS less shared memory {w['peak_rss_less_shmem_bytes'] / MIB:.0f} MiB "
                       f">= cap {cap / MIB:.0f} MiB")
        if w.get("failcnt") or w.get("oom_kill"):
            bad.append(f"pid {w['pid']}: cgroup failcnt {w.get('failcnt')}, oom_kill {w.get('oom_kill')}")
    return bad


def worker_line(w: dict) -> str:
    line = (f"worker pid {w['pid']}: peak RSS {w['peak_rss_bytes'] / MIB:.0f} MiB = "
            f"{w['peak_rss_less_shmem_bytes'] / MIB:.0f} own (anon {w['peak_anon_bytes'] / MIB:.0f}) + up to "
            f"{w['peak_shmem_bytes'] / MIB:.0f} object-store shared memory")
    if w.get("capped"):
        line += (f"; cgroup: {w['held_when_moved_bytes'] / MIB:.0f} MiB held when moved + max usage "
                 f"{w['max_usage_bytes'] / MIB:.0f} of limit {w['limit_bytes'] / MIB:.0f} MiB, failcnt {w['failcnt']}, "
                 f"oom_kill {w['oom_kill']}")
    return line


# ---- (b) the wide table --------------------------------------------------------------------------------------

def rows_for(cap: int, ratio: float, cols: int, row_group_rows: int) -> int:
    """The rows (a whole number of row groups) of `cols` float32 columns making at least ratio x cap bytes."""
    rows = math.ceil(ratio * cap / (cols * 4))
    return math.ceil(rows / row_group_rows) * row_group_rows


def write_wide_table(root: Path, rows: int, cols: int = 1000, row_group_rows: int = 8192, files: int = 8,
                     seed: int = 0) -> dict:
    """`rows` x `cols` float32 features x0.. and an int64 3-class `label` (x0 + 0.5 x1 - 0.5 x2 cut at its
    tertiles: learnable, the other columns noise) as `files` Parquet files part-NNNNN.parquet under `root`,
    written one row group at a time (memory: one row group, whatever `rows`). Uncompressed, no dictionary or
    statistics (random floats do not compress; 1000 columns' statistics would bloat every footer)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    names = [f"x{j}" for j in range(cols)]
    schema = pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("label", pa.int64())])
    cut = 0.4307 * math.sqrt(1.5)   # the tertiles of N(0, 1.5), the score's law
    rng = np.random.default_rng(seed)
    groups = math.ceil(rows / row_group_rows)
    per_file = math.ceil(groups / files)
    start, written = time.perf_counter(), 0
    for f in range(files):
        n_groups = min(per_file, groups - f * per_file)
        if n_groups <= 0:
            break
        with pq.ParquetWriter(root / f"part-{f:05d}.parquet", schema, compression="none", use_dictionary=False,
                              write_statistics=False) as writer:
            for _ in range(n_groups):
                n = min(row_group_rows, rows - written)
                x = rng.standard_normal((cols, n), dtype=np.float32)   # column-major: each column contiguous
                score = x[0] + 0.5 * x[1] - 0.5 * x[2]
                label = np.digitize(score, [-cut, cut]).astype(np.int64)
                writer.write_table(pa.Table.from_arrays([*(pa.array(x[j]) for j in range(cols)), pa.array(label)],
                                                        schema=schema), row_group_size=n)
                written += n
                del x
    disk = sum(p.stat().st_size for p in root.glob("*.parquet"))
    return {"path": str(root), "rows": written, "feature_columns": cols, "files": min(files, groups),
            "row_groups": groups, "row_group_rows": row_group_rows,
            "row_group_bytes": row_group_rows * cols * 4, "bytes_on_disk": disk,
            "bytes_in_memory_float32": written * cols * 4, "write_seconds": round(time.perf_counter() - start, 1)}


def probe_worker_size(workdir: Path) -> dict:
    """A worker's footprint doing nothing much: a 2-worker streamed run on a 20k-row table, watched, uncapped."""
    from tests.datafiles import synthetic_table, write_shards

    data = write_shards(workdir / "small", synthetic_table(20_000, n_features=32), shards=2, row_group_size=5000)
    result = capped_train(data, GIB, workdir / "run", epochs=1, cgroups=False)
    return {"returncode": result["returncode"], "wall_seconds": result["wall_seconds"],
            "worker_peak_rss_bytes": [w["peak_rss_bytes"] for w in result["workers"]],
            "worker_peak_rss_less_shmem_bytes": [w["peak_rss_less_shmem_bytes"] for w in result["workers"]],
            "output_tail": result["output_tail"][-1500:] if result["returncode"] else None}


def _capped(name: str, path: str, cap: int, workdir: Path, streaming: bool, args) -> dict:
    print(f"{name}: 2 workers, 1 epoch, {'streamed' if streaming else 'in memory'}, each capped at "
          f"{cap / MIB:.0f} MiB ...", flush=True)
    result = capped_train(path, cap, workdir, streaming=streaming, extra=[f"data.batch_size={args.large_batch_size}"],
                          timeout=args.timeout)
    result["over_cap"] = over_cap(result)
    if result["returncode"] == 0:
        result.pop("output_tail")
    else:   # the one line dlp ends with, and the driver's fate
        result["output_tail"] = result["output_tail"][-1500:]
    for w in result["workers"]:
        print("  " + worker_line(w), flush=True)
    print(f"  exit {result['returncode']}, wall {result['wall_seconds']:.0f} s, test/acc {result['test_acc']}, "
          f"driver peak RSS {result['other_peak_rss_bytes'].get('dlp driver', 0) / GIB:.1f} GiB, run cgroup "
          f"oom_kill {(result['run_cgroup'] or {}).get('oom_kill')}", flush=True)
    return result


def large(args, checkpoint=lambda out: None) -> dict:
    """Part (b); `checkpoint(out)` is called with the figures so far after each run (saved as they come)."""
    reason = cgroup_unavailable()
    if reason:
        raise SystemExit(f"--part large needs per-worker memory cgroups: {reason}")
    caps = sorted(set(args.cap_mib))
    out = {"machine": common.machine_info(), "caps_mib": caps, "ratio_asked": args.ratio,
           "batch_size": args.large_batch_size, "streamed": {}}
    with tempfile.TemporaryDirectory(prefix="dlp-stream-large-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        if not args.skip_probe:
            print("probe: an uncapped 2-worker streamed run on a small table ...", flush=True)
            out["probe"] = probe = probe_worker_size(tmp / "probe")
            own = max(probe["worker_peak_rss_less_shmem_bytes"], default=0)
            print(f"  worker peak RSS {', '.join(f'{b / MIB:.0f}' for b in probe['worker_peak_rss_bytes'])} MiB, less "
                  f"shared memory {', '.join(f'{b / MIB:.0f}' for b in probe['worker_peak_rss_less_shmem_bytes'])} MiB; "
                  f"wall {probe['wall_seconds']:.0f} s, exit {probe['returncode']}", flush=True)
            if own > 0.75 * caps[0] * MIB:
                print(f"  warning: a worker needs {own / MIB:.0f} MiB on a small table: a {caps[0]} MiB cap leaves "
                      "little room for the data", flush=True)
        rows = rows_for(caps[-1] * MIB, args.ratio, args.cols, args.row_group_rows)   # >= ratio x every cap
        print(f"writing {rows} rows x {args.cols} float32 columns ({rows * args.cols * 4 / GIB:.2f} GiB) ...", flush=True)
        out["table"] = table = write_wide_table(tmp / "wide", rows, args.cols, args.row_group_rows, args.files)
        print(f"  {table['bytes_on_disk'] / GIB:.2f} GiB on disk in {table['write_seconds']:.0f} s; "
              f"{table['bytes_in_memory_float32'] / (caps[-1] * MIB):.2f}x the largest cap", flush=True)
        path = table["path"] if table["files"] > 1 else str(Path(table["path"]) / "part-00000.parquet")
        for cap in caps:
            out["streamed"][str(cap)] = _capped("streamed", path, cap * MIB, tmp / f"streamed-{cap}", True, args)
            checkpoint(out)
        if args.in_memory_too:
            cap = caps[0] * MIB
            if table["files"] == 1:   # the in-memory path reads one file
                out["in_memory"] = _capped("in_memory", path, cap, tmp / "in_memory", False, args)
                checkpoint(out)
            shutil.rmtree(table["path"])
            small = write_wide_table(tmp / "small", rows_for(cap, 1.0, args.cols, args.row_group_rows), args.cols,
                                     args.row_group_rows, 1)
            print(f"a table of {small['bytes_in_memory_float32'] / cap:.2f}x the cap for the in-memory path", flush=True)
            out["in_memory_1x"] = {"table": small, **_capped("in_memory_1x", str(Path(small["path"]) / "part-00000.parquet"),
                                                             cap, tmp / "in_memory_1x", False, args)}
    return out


# ---- (a) throughput -------------------------------------------------------------------------------------------

def train_once(data_path: str, streaming: bool, workers: int, epochs: int, workdir: Path, timeout: float) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.path={data_path}", f"data.streaming={'true' if streaming else 'false'}",
                 f"trainer.max_epochs={epochs}", f"trainer.num_workers={workers}"]
    start = time.perf_counter()
    proc = subprocess.run(_dlp_command(overrides, workdir), cwd=workdir, env=_dlp_env(workdir), capture_output=True,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - start
    load = os.getloadavg()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"dlp train {' '.join(overrides)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    m = _run_metrics(workdir, proc.stdout)
    after_first = m["samples_per_second"][1:] or m["samples_per_second"]
    summary = SUMMARY.search(proc.stdout)
    return {"wall_seconds": round(wall, 1), "fit_seconds": float(summary.group(2)) if summary else None,
            "samples_per_second": m["samples_per_second"], "epoch_seconds": m["epoch_seconds"],
            "samples_per_second_median": statistics.median(after_first), "test_acc": m["test_acc"],
            "load_average_1m_after": round(load, 2)}


def throughput(args) -> dict:
    import pandas as pd  # noqa: F401  (tests.datafiles imports it lazily)

    from tests.datafiles import synthetic_table, write_shards

    out = {"machine": common.machine_info(), "rows": args.rows, "features": 32, "epochs": args.epochs,
           "target_ratio": TARGET_RATIO, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="dlp-stream-tp-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        df = synthetic_table(args.rows, n_features=32)
        single = tmp / "table.parquet"
        df.to_parquet(single, index=False)
        rg = max(1000, args.rows // 4 // args.row_groups_per_shard)
        shards = write_shards(tmp / "shards", df, shards=4, row_group_size=rg)
        out["files"] = {"in_memory": {"files": 1, "bytes": single.stat().st_size},
                        "streamed": {"files": 4, "row_group_rows": rg,
                                     "bytes": sum(p.stat().st_size for p in Path(shards).glob("*.parquet"))}}
        del df
        paths = {"in_memory": (str(single), False), "streamed": (shards, True)}
        modes = [m for m in ("in_process", "two_workers") if m in args.modes]
        for mode in modes:
            workers = 0 if mode == "in_process" else 2
            rounds = []
            for r in range(args.rounds):
                pair = {}
                for name in (("in_memory", "streamed") if r % 2 == 0 else ("streamed", "in_memory")):
                    path, streaming = paths[name]
                    pair[name] = train_once(path, streaming, workers, args.epochs, tmp / f"{mode}-{r}-{name}",
                                            args.timeout)
                    print(f"{mode} round {r + 1}: {name:<9} {pair[name]['samples_per_second_median']:9.0f} samples/s "
                          f"(epochs {', '.join(f'{v:.0f}' for v in pair[name]['samples_per_second'])}), "
                          f"wall {pair[name]['wall_seconds']:.0f} s, test/acc {pair[name]['test_acc']:.4f}", flush=True)
                pair["ratio"] = pair["streamed"]["samples_per_second_median"] / \
                    pair["in_memory"]["samples_per_second_median"]
                rounds.append(pair)
            ratios = [p["ratio"] for p in rounds]
            med = statistics.median(ratios)
            out["modes"][mode] = {
                "workers": workers, "rounds": rounds, "ratios": ratios, "ratio_median": med,
                "met": med >= TARGET_RATIO,
                **{f"{name}_samples_per_second_median": statistics.median(p[name]["samples_per_second_median"]
                                                                         for p in rounds)
                   for name in ("in_memory", "streamed")},
                **{f"{name}_wall_seconds_median": statistics.median(p[name]["wall_seconds"] for p in rounds)
                   for name in ("in_memory", "streamed")},
                **{f"{name}_test_acc": [p[name]["test_acc"] for p in rounds] for name in ("in_memory", "streamed")}}
    return out


# ---- main ------------------------------------------------------------------------------------------------------

def _print_summary(result: dict) -> None:
    tp = result.get("throughput")
    if tp:
        rows = [[mode, f"{m['in_memory_samples_per_second_median']:.0f}", f"{m['streamed_samples_per_second_median']:.0f}",
                 f"{m['ratio_median']:.2f}x ({', '.join(f'{r:.2f}' for r in m['ratios'])})",
                 "yes" if m["met"] else "**no**",
                 f"{statistics.median(m['in_memory_test_acc']):.4f} / {statistics.median(m['streamed_test_acc']):.4f}",
                 f"{m['in_memory_wall_seconds_median']:.0f} / {m['streamed_wall_seconds_median']:.0f}"]
                for mode, m in tp["modes"].items()]
        print(f"\n(a) throughput, {tp['rows']} rows x 32 features, {tp['epochs']} epochs, median samples/s after epoch 1:")
        print(common.table(["mode", "in-memory", "streamed", "streamed / in-memory", f">= {TARGET_RATIO}x",
                            "test/acc mem / str", "wall s mem / str"], rows))
    lg = result.get("large")
    if lg:
        t = lg["table"]
        print(f"\n(b) large table: {t['rows']} rows x {t['feature_columns']} float32 = "
              f"{t['bytes_in_memory_float32'] / GIB:.2f} GiB in memory ({t['bytes_on_disk'] / GIB:.2f} GiB on disk), "
              f"{t['bytes_in_memory_float32'] / (max(lg['caps_mib']) * MIB):.2f}x the largest per-worker cap")
        runs = [(f"streamed, cap {cap} MiB", r) for cap, r in lg["streamed"].items()]
        runs += [(f"in memory, cap {r['cap_bytes'] // MIB} MiB{', table 1x the cap' if name.endswith('1x') else ''}", r)
                 for name in ("in_memory", "in_memory_1x") for r in [lg.get(name)] if r]
        for name, r in runs:
            own = ", ".join(f"{w['peak_rss_less_shmem_bytes'] / MIB:.0f}" for w in r["workers"]) or "-"
            rss = ", ".join(f"{w['peak_rss_bytes'] / MIB:.0f}" for w in r["workers"]) or "-"
            print(f"  {name}: exit {r['returncode']}, wall {r['wall_seconds']:.0f} s, test/acc {r['test_acc']}; "
                  f"workers' peak RSS less shared memory {own} MiB (RSS {rss}); over cap: "
                  f"{'; '.join(r['over_cap']) or 'none'}; driver peak "
                  f"{r['other_peak_rss_bytes'].get('dlp driver', 0) / GIB:.1f} GiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("both", "throughput", "large"), default="both")
    parser.add_argument("--rows", type=int, default=300_000, help="(a) rows of the table that fits")
    parser.add_argument("--epochs", type=int, default=3, help="(a) epochs per run (the first is not counted)")
    parser.add_argument("--rounds", type=int, default=2, help="(a) rounds per mode, the paths' order alternating")
    parser.add_argument("--modes", nargs="+", default=["in_process", "two_workers"])
    parser.add_argument("--row-groups-per-shard", type=int, default=8, help="(a) row groups in each of 4 shards")
    parser.add_argument("--cap-mib", type=int, nargs="+", default=[1536],
                        help="(b) per-worker memory caps, one streamed run each (the table is sized for the largest)")
    parser.add_argument("--ratio", type=float, default=4.0, help="(b) table size (float32) / cap")
    parser.add_argument("--cols", type=int, default=250, help="(b) float32 feature columns")
    parser.add_argument("--row-group-rows", type=int, default=32768, help="(b) rows per row group")
    parser.add_argument("--files", type=int, default=1, help="(b) Parquet files (the in-memory path reads one)")
    parser.add_argument("--large-batch-size", type=int, default=4096, help="(b) data.batch_size")
    parser.add_argument("--skip-probe", action="store_true", help="(b) skip the uncapped small-table probe")
    parser.add_argument("--in-memory-too", action="store_true",
                        help="(b) also run data.streaming=false under the same caps, on the table and on one of 1x "
                             "the cap (both expected to fail)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per dlp run")
    args = parser.parse_args(argv)
    common.quiet()
    # a SIGTERM unwinds like Ctrl-C: the runs' processes are stopped, the cgroups and the data removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    saved = common.load_json("streaming.json") or {}
    result = {k: v for k, v in saved.items() if k in ("throughput", "large")}
    command = " ".join(["python benchmarks/streaming.py", *(argv if argv is not None else sys.argv[1:])])
    if args.part in ("both", "throughput"):
        result["throughput"] = {"command": command, **throughput(args)}
        common.save_json("streaming.json", result)
    if args.part in ("both", "large"):
        def checkpoint(out):
            common.save_json("streaming.json", {**result, "large": {"command": command, "unfinished": True, **out}})

        result["large"] = {"command": command, **large(args, checkpoint)}
    _print_summary(result)
    path = common.save_json("streaming.json", result)
    print(f"wrote {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
