PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install fit test lint tensorboard clean

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

tensorboard: install  ## open TensorBoard on the runs/ folder
	$(BIN)/tensorboard --logdir runs --bind_all

clean:
	rm -rf runs lightning_logs .pytest_cache
