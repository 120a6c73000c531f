# Every target sets up what it needs: the virtual environment, packages, and
# (for the tests) a real Mosquitto broker binary.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: help venv broker test lint demo bench netbed clean

help:
	@echo "make demo   run the end-to-end demo on loopback (no broker needed)"
	@echo "make test   run the test suite (installs .venv and Mosquitto if missing)"
	@echo "make lint   ruff and mypy"
	@echo "make bench  run the benchmarks; JSON and plots land in benchmarks/results/"
	@echo "make netbed a shaped edge/hub namespace pair (root): NETBED=up|shape|cut|restore|down RATE=10"

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

broker:
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing the Mosquitto broker (apt-get install -y mosquitto)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto) >/dev/null; \
	else \
		echo "The tests need a Mosquitto broker binary. Install it (e.g. 'sudo apt-get install -y mosquitto') and run make test again." >&2; \
		exit 1; \
	fi

test: $(STAMP) broker
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m tests.layout typecheck-tree build/typecheck
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/tandem demo --config configs/demo.yaml

bench: $(STAMP) broker
	$(BIN)/python -m benchmarks.run_all

# Two network namespaces joined by veth, the uplink shaped by tbf (tests/fixtures/netns.py; needs root).
NETBED ?= up
RATE ?= 10
netbed: $(STAMP)
	$(BIN)/python -m tests.fixtures.netns $(NETBED) --up-mbit $(RATE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
