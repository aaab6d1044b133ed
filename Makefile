# taskfabric developer commands. `make install` once, then `make test` / `make demo`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COMPONENTS := broker_config forwarder endpoint_agent client manager
# apt packages the project runs for real: the broker (tests start a private node from it)
SYSTEM_PACKAGES := rabbitmq-server

.PHONY: install system-deps test test-fast lint format typecheck nsview demo bench clean

install: system-deps $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { echo "python3 venv support is missing: apt-get install -y python3-venv"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Installs Debian packages that are missing when we are root; otherwise prints the command to run.
system-deps:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing -- run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# The README's test command: the whole suite, as two pytest processes at once (tests/run_split.sh).
test: install
	PYTEST=$(BIN)/pytest bash tests/run_split.sh

# Unit tests only (no broker, seconds).
test-fast: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# mypy cannot see through the editable install's import hook: check a symlink view of the namespace.
nsview:
	@rm -rf build/nsview && mkdir -p build/nsview/taskfabric
	@for f in taskfabric/*; do ln -s ../../../$$f build/nsview/taskfabric/$$(basename $$f); done
	@for c in $(COMPONENTS); do ln -s ../../../$$c build/nsview/taskfabric/$$c; done

typecheck: install nsview
	MYPYPATH=build/nsview $(BIN)/mypy -p taskfabric

# The README's main command: a local fabric (broker, forwarder, endpoint `local`), the quickstart
# example against it, and teardown (also when the example fails).
demo: install
	$(BIN)/taskfabric dev up --detach
	$(BIN)/python examples/quickstart.py; status=$$?; $(BIN)/taskfabric dev down; exit $$status

# End-to-end benchmark on a private local fabric: a table and one JSON line per scenario.
bench: install
	$(BIN)/taskfabric bench

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache *.egg-info
