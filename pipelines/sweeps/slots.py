"""Where a sweep's trials run, what each one reserves, and how many run at once.

In process (sweeps/in_process.py; trainer.num_workers <= 1, on a one-node cluster unless tune.in_process says
otherwise; a head node without CPUs still makes a cluster of several): a trial holds its one worker's resources
itself (trainer.resources_per_worker, 1 CPU by default, and a GPU with trainer.use_gpu) on the driver's node,
where its checkpoints and a local tracking store live; by default as many trials run at once as that node has
room for.

With a worker group (Ray Train): the trial's driver only waits on its workers, so it reserves a little logical
memory and no CPU — on a 2-CPU machine two trial drivers holding a CPU each would leave their workers none
(deadlock) — and stays on the driver's node, while its workers go anywhere; by default as many trials run at
once as the cluster fits their workers. A sweep whose concurrent worker groups cannot fit is refused before
anything starts: Ray would wait forever.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from omegaconf import DictConfig

from pipelines.errors import UserError

MB = 1024 ** 2


@dataclass(frozen=True)
class Slots:
    in_process: bool
    concurrent: int
    resources: Dict[str, float]     # what one trial's Tune actor reserves


def plan(sweep) -> Slots:
    """The Slots of a sweep (spec.Sweep) on the connected Ray cluster."""
    import ray

    from pipelines.cluster import nodes

    cfg, spec = sweep.cfg, sweep.spec
    alive, ip = [n for n in ray.nodes() if n.get("Alive")], nodes.driver_node_ip()   # a CPU-less head counts
    inside = cfg.trainer.num_workers <= 1 and (len(alive) == 1 if spec.in_process is None else bool(spec.in_process))
    own = {"memory": spec.trial_memory_mb * MB, f"node:{ip}": 0.001}    # a tiny share: any number of them fits
    if inside:
        here = next((n["Resources"] for n in alive if n["NodeManagerAddress"] == ip), {})
        per_trial = per_worker(cfg)
        room = fits(per_trial, here, "the driver's node", "trainer.resources_per_worker")
        return Slots(True, spec.max_concurrent_trials or room, {**per_trial, **own})
    total = ray.cluster_resources()
    check_fits(cfg, 1, total)
    room = fits({k: v * cfg.trainer.num_workers for k, v in per_worker(cfg).items()}, total, "the cluster",
                f"trainer.num_workers={cfg.trainer.num_workers} x trainer.resources_per_worker")
    concurrent = spec.max_concurrent_trials or room
    check_fits(cfg, concurrent, total)
    return Slots(False, concurrent, own)


def per_worker(cfg: DictConfig) -> Dict[str, float]:
    t = cfg.trainer
    out = {k: float(v) for k, v in (dict(t.resources_per_worker) or {"CPU": 1}).items()}
    if t.use_gpu:
        out.setdefault("GPU", 1.0)
    return out


def fits(need: Dict[str, float], have: Dict[str, float], where: str, why: str) -> int:
    """How many of `need` fit in `have` (at least one, or a UserError naming the resource short)."""
    room = None
    for resource, amount in need.items():
        if amount <= 0:
            continue
        if amount > have.get(resource, 0):
            raise UserError(f"tune: one trial needs {amount:g} {resource} ({why}) but {where} has "
                            f"{have.get(resource, 0):g}")
        n = int(have.get(resource, 0) // amount)
        room = n if room is None else min(room, n)
    return max(1, room or 1)


def check_fits(cfg: DictConfig, concurrent: int, total: Dict[str, float]) -> None:
    """Refuse a sweep whose concurrent trials' worker groups cannot all be placed on a cluster with `total`
    resources: Ray would wait forever."""
    t = cfg.trainer
    for resource, amount in per_worker(cfg).items():
        need, have = t.num_workers * amount, total.get(resource, 0)
        if need > have:
            raise UserError(f"tune: one trial needs {need:g} {resource} (trainer.num_workers={t.num_workers} x "
                            f"{amount:g}) but the cluster has {have:g}")
        if need * concurrent > have:
            raise UserError(f"tune: {concurrent} concurrent trials x {need:g} {resource} each need "
                            f"{need * concurrent:g} {resource}, the cluster has {have:g}; set "
                            f"tune.max_concurrent_trials={int(have // need)} or fewer trainer.num_workers")
