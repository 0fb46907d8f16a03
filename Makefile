# lt_det: two commands from a fresh machine.
#   make demo   set up .venv/ and run the main job (synthetic long-tailed benchmark, CPU)
#   make test   set up .venv/ and run the test suite
#   make benchmark  every registered method over three seeds, mean and spread (long; optional)
#   make test-d2main  the test suite against detectron2's main branch (second venv, .venv-d2main/)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lt_det_setup_done
DEMO_OUT ?= output/demo
DEMO_ARGS ?=
BENCH_OUT ?= output/benchmark
BENCH_ARGS ?=
# detectron2 main at a pinned commit (a source snapshot; D2MAIN_SOURCE may also be a git URL).
D2MAIN_SOURCE ?= ../shared/vendor/detectron2-02b5c4e.tar.gz
D2MAIN_VENV ?= .venv-d2main
D2MAIN_STAMP := $(D2MAIN_VENV)/.lt_det_setup_done
# Stage-1 runs shared by `make demo` and `make benchmark` (one per seed, recipe and settings).
STAGE1_CACHE ?= output/stage1_cache

.PHONY: setup test test-d2main demo benchmark clean-venv

setup: $(STAMP)

# Re-run set-up only when what it installs changes; a ready .venv costs nothing.
$(STAMP): tools/setup_env.sh requirements.txt setup.py tools/detectron2_ext/vision.cpp
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

test: setup
	$(PY) -m pytest -q tests

$(D2MAIN_STAMP): tools/setup_env.sh requirements.txt setup.py tools/detectron2_ext/vision.cpp
	VENV=$(D2MAIN_VENV) D2_SOURCE=$(D2MAIN_SOURCE) D2_EXT=minimal bash tools/setup_env.sh
	touch $@

test-d2main: $(D2MAIN_STAMP)
	$(D2MAIN_VENV)/bin/python -m pytest -q tests

demo: setup
	$(PY) tools/lt_benchmark.py --out $(DEMO_OUT) --stage1-cache $(STAGE1_CACHE) $(DEMO_ARGS)

benchmark: setup
	$(PY) tools/lt_benchmark.py --all-methods --seeds 0 1 2 --out $(BENCH_OUT) \
		--stage1-cache $(STAGE1_CACHE) $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV) $(D2MAIN_VENV)
