"""`make gpu-check` (benchmarks/gpu.py) in its CPU form: the file it writes holds every case of the matrix with real
numbers, the GPU-only fields null, the versions and a working DDP run; and it runs with no package the GPU machine
lacks (MLflow, Ray ...: an import blocker that lets through only that machine's packages and the carried wheels)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = ("digits_cnn", "wide_cnn", "transformer")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
GPU_ONLY = ("gpu_util_mean", "peak_memory_bytes", "mfu")
# the GPU machine's Python packages (/work/.library/device/KINDS.md, 2026-11-17) and the wheels .whl/ carries there
GPU_MACHINE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split() + ["hydra-core", "omegaconf", "antlr4-python3-runtime"]

BLOCKER = textwrap.dedent('''
    # sitecustomize: only the modules the GPU machine has can be imported (this process and its children)
    import importlib.abc, importlib.metadata, os, re, sys
    _ALLOWED = set(os.environ["DLP_GPU_MACHINE_PACKAGES"].split())
    _OWNERS = importlib.metadata.packages_distributions()
    _OURS = {"pipelines", "models", "datamodules", "benchmarks", "sitecustomize"}

    class _GpuMachineOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            owners = _OWNERS.get(top)
            if top in sys.stdlib_module_names or top in _OURS or not owners:
                return None
            if any(re.sub(r"[-_.]+", "-", d).lower() in _ALLOWED for d in owners):
                return None
            with open(os.environ["DLP_BLOCKED_LOG"], "a") as f:
                f.write(top + "\\n")
            raise ModuleNotFoundError(f"{name} is not on the GPU machine ({', '.join(owners)})", name=name)

    sys.meta_path.insert(0, _GpuMachineOnly())
''')


def make_recipe(target: str) -> str:
    """The shell line(s) `make <target>` runs, read from the Makefile ($(PY) -> this interpreter); run directly so
    that a stale .venv stamp cannot make the test run scripts/setup.sh."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{target}:"))
    body = [ln[1:] for ln in lines[start + 1:] if ln.startswith("\t")][:1]
    return "\n".join(body).replace("$(PY)", sys.executable)


def check_file(data: dict, want_cases: list) -> None:
    assert data["device"] == "cpu" and data["size"] == "tiny" and data["cuda"] is None and data["driver"] is None
    for key in ("python", "torch", "lightning", "omegaconf", "hydra", "device_name"):
        assert isinstance(data[key], str) and data[key], key
    cases = {c["name"]: c for c in data["cases"]}
    assert sorted(cases) == sorted(want_cases) and len(data["cases"]) == len(want_cases)
    ran = [c for c in cases.values() if c["status"] == "ok"]
    for c in cases.values():
        assert c["status"] in ("ok", "skipped"), (c["name"], c.get("error"), c.get("traceback"))
        if c["status"] == "skipped":
            assert c["error"].startswith("time budget"), c
    for c in ran:
        assert c["samples_per_second"] > 0 and c["steps_per_second"] > 0 and c["first_epoch_seconds"] > 0, c
        assert c["timed_epochs"] == c["epochs"] - 1 and len(c["epoch_seconds"]) == c["epochs"], c
        assert abs(c["samples_per_second"] / c["steps_per_second"] - c["batch"]) < 1e-6 * c["batch"], c
        assert all(c[k] is None for k in GPU_ONLY), c
        assert c["data_device"] == "cpu" and c["compiled"] == c["compile"], c
        assert c["tflops"] is None or c["tflops"] > 0, c
    assert data["ddp"]["status"] == "ok" and data["ddp"]["backend"] == "gloo" and data["ddp"]["world_size"] == 1
    assert data["checks"]["ddp_initialises"] is True
    both = {c["name"] for c in ran} >= {"digits_cnn/32-true/eager/device", "digits_cnn/32-true/eager/host"}
    assert data["checks"]["digits_on_device_same_metrics"] is (True if both else None), data["checks"]
    for c in ran:
        assert c["test_metrics"]["test/acc"] >= 0, c
    cpu_only = ("ddp_initialises", "digits_on_device_same_metrics")
    assert all(v is None for k, v in data["checks"].items() if k not in cpu_only), data["checks"]
    assert 0 < data["total_seconds"] <= data["budget_seconds"] + 60
    return ran


def full_matrix() -> list:
    names = [f"{m}/{p}/{mode}/device" for m in MODELS for p in PRECISIONS for mode in ("eager", "compile")]
    names += [f"{m}/{p}/eager/host" for m in MODELS for p in ("32-true", "bf16-mixed")]
    return names + ["transformer/32-true+mm-high/eager/device"]


@pytest.mark.slow   # about a minute: the CPU form of every case and the DDP subprocess
def test_make_gpu_check_writes_every_case_in_its_cpu_form(tmp_path):
    proc = subprocess.run(["bash", "-c", make_recipe("gpu-check")], cwd=REPO, capture_output=True, text=True,
                          timeout=400, env={**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    ran = check_file(data, full_matrix())
    assert "wrote" in (tmp_path / "gpu_check.log").read_text()
    # every eager case fits the CPU form's budget; its ratios are computed from them
    assert {c["name"] for c in ran} >= {n for n in full_matrix() if "/eager/" in n}
    assert all(data["ratios"][f"{m}/bf16-mixed_vs_32-true/eager"] > 0 for m in MODELS)
    assert all(data["ratios"][f"{m}/device_vs_host/32-true"] > 0 for m in MODELS)


def _blocked_env(tmp_path: Path) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "CUDA_VISIBLE_DEVICES": "",
            "DLP_GPU_MACHINE_PACKAGES": " ".join(GPU_MACHINE), "DLP_BLOCKED_LOG": str(tmp_path / "blocked.txt")}


# ~20 s (three cases and the DDP subprocess): in the default run, as the guard of the GPU machine's imports
@pytest.mark.slow   # 25 s
def test_gpu_check_needs_no_package_the_gpu_machine_lacks(tmp_path):
    env = _blocked_env(tmp_path)
    for name in ("mlflow", "ray"):   # the blocker is active, here and in child processes
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert probe.returncode != 0 and "not on the GPU machine" in probe.stderr, probe.stderr
    (tmp_path / "blocked.txt").unlink()
    cases = [f"{m}/{p}/eager/device" for m in MODELS for p in ("32-true",)]
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--out", str(out), *(f"--only={c}" for c in cases)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [c["status"] for c in data["cases"]] == ["ok"] * 3, [c.get("traceback") for c in data["cases"]]
    check_file(data, cases)
    blocked = set((tmp_path / "blocked.txt").read_text().split()) if (tmp_path / "blocked.txt").exists() else set()
    assert not blocked & {"mlflow", "ray", "hydra", "omegaconf"}, blocked   # tried, failed, and survived: no
    assert re.match(r"\d", data["omegaconf"]) and re.match(r"\d", data["hydra"])


@pytest.mark.slow   # about a minute: torch.compile on 2 CPU cores
def test_a_compiled_case_compiles_and_its_compile_stays_out_of_the_steady_state(tmp_path):
    name = "digits_cnn/32-true/compile/device"
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--out", str(out), f"--only={name}", "--budget=300"],
                          cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [case] = check_file(json.loads(out.read_text()), [name])
    assert case["compiled"] is True
    # the first epoch compiles (seconds); the timed ones run the compiled graph without recompiling
    assert case["first_epoch_seconds"] > 5 * max(case["epoch_seconds"][1:]), case["epoch_seconds"]
