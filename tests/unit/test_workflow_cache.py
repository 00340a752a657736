"""`dlp pipeline`'s step cache: a step's key covers everything that can change its output — the data's content
(not only data.path), the config it reads, the code (untracked source files too) — and chains, so a re-run after
a change runs exactly the steps the change reaches, and an unchanged re-run reuses every step.

The pipeline tests share one store and one baseline pipeline (a small CSV, the smoke trainer); each changes one
thing, re-runs, checks which steps ran, and puts the thing back. The code version is read from a throw-away git
repository (store.REPO points there), so adding a source file never touches the project's working tree.
"""
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.tracking import store
from pipelines.workflow import keys
from tests.conftest import REPO, SMOKE, dlp_in_new_store
from tests.e2e.test_pipeline import STEPS, _pipelines, _steps

ARGS = ["pipeline", "model=mlp", "data=csv", "data.path=data.csv", "data.target=label", "name=cache", *SMOKE]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout


def _code_repo(root: Path) -> Path:
    """A git repository laid out like the project's (source folders, .gitignore), one commit."""
    repo = root / "code"
    for folder in store.SOURCE_DIRS:
        (repo / folder).mkdir(parents=True)
        (repo / folder / "__init__.py").write_text(f"# {folder}\n")
    (repo / ".gitignore").write_text((REPO / ".gitignore").read_text())
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "start")
    return repo


def _table(n: int, flip: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    label = (x[:, 0] + x[:, 1] > 0).astype(int)
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["label"] = 1 - label if flip else label
    return frame


# ---- what a key covers, without running a pipeline ---------------------------------------------------------

def test_untracked_source_files_change_the_code_version_and_nothing_else_does(tmp_path):
    repo = _code_repo(tmp_path)
    clean = store.code_version(repo)
    assert clean == _git(repo, "rev-parse", "HEAD").strip()
    for ignored in ("outputs/model.py", "mlruns/0/meta.yaml", "pipelines/NOTES.txt", "scratch.py",
                    "pipelines/__pycache__/x.py", "conf/mlflow.db"):
        (repo / ignored).parent.mkdir(parents=True, exist_ok=True)
        (repo / ignored).write_text("x = 1\n")
    assert store.code_version(repo) == clean   # outputs, stores, notes, files outside the source folders

    (repo / "models" / "extra.py").write_text("WIDTH = 1\n")
    added = store.code_version(repo)
    assert added != clean and added.startswith(clean + "+")
    (repo / "models" / "extra.py").write_text("WIDTH = 2\n")
    edited = store.code_version(repo)
    assert edited not in (clean, added)       # the untracked file's content counts, not only its name
    (repo / "conf" / "new.yaml").write_text("a: 1\n")
    assert store.code_version(repo) not in (clean, added, edited)

    (repo / "conf" / "new.yaml").unlink()
    (repo / "models" / "extra.py").unlink()
    assert store.code_version(repo) == clean
    (repo / "pipelines" / "__init__.py").write_text("# changed\n")   # a tracked file's edit, as before
    assert store.code_version(repo) not in (clean, added, edited)


def test_outside_git_the_source_tree_is_hashed(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "a.py").write_text("A = 1\n")
    first = store.code_version(tmp_path)
    assert first.startswith("tree+")
    (tmp_path / "pipelines" / "a.py").write_text("A = 2\n")
    assert store.code_version(tmp_path) not in (first, None)
    assert store.code_version(tmp_path / "nothing-here") is None


def test_data_content_is_the_files_bytes_not_their_name(tmp_path):
    csv = tmp_path / "data.csv"
    _table(40).to_csv(csv, index=False)
    before = keys.data_content(str(csv))
    _table(40, flip=True).to_csv(csv, index=False)
    assert keys.data_content(str(csv)) != before
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.png").write_bytes(b"one")
    tree = keys.data_content(str(tmp_path / "images"))
    (folder / "2.png").write_bytes(b"two")
    assert keys.data_content(str(tmp_path / "images")) != tree
    (folder / "2.png").write_bytes(b"TWO")
    assert keys.data_content(str(tmp_path / "images")) not in (tree, None)
    assert keys.data_content(None) is None and keys.data_content("imdb") is None   # a hub name: the name keys it


def test_prepare_key_covers_the_data_content_and_downstream_keys_chain(tmp_path, monkeypatch):
    from pipelines.workflow import plan

    monkeypatch.chdir(tmp_path)
    _table(40).to_csv("data.csv", index=False)
    p = plan.prepare(ARGS[1:])
    before = keys.step_config(p, "prepare")
    _table(40, flip=True).to_csv("data.csv", index=False)
    assert keys.step_config(p, "prepare") != before     # same data.path, other rows

    outputs = {"data_hash": "h", "n_train": 28, "n_test": 6}
    train = [keys.step_key("train", {}, "c", {"x": 1}, {"prepare": {"key": k, "outputs": outputs}})
             for k in ("prepare-key-1", "prepare-key-2")]
    assert train[0] != train[1]   # same upstream outputs, another upstream key: another key
    evaluate = [keys.step_key("evaluate", {}, "c", None, {"train": {"key": k, "outputs": {"run_id": "r"}}})
                for k in train]
    assert evaluate[0] != evaluate[1]


# ---- re-running a pipeline -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A store with one finished pipeline over data.csv (120 rows), the code version read from a fresh repo."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "REPO", _code_repo(root))
        _table(120).to_csv(root / "data.csv", index=False)
        uri, code, out = dlp_in_new_store(root, *ARGS)
        assert code == 0 and "5 steps (0 reused, 5 run)" in out, out
        yield root


def _rerun(root: Path, *extra: str) -> tuple:
    """Run the pipeline again: (its summary, {step: 'ran' | 'reused'}, its step runs)."""
    uri, code, out = dlp_in_new_store(root, *ARGS, *extra)
    assert code == 0, out
    client, runs = _pipelines(uri)
    steps = _steps(client, runs[-1])
    assert set(steps) == set(STEPS)
    return out, {n: "reused" if "dlp.step.reused_from" in r.data.tags else "ran" for n, r in steps.items()}, steps


def _ran(*names: str) -> dict:
    return {n: "ran" if n in names else "reused" for n in STEPS}


def test_an_unchanged_rerun_reuses_every_step(baseline):
    out, what, _ = _rerun(baseline)
    assert "5 steps (5 reused, 0 run)" in out and what == _ran()


def _outputs(run) -> dict:
    return json.loads(run.data.tags["dlp.step.outputs"])


def test_new_rows_and_flipped_labels_in_the_same_csv_rerun_every_step(baseline):
    csv = baseline / "data.csv"
    old = csv.read_bytes()
    try:
        _table(160, flip=True).to_csv(csv, index=False)
        # a model trained on other data never replaces the champion (the fingerprints differ): register it
        # under a name of its own, so the pipeline runs to its end
        out, what, steps = _rerun(baseline, "pipeline.register.name=cache-new-data")
    finally:
        csv.write_bytes(old)
    assert "5 steps (0 reused, 5 run)" in out and what == _ran(*STEPS), out
    _, what, before = _rerun(baseline)   # the old file back: the old steps again
    assert what == _ran()
    new, old = _outputs(steps["prepare"]), _outputs(before["prepare"])
    assert new["n_train"] > old["n_train"] and new["data_hash"] != old["data_hash"]   # the new rows were read
    assert _outputs(steps["train"])["run_id"] != _outputs(before["train"])["run_id"]   # and trained on


def test_a_rewritten_csv_with_the_same_rows_reruns_prepare_and_so_everything_after(baseline):
    csv = baseline / "data.csv"
    old = csv.read_bytes()
    try:
        csv.write_bytes(old.replace(b"\n", b"\r\n"))   # other bytes, the same table
        out, what, steps = _rerun(baseline)
    finally:
        csv.write_bytes(old)
    assert "5 steps (0 reused, 5 run)" in out and what == _ran(*STEPS), out
    _, _, before = _rerun(baseline)
    # prepare's outputs are the same; train re-runs because prepare's key changed (keys chain)
    assert _outputs(steps["prepare"]) == _outputs(before["prepare"])


def test_a_config_change_reruns_the_steps_that_read_it(baseline):
    out, what, _ = _rerun(baseline, "trainer.max_epochs=2")       # training config: prepare does not read it
    assert "5 steps (1 reused, 4 run)" in out and what == _ran("train", "evaluate", "register", "promote"), out
    out, what, _ = _rerun(baseline, "pipeline.evaluate.metric=f1")  # a step parameter: that step and after
    assert "5 steps (2 reused, 3 run)" in out and what == _ran("evaluate", "register", "promote"), out
    out, what, _ = _rerun(baseline, "pipeline.promote.min_delta=0.5")   # promote's own setting: promote alone
    assert "5 steps (4 reused, 1 run)" in out and what == _ran("promote"), out


def test_a_promote_setting_changed_after_the_version_won_is_no_error(tmp_path, monkeypatch):
    """The registered version is champion already: the re-run promote step says so and the pipeline succeeds."""
    monkeypatch.setattr(store, "REPO", _code_repo(tmp_path))
    _table(120).to_csv(tmp_path / "data.csv", index=False)
    uri, code, out = dlp_in_new_store(tmp_path, *ARGS)
    assert code == 0, out
    out, what, steps = _rerun(tmp_path, "pipeline.promote.min_delta=0.5")
    assert what == _ran("promote") and "already is the champion" in steps["promote"].data.tags["dlp.step.decision"]


def test_a_new_source_file_reruns_every_step_and_an_output_file_none(baseline):
    repo = baseline / "code"
    assert store.REPO == repo
    (repo / "outputs").mkdir(exist_ok=True)
    (repo / "outputs" / "notes.py").write_text("seen = True\n")   # ignored (.gitignore): not code
    (repo / "pipelines" / "scratch.txt").write_text("todo\n")      # not a source file
    out, what, _ = _rerun(baseline)
    assert "5 steps (5 reused, 0 run)" in out and what == _ran(), out
    extra = repo / "models" / "extra.py"
    extra.write_text("WIDTH = 3\n")                                # untracked: `git diff HEAD` misses it
    try:
        out, what, _ = _rerun(baseline)
    finally:
        extra.unlink()
    assert "5 steps (0 reused, 5 run)" in out and what == _ran(*STEPS), out
