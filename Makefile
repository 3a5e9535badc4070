# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install into it; a second run installs nothing new.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
NODES  ?= 2

.PHONY: install test test-fast lint demo cluster cluster-stop clean

install: $(STAMP)

# torch first: the CPU wheel, pinned, so that nothing later resolves a CUDA build.
# DeepSpeed builds against the torch already installed (--no-build-isolation).
# scgpt without its dependency list: it declares heavy extras it never imports; the
# packages it does import are in setup.cfg (scanpy, ipython, datasets).
$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0 setuptools wheel
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[dev]'
	$(PIP) install -q --no-deps scgpt==0.2.4
	touch $@

cluster:
	bash slurm/dev-cluster.sh start --nodes $(NODES)

cluster-stop:
	bash slurm/dev-cluster.sh stop

lint: install
	$(PY) -m ruff check .

test: install cluster lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slurm and not slow"

demo: install
	test -f shards/demo/manifest.json || $(PY) -m hpc_pgo.data demo --out shards/demo
	$(PY) -m hpc_pgo.data verify shards/demo
	$(PY) launch/submit.py folds=0-14 model=fusion_small train.epochs=15 train.num_workers=0

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
