"""A `dlp pipeline` command as a checked plan: the training config, conf/pipeline.yaml's steps (with
pipeline.<step>.<key>=value applied), and the sweep that replaces training when the command names tune=<y>."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from omegaconf import DictConfig, OmegaConf

from pipelines.errors import ConfigError
from pipelines.workflow.steps import STEPS


@dataclass
class Pipeline:
    cfg: DictConfig                  # the training config (experiment + overrides)
    steps: DictConfig                # conf/pipeline.yaml steps, with pipeline.* overrides applied
    tune_args: List[str]             # tune=<y> and tune.* overrides, if the pipeline tunes instead of training
    overrides: List[str]


def prepare(args: List[str]) -> Pipeline:
    """Split `dlp pipeline` arguments into training, tune and step overrides; validate all before running."""
    from pipelines.config.compose import CONF_DIR, compose

    tune_args, step_overrides, overrides = [], [], []
    for arg in args:
        key = arg.split("=", 1)[0]
        if key == "tune" or key.startswith("tune."):
            tune_args.append(arg)
        elif key.startswith("pipeline."):
            step_overrides.append(arg[len("pipeline."):])
        else:
            overrides.append(arg)
    spec = OmegaConf.load(CONF_DIR / "pipeline.yaml")
    try:
        steps = OmegaConf.merge(spec.steps, OmegaConf.from_dotlist(step_overrides))
    except Exception as e:  # noqa: BLE001 — a malformed dotlist
        raise ConfigError(f"pipeline: {str(e).splitlines()[0]}") from None
    for override in step_overrides:
        step, _, key = override.split("=", 1)[0].partition(".")
        if step not in spec.steps or key not in spec.steps[step] or key == "needs":
            allowed = ", ".join(f"{s}.{k}" for s in spec.steps for k in spec.steps[s] if k != "needs")
            raise ConfigError(f"pipeline: unknown step parameter '{step}.{key}' (allowed: {allowed})")
    _check_graph(steps)
    if tune_args:
        from pipelines.sweeps import spec as sweep_spec

        sweep_spec.prepare([*tune_args, *overrides])   # the sweep's errors, before anything runs
    return Pipeline(compose(overrides), steps, tune_args, overrides)


def _check_graph(steps: DictConfig) -> None:
    for name, step in steps.items():
        if name not in STEPS:
            raise ConfigError(f"pipeline: step '{name}' has no implementation (known: {', '.join(STEPS)})")
        for need in step.needs:
            if need not in steps or list(steps).index(need) >= list(steps).index(name):
                raise ConfigError(f"pipeline: step '{name}' needs '{need}', which is not an earlier step")
