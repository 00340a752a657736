"""A trial trained inside its own Tune trial actor, with no Ray Train worker group: what makes a sweep on one
machine cost what an in-process loop costs.

A trial of trainer.num_workers <= 1 on a one-node cluster (or with tune.in_process=true; tuner.py decides) calls
the driver's train() with num_workers=0 in the trial's process: the same nested MLflow child run, epochs,
checkpoints (<output_dir>/checkpoints/<child run id>, on the driver's node, where every such trial runs) and test
pass as `dlp train`. Each epoch reaches Tune from TuneReport once the epoch's checkpoints are written. When the
scheduler stops the trial, Tune's answer to that report is SystemExit in the trial's thread, which TuneReport
turns into errors.Stopped: the child run ends KILLED and the trial's thread exits as Tune expects.

Tune reuses the trial actors (TuneConfig.reuse_actors), so each slot imports torch, Lightning and MLflow once, and
the datamodule is built once per process for all trials whose data settings and seed match.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from omegaconf import DictConfig, OmegaConf

from pipelines.errors import Stopped
from pipelines.tracking import callbacks, names

_DATA: Dict[str, object] = {}     # this process's datamodule, by its data settings and seed


def run(cfg: DictConfig, tags: Dict[str, str], continue_run: Optional[str]) -> None:
    """Train one trial's (validated) config here; continue `continue_run` from its last checkpoint if it has one."""
    import ray

    from pipelines.training.driver import train

    # a reused actor waits this long for a stopped trial's thread to unwind before it takes the next trial
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    tags = {**tags, names.TRIAL_PROCESS: f"{ray.util.get_node_ip_address()}:{os.getpid()}"}
    try:
        train(cfg, run_tags=tags, continue_run=continue_run, fit_callbacks=[TuneReport()],
              datamodule=datamodule(cfg))
    except Stopped:
        # how Tune's own stop ends a trial's thread: returning would make Tune's wrapper report once more, and
        # that report would wait forever for a trial Tune has already let go
        raise SystemExit(0) from None


def prepare(cfg: DictConfig, continue_run: Optional[str], cpus: int) -> None:
    """Make a trial's config one for this process (before it is validated): no workers, its one device as a Ray
    Train worker's would be (a GPU with trainer.use_gpu — Ray makes only the trial's own visible — else the CPU),
    the trial's CPUs as torch threads unless trainer.threads says otherwise, and resume from the continued run's
    last checkpoint."""
    from pipelines.training.checkpoints import LAST
    from pipelines.training.fit import checkpoint_dir

    cfg.trainer.num_workers = 0
    cfg.trainer.accelerator, cfg.trainer.devices = ("gpu" if cfg.trainer.use_gpu else "cpu"), 1
    if cfg.trainer.threads == 0:
        cfg.trainer.threads = max(1, int(cpus))
    last = checkpoint_dir(cfg, continue_run) / LAST if continue_run is not None else None
    if last is not None and last.is_file():
        cfg.resume = str(last)


def datamodule(cfg: DictConfig):
    """The datamodule of cfg.data and cfg.seed, built once per process (one kept: another setting replaces it)."""
    import datamodules

    key = json.dumps([OmegaConf.to_container(cfg.data, resolve=True), int(cfg.seed)], sort_keys=True, default=str)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = datamodules.build(cfg.data, cfg.seed)
    dm = _DATA[key]
    dm.first_epoch = 0     # the driver sets it again when the trial resumes
    return dm


class TuneReport(callbacks.EpochReport):
    """Each epoch's report to Tune, after that epoch's checkpoints (listed after fit()'s own)."""

    def __init__(self):
        import ray

        super().__init__(ray.util.get_node_ip_address())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from ray import tune

        try:
            tune.report(self.measured(trainer)[1])
        except SystemExit:    # Tune's stop: see the module docstring
            raise Stopped(f"trial stopped by the scheduler after epoch {trainer.current_epoch + 1}") from None
