# `make demo` and `make test` work on a fresh machine: they build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/ditaccel demo --out runs/demo

test: setup
	$(PY) -m pytest -q -x --durations=15

lint: setup
	$(VENV)/bin/ruff check src tests bench scripts

bench: setup
	$(PY) bench/bench_speed.py

clean:
	rm -rf $(VENV) runs
