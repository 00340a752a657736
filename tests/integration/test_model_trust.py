"""A logged model's files are checked against the sha256 digests recorded when it was logged before anything of it
is loaded: `dlp predict`, `dlp evaluate` and `dlp promote` refuse a model whose code or network was tampered with
in the artifact store in one line, exit 2, and the tampered code never runs (it would create a marker file).

One breast-cancer MLP is trained once per module (a smoke run) in a real SQLite store; every test tampers with its
files in the store's artifact directory, and a fixture restores them (and its tags) afterwards.
"""
import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import SMOKE, assert_one_line_error, dlp_in_process, new_store, run_dlp

SAMPLE_INPUTS = "net/data/sample_inputs/model.pt"


@dataclass
class Logged:
    uri: str           # the store
    root: Path         # its directory, the tests' working directory
    run_id: str
    model_id: str
    files: Path        # the LoggedModel's artifact directory in the store
    marker: Path       # what tampered code creates


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    from pipelines.config.compose import compose
    from pipelines.training.driver import train

    root = tmp_path_factory.mktemp("trust")
    uri = new_store(root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        mlflow.set_tracking_uri(uri)
        run_id = train(compose(["experiment=breast_cancer_mlp", *SMOKE])).run_id
        client = MlflowClient(uri)
        model_id = client.get_run(run_id).data.tags["dlp.model_uri"].removeprefix("models:/")
        files = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    from sklearn.datasets import load_breast_cancer

    load_breast_cancer(as_frame=True).frame.drop(columns="target").head(6).to_csv(root / "rows.csv", index=False)
    return Logged(uri, root, run_id, model_id, files, root / "marker")


@pytest.fixture
def model(logged, monkeypatch, tmp_path):
    """The module's model, its files and tags restored after the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.uri)
    monkeypatch.chdir(logged.root)
    mlflow.set_tracking_uri(logged.uri)
    client = MlflowClient()
    tag = client.get_logged_model(logged.model_id).tags["dlp.model_sha256"]
    shutil.copytree(logged.files, tmp_path / "backup")
    yield logged
    shutil.rmtree(logged.files)
    shutil.copytree(tmp_path / "backup", logged.files)
    client.set_logged_model_tags(logged.model_id, {"dlp.model_sha256": tag})
    ran = logged.marker.exists()
    logged.marker.unlink(missing_ok=True)
    assert not ran, "tampered code ran"


def _predict(capsys, uri):
    return dlp_in_process(capsys, "predict", uri, "rows.csv", "-o", "preds.csv")


def _append_code(path: Path, marker: Path) -> None:
    with open(path, "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').close()\n")


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickle_into_archive(archive: Path, marker: Path) -> None:
    """net.pt2 with its sample inputs replaced by a pickle that creates `marker`: torch.export.load unpickles
    them (weights_only=True first, then a full unpickle when that fails)."""
    import pickle

    out = io.BytesIO()
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(out, "w") as new:
        for name in old.namelist():
            new.writestr(name, pickle.dumps(_Touch(marker)) if name.endswith(SAMPLE_INPUTS) else old.read(name))
    archive.write_bytes(out.getvalue())


def test_the_digests_are_recorded_and_an_untampered_model_predicts(model, capsys):
    client = MlflowClient()
    tag = client.get_logged_model(model.model_id).tags["dlp.model_sha256"]
    assert client.get_run(model.run_id).data.tags["dlp.model_sha256"] == tag
    from pipelines.tracking.model_trust import manifest

    assert json.loads(tag) == manifest(model.files)   # every file the store holds
    assert {"MLmodel", "pyfunc_model.py", "code/preprocess.py", "artifacts/net.pt2"} <= set(manifest(model.files))
    for uri in (f"runs:/{model.run_id}/model", f"models:/{model.model_id}"):
        proc = _predict(capsys, uri)
        assert proc.returncode == 0, proc.stderr
        assert "wrote 6 predictions" in proc.stdout


@pytest.mark.parametrize("name", ["pyfunc_model.py", "code/preprocess.py"])
def test_a_tampered_code_file_is_refused_and_never_runs(model, capsys, name):
    _append_code(model.files / name, model.marker)
    uri = f"runs:/{model.run_id}/model"
    if name == "pyfunc_model.py":   # a real `dlp` process: exit 2, one line
        proc = run_dlp("predict", uri, "rows.csv", "-o", "preds.csv", cwd=model.root)
        assert proc.returncode == 2, proc.stderr
    else:
        proc = _predict(capsys, uri)
    assert_one_line_error(proc, f"predict: model files of {uri} do not match the digests recorded when it was "
                                f"logged: {name} changed", "a model store must be trusted like code")
    assert not model.marker.exists()


def test_a_tampered_network_is_refused_and_never_unpickled(model, capsys, tmp_path):
    import torch

    _pickle_into_archive(model.files / "artifacts" / "net.pt2", model.marker)
    proc = _predict(capsys, f"models:/{model.model_id}")
    assert_one_line_error(proc, "artifacts/net.pt2 changed")
    assert not model.marker.exists()
    # the premise: loading that archive as MLflow's loader would runs the pickle
    premise = tmp_path / "premise"
    _pickle_into_archive(Path(shutil.copy(model.files / "artifacts" / "net.pt2", tmp_path / "net.pt2")), premise)
    with pytest.raises(Exception):
        torch.export.load(tmp_path / "net.pt2")
    assert premise.exists()


def test_pickle_data_is_refused_even_when_the_digests_match(model, capsys):
    """A model logged with pickle data by a writer other than dlpipe (its digests then describe the pickle)."""
    from pipelines.tracking.model_trust import encode, manifest

    _pickle_into_archive(model.files / "artifacts" / "net.pt2", model.marker)
    MlflowClient().set_logged_model_tags(model.model_id, {"dlp.model_sha256": encode(manifest(model.files))})
    proc = _predict(capsys, f"runs:/{model.run_id}/model")
    assert_one_line_error(proc, f"holds pickle data (artifacts/net.pt2: {SAMPLE_INPUTS})", "runs code when loaded")
    assert not model.marker.exists()


def test_an_added_or_missing_file_is_refused(model, capsys):
    (model.files / "python_model.pkl").write_bytes(b"")   # what a cloudpickled pyfunc model loads from
    assert_one_line_error(_predict(capsys, f"models:/{model.model_id}"), "python_model.pkl was added")
    (model.files / "python_model.pkl").unlink()
    (model.files / "code" / "preprocess_text.py").unlink()
    assert_one_line_error(_predict(capsys, f"models:/{model.model_id}"), "code/preprocess_text.py is missing")


def test_a_model_without_digests_or_not_in_the_store_is_refused(model, capsys):
    MlflowClient().delete_logged_model_tag(model.model_id, "dlp.model_sha256")
    proc = _predict(capsys, f"runs:/{model.run_id}/model")
    assert_one_line_error(proc, "has no recorded file digests", "retrain it with dlp train to re-log it")
    proc = _predict(capsys, str(model.files))   # a local copy: nothing recorded its digests
    assert_one_line_error(proc, "is not runs:/<id>/model or models:/<name>@<alias>")


def test_evaluate_and_promote_refuse_a_tampered_model(model, capsys):
    proc = dlp_in_process(capsys, "register", f"runs:/{model.run_id}/model", "--name", "trust")
    assert proc.returncode == 0, proc.stderr
    version = MlflowClient().get_model_version_by_alias("trust", "challenger").version
    proc = dlp_in_process(capsys, "evaluate", "models:/trust@challenger")
    assert proc.returncode == 0, proc.stderr
    _append_code(model.files / "pyfunc_model.py", model.marker)
    proc = dlp_in_process(capsys, "evaluate", "models:/trust@challenger")
    assert proc.returncode == 2
    assert_one_line_error(proc, "evaluate: model files of models:/trust@challenger do not match", "changed")
    proc = dlp_in_process(capsys, "promote", "trust")
    assert proc.returncode == 2
    assert_one_line_error(proc, f"promote: trust v{version} refused: does not load (model files of "
                                f"models:/trust/{version} do not match", "pyfunc_model.py changed")
    assert "champion" not in MlflowClient().get_registered_model("trust").aliases
    assert not model.marker.exists()
