#!/bin/sh
# Installs the LiteLLM proxy, the benchmark's reference gateway, into its own virtual
# environment (never the gateway's: its hundreds of pins must not touch aogstream's).
# Idempotent: a stamp file records the installed pin set; a second run returns at once.
#
#   benchmarks/setup_litellm.sh            # into .cache/bench/litellm
#   LITELLM_VENV=some/dir benchmarks/setup_litellm.sh
#
# The pin is 1.106.2: newer releases need a certifi version the package registry here
# lacks. LITELLM_PYTHON picks the interpreter (default: the project's Python 3.13).
set -eu
cd "$(dirname "$0")/.."
PIN="litellm[proxy]==1.106.2"
VENV="${LITELLM_VENV:-.cache/bench/litellm}"
STAMP="$VENV/.installed"
PY="${LITELLM_PYTHON:-$(tools/find-python.sh)}"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PIN" ] && [ -x "$VENV/bin/litellm" ]; then
  echo "==> LiteLLM already installed in $VENV ($PIN)"
  exit 0
fi
echo "==> creating the LiteLLM environment in $VENV with $PY"
mkdir -p "$(dirname "$VENV")"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --progress-bar on -q --upgrade pip
echo "==> installing $PIN (large: a few minutes; pip shows progress)"
"$VENV/bin/python" -m pip install --progress-bar on "$PIN"
"$VENV/bin/litellm" --version >/dev/null 2>&1 || "$VENV/bin/python" -c 'import litellm' || {
  echo "LiteLLM installed but does not start: see the output above" >&2; exit 1; }
echo "$PIN" > "$STAMP"
echo "==> LiteLLM ready: $VENV/bin/litellm"
