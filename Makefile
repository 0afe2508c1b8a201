# The two commands a new user runs: `make demo` and `make test`. Both create .venv on first use
# (torch's CPU build first, then the pinned stack) and skip the install when it is already there.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.jstip-installed
BIN := $(VENV)/bin
STORE ?= data

.PHONY: demo test install clean FORCE

# The package's modules: strict editable mode links each file, so a module added or removed means installing again.
MODULES := $(shell find jstip flows tasks schemas model storage -name '*.py' -not -path '*/__pycache__/*' | sort)
MODULE_LIST := $(VENV)/.jstip-modules

$(MODULE_LIST): FORCE
	@mkdir -p $(VENV)
	@echo '$(MODULES)' | cmp -s - $@ || echo '$(MODULES)' > $@

$(STAMP): pyproject.toml $(MODULE_LIST)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: with 2.13.0 present nothing else pulls a (CUDA) torch.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	# strict editable mode: a link tree IDEs and type checkers resolve (pyproject.toml [tool.setuptools])
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]" --config-settings editable_mode=strict
	# whisperx without its dependencies: they pin a CUDA torch and an older transformers.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps whisperx==3.8.6
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jstip demo --store $(STORE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(STORE) .pytest_cache
