"""Every default has one home, the typed schema (pipelines/config/*schema.py). What conf/ restates of it must
agree with it: a family's option (model/cnn.yaml for CNNConfig) lists exactly its schema's defaults, and
trainer/default.yaml and config.yaml set nothing but schema defaults; the other options (model/linear.yaml,
trainer/smoke.yaml, every data source) are deltas, and each composes into its schema. Before this test the two had
drifted: CNNConfig.convs_per_block 1 against cnn.yaml's 2, MLPConfig dropout/init 0.0/default against 0.1/kaiming."""
import pytest
from omegaconf import DictConfig, OmegaConf

from pipelines.config.compose import CONF_DIR, compose
from pipelines.config.data_schema import DATA_SCHEMAS
from pipelines.config.model_schema import MODEL_SCHEMAS
from pipelines.config.schema import RootConfig, TrainerConfig

OPTIONS = [(group, p.stem) for group in ("model", "data", "trainer") for p in sorted((CONF_DIR / group).glob("*.yaml"))]
# data that fits each model family, and a model family that fits each data kind, so that an option composes
FITTING = {"cnn": "digits", "mlp": "breast_cancer", "rnn_classifier": "rotten_tomatoes", "forecaster": "co2",
           "transformer": "rotten_tomatoes", "tabular": "mlp", "image": "cnn", "text": "rnn_classifier",
           "timeseries": "forecaster"}


def _leaves(node: DictConfig, prefix: str = "") -> dict:
    """{dotted key: value} of a config, interpolations and ??? left as written."""
    out = {}
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and len(child):
            out.update(_leaves(child, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = child._value() if not isinstance(child, DictConfig) else {}
    return out


def _load(group: str, option: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / group / f"{option}.yaml") or OmegaConf.create()


def _schema(group: str, written: DictConfig) -> DictConfig:
    if group == "model":
        return OmegaConf.structured(MODEL_SCHEMAS[written.name])
    if group == "data":
        return OmegaConf.structured(DATA_SCHEMAS[written.kind])
    return OmegaConf.structured(TrainerConfig)


def disagreements(written: DictConfig, schema: DictConfig) -> dict:
    """{key: (written, schema default)} for every key a conf file sets to another value than the schema's default
    (a key the schema leaves to conf/, ???, is not a disagreement)."""
    defaults = _leaves(schema)
    return {k: (v, defaults.get(k)) for k, v in _leaves(written).items()
            if defaults.get(k) != "???" and v != defaults.get(k)}


@pytest.mark.parametrize("name", sorted(MODEL_SCHEMAS))
def test_a_family_option_lists_exactly_its_schema_defaults(name):
    written = _load("model", name)
    assert set(_leaves(written)) == set(_leaves(OmegaConf.structured(MODEL_SCHEMAS[name]))), name
    assert disagreements(written, _schema("model", written)) == {}


def test_the_default_trainer_and_the_root_config_restate_only_schema_defaults():
    assert disagreements(_load("trainer", "default"), OmegaConf.structured(TrainerConfig)) == {}
    root = OmegaConf.load(CONF_DIR / "config.yaml")
    root.pop("defaults")
    assert disagreements(root, OmegaConf.structured(RootConfig)) == {}


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_group_option_composes_into_its_schema(group, option):
    written = _load(group, option)
    cfg = compose([f"{group}={option}", *_fitting(group, written)])
    schema, composed = _leaves(_schema(group, written)), _leaves(cfg[group])
    assert set(composed) == set(schema)                    # nothing the schema lacks, nothing dropped
    unset = {k: v for k, v in composed.items() if k not in _leaves(written)}
    assert unset == {k: schema[k] for k in unset}          # what the option leaves out is the schema's default


def _fitting(group: str, written: DictConfig) -> list:
    """The other group's option that fits, and values for the keys an option marks ??? (a path, its columns)."""
    if group == "model":
        return [f"data={FITTING[written.name]}"]
    if group == "data":
        return [f"model={FITTING[written.kind]}", *(f"data.{k}=x" for k, v in _leaves(written).items() if v == "???")]
    return []


def test_the_checker_catches_a_drifted_default():
    drifted = OmegaConf.create({"name": "cnn", "convs_per_block": 1, "kernel_size": 3})
    CNN = OmegaConf.structured(MODEL_SCHEMAS["cnn"])
    assert disagreements(drifted, CNN) == {"convs_per_block": (1, 2)}
    assert disagreements(OmegaConf.create({"path": "???"}), OmegaConf.structured(DATA_SCHEMAS["image"])) == {
        "path": ("???", None)}
