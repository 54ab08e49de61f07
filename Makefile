# Two commands for a fresh clone: `make train` and `make test`. Each builds .venv first if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The pinned torch is a local CPU wheel on our machines and the platform's default build elsewhere.
TORCH_PIN := torch==2.13.0

.PHONY: train test lint venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev,serve,int8]'
	touch $@

train: venv
	$(BIN)/python scripts/train.py $(ARGS)

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
