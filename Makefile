# vlc: `make train` and `make test` create .venv, install vlc into it, and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vlc-installed
EXPERIMENT ?= vst_ratio16

.PHONY: install train test test-all clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,lmms]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py experiment=$(EXPERIMENT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

clean:
	rm -rf $(VENV) logs outputs multirun
