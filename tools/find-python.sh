#!/bin/sh
# Prints the path of a Python 3.13 interpreter, or explains how to get one.
# quart-trio 0.13 needs 3.13 (on older Pythons pip silently picks 0.12), so the
# project never falls back to whatever `python3` happens to be.
for cand in "${AOGSTREAM_PYTHON:-}" python3.13; do
  [ -n "$cand" ] || continue
  if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
    command -v "$cand" 2>/dev/null || echo "$cand"; exit 0
  fi
done
root="${PYENV_ROOT:-$HOME/.pyenv}"
for cand in "$root"/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13; do
  if [ -x "$cand" ] && "$cand" -c 'import sys' >/dev/null 2>&1; then echo "$cand"; exit 0; fi
done
echo "aogstream needs Python 3.13 (none found). Install it (e.g. 'pyenv install 3.13'), or set AOGSTREAM_PYTHON to its path." >&2
exit 1
