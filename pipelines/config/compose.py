"""Compose conf/ with Hydra's compose API and validate the result against the typed schemas of this folder.

Used by every `dlp` subcommand; `dlp config show [overrides]` prints what this returns.
Errors surface as ConfigError with one line naming the key and what is allowed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from pipelines.config.data_schema import DATA_SCHEMAS
from pipelines.config.model_schema import MODEL_SCHEMAS
from pipelines.config.schema import CHOICES, RootConfig
from pipelines.errors import ConfigError, first_line

# Keys a data source cannot do without (yaml marks them ???, which a merge would drop silently).
# (data.kind, data.source) -> keys that source cannot do without
REQUIRED_BY_SOURCE = {("tabular", "csv"): ("path", "target"), ("tabular", "parquet"): ("path", "target"),
                      ("image", "image_folder"): ("path",), ("image", "mnist"): ("path",), ("image", "cifar10"): ("path",),
                      ("text", "csv"): ("path", "text", "target"), ("text", "parquet"): ("path", "text", "target"),
                      ("text", "huggingface"): ("path",),
                      ("timeseries", "csv"): ("path", "time", "target"),
                      ("timeseries", "parquet"): ("path", "time", "target")}

CONF_DIR = Path(os.environ.get("DLP_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides and validate it.

    Returns a read-only DictConfig with every interpolation resolved.
    Raises ConfigError for unknown keys, wrong types, unknown group options and bad values.
    """
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException

    forced = [_parsed(o, _force(o)) for o in overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            raw = hydra_compose(config_name=config_name, overrides=forced)
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e)) from None
    except HydraException as e:
        raise ConfigError(_hydra_message(e)) from None
    return validate(raw)


def _force(override: str) -> str:
    """`a.b=v` -> `++a.b=v`, `seed=1` -> `++seed=1`: a schema key conf/ leaves out (every default lives in the
    schema) is still settable without `+`; a key the schema lacks then fails in `validate`, with its name. A group
    choice (`model=cnn`, a folder of conf/) stays as it is."""
    key = override.split("=", 1)[0]
    if "=" not in override or override.startswith(("+", "~")):
        return override
    if "." in key or not (CONF_DIR / key).is_dir():
        return "++" + override
    return override


def _parsed(override: str, forced: str) -> str:
    """`forced` if Hydra's grammar reads it, else a ConfigError naming the override as the user typed it (Hydra
    parses every override at once and names none, or only its `++` form)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(forced)
    except HydraException as e:
        reason = first_line(str(e)).split(" expecting ", 1)[0]
        raise ConfigError(f"config: cannot parse override '{override}' ({reason}); write key=value with balanced "
                          "brackets and quotes, quoting a value with spaces or special characters: key='a b'") from None
    return forced


def validate(raw: DictConfig) -> DictConfig:
    """Merge a composed config into the typed schema; return it resolved and read-only."""
    raw = OmegaConf.create(OmegaConf.to_container(raw, resolve=False))
    raw.pop("hydra", None)
    schema = OmegaConf.structured(RootConfig)
    schema.model = _group_schema("model", "name", raw, MODEL_SCHEMAS)
    schema.data = _group_schema("data", "kind", raw, DATA_SCHEMAS)
    try:
        cfg = OmegaConf.merge(schema, raw)
        OmegaConf.resolve(cfg)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise ConfigError(_unknown_key_message(e, schema)) from None
    except ValidationError as e:
        raise ConfigError(f"config: {e.full_key}: {first_line(e.msg)}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {getattr(e, 'full_key', '') or ''} {first_line(str(e))}") from None
    _check_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _group_schema(group: str, field: str, raw: DictConfig, schemas: dict) -> DictConfig:
    node = raw.get(group)
    if not isinstance(node, DictConfig) or field not in node:
        raise ConfigError(f"config: {group}.{field} is required (one of: {', '.join(schemas)})")
    name = node[field]
    if name not in schemas:
        raise ConfigError(f"config: {group}.{field}: unknown '{name}' (allowed: {', '.join(schemas)})")
    return OmegaConf.structured(schemas[name])


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_values(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in allowed:
            raise ConfigError(f"config: {key}: unknown '{value}' (allowed: {', '.join(_shown(a) for a in allowed)})")
    d, t, o = cfg.data, cfg.trainer, cfg.optim
    checks = [
        ("data.batch_size", d.batch_size >= 1, "must be >= 1"),
        ("data.val_fraction", 0 < d.val_fraction < 1, "must be in (0, 1)"),
        ("data.test_fraction", 0 < d.test_fraction < 1, "must be in (0, 1)"),
        ("data.val_fraction", d.val_fraction + d.test_fraction < 0.9, "val + test fractions must leave >= 10% for training"),
        ("trainer.max_epochs", t.max_epochs >= 1, "must be >= 1"),
        ("trainer.accumulate_grad_batches", t.accumulate_grad_batches >= 1, "must be >= 1"),
        ("trainer.gradient_clip_val", t.gradient_clip_val >= 0, "must be >= 0 (0 disables clipping)"),
        ("trainer.num_workers", t.num_workers >= 0, "must be >= 0 (0 trains in this process)"),
        ("optim.lr", o.lr > 0, "must be > 0"),
        ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
        ("optim.l1", o.l1 >= 0, "must be >= 0"),
        ("model.dropout", 0 <= cfg.model.dropout < 1, "must be in [0, 1)"),
    ]
    m = cfg.model
    if m.name == "rnn_classifier":
        checks.append(("model.pooling", m.pooling != "cls", "rnn_classifier pools with last, mean or max"))
    if m.name == "transformer":
        checks += [("model.d_model", m.d_model % m.nhead == 0, f"must be divisible by model.nhead={m.nhead}"),
                   ("model.pooling", m.pooling != "max", "transformer pools with cls, mean or last")]
    if m.name in ("rnn_classifier", "transformer") and d.kind not in ("text", "timeseries"):
        checks.append(("model.name", False, f"{m.name} needs sequence data (data.kind text or timeseries), "
                                            f"not {d.kind}"))
    if m.name == "rnn_classifier" and d.kind != "text":
        checks.append(("model.name", False, "rnn_classifier needs text data; use model=forecaster for time series"))
    if m.name == "forecaster" and d.kind != "timeseries":
        checks.append(("model.name", False, "forecaster needs time-series data (data.kind=timeseries)"))
    if (m.name == "cnn" and d.kind in ("text", "timeseries")) or (m.name == "mlp" and d.kind == "text"):
        checks.append(("model.name", False, f"{m.name} does not take {d.kind} data; use "
                                            f"{'rnn_classifier or transformer' if d.kind == 'text' else 'forecaster, transformer or mlp'}"))
    if d.kind == "timeseries":
        season = m.get("season", 0) or 0
        checks += [("model.season", 0 <= season <= d.lookback, f"must be in [0, data.lookback={d.lookback}]"),("data.lookback", d.lookback >= 1, "must be >= 1"), ("data.horizon", d.horizon >= 1, "must be >= 1"),
                   ("data.stride", d.stride >= 1, "must be >= 1")]
    if d.kind in ("tabular", "image", "text"):
        checks += [("data.shuffle_buffer", d.shuffle_buffer >= 0, "must be >= 0 (0: blocks in a seeded order only)"),
                   ("data.stream_above", 0 < d.stream_above <= 1, "must be in (0, 1]: a share of this machine's memory")]
    if d.kind == "text":
        checks += [("data.max_length", d.max_length >= 1, "must be >= 1"), ("data.min_freq", d.min_freq >= 1, "must be >= 1"),
                   ("data.max_vocab", d.max_vocab >= 3, "must be >= 3 (<pad>, <unk> and one token)")]
    for key in REQUIRED_BY_SOURCE.get((d.kind, d.source), ()):
        if d.get(key) in (None, "", "???"):
            raise ConfigError(f"config: data.{key} is required for data.source={d.source}; add data.{key}=...")
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"config: {key}={OmegaConf.select(cfg, key)}: {why}")
    if cfg.resume is not None and cfg.resume not in ("last", "auto") and not str(cfg.resume).endswith(".ckpt"):
        raise ConfigError(f"config: resume={cfg.resume}: expected a path to a .ckpt file, 'last' or 'auto'")
    if cfg.resume == "auto" and cfg.trainer.num_workers < 1:
        raise ConfigError("config: resume=auto continues a distributed run from Ray's checkpoints; "
                          "set trainer.num_workers >= 1, or use resume=last")


def with_absolute_paths(cfg: DictConfig) -> dict:
    """cfg as plain data with its local paths made absolute, for processes with another working directory
    (Ray Train workers, Tune trials): output_dir, data.path, model.embedding_path."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["output_dir"] = str(Path(cfg.output_dir).resolve())
    for section, key in (("data", "path"), ("model", "embedding_path")):
        value = plain[section].get(key)
        if value and "://" not in value and Path(value).expanduser().exists():
            plain[section][key] = str(Path(value).expanduser().resolve())
    return plain


def _schema_keys(full_key: str, schema: Optional[DictConfig] = None) -> List[str]:
    """Keys allowed beside `full_key` (at its parent), for error messages."""
    schema = schema if schema is not None else OmegaConf.structured(RootConfig)
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def _unknown_key_message(e: OmegaConfBaseException, schema: Optional[DictConfig] = None) -> str:
    key = e.full_key or str(e.key)
    allowed = _schema_keys(key, schema)
    if allowed:
        hint = f" (allowed: {', '.join(allowed)})"
    elif key.split(".")[0] in ("model", "data"):
        hint = f" for the selected {key.split('.')[0]} (its keys: dlp config show)"
    else:
        hint = ""
    return f"config: unknown key '{key}'{hint}"


def _missing_option_message(e) -> str:
    target = getattr(e, "missing_cfg_file", None) or ""
    options = getattr(e, "options", None)
    if "/" in target and options is not None:
        group, option = target.rsplit("/", 1)
        return f"config: unknown option '{option}' for group '{group}' (available: {', '.join(sorted(options))})"
    return f"config: {first_line(str(e))}"


def _hydra_message(e: Exception) -> str:
    cause = e.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return _unknown_key_message(cause)
    if isinstance(cause, ValidationError):
        return f"config: {cause.full_key}: {first_line(cause.msg)}"
    return f"config: {first_line(str(e))}"


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def flatten(cfg: DictConfig, prefix: str = "") -> dict:
    """Flatten a config to {'a.b.c': value} for MLflow params (lists become their repr)."""
    out = {}
    for key, value in OmegaConf.to_container(cfg, resolve=True).items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict, key: str, value) -> None:
    if isinstance(value, dict):
        if not value:
            out[key] = "{}"
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value

