# The two commands a newcomer needs: `make demo` and `make test` (`make test-fast` while editing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-fast demo install ffmpeg-libs bench clean docs

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The stamp re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,ray,explain,int8,torchcodec,timm,clip,hf,flow]"
	touch $@

# torchcodec (--decoder torchcodec) loads FFmpeg's shared libraries, which pip cannot bring: Debian's, where this
# runs as root with apt-get; elsewhere one line says so, and torchcodec's tests skip with the reason.
ffmpeg-libs:
	@if { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q 'libavcodec\.so\.'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null) || \
	  echo "note: apt-get could not install ffmpeg: --decoder torchcodec stays off (its tests skip)"; \
	else echo "note: FFmpeg's shared libraries are missing (not root with apt-get): --decoder torchcodec stays off; sudo apt-get install ffmpeg brings them"; fi

install: $(VENV)/.installed ffmpeg-libs

# Every core: the suite is mostly processes (real extracts, kills, signals) that wait as much as they compute.
# --dist loadfile keeps a module's tests, and its module-scoped fixtures, in one worker.
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The edit loop: every module's tests but the `slow` end-to-end ones (real processes, kills, training to a score).
test-fast: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

# docs/cli.md from the commands' own option definitions (tests/test_cli_reference.py fails when they differ)
docs: install
	$(BIN)/python -c 'import cli; from ui.reference import reference; print(reference(cli.app), end="")' > docs/cli.md

demo: install
	$(BIN)/python cli.py demo

bench: install
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/heads.py

clean:
	rm -rf $(VENV) runs data/demo .pytest_cache
