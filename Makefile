# Set-up and entry points. Every target creates the virtual environment when missing and
# installs with the test extras and constraints.txt, which pins the torch version (2.13.0) but
# not its build: pip takes the torch already installed or the one its index offers (the
# README says how to get the CPU or the CUDA build). The dev extra includes triton and
# bitsandbytes so that their CPU tests run; `pip install -e .` alone installs neither.

VENV   ?= .venv
PY     := $(VENV)/bin/python
COEA   := $(VENV)/bin/coea
STAMP  := $(VENV)/.installed
WORK   ?= coea-work
export COEA_CACHE ?= $(CURDIR)/.cache/coea

.PHONY: install test lint format demo rolling simulate bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m coea_cli.data.fetch  # the embedded MovieLens-100K, so that prepare works offline
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	WORK=$(WORK) COEA=$(COEA) bash examples/demo.sh

# The rolling evaluation uses its own workspace with 7 periods (period 0 = 40% of the log, then
# six of 10%): 506 (user, period) events on MovieLens-100K, against 433 with the demo's 6.
ROLLING_WORK    ?= coea-rolling
ROLLING_PERIODS ?= 0.4,0.1,0.1,0.1,0.1,0.1,0.1
rolling: $(STAMP)
	WORK=$(ROLLING_WORK) COEA=$(COEA) PERIODS=$(ROLLING_PERIODS) bash examples/demo.sh
	WORK=$(ROLLING_WORK) COEA=$(COEA) bash examples/rolling.sh

simulate: demo
	WORK=$(WORK) COEA=$(COEA) bash examples/simulate.sh

bench: $(STAMP)
	$(PY) bench/prepare.py

clean:
	rm -rf $(WORK) $(ROLLING_WORK) .pytest_cache .ruff_cache
