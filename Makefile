# Two commands do all set-up on a fresh machine (see README):
#   make run    install into .venv, then run the main job (local Ray, a project-built dataset)
#   make test   install into .venv (+ Debian's prometheus for the metrics test), then run the tests
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch comes first: an unpinned torch would pull a multi-GB CUDA build.
# On a GPU machine install the CUDA wheel of your choice first; pyproject accepts torch>=2.4,<3.
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: install run test prometheus

$(BIN)/wsrl-dist: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/wsrl-dist

# The metrics test starts a real Prometheus server (Debian's package) on loopback.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; fi; }

run: install
	$(BIN)/wsrl-dist launch configs/runtime/local.yaml $(ARGS)

test: install prometheus
	$(BIN)/ruff check wsrl_dist tests
	$(BIN)/python -m pytest -q $(ARGS)
