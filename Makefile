# make train   -> set up .venv (first time) and run the main job: the digits CNN on embedded defaults
# make test    -> set up .venv (first time) and run the default test suite (not slow; < 10 min on 2 cores)
# make test-slow -> the slow tests only (sweep resume, driver loss, two-node jobs, the UI in Chromium, every MLproject entry point)
# make test-cluster -> as root: a Ray cluster of two hosts in network namespaces, with PostgreSQL, S3 and a tracking server
# make gpu-check -> benchmarks/gpu.py: fit()'s speed on a GPU (tiny CPU form without one) -> benchmarks/results/gpu.json
PY := .venv/bin/python
STAMP := .venv/.dlpipe-installed

.PHONY: setup train test test-slow test-cluster test-all bench gpu-check ui

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	.venv/bin/dlp train experiment=digits_cnn

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not cluster"

test-cluster: $(STAMP)
	$(PY) -m pytest -m cluster tests/cluster

test-all: $(STAMP)
	$(PY) -m pytest -m "slow or not slow or cluster"

bench: $(STAMP)
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/tune_efficiency.py

gpu-check: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_check.sh

ui: $(STAMP)
	.venv/bin/dlp ui
