# The two commands of the README. Both create .venv and install everything on first use.
#   make test   install, then run the test suite (CPU; what CI runs)
#   make demo   install, then run the whole pipeline on the built-in synthetic cohort
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: on the project's CPU machines this takes the CPU build from local disk;
# elsewhere it takes PyPI's default build. Override e.g. TORCH_SPEC='torch==2.11.0'.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_output
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,plot]"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m swinbob.demo --out_dir $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
