# Two commands do everything: `make run` (the platform with a demo) and `make test` (the suite).
# Both set up what is missing first (virtual environment, Kafka jars, data folders) and are
# quick the second time.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export EP_DATA_DIR ?= $(CURDIR)/.data
# cargo (for the native decoder) as rustup installs it, when the shell's PATH lacks it
export PATH := $(HOME)/.cargo/bin:$(PATH)
NATIVE := native/avro_columnar

.PHONY: setup run test lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The columnar Avro decoder (Rust, built by maturin): rebuilt when its sources change.
$(BIN)/.native: $(BIN)/.installed $(NATIVE)/pyproject.toml $(NATIVE)/Cargo.toml $(NATIVE)/Cargo.lock $(wildcard $(NATIVE)/src/*.rs)
	scripts/system-deps.sh
	$(BIN)/python -m pip install -q --force-reinstall --no-deps ./$(NATIVE)
	touch $@

setup: $(BIN)/.installed $(BIN)/.native
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
