# Everything runs from the project's own virtual environment, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast compare bench docs docs-serve lint format clean

venv: $(STAMP)

# torch==2.13.0 is pinned in constraints.txt: that exact version is the local CPU wheel;
# any other version pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The whole suite, one worker per core; an idle worker takes queued tests from a busy one
# (worksteal), so a few long tests at the end do not leave the other core idle.
test: venv
	$(PY) -m pytest -n auto --dist worksteal

# Everything but what is marked slow (multi-process runs, 200-step grids, every-example CLI runs).
test-fast: venv
	$(PY) -m pytest -n auto --dist worksteal -m "not slow"

compare: venv
	$(VENV)/bin/funcmod compare

# Times a training step of every trainable example (Flax jitted and scanned, hand-written JAX,
# torch eager and torch.compile) and writes results/bench.{json,md,png}; takes minutes.
bench: venv
	$(VENV)/bin/funcmod bench --out results

# The documentation site into site/, offline: the parity of the examples is measured on every
# build (results/compare.json), the digits run once; the bench chart and table appear once
# `make bench` has written results/bench.json.
docs: venv results/digits_mlp.json
	mkdir -p results
	$(VENV)/bin/funcmod compare --json > results/compare.json; test $$? -le 1
	$(VENV)/bin/mkdocs build --strict

# The digits loss curves, trained once (about a minute); delete the file to train again.
results/digits_mlp.json: | venv
	$(VENV)/bin/funcmod digits mlp --workdir results

# Serves the site on http://127.0.0.1:8000, rebuilt on every change.
docs-serve: venv
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .ruff_cache .hypothesis
