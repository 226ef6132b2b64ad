# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project once; a stamp per set of extras
# keeps a second run from reinstalling (it reinstalls only when setup.py changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: demo test test-all benchmark install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-%: setup.py | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$*]'
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: $(VENV)/.installed-demo
	$(BIN)/python -m spectrograms.example --output_dir $(DEMO_DIR)/audio
	$(BIN)/spectrograms --dataset folders --data_dir $(DEMO_DIR)/audio \
	    --output_dir $(DEMO_DIR)/spectrograms --preview 4
	@echo "Demo finished: see $(DEMO_DIR)/"

test: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Also the slow tests (real networks, the shared UrbanSound8K folds when present).
test-all: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python -m pytest --runslow $(PYTEST_ARGS)

benchmark: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
