# lt_det: two commands from a fresh machine.
#   make demo   set up .venv/ and run the main job (synthetic long-tailed benchmark, CPU)
#   make test   set up .venv/ and run the test suite
#   make benchmark  every registered method over three seeds, mean and spread (long; optional)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lt_det_setup_done
DEMO_OUT ?= output/demo
DEMO_ARGS ?=
BENCH_OUT ?= output/benchmark
BENCH_ARGS ?=
# Stage-1 runs shared by `make demo` and `make benchmark` (one per seed, recipe and settings).
STAGE1_CACHE ?= output/stage1_cache

.PHONY: setup test demo benchmark clean-venv

setup: $(STAMP)

# Re-run set-up only when what it installs changes; a ready .venv costs nothing.
$(STAMP): tools/setup_env.sh requirements.txt setup.py tools/detectron2_ext/vision.cpp
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/lt_benchmark.py --out $(DEMO_OUT) --stage1-cache $(STAGE1_CACHE) $(DEMO_ARGS)

benchmark: setup
	$(PY) tools/lt_benchmark.py --all-methods --seeds 0 1 2 --out $(BENCH_OUT) \
		--stage1-cache $(STAGE1_CACHE) $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
