"""`dlp tune` input checks: a search space is refused before Ray or MLflow start when it names a key the
config lacks, a value that does not validate, or a distribution the search algorithm cannot take; a sweep
that cannot fit the cluster is refused instead of hanging."""
import shutil

import pytest
from omegaconf import OmegaConf

from pipelines.config import compose as config_module
from pipelines.sweeps import spec as tune
from pipelines.sweeps import slots, trials
from pipelines.config.compose import compose
from pipelines.errors import ConfigError, UserError
from tests.conftest import assert_one_line_error, dlp_in_process, runs_with_status


@pytest.fixture
def conf_dir(tmp_path, monkeypatch):
    """A copy of conf/ whose tune/ folder a test can add sweeps to."""
    root = tmp_path / "conf"
    shutil.copytree(config_module.CONF_DIR, root)
    monkeypatch.setattr(config_module, "CONF_DIR", root)

    def add(name: str, text: str):
        (root / "tune" / f"{name}.yaml").write_text(text)
    return add


SPACE_HEAD = "search: {search}\nscheduler: asha\nnum_samples: 2\nspace:\n"


def test_the_shipped_sweep_composes_with_its_overrides():
    sweep = tune.prepare(["experiment=digits_cnn", "tune=digits_asha", "tune.num_samples=6"])
    assert sweep.spec.num_samples == 6 and sweep.spec.scheduler == "asha" and sweep.spec.search == "optuna"
    assert sweep.cfg.trainer.max_epochs == 4 and sweep.cfg.trainer.num_workers == 1
    assert (sweep.metric, sweep.mode) == ("val/acc", "max")          # the experiment's monitored metric
    assert sweep.encoded == ["model.channels"]                      # list choices travel as JSON for Optuna
    assert sweep.cfg.mlflow.tracking_uri.startswith("sqlite:////")  # absolute: trials run elsewhere


def test_command_line_overrides_win_over_the_sweeps_fixed_ones():
    sweep = tune.prepare(["experiment=digits_cnn", "tune=digits_asha", "trainer.max_epochs=6"])
    assert sweep.cfg.trainer.max_epochs == 6


@pytest.mark.parametrize("line, needle", [
    ("  optim.learning_rate: {uniform: [0.001, 0.01]}\n", "space key 'optim.learning_rate'"),
    ("  model.dropout: {choice: [0.1, 1.5]}\n", "space.model.dropout value 1.5"),
    ("  model.channels: {choice: [abc]}\n", "space.model.channels value 'abc'"),
    ("  optim.lr: {normal: [0, 1]}\n", "space.optim.lr: expected one of"),
    ("  optim.lr: {uniform: [0.1]}\n", "uniform takes 2 values"),
])
def test_a_bad_space_fails_naming_the_key_before_anything_runs(conf_dir, store, capsys, line, needle):
    conf_dir("bad", SPACE_HEAD.format(search="random") + line)
    proc = dlp_in_process(capsys, "tune", "experiment=digits_cnn", "tune=bad")
    assert proc.returncode == 2
    assert_one_line_error(proc, needle)
    assert runs_with_status(store, "RUNNING") == [] and runs_with_status(store, "FINISHED") == []


@pytest.mark.parametrize("search, line, needle", [
    ("grid", "  optim.lr: {loguniform: [0.001, 0.01]}\n", "search=grid needs grid or choice"),
    ("optuna", "  optim.lr: {grid: [0.001, 0.01]}\n", "use choice instead of grid"),
])
def test_a_distribution_the_search_cannot_take_is_refused(conf_dir, search, line, needle):
    conf_dir("mismatch", SPACE_HEAD.format(search=search) + line)
    with pytest.raises(ConfigError, match=needle):
        tune.prepare(["experiment=digits_cnn", "tune=mismatch"])


def test_unknown_sweep_metric_and_options_are_refused(conf_dir):
    with pytest.raises(ConfigError, match="unknown search space 'nope' .*digits_asha"):
        tune.prepare(["experiment=digits_cnn", "tune=nope"])
    with pytest.raises(ConfigError, match="metric=val/r2: not produced by a classification task"):
        tune.prepare(["experiment=digits_cnn", "tune=digits_asha", "tune.metric=val/r2"])
    with pytest.raises(ConfigError, match="scheduler: unknown 'pbt2'"):
        tune.prepare(["experiment=digits_cnn", "tune=digits_asha", "tune.scheduler=pbt2"])
    with pytest.raises(UserError, match="tune=<name>"):
        tune.prepare(["experiment=digits_cnn"])


def test_space_becomes_tune_domains():
    from ray.tune.search.sample import Categorical, Float

    spec = OmegaConf.create({"a": {"choice": [[1, 2], [3]]}, "b": {"loguniform": [1e-4, 1e-2]},
                             "c": {"grid": [1, 2]}, "d": {"qrandint": [2, 10, 2]}})
    space = tune.tune_space(spec, "random", encoded=["a"])
    assert isinstance(space["a"], Categorical) and space["a"].categories == ["[1, 2]", "[3]"]
    assert isinstance(space["b"], Float) and space["b"].lower == 1e-4
    assert space["c"] == {"grid_search": [1, 2]}
    assert tune.decode({"a": "[1, 2]", "b": 0.5}, ["a"]) == {"a": [1, 2], "b": 0.5}
    grid = tune.tune_space(OmegaConf.create({"a": {"choice": [1, 2]}}), "grid", encoded=[])
    assert grid["a"] == {"grid_search": [1, 2]}


def test_a_sweep_that_cannot_fit_the_cluster_says_so():
    two_workers = compose(["trainer.num_workers=2"])
    slots.check_fits(two_workers, concurrent=1, total={"CPU": 2.0})          # fits exactly
    with pytest.raises(UserError, match=r"2 concurrent trials x 2 CPU each need 4 CPU, the cluster has 2; "
                                        r"set tune.max_concurrent_trials=1"):
        slots.check_fits(two_workers, concurrent=2, total={"CPU": 2.0})
    with pytest.raises(UserError, match="one trial needs 4 CPU"):
        slots.check_fits(compose(["trainer.num_workers=4"]), concurrent=1, total={"CPU": 2.0})
    with pytest.raises(UserError, match="one trial needs 1 GPU"):
        slots.check_fits(compose(["trainer.num_workers=1", "trainer.use_gpu=true"]), concurrent=1, total={"CPU": 2.0})


def test_trials_in_process_fill_the_node_by_default():
    """One trial per CPU (or per GPU, with trainer.use_gpu) on the node, unless resources_per_worker asks more."""
    one = slots.per_worker(compose(["trainer.num_workers=1"]))
    assert one == {"CPU": 1.0}
    assert slots.fits(one, {"CPU": 16.0, "memory": 1e9}, "the node", "x") == 16
    assert slots.fits(slots.per_worker(compose(["trainer.use_gpu=true"])), {"CPU": 16.0, "GPU": 2.0}, "n", "x") == 2
    assert slots.fits({"CPU": 4.0}, {"CPU": 8.0}, "the node", "x") == 2
    with pytest.raises(UserError, match=r"one trial needs 1 GPU \(why\) but the driver's node has 0"):
        slots.fits({"CPU": 1.0, "GPU": 1.0}, {"CPU": 2.0}, "the driver's node", "why")


def test_in_process_trials_need_a_single_worker():
    with pytest.raises(ConfigError, match="tune.in_process=true trains each trial in one process, but "
                                          "trainer.num_workers=2"):
        tune.prepare(["experiment=digits_cnn", "tune=digits_asha", "tune.in_process=true", "trainer.num_workers=2"])
    assert tune.prepare(["experiment=digits_cnn", "tune=digits_asha", "tune.in_process=true"]).spec.in_process


def test_an_in_process_trial_reuses_its_processs_data_and_resumes_its_own_checkpoint(tmp_path):
    from pipelines.sweeps import in_process

    cfg = compose(["experiment=digits_cnn", f"output_dir={tmp_path}"])
    first = in_process.datamodule(cfg)
    first.first_epoch = 5                              # as a resumed trial left it
    assert in_process.datamodule(cfg) is first and first.first_epoch == 0
    assert in_process.datamodule(compose(["experiment=digits_cnn", "seed=1"])) is not first
    assert in_process.datamodule(compose(["experiment=digits_cnn", "data.batch_size=7"])).cfg.batch_size == 7

    trial = OmegaConf.create(OmegaConf.to_container(compose(["experiment=digits_cnn", f"output_dir={tmp_path}"])))
    in_process.prepare(trial, continue_run=None, cpus=3)
    assert (trial.trainer.num_workers, trial.trainer.threads, trial.resume) == (0, 3, None)
    assert (trial.trainer.accelerator, trial.trainer.devices) == ("cpu", 1)     # a GPU only with trainer.use_gpu
    last = tmp_path / "checkpoints" / "abc" / "last.ckpt"
    in_process.prepare(trial, continue_run="abc", cpus=1)
    assert trial.resume is None                        # no checkpoint yet: the run starts its first epoch
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    in_process.prepare(trial, continue_run="abc", cpus=1)
    assert trial.resume == str(last.resolve()) and trial.trainer.threads == 3   # trainer.threads once set stays


@pytest.mark.parametrize("logged, reported, expected_steps, epochs", [
    (3, 2, [0, 1, 2], 3),     # the stop reached rank 0 late: it logged one epoch more than Tune saw
    (1, 3, [0, 1, 2], 3),     # the trial died after its report, before rank 0 wrote: Tune's epochs backfilled
    (2, 2, [0, 1], 2),
])
def test_a_stopped_trial_counts_every_epoch_its_run_holds(store, logged, reported, expected_steps, epochs):
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("sweep"))
    for step in range(logged):
        client.log_metric(run.info.run_id, "train/loss", 1.0 / (step + 1), step=step)
        client.log_metric(run.info.run_id, "val/acc", 0.1 * step, step=step)
    frame = pd.DataFrame({"epoch": range(reported), "train/loss": [0.5] * reported, "val/acc": [0.2] * reported})
    assert trials.backfill_epochs(client, run.info.run_id, frame) == epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == expected_steps
    trials.finish_child(client, run.info.run_id, "stopped", "", epochs, "asha")
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["dlp.trial_status"] == f"stopped by asha after epoch {epochs}"


def test_a_tpe_budget_beyond_a_finite_space_is_announced(conf_dir, caplog):
    conf_dir("two", SPACE_HEAD.format(search="optuna").replace("num_samples: 2", "num_samples: 5")
             + "  model.dropout: {choice: [0.0, 0.3]}\n")
    with caplog.at_level("WARNING", logger="dlp"):
        tune.prepare(["experiment=digits_cnn", "tune=two"])
    assert "the space has 2 configs and TPE tries each once: 2 trials, not num_samples=5" in caplog.text
