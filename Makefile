# The two commands a newcomer needs: `make demo` and `make test` (`make test-fast` while editing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-fast demo install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The stamp re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,ray,explain,int8]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

# The edit loop: every module's tests but the `slow` end-to-end ones (real processes, kills, training to a score).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/python cli.py demo

bench: install
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/heads.py

clean:
	rm -rf $(VENV) runs data/demo .pytest_cache
