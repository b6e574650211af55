# Two commands do everything: `make run` (the platform with a demo) and `make test` (the suite).
# Both set up what is missing first (virtual environment, Kafka jars, data folders) and are
# quick the second time.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export EP_DATA_DIR ?= $(CURDIR)/.data

.PHONY: setup run test lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed
	scripts/system-deps.sh
	$(BIN)/eventplatform kafka install
	mkdir -p $(EP_DATA_DIR)

run: setup
	$(BIN)/eventplatform run

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .cache .data
