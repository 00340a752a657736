"""Model registry: register, promote (evidence-based, race-guarded), rollback, `dlp models`.

Three breast-cancer MLPs are trained once per module, in one real SQLite store: a good one (15 epochs),
a bad one (1 epoch of 2 batches: near chance) and one trained on another split (seed 7, so another dataset
fingerprint). Tests re-register them as versions of models with names of their own.
"""
import multiprocessing as mp
import os
from dataclasses import dataclass

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import SMOKE, assert_one_line_error, dlp_in_process, new_store

FAST = ["trainer.early_stopping.patience=0", "trainer.progress_bar=false", "trainer.threads=1"]


@dataclass
class Trained:
    uri: str
    good: str    # run ids
    bad: str
    other_data: str
    good_acc: float
    bad_acc: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipelines.config.compose import compose
    from pipelines.training.driver import train

    root = tmp_path_factory.mktemp("registry")
    uri = new_store(root / "mlflow.db")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.chdir(root)
    mlflow.set_tracking_uri(uri)
    runs = {}
    for key, overrides in {"good": [*FAST, "trainer.max_epochs=15"], "bad": SMOKE,
                           "other_data": [*SMOKE, "seed=7"]}.items():
        runs[key] = train(compose(["experiment=breast_cancer_mlp", *overrides])).run_id
    client = MlflowClient(uri)
    acc = {k: client.get_run(runs[k]).data.metrics["test/acc"] for k in ("good", "bad")}
    assert acc["good"] > acc["bad"] + 0.1, acc  # the premise of every test here
    yield Trained(uri, runs["good"], runs["bad"], runs["other_data"], acc["good"], acc["bad"])
    patch.undo()


@pytest.fixture
def reg(trained, monkeypatch):
    """The module's store for this test (tests may change directory or environment on their own)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    monkeypatch.chdir(trained.uri[len("sqlite:///"):].rsplit("/", 1)[0])
    mlflow.set_tracking_uri(trained.uri)
    return trained


def _champion(name):
    return str(MlflowClient().get_model_version_by_alias(name, "champion").version)


def _register(capsys, run_id, name):
    proc = dlp_in_process(capsys, "register", f"runs:/{run_id}/model", "--name", name)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return str(MlflowClient().get_model_version_by_alias(name, "challenger").version)


def test_register_copies_the_evidence_onto_the_version(reg, capsys):
    version = _register(capsys, reg.good, "evidence")
    tags = MlflowClient().get_model_version("evidence", version).tags
    run = MlflowClient().get_run(reg.good)
    assert tags["dlp.source_run_id"] == reg.good
    assert tags["dlp.monitor"] == "val/loss:min" and float(tags["dlp.monitor_value"]) > 0
    assert float(tags["dlp.test/acc"]) == pytest.approx(reg.good_acc, abs=1e-5)
    assert tags["dlp.data.hash"] == run.data.tags["dlp.data.hash"] and tags["dlp.data.n_test"] == "142"

    proc = dlp_in_process(capsys, "register", "runs:/0123456789abcdef/model", "--name", "evidence")
    assert_one_line_error(proc, "0123456789abcdef")


def test_worse_refused_better_promoted_with_the_decision_recorded(reg, capsys):
    client = MlflowClient()
    bad = _register(capsys, reg.bad, "quality")
    proc = dlp_in_process(capsys, "promote", "quality")
    assert proc.returncode == 0 and "no champion yet" in proc.stdout, proc.stdout + proc.stderr
    assert _champion("quality") == bad

    good = _register(capsys, reg.good, "quality")
    proc = dlp_in_process(capsys, "promote", "quality", "--min-delta", "0.99")  # better, but not by 0.99
    assert proc.returncode == 1 and "min delta" in proc.stdout, proc.stdout + proc.stderr
    assert _champion("quality") == bad
    proc = dlp_in_process(capsys, "promote", "quality", "--metric", "test/log_loss")  # lower is better here
    assert proc.returncode == 0 and "PROMOTED" in proc.stdout, proc.stdout + proc.stderr
    assert _champion("quality") == good

    worse = _register(capsys, reg.bad, "quality")
    proc = dlp_in_process(capsys, "promote", "quality")
    assert proc.returncode == 1 and "REFUSED" in proc.stdout, proc.stdout + proc.stderr
    assert _champion("quality") == good  # unchanged
    tags = client.get_model_version("quality", worse).tags
    assert tags["dlp.promote.decision"] == "refused" and tags["dlp.promote.metric"] == "acc"
    assert tags["dlp.promote.champion_version"] == good and tags["dlp.promote.by"]
    # re-scored from raw test rows through the pyfunc models, the same numbers as training's test step
    assert float(tags["dlp.promote.champion_score"]) == pytest.approx(reg.good_acc, abs=1e-4)
    assert float(tags["dlp.promote.challenger_score"]) == pytest.approx(reg.bad_acc, abs=1e-4)
    assert "REFUSED" in client.get_model_version("quality", worse).description
    assert client.get_model_version("quality", good).tags["dlp.promote.decision"] == "promoted"

    # rollback restores the previous champion, recorded; then there is nothing older to go back to
    proc = dlp_in_process(capsys, "rollback", "quality")
    assert proc.returncode == 0 and f"v{good} -> v{bad}" in proc.stdout, proc.stdout + proc.stderr
    assert _champion("quality") == bad
    assert client.get_model_version("quality", good).tags["dlp.rollback.to"] == bad
    assert "rollback" in client.get_model_version("quality", good).description
    assert_one_line_error(dlp_in_process(capsys, "rollback", "quality"), "nothing to roll back")
    assert _champion("quality") == bad


def test_user_errors_are_one_line(reg, capsys):
    assert_one_line_error(dlp_in_process(capsys, "promote", "no-such-model"), "no-such-model")
    assert_one_line_error(dlp_in_process(capsys, "rollback", "no-such-model"), "no-such-model")
    version = _register(capsys, reg.good, "lonely")
    MlflowClient().delete_registered_model_alias("lonely", "challenger")
    assert_one_line_error(dlp_in_process(capsys, "promote", "lonely"), "lonely", "challenger")
    assert_one_line_error(dlp_in_process(capsys, "promote", "lonely", "--version", version, "--metric", "r2"), "r2")
    assert_one_line_error(dlp_in_process(capsys, "promote", "lonely", "--version", "9"), "version 9")
    assert dlp_in_process(capsys, "promote", "lonely", "--version", version).returncode == 0


def test_fingerprint_mismatch_is_refused_in_one_line(reg, capsys):
    good = _register(capsys, reg.good, "data")
    assert dlp_in_process(capsys, "promote", "data").returncode == 0
    other = _register(capsys, reg.other_data, "data")
    proc = dlp_in_process(capsys, "promote", "data")
    assert proc.returncode == 2
    assert_one_line_error(proc, f"data v{other}", "fingerprint", "hash")
    assert _champion("data") == good
    tags = MlflowClient().get_model_version("data", other).tags
    assert tags["dlp.promote.decision"] == "refused" and "fingerprint" in tags["dlp.promote.reason"]


def test_dlp_models_lists_versions_and_aliases(reg, capsys):
    first = _register(capsys, reg.bad, "listed")
    assert dlp_in_process(capsys, "promote", "listed").returncode == 0
    second = _register(capsys, reg.good, "listed")
    proc = dlp_in_process(capsys, "models")
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(line.split()[:2]): line for line in proc.stdout.splitlines() if line.startswith("listed ")}
    assert "champion" in rows[("listed", first)] and "promoted" in rows[("listed", first)]
    assert "challenger" in rows[("listed", second)] and reg.good in rows[("listed", second)]
    recorded = MlflowClient().get_model_version("listed", second).tags["dlp.test/acc"]
    assert f"acc {recorded}" in rows[("listed", second)]  # the test accuracy recorded at registration


# ---- two promotions racing ----------------------------------------------------------------

def _racer(uri, cwd, jobs, results, barrier):
    """A separate process: promote each (model, version) it is handed, starting with its rival."""
    os.chdir(cwd)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from pipelines.registry import promotion as registry
    from pipelines.errors import UserError

    while (job := jobs.get()) is not None:
        name, version = job
        barrier.wait(timeout=120)
        try:
            results.put((version, registry.promote(name, version=version).promoted))
        except UserError as e:
            results.put((version, f"error: {e}"))


@pytest.mark.slow   # over half a minute: make test-slow, CI
def test_racing_promotions_always_end_with_the_better_champion(reg, capsys):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    queues = [ctx.Queue(), ctx.Queue()]
    cwd = os.getcwd()
    procs = [ctx.Process(target=_racer, args=(reg.uri, cwd, q, results, barrier), daemon=True) for q in queues]
    for p in procs:
        p.start()
    try:
        for round_ in range(10):
            name = f"race-{round_}"
            good = _register(capsys, reg.good, name)
            bad = _register(capsys, reg.bad, name)
            # alternate which process gets the better challenger; both start together at the barrier
            for q, version in zip(queues, (good, bad) if round_ % 2 else (bad, good)):
                q.put((name, version))
            outcome = dict(results.get(timeout=180) for _ in range(2))
            assert not any(isinstance(v, str) for v in outcome.values()), outcome
            assert outcome[good] is True, outcome  # good always wins: against no champion or against bad
            assert _champion(name) == good, (round_, outcome)
    finally:
        for q in queues:
            q.put(None)
        for p in procs:
            p.join(timeout=30)
