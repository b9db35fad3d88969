# Two commands matter: `make run` (set up, then serve on 127.0.0.1:16688) and `make test`.
# Everything they need is installed from here, so a fresh machine works.

PYTHON   := $(shell tools/find-python.sh)
VENV     := .venv
VPY      := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
HOST     ?= 127.0.0.1
PORT     ?= 16688
# Engines and models of the shipped local plugins used by the tests (kept between runs).
TEST_ENGINES ?= $(CURDIR)/.cache/engines

.PHONY: run test setup sysdeps go-interop native-plugins node-sdks engines test-engines proto lint typecheck bench bench-full bench-setup clean

$(STAMP): pyproject.toml
	@echo "==> creating the environment in $(VENV) with $(PYTHON)"
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install --progress-bar on -q --upgrade pip
	@echo "==> installing aogstream and its test tools (pip shows progress)"
	@$(VPY) -m pip install --progress-bar on -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use: real speech (recorded speech, flite) and Go interop (Go, go-plugin).
sysdeps:
	@tools/sysdeps.sh

# The Go host and Go plugin of the interop tests (tests/test_go_interop.py), built offline from
# Debian's Go packages into .cache/go-interop; quick when nothing changed.
go-interop: sysdeps
	@tools/build-go-interop.sh

# Each local plugin installs its engine into its own data directory and pulls its default
# model, with progress. The first run compiles llama.cpp (about 10 minutes on 2 cores);
# later runs find everything installed and return in seconds.
engines: setup
	@echo "==> installing the local engines and default models (first run: ~12 minutes)"
	@$(VPY) -m aogstream engine install

test-engines: setup
	@echo "==> installing the engines the tests use into $(TEST_ENGINES) (first run: ~12 minutes)"
	@$(VPY) -m aogstream engine install --engine-dir $(TEST_ENGINES)

run: setup engines
	@echo "==> starting aogstream on http://$(HOST):$(PORT) with the plugins in ./plugins"
	@$(VPY) -m aogstream server start --host $(HOST) --port $(PORT)

# The native (CLIProxyAPI C ABI) test plugins, compiled with gcc into .cache/native-plugins.
native-plugins: sysdeps
	@tools/build-native-plugins.sh

# The Node client packages (tests/node, pinned: the Vercel AI SDK, the ollama JS client) for
# the Node client tests, into .cache/node-sdks.
node-sdks: sysdeps
	@tools/install-node-sdks.sh

test: setup sysdeps go-interop native-plugins node-sdks test-engines
	@$(VPY) -m ruff check .
	@$(MAKE) --no-print-directory typecheck
	@AOGSTREAM_TEST_ENGINE_DIR=$(TEST_ENGINES) $(VPY) -m pytest -q

# Regenerates aogstream/rpc/gen from the .proto files (the generated code is committed).
proto: setup
	@$(VPY) tools/gen_protos.py

lint: setup
	@$(VPY) -m ruff check .

# mypy over aogstream/ with the tiers set in pyproject.toml ([tool.mypy]).
typecheck: setup
	@$(VPY) -m mypy

# Benchmarks (never part of `make test`: speed is measured, not asserted). `make bench` is
# the quick set (a few minutes per script); `make bench-full` runs everything in full mode,
# including the end-to-end run against the real local engines. Both install the `bench`
# extra (matplotlib) and LiteLLM (the reference gateway, in its own venv under .cache/bench).
# Scripts that are not there yet are skipped; a failing script does not stop the others,
# but makes the target fail at the end. Results: benchmarks/results/<script>.md/.json/.png
BENCH_STAMP   := $(VENV)/.bench-installed
BENCH_SCRIPTS := ttft cpu throughput knee memory cancel realtime coldstart

$(BENCH_STAMP): $(STAMP) pyproject.toml
	@echo "==> installing the bench extra (matplotlib)"
	@$(VPY) -m pip install --progress-bar on -q -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench-setup: $(BENCH_STAMP)
	@benchmarks/setup_litellm.sh || echo "==> LiteLLM could not be installed: the benchmarks run without it (see above)" >&2

bench: bench-setup
	@failed=""; for s in $(BENCH_SCRIPTS); do \
	  if [ -f benchmarks/$$s.py ]; then \
	    echo "==> benchmarks/$$s.py --quick"; \
	    $(VPY) benchmarks/$$s.py --quick || failed="$$failed $$s"; \
	  else echo "==> benchmarks/$$s.py is not there yet: skipped"; fi; \
	done; \
	echo "==> benchmarks/summary.py"; $(VPY) benchmarks/summary.py || failed="$$failed summary"; \
	if [ -n "$$failed" ]; then echo "==> failed:$$failed" >&2; exit 1; fi

bench-full: bench-setup test-engines
	@failed=""; for s in $(BENCH_SCRIPTS); do \
	  if [ -f benchmarks/$$s.py ]; then \
	    echo "==> benchmarks/$$s.py"; \
	    $(VPY) benchmarks/$$s.py || failed="$$failed $$s"; \
	  else echo "==> benchmarks/$$s.py is not there yet: skipped"; fi; \
	done; \
	echo "==> benchmarks/relay_stream.py"; $(VPY) benchmarks/relay_stream.py || failed="$$failed relay_stream"; \
	echo "==> benchmarks/convert_chunk.py"; $(VPY) benchmarks/convert_chunk.py || failed="$$failed convert_chunk"; \
	echo "==> benchmarks/agent_convert.py"; $(VPY) benchmarks/agent_convert.py || failed="$$failed agent_convert"; \
	echo "==> benchmarks/engines.py (the real local engines)"; \
	$(VPY) benchmarks/engines.py --engine-dir $(TEST_ENGINES) || failed="$$failed engines"; \
	echo "==> benchmarks/summary.py"; $(VPY) benchmarks/summary.py || failed="$$failed summary"; \
	if [ -n "$$failed" ]; then echo "==> failed:$$failed" >&2; exit 1; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .cache
