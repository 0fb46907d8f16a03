# lt_det: two commands from a fresh machine.
#   make demo   set up .venv/ and run the main job (synthetic long-tailed benchmark, CPU)
#   make test   set up .venv/ and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lt_det_setup_done
DEMO_OUT ?= output/demo
DEMO_ARGS ?=

.PHONY: setup test demo clean-venv

setup: $(STAMP)

# Re-run set-up only when what it installs changes; a ready .venv costs nothing.
$(STAMP): tools/setup_env.sh requirements.txt setup.py tools/detectron2_ext/vision.cpp
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/lt_benchmark.py --out $(DEMO_OUT) $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
