# One-command install and test on a fresh machine (README: `make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch comes first and pinned: on the project's machines pip takes these wheels from local disk; elsewhere set
# TORCH_SPEC to the build for your CUDA (e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url ...").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

FMNIST_DEB := /usr/share/datasets/fashion-mnist

.PHONY: install demo demo-full demo-seeds test test-fast mutants lint diagram schema bench-rules bench-data gpu-check fmnist-source data clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@# torchattacks 3.5.1 pins requests~=2.25.1, which cannot co-resolve with mlflow's databricks-sdk
	@# (requests>=2.28.1). Its code imports only torch, so it goes in without dependencies.
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	@$(BIN)/python -m pip check | grep -v '^torchattacks 3.5.1 has requirement requests~=2.25.1' \
		| grep -v '^No broken requirements' ; \
		if $(BIN)/python -m pip check | grep -v '^torchattacks 3.5.1 has requirement requests' \
		| grep -q 'has requirement\|is not installed'; then echo "pip check: unexpected conflict"; exit 1; fi
	@# the sign-feedback kernels (rules/feedback_kernels.c) compile once into ~/.cache/sigsym; say if they cannot
	@$(BIN)/python -c "from rules.kernels import status; print(status())"
	@touch $(STAMP)

# ruff, and the layering contracts of pyproject.toml ([tool.importlinter]: harness -> workloads -> rules, and
# harness/'s rooms, each importing only those below it)
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# docs/architecture.md's picture of the layers, drawn from the imports (a test checks it is current)
diagram: install
	$(BIN)/python tests/architecture.py

# dags/schema.json, the JSON Schema editors check DAG files against, from the settings the code declares
schema: install
	$(BIN)/harness schema

# Real Fashion-MNIST for the embedded default and the real-data tests: found where `harness data prepare` looks
# (Debian's package, torchvision's cache), else Debian's package installed when we are root on Debian (no download
# needed); fails, saying how to get the data, when neither works.
fmnist-source: install
	@$(BIN)/harness data locate fashion-mnist >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian package dataset-fashion-mnist"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
			(apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				dataset-fashion-mnist >/dev/null 2>&1) || echo "apt-get could not install dataset-fashion-mnist"; \
		fi; }
	@printf "real Fashion-MNIST: " && $(BIN)/harness data locate fashion-mnist

data: install fmnist-source
	$(BIN)/harness data prepare fashion-mnist --out data/fashion-mnist

# The embedded default (docs/protocol.md, "The embedded default") end to end: prepare Fashion-MNIST, run
# dags/default.yaml on a local Ray instance with MLflow in runs/default/mlflow.db, print the report written to
# results/default/. Sized for 15 minutes on 2 cores from a fresh clone, install included. A second `make demo`
# reuses every finished stage. `make demo-full` runs dags/default-full.yaml: every attack at full strength.
demo: install data
	$(BIN)/harness run dags/default.yaml

demo-full: install data
	$(BIN)/harness run dags/default-full.yaml

# The demo with five seeds (results/default-seeds/: the rule-level answers over seeds and images), in the demo's run
# folder so that seed 0 is reused from `make demo`: 39 minutes more on a 2-core AMD EPYC.
demo-seeds: install data
	$(BIN)/harness run dags/default.yaml --set experiment=default-seeds --set 'seeds=[0,1,2,3,4]' --out runs/default

# Everything, slow and integration tests included. Without real Fashion-MNIST the rest still runs outside CI (its
# tests skip, saying why); under CI (`CI` set) its absence fails here, before any test.
test: install lint
	@$(MAKE) --no-print-directory fmnist-source || [ -z "$$CI" ]
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The unit tests: no Ray, no MLflow, no real data, no full-size models: everything not marked `slow` (a test that
# starts Ray or MLflow, marked `integration`, or reads real data must be marked slow: tests/conftest.py refuses it).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Mutation testing of the verdicts, statistics, retrieval metrics and learning rules ([tool.mutmut] in
# pyproject.toml), driven by the fast unit tests: results/mutants/summary.md gives each module's share of mutants the
# tests detect (goal 80%) and every one they miss. Not part of `make test`: about an hour on 2 cores.
mutants: install
	$(BIN)/python -m pip install -q mutmut==3.8.1
	rm -rf mutants
	$(BIN)/mutmut run --max-children $$(nproc)
	$(BIN)/python tests/mutation_summary.py

bench-rules: install
	$(BIN)/harness bench rules --backbones resnet18,alexnet,vgg16

bench-data: data
	$(BIN)/harness bench data data/fashion-mnist --standard-jpg

# The prepared accelerator check (harness/bench/gpu.py): rules, a 224 px fine-tuning step, PGD and SDHA throughput,
# each against bp, into results/bench/gpu.md. Without CUDA it says so in one line and succeeds.
gpu-check: install
	$(BIN)/harness bench gpu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants
