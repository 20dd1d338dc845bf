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
	$(VENV)/bin/ruff check src tests bench

# The full comparison on the bundled model, with the settings of the committed results in
# bench/results/ (roughly an hour on 2 CPU cores).
bench: setup
	$(PY) bench/bench_bundled.py --seeds 4 --threads 1
	$(PY) bench/bench_speed.py --steps 8 --repeats 3
	$(PY) bench/bench_search.py
	$(PY) bench/bench_quant.py --prompts 48 --calib-every 2 --iters 200 --threads 1 --auto
	$(PY) bench/bench_quant.py --ablation --prompts 1 --calib-every 2 --threads 1
	$(PY) bench/bench_quant_size.py --threads 1
	$(PY) bench/bench_eval.py --every 6 --seeds 0,1 --repeats 3 --timing-images 4
	$(PY) bench/bench_eval.py --sweep --search runs/bench-search --every 6 --seeds 1,2 --repeats 3 --timing-images 2

clean:
	rm -rf $(VENV) runs
