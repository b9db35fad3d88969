#!/bin/sh
# The Node packages of the Node client tests (tests/node/package.json, pinned by its
# package-lock.json) into .cache/node-sdks with `npm ci`; quick when nothing changed.
# Without npm the install is skipped, and so are those tests (they say why).
set -eu
dest=".cache/node-sdks"
if ! command -v npm >/dev/null 2>&1; then
    echo "==> npm not found: the Node client tests will be skipped"
    exit 0
fi
if [ -d "$dest/node_modules" ] && cmp -s tests/node/package-lock.json "$dest/package-lock.json"; then
    exit 0
fi
mkdir -p "$dest"
cp tests/node/package.json tests/node/package-lock.json "$dest/"
echo "==> installing the Node client packages for the tests into $dest (npm ci)"
cd "$dest" && npm ci --no-audit --no-fund
