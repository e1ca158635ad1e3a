# One command each for a fresh clone: `make demo` (set up + run the CPU demo), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/demo

.PHONY: setup demo test bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# lmms-eval pulls torchvision; where its wheel does not load against the installed torch (a CUDA build next to a
	@# CPU torch), transformers cannot import its model classes at all. Nothing here needs torchvision: remove it.
	$(PY) -c 'import torchvision' 2>/dev/null || $(PY) -m pip uninstall -q -y torchvision
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m tlv_jax.train --config configs/demo.py --workdir $(WORKDIR)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench: setup
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) workdir
