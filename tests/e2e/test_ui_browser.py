"""The MLflow UI served by `dlp ui`, looked at in a real (headless) browser over a real store.

One small digits CNN is trained for two epochs (so it has a learning curve), registered as `digits_ui` and
promoted to `champion`; then `dlp ui` serves the store on 127.0.0.1 and headless Chromium loads five pages,
taking a screenshot and dumping the rendered DOM of each:

  runs.png       #/experiments/<id>/runs                                   the run is listed by name, its Dataset
                                                                           column names its train/val/test splits
  run.png        #/experiments/<id>/runs/<run>                             overview: Datasets lists the splits
  metrics.png    #/experiments/<id>/runs/<run>/model-metrics               metric charts drawn (train/loss ...)
  artifacts.png  #/experiments/<id>/runs/<run>/artifacts/plots/learning_curve.png   artifact tree + the plot
  model.png      #/models/digits_ui                                         the version carries alias champion

Screenshots (and the DOM dumps, *.html) are kept as test artifacts in `$DLP_TEST_ARTIFACTS/ui/`, by default
`<repo>/test-artifacts/ui/` (git-ignored).

Run it (slow: excluded from the default run; about 1 min once Chromium is installed):

    .venv/bin/python -m pytest -m slow tests/e2e/test_ui_browser.py

Needs Chromium. If neither `chromium` nor `chromium-browser` is on PATH (or `$DLP_CHROMIUM` names none), the
test installs Debian's `chromium` with `apt-get install -y chromium` (root only; ~20-90 s, package registry
access needed); without root or apt-get, or if the install fails, the test is skipped with the reason.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOKE, dlp_in_process, free_ports

pytestmark = pytest.mark.slow

MODEL = "digits_ui"
# the splits every run logs as dataset inputs (pipelines/tracking/datasets.py): "<cfg.name>-<split>", each with
# its context tag; the UI renders one as "digits_cnn-train (<digest>)" followed by a "training" tag
SPLITS = {"train": "training", "val": "validation", "test": "test"}
# --run-all-compositor-stages-before-draw: without it, under a virtual-time budget, the model-metrics tab
# came out without a single chart (its chart code never even requested) in about half of the loads, whatever
# the budget; with it, 16 loads out of 16 drew them.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--run-all-compositor-stages-before-draw"]
# the MLflow SPA loads lazily (code chunks, metric histories, artifacts). A page whose DOM still lacks what we
# look for is loaded again, in a fresh profile, with twice the budget.
BUDGETS_MS = (15000, 30000, 60000)


def _artifacts_dir() -> Path:
    root = Path(os.environ.get("DLP_TEST_ARTIFACTS") or REPO / "test-artifacts")
    out = root / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _find_chromium():
    named = os.environ.get("DLP_CHROMIUM")
    if named:
        return shutil.which(named)
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary; installs Debian's `chromium` with apt-get when there is none, else skips."""
    found = _find_chromium()
    if found:
        return found
    if os.environ.get("DLP_CHROMIUM"):
        pytest.skip(f"DLP_CHROMIUM={os.environ['DLP_CHROMIUM']} is not an executable on PATH")
    if shutil.which("apt-get") is None:
        pytest.skip("no chromium on PATH and no apt-get to install it (install Chromium or set DLP_CHROMIUM)")
    if os.geteuid() != 0:
        pytest.skip("no chromium on PATH and not root, so apt-get cannot install it "
                    "(run `sudo apt-get install -y chromium` or set DLP_CHROMIUM)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "chromium"]
    proc = subprocess.run(install, check=False, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:  # stale or missing package lists: refresh once and try again
        subprocess.run(["apt-get", "update"], check=False, env=env, capture_output=True, text=True, timeout=300)
        proc = subprocess.run(install, check=False, env=env, capture_output=True, text=True, timeout=600)
    found = _find_chromium()
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        pytest.skip(f"`apt-get install -y chromium` failed (exit {proc.returncode}): {' | '.join(tail)}")
    return found


def _wait_healthy(proc, url: str, log: Path, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dlp ui exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(url, timeout=2).read() == b"OK":
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout:.0f} s (a 2-core machine under load is slow to "
                         f"start mlflow server): {log.read_text()[-2000:]}")


def _browse(chromium: str, url: str, png: Path, tmp: Path, budget_ms: int, size: str) -> str:
    """Load `url` once in a fresh headless profile: screenshot to `png`, return the rendered DOM."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp))
    png.unlink(missing_ok=True)
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
           f"--window-size={size}", f"--screenshot={png}", "--dump-dom", url]
    # its own session: on a timeout the whole process group (browser, zygote, renderers) goes
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish loading {url} within 120 s")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, f"chromium exited {proc.returncode} on {url}: {err[-2000:]}"
    return out


def _look(chromium: str, url: str, name: str, tmp: Path, shows, size: str = "1400,900") -> str:
    """Screenshot + DOM of a page, reloaded with a longer virtual-time budget until `shows(dom)` holds."""
    out = _artifacts_dir()
    png = out / f"{name}.png"
    for budget in BUDGETS_MS:
        dom = _browse(chromium, url, png, tmp, budget, size)
        (out / f"{name}.html").write_text(dom)
        if shows(dom):
            break
    else:
        raise AssertionError(f"{url}: expected content not rendered with virtual-time budgets {BUDGETS_MS} ms; "
                             f"see {png} and {out / (name + '.html')}")
    _assert_real_screenshot(png, size)
    return dom


def _assert_real_screenshot(png: Path, size: str) -> None:
    from PIL import Image

    assert png.is_file(), f"no screenshot at {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    assert png.stat().st_size > 10_000, f"{png} is only {png.stat().st_size} bytes: blank page?"
    with Image.open(png) as im:
        assert im.size == tuple(int(v) for v in size.split(",")), im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    # a blank or error page has a handful of colours; the MLflow UI with text, icons and charts has hundreds
    assert colours is None or len(colours) > 64, f"{png} has only {len(colours)} colours: blank page?"


def _datasets_shown(dom: str) -> dict:
    """{dataset name: (digest, context tag)} of the digits_cnn-<split> datasets rendered in `dom`."""
    # a name "(digest)" label, then (without reaching the next dataset's label) its context tag
    pattern = (r">(digits_cnn-\w+) \(([0-9a-f]+)\)<(?:(?!digits_cnn-).)*?>(" + "|".join(SPLITS.values()) + ")<")
    return {name: (digest, context) for name, digest, context in re.findall(pattern, dom, flags=re.S)}


def test_ui_pages_render_in_headless_chromium(store, tmp_path, capsys, chromium):
    from mlflow import MlflowClient

    # --- a real store: one trained run (two epochs: a learning curve), registered and promoted -------------
    proc = dlp_in_process(capsys, "train", "experiment=digits_cnn", *SMOKE, "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = next(line.split()[2] for line in proc.stdout.splitlines() if line.strip().startswith("run id:"))
    proc = dlp_in_process(capsys, "register", f"runs:/{run_id}/model", "--name", MODEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = dlp_in_process(capsys, "promote", MODEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    client = MlflowClient(store)
    run = client.get_run(run_id)
    exp_id, run_name = run.info.experiment_id, run.info.run_name
    assert {a.path for a in client.list_artifacts(run_id, "plots")} >= {"plots/learning_curve.png"}
    assert client.get_registered_model(MODEL).aliases.get("champion") is not None

    # --- dlp ui on loopback ---------------------------------------------------------------------------------
    port = free_ports()[0]
    # the server's log goes to a file: a pipe nobody reads would fill up with request lines and stall it
    log = tmp_path / "ui.log"
    with open(log, "w") as sink:
        ui = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port)], cwd=tmp_path,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=sink,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(ui, f"{base}/health", log)
        run_page = f"{base}/#/experiments/{exp_id}/runs/{run_id}"

        # a. the experiment's training runs list names the run
        dom = _look(chromium, f"{base}/#/experiments/{exp_id}/runs", "runs", tmp_path,
                    lambda d: run_name in d)
        assert "Training runs" in dom
        # ... with its datasets: the Dataset column holds all three splits, "<name>-<split> (<digest>)" and the
        # context tag (two of them behind a "+2" chip on screen, but in the DOM)
        logged = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
        expected = {f"digits_cnn-{split}": (logged.get(f"digits_cnn-{split}"), context)
                    for split, context in SPLITS.items()}
        assert 'data-testid="sort-header-Dataset">Dataset<' in dom, "the runs table has no Dataset column"
        shown = _datasets_shown(dom)
        assert shown == expected, (f"the runs table's Dataset column shows {shown or 'no datasets'}, expected "
                                   f"{expected} (the run's dataset inputs in the store: {logged or 'none'})")

        # ... and the run's overview lists them under Datasets: the first with its context tag, then "+2"
        dom = _look(chromium, run_page, "run", tmp_path, lambda d: run_name in d and "About this run" in d)
        assert ">Datasets</h4>" in dom, "the run page has no Datasets section"
        shown = _datasets_shown(dom)
        assert len(shown) == 1 and shown.items() <= expected.items(), \
            f"the run page's Datasets show {shown or 'no datasets'}, expected one of {expected} first"
        assert f">+{len(SPLITS) - 1}<" in dom, f"the run page does not count the other {len(SPLITS) - 1} datasets"

        # b. the run's model-metrics tab draws its charts. Charts render only once scrolled into view, so this
        # page gets a tall window: the perf, test and train rows are then drawn (a chart's legend reads
        # "<run name> (<metric>)" once its plot is there, a spinner before).
        def charts_drawn(d: str) -> bool:
            return f"{run_name} (train/loss)" in d and "main-svg" in d

        dom = _look(chromium, f"{run_page}/model-metrics", "metrics", tmp_path, charts_drawn, size="1400,2400")
        assert 'title="train/loss"' in dom and 'title="perf/epoch_seconds"' in dom

        # ... and its artifacts tab, with the learning curve selected: tree (plots/, config.yaml) and preview
        def curve_shown(d: str) -> bool:
            return re.search(r'<img[^>]*alt="plots/learning_curve.png"', d) is not None

        dom = _look(chromium, f"{run_page}/artifacts/plots/learning_curve.png", "artifacts", tmp_path,
                    curve_shown)
        assert ">plots<" in dom and "config.yaml" in dom

        # c. the registered model: its version carries the alias chip "@ champion"
        def champion_shown(d: str) -> bool:
            return re.search(r"@(&nbsp;|\s|\u00a0)champion<", d) is not None

        dom = _look(chromium, f"{base}/#/models/{MODEL}", "model", tmp_path, champion_shown)
        assert MODEL in dom
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: do not leave the server behind
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=30)
