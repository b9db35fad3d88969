# Two commands matter: `make run` (set up, then serve on 127.0.0.1:16688) and `make test`.
# Everything they need is installed from here, so a fresh machine works.

PYTHON   := $(shell tools/find-python.sh)
VENV     := .venv
VPY      := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
HOST     ?= 127.0.0.1
PORT     ?= 16688

.PHONY: run test setup sysdeps proto lint bench clean

$(STAMP): pyproject.toml
	@echo "==> creating the environment in $(VENV) with $(PYTHON)"
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install --progress-bar on -q --upgrade pip
	@echo "==> installing aogstream, its engines and test tools (pip shows progress)"
	@$(VPY) -m pip install --progress-bar on -e '.[engines,dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use for real speech: recorded human speech and the flite synthesiser.
sysdeps:
	@tools/sysdeps.sh

run: setup
	@echo "==> starting aogstream on http://$(HOST):$(PORT) with the plugins in ./plugins"
	@$(VPY) -m aogstream server start --host $(HOST) --port $(PORT)

test: setup sysdeps
	@$(VPY) -m ruff check .
	@$(VPY) -m pytest -q

# Regenerates aogstream/rpc/gen from the .proto files (the generated code is committed).
proto: setup
	@$(VPY) tools/gen_protos.py

lint: setup
	@$(VPY) -m ruff check .

bench: setup
	@$(VPY) benchmarks/relay_stream.py --quick

clean:
	rm -rf $(VENV) .pytest_cache
