# The two commands of the README. Both create .venv and install everything on first use.
#   make test   install, then run the test suite (CPU; what CI runs)
#   make demo   install, then run the whole pipeline on the built-in synthetic cohort
#   make mutation  mutation testing of the core modules (not part of make test; hours on 2 cores)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: on the project's CPU machines this takes the CPU build from local disk;
# elsewhere it takes PyPI's default build. Override e.g. TORCH_SPEC='torch==2.11.0'.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_output
PYTEST_ARGS ?= -m "not slow and not gpu"

# Mutants of the core computations (see [tool.mutmut] in pyproject.toml for the tests run).
MUTATION_SCOPE ?= "swinbob.infer.metrics*" "swinbob.train.losses*" "swinbob.infer.etta*" "swinbob.solf.decide*" \
	"swinbob.solf.features*" "swinbob.infer.evaluate.x_predict_case*" "swinbob.infer.evaluate.x_evaluate_case*" \
	"swinbob.train.engine.x_train_step*" "swinbob.train.engine.x_build_loaders*" "swinbob.data.loaders.x_shard*" \
	"swinbob.data.loaders.x_train_loader*" "swinbob.data.loaders.xǁEpochSampler*" "swinbob.data.loaders.xǁEpochBatchSampler*" \
	"swinbob.data.dataset_task*" "swinbob.infer.statistics*" "swinbob.infer.tta*" "swinbob.infer.outputs*" \
	"swinbob.infer.window*" "swinbob.viz*" "swinbob.data.shifts*" "swinbob.data.transforms.xǁNormalizeForegroundd*" \
	"swinbob.solf.paper*" "swinbob.solf.labelsets*" "swinbob.labels*" "swinbob.train.state.x_init_head_rows*" "swinbob.train.state.x__name_key*"
MUTATION_CHILDREN ?= 2

.PHONY: install test demo mutation clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,plot]"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

mutation: install
	$(PY) -m pip install -q -e ".[mutation]"
	env -u PYTHONPATH OMP_NUM_THREADS=1 nice -n 5 $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTATION_SCOPE)
	env -u PYTHONPATH $(PY) benchmarks/mutation_score.py $(MUTATION_SCOPE)

demo: install
	$(PY) -m swinbob.demo --out_dir $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache mutants
