# Two commands: `make demo` runs the quickstart, `make test` runs the test suite (`make test-fast` skips the slow tests).
# Both create .venv when missing and (re)install only when setup.cfg changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= test,export,detection,mmdet,sr,face,translation,rs,compress,dist

.PHONY: demo test test-fast install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg setup.py | $(PY)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/archforge search configs/classification/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest

# the suite without the statistical and end-to-end tests marked `slow` (a couple of minutes on 2 cores)
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/search_overhead.py
	$(PY) benchmarks/quickstart.py

clean:
	rm -rf runs .pytest_cache
