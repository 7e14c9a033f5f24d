# Set-up on a fresh machine needs only python3: every target creates .venv when missing and
# installs the exact, hash-checked versions of requirements.lock (requirements-bench.lock for
# `make bench`), then the project itself without dependencies.
# `make lock` regenerates the locks after a change to pyproject.toml (keeping every pin it
# can); `make upgrade` moves them to the newest releases and runs the test suite on them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LOCK := requirements.lock
BENCH_LOCK := requirements-bench.lock
# The lock tool lives in its own venv: only `make lock` and `make upgrade` need it.
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# pyproject's build requirements are locked too, so the editable build needs no download.
BUILD_REQS := $(PY) -c 'import tomllib; \
  print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
COMPILE := $(UV) pip compile pyproject.toml - --generate-hashes --python-version 3.11 \
  --custom-compile-command "make lock" --quiet

.PHONY: demo test lint bench clean browser lock upgrade

$(STAMP): $(LOCK) pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/pip check >/dev/null || { $(BIN)/pip check; \
	  echo "$(LOCK) does not cover pyproject.toml: run make lock"; exit 1; }
	touch $(STAMP)

$(BENCH_STAMP): $(BENCH_LOCK) $(STAMP)
	$(BIN)/pip install --quiet --require-hashes -r $(BENCH_LOCK)
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(BIN)/territory demo --out out

# The map tests open pages in Debian's chromium; a Chinese font renders community names.
BROWSER_DEPS := chromium fonts-wqy-zenhei

browser:
	@command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi zenhei || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      $(BROWSER_DEPS) >/dev/null; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(BENCH_STAMP)
	$(BIN)/python bench/partition.py
	$(BIN)/python bench/assign.py
	$(BIN)/python bench/api.py

$(UV):
	test -d $(TOOLS) || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

# The bench lock is constrained by the main one: benchmarks run on the tested versions.
lock: $(UV)
	$(BUILD_REQS) | $(COMPILE) $(UPGRADE) --extra test -o $(LOCK)
	$(BUILD_REQS) | $(COMPILE) $(UPGRADE) --extra test --extra bench -c $(LOCK) \
	  -o $(BENCH_LOCK)

upgrade:
	$(MAKE) lock UPGRADE=--upgrade
	$(MAKE) test

clean:
	rm -rf out .pytest_cache .ruff_cache
