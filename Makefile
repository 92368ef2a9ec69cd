PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install fit test lint tensorboard bench clean

$(BIN)/varjepa: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/varjepa  ## create .venv and install varjepa with its dev extras

fit: install  ## train the quickstart Var-JEPA on the embedded digits data (TensorBoard logs in runs/)
	$(BIN)/varjepa fit --config configs/quickstart.yaml

test: install  ## run the test suite on CPU
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install  ## training-step time and memory: varjepa vs a bare PyTorch loop (benchmarks/results/step_time.md)
	$(BIN)/python benchmarks/step_time.py

tensorboard: install  ## open TensorBoard on the runs/ folder
	$(BIN)/tensorboard --logdir runs --bind_all

clean:
	rm -rf runs lightning_logs .pytest_cache
