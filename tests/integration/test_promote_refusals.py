"""Every refusal of `dlp promote` is one line with its exit code, and leaves the registry's aliases as they were:
the data changed since training (exit 2), a challenger taking other input columns (2), a challenger that does
not load (2), a champion that no longer loads (2), a challenger already champion (2), and equal scores (1, the
documented code of a challenger refused for its score). The fingerprint mismatch and the min-delta refusal are
in test_registry.py.

The store and the breast-cancer runs are test_registry.py's (its fixtures, imported; a model is broken only for
the one promotion that must meet it, then restored); this module adds two small runs on a CSV of its own in the
same store, one on every column and one on fewer.
"""
import contextlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import SMOKE, assert_one_line_error, dlp_in_process
from tests.integration import test_registry
from tests.integration.test_registry import _champion, _register

trained = test_registry.trained   # three breast-cancer MLPs in one SQLite store (module scope)
reg = test_registry.reg           # that store, as this test's store and working directory

CSV = "refusals.csv"
CSV_ARGS = ["model=mlp", "data=csv", f"data.path={CSV}", "data.target=label", "name=refusals", *SMOKE]


def _table(n: int = 160, flip: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 4))
    label = (x[:, 0] - x[:, 2] > 0).astype(int)
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["label"] = 1 - label if flip else label
    return frame


@pytest.fixture(scope="module")
def csv_runs(trained):
    """Run ids, in `trained`'s store: 'all_columns' and 'fewer_columns' (a, b, c only) of one CSV."""
    from pipelines.config.compose import compose
    from pipelines.training.driver import train

    root = Path(trained.uri[len("sqlite:///"):]).parent
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained.uri)
        mp.chdir(root)
        mlflow.set_tracking_uri(trained.uri)
        _table().to_csv(root / CSV, index=False)
        extra = {"all_columns": [], "fewer_columns": ["data.features=[a,b,c]"]}
        return {key: train(compose([*CSV_ARGS, *more])).run_id for key, more in extra.items()}


def _aliases(name: str) -> dict:
    return {alias: str(v) for alias, v in MlflowClient().get_registered_model(name).aliases.items()}


def _with_champion(capsys, name: str, run_id: str) -> str:
    """`name` with a first version (of `run_id`) promoted to champion; returns that version."""
    version = _register(capsys, run_id, name)
    proc = dlp_in_process(capsys, "promote", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _champion(name) == version
    return version


@contextlib.contextmanager
def _broken(run_id: str):
    """The network file of the model `run_id` logged overwritten in the artifact store (a damaged or tampered
    copy: no version of it loads), and put back afterwards."""
    client = MlflowClient()
    model_id = client.get_run(run_id).data.tags["dlp.model_uri"].rsplit("/", 1)[-1]
    root = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    files = {p: p.read_bytes() for p in root.rglob("net.pt2") if p.is_file()}
    assert files, list(root.rglob("*"))
    try:
        for f in files:
            f.write_bytes(b"not a model")
        yield
    finally:
        for f, content in files.items():
            f.write_bytes(content)


def _refused(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert_one_line_error(proc, *needles)


def test_a_changed_csv_is_refused(reg, csv_runs, capsys):
    name = "changed-csv"
    champion = _with_champion(capsys, name, csv_runs["all_columns"])
    challenger = _register(capsys, csv_runs["all_columns"], name)
    before = _aliases(name)
    csv = Path(CSV)
    old = csv.read_bytes()
    try:
        _table(200, flip=True).to_csv(csv, index=False)   # same path, new rows, flipped labels
        proc = dlp_in_process(capsys, "promote", name)
    finally:
        csv.write_bytes(old)
    _refused(proc, 2, "promote:", "changed since training", "not the frozen one")
    assert _aliases(name) == before == {"champion": champion, "challenger": challenger}


def test_a_challenger_taking_other_columns_is_refused(reg, csv_runs, capsys):
    """dlp's own runs cannot make this one (the fingerprint covers the columns, and a fingerprint mismatch is
    refused first): the run trained on a, b, c is given the champion's fingerprint tags and config.yaml, as a
    run whose model was swapped would carry."""
    client = MlflowClient()
    champion_run, other = csv_runs["all_columns"], csv_runs["fewer_columns"]
    for key, value in client.get_run(champion_run).data.tags.items():
        if key.startswith("dlp.data."):
            client.set_tag(other, key, value)
    client.log_text(other, mlflow.artifacts.load_text(f"runs:/{champion_run}/config.yaml"), "config.yaml")
    name = "other-columns"
    champion = _with_champion(capsys, name, champion_run)
    challenger = _register(capsys, other, name)
    before = _aliases(name)
    proc = dlp_in_process(capsys, "promote", name)
    _refused(proc, 2, f"{name} v{challenger} refused", "input columns differ", f"champion v{champion}", "'d'")
    assert _aliases(name) == before == {"champion": champion, "challenger": challenger}
    tags = client.get_model_version(name, challenger).tags
    assert tags["dlp.promote.decision"] == "refused" and "input columns" in tags["dlp.promote.reason"]


def test_a_challenger_that_does_not_load_is_refused(reg, capsys):
    name = "broken-challenger"
    champion = _with_champion(capsys, name, reg.good)
    challenger = _register(capsys, reg.bad, name)
    before = _aliases(name)
    with _broken(reg.bad):
        proc = dlp_in_process(capsys, "promote", name)
    _refused(proc, 2, f"{name} v{challenger} refused", "does not load")
    assert _aliases(name) == before == {"champion": champion, "challenger": challenger}
    assert MlflowClient().get_model_version(name, challenger).tags["dlp.promote.decision"] == "refused"


def test_a_champion_that_no_longer_loads_stops_promotion(reg, capsys):
    name = "broken-champion"
    champion = _with_champion(capsys, name, reg.bad)
    challenger = _register(capsys, reg.good, name)   # better: it would be promoted
    before = _aliases(name)
    with _broken(reg.bad):
        proc = dlp_in_process(capsys, "promote", name)
    _refused(proc, 2, f"champion {name} v{champion} does not load", "move the alias by hand")
    assert _aliases(name) == before == {"champion": champion, "challenger": challenger}


def test_a_challenger_already_champion_is_refused(reg, capsys):
    name = "already"
    champion = _with_champion(capsys, name, reg.good)
    before = _aliases(name)   # champion and challenger: the same version
    proc = dlp_in_process(capsys, "promote", name, "--version", champion)
    _refused(proc, 2, f"{name} v{champion} already is the champion")
    assert _aliases(name) == before == {"champion": champion, "challenger": champion}


def test_equal_scores_keep_the_champion(reg, capsys):
    name = "equal"
    champion = _with_champion(capsys, name, reg.good)
    challenger = _register(capsys, reg.good, name)   # the same model again: the same score
    before = _aliases(name)
    proc = dlp_in_process(capsys, "promote", name)
    assert proc.returncode == 1, proc.stdout + proc.stderr   # refused for its score (cli: exit 1)
    line, = proc.stdout.strip().splitlines()
    assert line.startswith(f"REFUSED {name} v{challenger}") and "(equal)" in line, line
    assert proc.stderr.strip() == ""
    assert _aliases(name) == before == {"champion": champion, "challenger": challenger}
    tags = MlflowClient().get_model_version(name, challenger).tags
    assert tags["dlp.promote.decision"] == "refused"
    assert json.loads(MlflowClient().get_registered_model(name).tags["dlp.champion_history"]) == [champion]
