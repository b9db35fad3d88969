#!/bin/sh
# Installs the Debian packages the tests need, once. Quiet when they are present.
# - the speech tests: recorded human speech and the flite synthesiser;
# - the web console's tests: Chromium, driven by Playwright (no browser download);
# - the Node client tests: Node and npm;
# - the Go interop tests (tools/build-go-interop.sh): Go, go-plugin, gRPC and protobuf for Go,
#   hclog, protoc and its Go generators. golang-github-golang-protobuf-1-5-dev replaces the
#   default 1.3 package: with 1.3 the Go programs build, but the first call panics inside the
#   protobuf codec.
# - the PostgreSQL store's tests: the PostgreSQL server (its binaries; each test run starts
#   its own cluster in a temporary folder, never the packaged one).
set -e
need=""
[ -f /usr/share/pocketsphinx/test/data/goforward.raw ] || need="$need pocketsphinx-testdata"
command -v flite >/dev/null 2>&1 || need="$need flite"
# the native plugin tests compile a C plugin (tools/build-native-plugins.sh)
command -v gcc >/dev/null 2>&1 || need="$need gcc libc6-dev"
# ... and a Rust one (no external crates, cargo --offline)
command -v cargo >/dev/null 2>&1 || need="$need cargo"
# the Node client tests (the Vercel AI SDK and the ollama JS client, tests/node)
command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
# the web console's browser tests (tests/test_console.py): Debian's headless Chromium
command -v chromium >/dev/null 2>&1 || need="$need chromium"
for p in golang-go golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev \
         golang-google-protobuf-dev golang-github-hashicorp-go-hclog-dev protobuf-compiler \
         protoc-gen-go protoc-gen-go-grpc golang-github-golang-protobuf-1-5-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
# the PostgreSQL store's tests start a throwaway cluster (tests/pgcluster.py) with the
# server's initdb and pg_ctl; not needed when AOGSTREAM_TEST_DATABASE_URL names a running one
if [ -z "$AOGSTREAM_TEST_DATABASE_URL" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
   && ! command -v initdb >/dev/null 2>&1; then
  need="$need postgresql"
fi
[ -z "$need" ] && exit 0
echo "==> installing Debian packages:$need"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "sysdeps: not root and no sudo: install these Debian packages as root:$need" >&2
    echo "sysdeps: (for PostgreSQL, AOGSTREAM_TEST_DATABASE_URL may name a running server instead)" >&2
    exit 1
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
