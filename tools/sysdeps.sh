#!/bin/sh
# Installs the Debian packages the tests need, once. Quiet when they are present.
# - the speech tests: recorded human speech and the flite synthesiser;
# - the web console's tests: Chromium, driven by Playwright (no browser download);
# - the Go interop tests (tools/build-go-interop.sh): Go, go-plugin, gRPC and protobuf for Go,
#   hclog, protoc and its Go generators. golang-github-golang-protobuf-1-5-dev replaces the
#   default 1.3 package: with 1.3 the Go programs build, but the first call panics inside the
#   protobuf codec.
set -e
need=""
[ -f /usr/share/pocketsphinx/test/data/goforward.raw ] || need="$need pocketsphinx-testdata"
command -v flite >/dev/null 2>&1 || need="$need flite"
# the native plugin tests compile a C plugin (tools/build-native-plugins.sh)
command -v gcc >/dev/null 2>&1 || need="$need gcc libc6-dev"
# ... and a Rust one (no external crates, cargo --offline)
command -v cargo >/dev/null 2>&1 || need="$need cargo"
# the web console's browser tests (tests/test_console.py): Debian's headless Chromium
command -v chromium >/dev/null 2>&1 || need="$need chromium"
for p in golang-go golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev \
         golang-google-protobuf-dev golang-github-hashicorp-go-hclog-dev protobuf-compiler \
         protoc-gen-go protoc-gen-go-grpc golang-github-golang-protobuf-1-5-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
[ -z "$need" ] && exit 0
echo "==> installing Debian packages:$need"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
