# aupguard: `make run` (the gateway on the embedded default config) and `make test`.
# Both create .venv with a Python >= 3.12 and install what they need; nothing else is assumed.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench system-deps clean

$(STAMP): pyproject.toml
	@py=$$(scripts/find-python) || exit 1; \
	  if [ ! -x $(BIN)/python ] || ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then \
	    rm -rf $(VENV); echo "creating $(VENV) with $$py"; $$py -m venv $(VENV) || exit 1; fi
	@echo "installing aupguard and its test tools into $(VENV)"
	@set -o pipefail; $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,fast]' 2>&1 \
	  | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@rm -f $(VENV)/.stamp-*; touch $@

run: $(STAMP)
	$(BIN)/aupguard run

system-deps:
	@scripts/install-system-deps

test: $(STAMP) system-deps
	$(BIN)/ruff check --quiet agent addons tests bench
	$(BIN)/ruff format --check --quiet agent addons tests bench
	$(BIN)/mypy --no-error-summary
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check agent addons tests bench && $(BIN)/ruff format --check agent addons tests bench && $(BIN)/mypy

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
