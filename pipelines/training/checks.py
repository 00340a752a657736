"""What `dlp train` checks before any MLflow run exists: the monitored metric, and the checkpoint `resume=` names
(`dlp tune` checks its sweep metric with the same rule)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from pipelines.errors import ConfigError, UserError

log = logging.getLogger("dlp")


def check_metric(metric: str, task: str, key: str = "monitor.metric") -> None:
    """`metric` must be one the model logs for a `task` task (val/* or train/*); `key` names it in the error."""
    import models

    available = models.metric_names(task, "val") + models.metric_names(task, "train")
    if metric not in available:
        raise ConfigError(f"{key}={metric}: not produced by a {task} task (available: {', '.join(available)})")


def resolve_resume(cfg: DictConfig) -> Optional[Path]:
    """The checkpoint `resume=` asks for; a missing one is an error, never a silent fresh start."""
    if cfg.resume is None or cfg.resume == "auto":  # auto: ray_driver.unfinished_run
        return None
    if cfg.resume == "last" and cfg.trainer.num_workers >= 1:   # Ray keeps the checkpoints: as auto, see driver
        return None
    if cfg.resume == "last":
        root = Path(cfg.output_dir) / "checkpoints"
        found = sorted(root.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"resume=last: no last.ckpt under {root}/; train once first or pass resume=<path.ckpt>")
        return found[-1].resolve()
    path = Path(cfg.resume).expanduser()
    if not path.is_file():
        raise UserError(f"resume: checkpoint '{path}' does not exist")
    return path.resolve()


def check_checkpoint_matches(path: Path, cfg: DictConfig) -> int:
    """A resume checkpoint must be readable and trained with the same model settings; returns the epoch (0-based)
    it was written after."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = ckpt.get("dlp_cfg") or {}
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"resume: cannot read checkpoint '{path}': {type(e).__name__}") from None
    want = OmegaConf.to_container(cfg.model, resolve=True)
    if saved.get("model") and saved["model"] != want:
        diff = sorted(k for k in set(want) | set(saved["model"]) if want.get(k) != saved["model"].get(k))
        raise UserError(f"resume: checkpoint '{path}' was trained with different model settings ({', '.join(diff)})")
    return int(ckpt.get("epoch", -1))
