# `make demo` and `make test` work on a fresh machine: they build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench bench-ecad gpu-check clean

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
# bench/results/ (hours on 2 CPU cores; each results file names its command and most say how long it took).
bench: setup
	$(PY) bench/bench_bundled.py --seeds 4 --threads 1
	$(PY) bench/bench_speed.py --steps 8 --repeats 3
	$(PY) bench/bench_latency.py --model bundled --batch 1 --repeats 5 --profile-rounds 2 --frontier bench/results/search_long72.tar.gz --frontier-points 4
	$(PY) bench/bench_latency.py --model pixart --steps 8 --batch 1 --repeats 2 --profile-rounds 1 --quick
	$(PY) bench/bench_fast_block.py --batch 16 --steps 20 --repeats 5 --frontier-points 3
	$(PY) bench/bench_compile.py --models bundled --repeats 5 --patterns
	$(PY) bench/bench_compile.py --models full --steps 4 --repeats 3
	$(PY) bench/bench_search.py
	$(PY) bench/bench_hypervolume.py --prompts 3 --generations 3 --population 24 --factor 5 --seed 0
	$(PY) bench/bench_quant.py --prompts 48 --calib-every 2 --iters 200 --threads 1 --auto
	$(PY) bench/bench_quant.py --ablation --prompts 1 --calib-every 2 --threads 1
	$(PY) bench/bench_quant_size.py --threads 1
	$(PY) bench/bench_quant_auto.py --prompts 4
	$(PY) bench/bench_quant_speed.py --cpu-time --repeats 7 --pixart-blocks 2 --pixart-repeats 4 --compile --profile --ecad --pixart-ecad
	tar xzf bench/results/search_long72.tar.gz -C /tmp s72/schedules/p00_7.26x.json
	$(PY) bench/bench_quant_speed.py --cpu-time --skip-models --skip-layers --ecad --compile --repeats 9 \
		--ecad-schedule /tmp/s72/schedules/p00_7.26x.json --out bench/results/quant_speed_ecad.md
	$(PY) bench/bench_eval.py --every 6 --seeds 0,1 --repeats 3 --timing-images 4
	$(PY) bench/bench_metric_split.py --population 8 --generations 2 --repeats 5
	$(PY) bench/reliability.py
	$(PY) bench/bench_eval.py --sweep --search runs/bench-search --ecad-points 32 --every 6 --seeds 1,2 --repeats 5 \
		--timing-images 1 --batch-size 16

# ditaccel's MACs of ECAD's published schedules vs the files' own figures (needs git and network).
bench-ecad: setup
	test -d runs/ecad || git clone --depth 1 https://github.com/AniAggarwal/ecad runs/ecad
	$(PY) bench/ecad_macs.py --ecad-dir runs/ecad

# On a machine with a CUDA GPU: writes bench/results/gpu.md. On one H100 the eager rows took 40-60 s and each
# compiled row 16-80 s of compiling; pick rows with ARGS="--modes ... --models ... --methods ...".
gpu-check: setup
	$(PY) bench/device_check.py $(ARGS)

clean:
	rm -rf $(VENV) runs
