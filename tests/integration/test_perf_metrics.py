"""A real `dlp train` holds its throughput (perf/) at every epoch and its node's system metrics (system/<node>/),
and a monitor that ends before its first interval still logs a sample."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipelines.tracking import names, system_metrics
from tests.conftest import SMOKE, dlp_in_process, runs_with_status

EPOCHS = 2
# digits_mlp: 64 pixels -> 256 -> 128 -> 10, Linear forward 2*in*out per sample, backward the weight gradient
# and (not for the first layer: its input needs none) the input gradient
DIGITS_MLP_FLOPS = 2 * 64 * 256 * 2 + 2 * 256 * 128 * 3 + 2 * 128 * 10 * 3
PER_EPOCH = (names.SAMPLES_PER_SECOND, names.STEPS_PER_SECOND, names.FLOPS_PER_SAMPLE, names.TFLOPS)


def _train(capsys, *extra):
    proc = dlp_in_process(capsys, "train", "experiment=digits_mlp", *SMOKE, f"trainer.max_epochs={EPOCHS}",
                          "trainer.limit_train_batches=3", "mlflow.system_metrics_interval=1", *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_train_logs_throughput_every_epoch_and_its_nodes_system_metrics(store, capsys):
    proc = _train(capsys)
    (run,) = runs_with_status(store, "FINISHED")
    client = MlflowClient(store)
    for key in PER_EPOCH:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), key   # every epoch, once
        assert all(m.value > 0 for m in history), key
    metrics = run.data.metrics
    assert metrics[names.FLOPS_PER_SAMPLE] == DIGITS_MLP_FLOPS
    assert metrics[names.TFLOPS] > 0
    assert names.MFU not in metrics                                  # a CPU has no peak: no guess
    assert not any(k.startswith(names.LAUNCH_PREFIX) for k in metrics)
    node = system_metrics.node_name()
    for key in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        assert f"{names.SYSTEM_PREFIX}{node}/{key}" in metrics, sorted(metrics)
    assert metrics[f"{names.SYSTEM_PREFIX}{node}/system_memory_usage_megabytes"] > 0
    for noise in ("GPU", "NVML", "system metrics"):                  # no GPU here: MLflow's GPU monitor stays silent
        assert noise not in proc.stderr and noise not in proc.stdout, noise


def test_system_metrics_off_logs_none(store, capsys):
    _train(capsys, "mlflow.system_metrics=false", "trainer.max_epochs=1")
    (run,) = runs_with_status(store, "FINISHED")
    assert not any(k.startswith(names.SYSTEM_PREFIX) for k in run.data.metrics)
    assert names.SAMPLES_PER_SECOND in run.data.metrics


def test_a_monitor_shorter_than_its_interval_logs_one_sample(store):
    from omegaconf import OmegaConf

    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("short"))
    cfg = OmegaConf.create({"mlflow": {"system_metrics": True, "system_metrics_interval": 60.0}})
    with system_metrics.monitoring(cfg, run.info.run_id, store, node_id="node a") as monitor:
        assert monitor is not None
    history = client.get_metric_history(run.info.run_id, "system/node_a/cpu_utilization_percentage")
    assert [m.step for m in history] == [0]


def test_a_worker_monitors_its_node_only_where_the_driver_does_not_and_the_store_is_reachable():
    import contextlib

    import ray
    from omegaconf import OmegaConf

    from pipelines.training import ray_worker

    cfg = OmegaConf.create({"mlflow": {"system_metrics": True, "system_metrics_interval": 1.0}})
    here = ray.util.get_node_ip_address()
    remote = {"run_id": "r", "uri": "http://tracking:5000", "driver_node": "10.9.9.9"}
    assert not isinstance(ray_worker.node_monitor(cfg, remote, 0), contextlib.nullcontext)   # another node, a server
    assert isinstance(ray_worker.node_monitor(cfg, remote, 1), contextlib.nullcontext)       # not local rank 0
    assert isinstance(ray_worker.node_monitor(cfg, {**remote, "driver_node": here}, 0), contextlib.nullcontext)
    for uri in ("sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", ""):
        assert isinstance(ray_worker.node_monitor(cfg, {**remote, "uri": uri}, 0), contextlib.nullcontext), uri
    for uri in ("https://mlflow.example.com", "postgresql://u@db/mlflow", "postgresql+psycopg://db/mlflow"):
        assert system_metrics.reachable_from_other_nodes(uri), uri


@pytest.mark.slow          # a real 2-worker Ray run (~1 min)
@pytest.mark.distributed
def test_two_ray_workers_log_throughput_once_per_epoch_and_the_driver_monitors_the_node(ray_cluster, store, capsys):
    _train(capsys, "trainer.num_workers=2")
    (run,) = runs_with_status(store, "FINISHED")
    client = MlflowClient(store)
    for key in PER_EPOCH:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(EPOCHS)), key
    metrics = run.data.metrics
    assert metrics[names.FLOPS_PER_SAMPLE] == DIGITS_MLP_FLOPS
    # one machine, a SQLite store: the driver's monitor is the node's only one
    nodes = {k.split("/")[1] for k in metrics if k.startswith(names.SYSTEM_PREFIX)}
    assert nodes == {system_metrics.node_name()}, nodes
    assert len(client.get_metric_history(run.info.run_id, f"system/{system_metrics.node_name()}/"
                                         "cpu_utilization_percentage")) >= 1
    assert any(k.startswith(names.LAUNCH_PREFIX) for k in metrics)
