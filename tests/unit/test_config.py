"""Config composition and validation: presets, overrides and every kind of config error."""
import pytest

from pipelines.config.compose import CONF_DIR, compose, flatten
from pipelines.errors import ConfigError
from tests.conftest import REPO, assert_one_line_error, run_dlp

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset):
    extra = ["data.path=/nowhere"] if preset.startswith(("mnist", "cifar")) else []
    cfg = compose([f"experiment={preset}", *extra])
    assert cfg.name == preset
    assert cfg.monitor.mode in ("min", "max")


def test_defaults_are_the_digits_cnn_family():
    cfg = compose([])
    assert (cfg.model.name, cfg.data.source, cfg.name) == ("cnn", "digits", "cnn-digits")


def test_overrides_group_key_and_append():
    cfg = compose(["model=mlp", "data=wine", "model.hidden=[8]", "optim.lr=0.01", "+tags.team=vision"])
    assert cfg.model.hidden == [8] and cfg.data.source == "wine"
    assert cfg.optim.lr == 0.01 and cfg.tags.team == "vision"
    assert flatten(cfg)["model.hidden"] == [8]


def test_preset_is_a_delta_over_defaults():
    cfg = compose(["experiment=digits_cnn", "trainer.max_epochs=3"])
    assert cfg.trainer.max_epochs == 3           # command line beats the preset
    assert cfg.monitor.metric == "val/acc"        # preset beats config.yaml
    assert cfg.trainer.accumulate_grad_batches == 1  # untouched keys keep trainer/default.yaml


def test_config_is_read_only():
    cfg = compose([])
    with pytest.raises(Exception):
        cfg.seed = 1


@pytest.mark.parametrize("overrides,needles", [
    (["trainer.epochs=3"], ["unknown key 'trainer.epochs'", "max_epochs"]),
    (["+optim.foo=1"], ["unknown key 'optim.foo'", "allowed:"]),
    (["trainer.max_epochs=abc"], ["trainer.max_epochs", "Integer"]),
    (["model=transformerx"], ["unknown option 'transformerx'", "group 'model'", "cnn"]),
    (["experiment=nope"], ["unknown option 'nope'", "digits_cnn"]),
    (["model.activation=swish"], ["model.activation", "gelu"]),
    (["optim.name=lbfgs"], ["optim.name", "adamw"]),
    (["data=csv"], ["data.path is required"]),
    (["data=csv", "data.path=x.csv"], ["data.target is required"]),
    (["optim.lr=0"], ["optim.lr"]),
    (["data.val_fraction=0.5", "data.test_fraction=0.45"], ["data.val_fraction"]),
    (["resume=foo.txt"], ["resume=foo.txt"]),
])
def test_config_errors_name_the_key(overrides, needles):
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    proc = run_dlp("train", "trainer.epochs=3", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc, "trainer.epochs")
    assert not (tmp_path / "mlflow.db").exists()  # no compute, no store touched


def test_cli_config_show_prints_resolved_yaml(tmp_path):
    proc = run_dlp("config", "show", "experiment=breast_cancer_mlp", "optim.lr=0.5", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "name: breast_cancer_mlp" in proc.stdout and "lr: 0.5" in proc.stdout
    assert "source: breast_cancer" in proc.stdout


def test_cli_config_groups_lists_options(tmp_path):
    proc = run_dlp("config", "groups", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0
    assert "digits_cnn" in proc.stdout and "model:" in proc.stdout


def test_conf_tree_has_every_group():
    for group in ("model", "data", "trainer", "experiment"):
        assert (REPO / "conf" / group).is_dir()
