"""`dlp tune experiment=X tune=Y [overrides] [resume=true|false]` as a checked Sweep, before Ray or MLflow start.

conf/tune/Y.yaml (pipelines.config.sweep_schema.SweepConfig) names a search space over any config key, the
search algorithm, the scheduler, the budget and the overrides every trial shares. A space key the config lacks,
a value that does not validate, or a distribution the algorithm cannot take fails here, naming the key.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from pipelines.errors import ConfigError, UserError
from pipelines.sweeps.search import finite_choices
from pipelines.tracking import store

log = logging.getLogger("dlp")

_MISSING = object()
ARITY = {"choice": None, "grid": None, "uniform": 2, "loguniform": 2, "randint": 2}   # the q-kinds take 3


@dataclass
class Sweep:
    """A validated `dlp tune` command: the search spec, the training config every trial starts from."""
    name: str
    spec: DictConfig
    cfg: DictConfig
    overrides: List[str]
    resume: Optional[bool]           # None: continue an unfinished sweep of the same command if there is one
    metric: str
    mode: str
    encoded: List[str] = field(default_factory=list)   # keys whose choices travel as JSON strings

    @property
    def signature(self) -> str:
        """What makes two commands 'the same sweep' for resuming."""
        return json.dumps({"tune": self.name, "overrides": self.overrides})


def prepare(args: List[str]) -> Sweep:
    """Parse `dlp tune` arguments and check everything that can be checked before Ray or MLflow start."""
    from pipelines.config.compose import compose, validate
    from pipelines.training.checks import check_metric

    name, resume, tune_overrides, overrides = None, None, [], []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "tune":
            name = value
        elif key == "resume" and value.lower() in ("true", "false", "auto"):
            resume = {"true": True, "false": False, "auto": None}[value.lower()]
        elif key.startswith("tune."):
            tune_overrides.append(arg[len("tune."):])
        else:
            overrides.append(arg)
    if not name:
        raise UserError(f"tune: name a search space with tune=<name> (available: {', '.join(available())})")
    spec = load_spec(name, tune_overrides)
    cfg = compose([*spec.overrides, *overrides])   # the command line wins over the sweep's fixed overrides
    plain = OmegaConf.to_container(cfg, resolve=True)
    if plain["trainer"]["num_workers"] < 1:        # one worker: in the trial's process or a worker group of one
        plain["trainer"]["num_workers"] = 1
    if spec.in_process and plain["trainer"]["num_workers"] > 1:
        raise ConfigError(f"tune.in_process=true trains each trial in one process, but trainer.num_workers="
                          f"{plain['trainer']['num_workers']}; set trainer.num_workers=1 or tune.in_process=null")
    plain["trainer"]["progress_bar"] = False       # the sweep's table replaces per-trial epoch lines
    plain["mlflow"]["tracking_uri"] = store.absolute_uri(store.tracking_uri(cfg))
    plain["mlflow"]["experiment_name"] = cfg.mlflow.experiment_name or cfg.name
    cfg = validate(OmegaConf.create(plain))
    metric, mode = spec.metric or cfg.monitor.metric, spec.mode or cfg.monitor.mode
    check_metric(metric, _task(cfg), key="tune: metric")
    encoded = _check_space(cfg, spec)
    if spec.search == "optuna":
        _warn_about_budget(spec, encoded)
    return Sweep(name, spec, cfg, overrides, resume, metric, mode, encoded)


def _task(cfg: DictConfig) -> str:
    import datamodules

    dm = datamodules.build(cfg.data, cfg.seed)
    dm.setup("fit")  # bad data fails here, before any run
    return dm.spec.task


def _warn_about_budget(spec: DictConfig, encoded: List[str]) -> None:
    choices = finite_choices(tune_space(spec.space, spec.search, encoded))
    size = math.prod(len(values) for values in choices.values()) if choices else 0
    if size and spec.num_samples > size:
        log.warning("tune: the space has %d configs and TPE tries each once: %d trials, not num_samples=%d",
                    size, size, spec.num_samples)


def available() -> List[str]:
    from pipelines.config import compose

    return sorted(p.stem for p in (compose.CONF_DIR / "tune").glob("*.yaml"))


def load_spec(name: str, overrides: List[str] = ()) -> DictConfig:
    """conf/tune/<name>.yaml merged into SweepConfig, then `tune.key=value` overrides; read-only."""
    from pipelines.config import compose
    from pipelines.config.sweep_schema import SWEEP_CHOICES, SweepConfig

    path = compose.CONF_DIR / "tune" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"tune: unknown search space '{name}' (available: {', '.join(available())})")
    try:
        spec = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path),
                               OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # noqa: BLE001 — OmegaConf raises several types, all meaning "bad sweep file"
        raise ConfigError(f"tune: {path.name}: {str(e).splitlines()[0]}") from None
    for key, allowed in SWEEP_CHOICES.items():
        if spec[key] not in allowed:
            raise ConfigError(f"tune: {key}: unknown '{spec[key]}' (allowed: {', '.join(allowed)})")
    for key, ok, why in (("num_samples", spec.num_samples >= 1, "must be >= 1"),
                         ("max_concurrent_trials", spec.max_concurrent_trials is None or spec.max_concurrent_trials >= 1,
                          "must be >= 1 (or null: as many as fit)"),
                         ("grace_period", spec.grace_period >= 1, "must be >= 1"),
                         ("reduction_factor", spec.reduction_factor >= 2, "must be >= 2"),
                         ("mode", spec.mode in (None, "min", "max"), "must be min or max"),
                         ("space", len(spec.space) > 0, "names no hyperparameter")):
        if not ok:
            raise ConfigError(f"tune: {key}={spec[key]}: {why}")
    for key, dist in spec.space.items():
        _check_distribution(key, dist, spec.search)
    OmegaConf.set_readonly(spec, True)
    return spec


def _check_distribution(key: str, dist, search: str) -> None:
    from pipelines.config.sweep_schema import SPACE_KINDS

    if not isinstance(dist, DictConfig) or len(dist) != 1 or next(iter(dist)) not in SPACE_KINDS:
        raise ConfigError(f"tune: space.{key}: expected one of {{{', '.join(SPACE_KINDS)}}}: [...]")
    kind, values = next(iter(dist.items()))
    arity = ARITY.get(kind, 3)
    if arity is None and len(values) < 1 or arity is not None and len(values) != arity:
        raise ConfigError(f"tune: space.{key}: {kind} takes {arity or 'a non-empty list of'} values")
    if search == "grid" and kind not in ("grid", "choice"):
        raise ConfigError(f"tune: space.{key}: search=grid needs grid or choice values, not {kind}")
    if search == "optuna" and kind == "grid":
        raise ConfigError(f"tune: space.{key}: search=optuna samples; use choice instead of grid")


def _check_space(cfg: DictConfig, spec: DictConfig) -> List[str]:
    """Every key names a config key, and one value of each validates; returns the keys whose choices are
    not scalars (Optuna takes scalars only: those travel as JSON strings)."""
    from pipelines.config.compose import validate

    encoded = []
    for key, dist in spec.space.items():
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"tune: space key '{key}' is not a key of experiment {cfg.name}'s config "
                              f"(dlp config show experiment={cfg.name})")
        kind, values = next(iter(dist.items()))
        values = OmegaConf.to_container(values)
        candidates = values if kind in ("choice", "grid") else values[:1]
        for value in candidates:
            trial = OmegaConf.create(OmegaConf.to_container(cfg))
            OmegaConf.update(trial, key, value, merge=False)
            try:
                validate(trial)
            except ConfigError as e:
                raise ConfigError(f"tune: space.{key} value {value!r}: {str(e).removeprefix('config: ')}") from None
        if kind in ("choice", "grid") and any(isinstance(v, (list, dict)) for v in values):
            encoded.append(key)
    return encoded


def tune_space(space: DictConfig, search: str, encoded: List[str]) -> Dict[str, Any]:
    """The declarative space as Ray Tune domains (choice -> grid_search under search=grid)."""
    from ray import tune

    out = {}
    for key, dist in space.items():
        kind, values = next(iter(dist.items()))
        values = OmegaConf.to_container(values)
        if key in encoded:
            values = [json.dumps(v) for v in values]
        if kind == "grid" or (kind == "choice" and search == "grid"):
            out[key] = tune.grid_search(values)
        else:
            out[key] = getattr(tune, kind)(*values) if kind != "choice" else tune.choice(values)
    return out


def decode(params: Dict[str, Any], encoded: List[str]) -> Dict[str, Any]:
    return {k: json.loads(v) if k in encoded else v for k, v in params.items()}
