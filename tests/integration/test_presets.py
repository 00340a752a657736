"""Every experiment preset composes and trains one quick epoch through the real fit()."""
import math

import pytest

from pipelines.config.compose import CONF_DIR, compose
from pipelines.training.fit import fit
from tests.conftest import SMOKE
from tests.datafiles import write_cifar10, write_mnist

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SLOW = {"cifar10_cnn"}   # half a minute: make test-slow, CI


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in PRESETS])
def test_preset_trains_one_quick_epoch(preset, tmp_path):
    extra = []
    if preset.startswith("mnist"):
        write_mnist(tmp_path / "mnist", n_train=80, size=28)
        extra = [f"data.path={tmp_path / 'mnist'}"]
    elif preset.startswith("cifar10"):
        write_cifar10(tmp_path / "cifar", per_batch=16)
        extra = [f"data.path={tmp_path / 'cifar'}"]
    cfg = compose([f"experiment={preset}", *SMOKE, f"output_dir={tmp_path}", *extra])
    result = fit(cfg, run_id=None)
    assert result.epochs == 1
    assert result.best_checkpoint and result.best_checkpoint.endswith(".ckpt")
    assert math.isfinite(result.test_metrics["test/loss"])
    metric = "test/acc" if "test/acc" in result.test_metrics else "test/r2"
    assert math.isfinite(result.test_metrics[metric])


def test_a_fixed_seed_gives_the_same_metrics_twice(tmp_path):
    runs = []
    for i in range(2):
        cfg = compose(["experiment=wine_mlp", "trainer.max_epochs=3", "trainer.progress_bar=false",
                       "trainer.threads=1", f"output_dir={tmp_path / str(i)}"])
        runs.append(fit(cfg, run_id=None).test_metrics)
    assert runs[0] == runs[1]
    other = compose(["experiment=wine_mlp", "trainer.max_epochs=3", "trainer.progress_bar=false",
                     "trainer.threads=1", "seed=7", f"output_dir={tmp_path / 'other'}"])
    assert fit(other, run_id=None).test_metrics != runs[0]
