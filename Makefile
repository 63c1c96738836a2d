# Every target creates .venv and installs into it on first use; only python3
# and make are needed on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck proto unit bench soak clean compiled pure

# The node with its development tools, and the simulated back-ends (a package of
# their own, simulators/, never installed with the node).
# The tools whose output the tests judge are installed at the versions in
# dev-constraints.txt.
$(STAMP): pyproject.toml simulators/pyproject.toml dev-constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c dev-constraints.txt -e '.[dev,adapter-kit]' -e ./simulators
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/yrd-gateway demo

# The tests start a throw-away PostgreSQL server, drive headless Chromium and run
# promtool: Debian's packages for them are installed if missing.
test: lint $(STAMP)
	sh scripts/ensure_postgres.sh
	sh scripts/ensure_test_tools.sh $(BIN)/python
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check gateway adapters simulators tests scripts
	$(BIN)/ruff format --check gateway adapters simulators tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

# The four provinces as separate processes until Ctrl-C (logs, stores: var/federation/).
.PHONY: federation
federation: $(STAMP)
	$(BIN)/yrd-gateway up

bench: $(STAMP)
	$(BIN)/yrd-gateway bench

# The chaos soak (not part of `make test`): about 5-8 minutes; SOAK_ARGS=--seed 3 ...
soak: $(STAMP)
	$(BIN)/yrd-gateway soak $(SOAK_ARGS)

# The verification path compiled with mypyc, in place beside its sources (a C
# compiler and the interpreter's headers needed; docs/operations.md, "A compiled
# build"). Every target then runs it; `make pure` removes it again.
compiled: $(STAMP)
	YRD_COMPILE=1 $(BIN)/python setup.py --quiet build_ext --inplace

pure:
	rm -rf build gateway/_compiled_sources.json
	find gateway -name '*.so' -delete

clean: pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
