# rvc-lora: every target sets up its own virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean bench-quality

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rvc_lora.demo

test: $(STAMP)
	$(PY) -m pytest

# Adaptation quality benchmark (hours on 2 CPU cores; resumable: re-run to continue). Quick: --quick.
bench-quality: $(STAMP)
	$(PY) tools/bench_quality.py

lint: $(STAMP)
	$(VENV)/bin/ruff check rvc_lora tests tools

clean:
	rm -rf $(VENV) build *.egg-info
