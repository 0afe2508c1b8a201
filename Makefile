# The two commands a new user runs: `make demo` and `make test`. Both create .venv on first use
# (torch's CPU build first, then the pinned stack) and skip the install when it is already there.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.jstip-installed
BIN := $(VENV)/bin
STORE ?= data

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: with 2.13.0 present nothing else pulls a (CUDA) torch.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]"
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
