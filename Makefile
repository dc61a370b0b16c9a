# Two commands do all set-up on a fresh machine (see README):
#   make demo   - create .venv, install, run the main job on the embedded default
#   make test   - create .venv, install, run the test suite
# torch and torchvision are installed first as a matched pair from PyPI: open_clip imports
# torchvision, and a CPU-only local torch wheel cannot be paired with PyPI's torchvision builds
# (`operator torchvision::nms does not exist`). 2.14/0.29 is the newest matched pair on PyPI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PAIR ?= torch==2.14.* torchvision==0.29.*
# `cpu` pulls faiss-cpu; use FAISS_EXTRA=gpu on CUDA nodes (never both).
FAISS_EXTRA ?= cpu
STAMP := $(VENV)/.luma-installed
PYTEST_ARGS ?=

.PHONY: demo test bench bench-peers lint install clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade-strategy only-if-needed $(TORCH_PAIR)
	$(PY) -m pip install -e ".[$(FAISS_EXTRA),dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	LUMA_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	LUMA_NUM_THREADS=1 $(PY) -m luma_pl.demo

bench: $(STAMP)
	LUMA_NUM_THREADS=1 $(PY) bench/run_all.py

# peer libraries the steady-state hot-tier bench compares against (bench/bench_hot_steady.py): in
# their own folder, never in the project's environment or dependencies
PEERS ?= .bench-peers
bench-peers: $(STAMP)
	$(PY) -m pip install --target $(PEERS) hnswlib usearch

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache $(PEERS)
