"""`dlp tune` on a real local Ray cluster and a real MLflow store: a 4-trial Optuna TPE + ASHA sweep of
the digits CNN on 2 CPUs: 2 trials at a time, each trained in its own (reused) Tune actor — what one worker per
trial gets on one node — or one at a time, each a Ray Train run of 2 workers; every test holds for both."""
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import dlp_in_new_store, new_store, runs_with_status

pytestmark = pytest.mark.distributed

# short epochs: the sweep's cost is Ray Train's start per trial, not the training
SWEEP = ["tune", "experiment=digits_cnn", "tune=digits_asha", "trainer.limit_train_batches=6"]


@pytest.fixture(scope="module", params=["in_process", "workers"])
def sweep(ray_cluster, tmp_path_factory, request):
    """The sweep, run once per trial mode through the CLI entry point: (store URI, parent run, console output)."""
    mode = [] if request.param == "in_process" else ["trainer.num_workers=2", "tune.max_concurrent_trials=1"]
    uri, code, out = dlp_in_new_store(tmp_path_factory.mktemp("sweep"), *SWEEP, *mode)
    assert code == 0, out
    parents = [r for r in runs_with_status(uri, "FINISHED") if "dlp.sweep" in r.data.tags]
    assert len(parents) == 1
    return uri, parents[0], out


def _children(uri, parent):
    client = MlflowClient(uri)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_every_trial_is_a_nested_run_with_its_final_status(sweep):
    uri, parent, console = sweep
    children = _children(uri, parent)
    assert len(children) == 4
    client = MlflowClient(uri)
    statuses = []
    for child in children:
        status, tag = child.info.status, child.data.tags["dlp.trial_status"]
        statuses.append(status)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/acc")]
        assert steps == sorted(set(steps)) and steps, (tag, steps)     # every epoch once, none missing
        if status == "FINISHED":
            assert tag == "completed (4 epochs)" and steps == [0, 1, 2, 3]
            assert "test/acc" in child.data.metrics
        else:
            assert status == "KILLED" and tag == f"stopped by asha after epoch {len(steps)}" and len(steps) < 4
        in_process = parent.data.params["tune.trials_in_process"] == "True"
        # in its Tune actor (no workers), or a Ray Train run of two
        assert child.data.params["trainer.num_workers"] == ("0" if in_process else "2")
        assert child.data.tags.get("dlp.world_size") == (None if in_process else "2")
    assert "KILLED" in statuses, "ASHA stopped no trial"
    assert "FINISHED" in statuses
    assert "RUNNING" not in statuses
    assert "trial" in console and "stopped" in console and "best:" in console


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_trials_in_process_share_two_reused_processes(sweep):
    """In process, 4 trials 2 at a time run in 2 Tune actors, reused: torch, Lightning, MLflow and the data are
    loaded once per slot, not once per trial (the cost that made a sweep 8x slower than a plain loop)."""
    uri, parent, _ = sweep
    processes = [c.data.tags.get("dlp.trial_process") for c in _children(uri, parent)]
    if parent.data.params["tune.trials_in_process"] != "True":
        assert processes == [None] * 4
        return
    assert parent.data.params["tune.max_concurrent_trials"] == "2"
    assert None not in processes and len(set(processes)) == 2, processes


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_stopped_trials_release_their_workers(sweep):
    from ray.util.state import list_actors, list_placement_groups

    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
             if a.class_name in ("RayTrainWorker", "TrainController")]
    assert not alive, alive
    assert not list_placement_groups(filters=[("state", "=", "CREATED")], raise_on_missing_output=False)


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_the_sweep_run_records_space_budget_and_best(sweep):
    uri, parent, _ = sweep
    client = MlflowClient(uri)
    p = parent.data.params
    assert (p["tune.search"], p["tune.scheduler"], p["tune.num_samples"], p["tune.max_concurrent_trials"]) == \
        ("optuna", "asha", "4", "2" if p["tune.trials_in_process"] == "True" else "1")
    assert p["space.optim.lr"] == '{"loguniform": [0.0001, 0.03]}'
    completed = [c for c in _children(uri, parent) if c.info.status == "FINISHED"]
    best_child = max(completed, key=lambda c: max(m.value for m in client.get_metric_history(c.info.run_id, "val/acc")))
    assert parent.data.tags["dlp.sweep.best_run_id"] == best_child.info.run_id
    assert parent.data.metrics["best/test/acc"] == pytest.approx(best_child.data.metrics["test/acc"])
    assert float(p["best.optim.lr"]) == pytest.approx(float(best_child.data.params["optim.lr"]))
    assert parent.data.metrics["trials/completed"] + parent.data.metrics["trials/stopped"] == 4
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/trials.csv",
                                                                                     "sweep/space.yaml"}
    png = client.download_artifacts(parent.info.run_id, "plots/sweep.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_the_best_trials_model_is_the_challenger(sweep, tmp_path):
    import mlflow
    import pandas as pd

    import datamodules
    from pipelines.config.compose import compose

    uri, parent, _ = sweep
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("digits_cnn", "challenger")
    assert version.tags["dlp.sweep_run_id"] == parent.info.run_id and version.tags["dlp.data.source"] == "sklearn:digits"
    best_run = client.get_run(parent.data.tags["dlp.sweep.best_run_id"])
    assert version.tags["dlp.source_run_id"] == best_run.info.run_id

    dm = datamodules.build(compose(["experiment=digits_cnn"]).data, 42)
    rows, labels = dm.raw_frame("test")
    preds = mlflow.pyfunc.load_model("models:/digits_cnn@challenger").predict(pd.DataFrame(rows))
    accuracy = float(np.mean(preds["prediction"].astype(str).to_numpy() == np.asarray(labels).astype(str)))
    assert accuracy == pytest.approx(best_run.data.metrics["test/acc"], abs=1e-6)


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_random_search_runs_no_more_trials_at_once_than_allowed(ray_cluster, tmp_path):
    """Grid and random search go through Ray's BasicVariantGenerator, for which Tune ignores
    TuneConfig.max_concurrent_trials: the limit must hold anyway (here 1, so the trials' runs never overlap)."""
    uri, code, out = dlp_in_new_store(tmp_path, "tune", "experiment=digits_cnn", "tune=digits_asha", "tune.search=random",
                                      "tune.scheduler=fifo", "tune.num_samples=2", "tune.max_concurrent_trials=1",
                                      "trainer.max_epochs=1", "trainer.limit_train_batches=2", "mlflow.log_model=false")
    assert code == 0, out
    parent = next(r for r in runs_with_status(uri, "FINISHED") if "dlp.sweep" in r.data.tags)
    children = sorted(_children(uri, parent), key=lambda c: c.info.start_time)
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert children[1].info.start_time >= children[0].info.end_time, "the two trials ran at the same time"


def test_a_sweep_too_big_for_the_cluster_is_refused_at_the_cli(ray_cluster, tmp_path, capsys):
    """Two concurrent 2-worker trials on a 2-CPU cluster would wait forever: `dlp tune` refuses in one line,
    exit 2, before any MLflow run is opened."""
    from pipelines.cli import main

    uri = new_store(tmp_path / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(tmp_path)
        code = main(["tune", "experiment=digits_cnn", "tune=digits_asha", "tune.max_concurrent_trials=2",
                     "trainer.num_workers=2", "trainer.max_epochs=1"])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = [line for line in err.splitlines() if line.startswith("dlp: error:")]
    assert "tune.max_concurrent_trials=1" in line and "Traceback" not in err
    client = MlflowClient(uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow   # half a minute: make test-slow, CI
def test_the_documented_twelve_trial_sweep_runs_in_process_one_trial_per_cpu(ray_cluster, tmp_path):
    """The README's `dlp tune experiment=digits_cnn tune=digits_space`, verbatim (benchmarks/tune_speed.py times
    it): 12 trials in process, as many at once as the cluster has CPUs, and a best trial of the grid's quality."""
    import ray

    uri, code, out = dlp_in_new_store(tmp_path, "tune", "experiment=digits_cnn", "tune=digits_space")
    assert code == 0, out
    (parent,) = [r for r in runs_with_status(uri, "FINISHED") if "dlp.sweep" in r.data.tags]
    p, m = parent.data.params, parent.data.metrics
    assert p["tune.trials_in_process"] == "True"
    assert p["tune.max_concurrent_trials"] == str(int(ray.cluster_resources()["CPU"]))
    assert m["trials/completed"] + m["trials/stopped"] == 12 and m["trials/errored"] == 0
    assert m["best/val/acc"] >= 0.98, m
