# Set-up on a fresh machine needs only python3: every target creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

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

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/partition.py
	$(BIN)/python bench/assign.py
	$(BIN)/python bench/api.py

clean:
	rm -rf out .pytest_cache .ruff_cache
