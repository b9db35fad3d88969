#!/bin/sh
# Builds the Go side of the interop tests from Debian packages only, offline:
#   .cache/go-interop/bin/aog-go-host     a host that launches plugins as AOG's Go host does
#   .cache/go-interop/bin/go-echo-plugin  a plugin served with go-plugin, as AOG's Go plugins are
# The Go code for ProviderService is generated from aogstream/rpc/protos/provider.proto
# (protoc + protoc-gen-go + protoc-gen-go-grpc) into .cache/go-interop/gopath, GOPATH mode,
# with the Debian Go libraries in /usr/share/gocode; the module proxy is never asked.
# Installs the Debian packages when they are missing; does nothing when up to date.
# Run by `make test` (target go-interop) and by tests/test_go_interop.py.
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/.cache/go-interop"
GOPATH_OURS="$OUT/gopath"
PROTO="aogstream/rpc/protos/provider.proto"
PKG_DIR="$GOPATH_OURS/src/github.com/intel/aog/plugin-sdk/protocol"

# The Debian packages (listed in tools/sysdeps.sh), installed when missing.
tools/sysdeps.sh
PACKAGES="golang-go golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev \
golang-google-protobuf-dev golang-github-hashicorp-go-hclog-dev protobuf-compiler \
protoc-gen-go protoc-gen-go-grpc golang-github-golang-protobuf-1-5-dev"

# Everything the programs are made of; a change in any of them rebuilds.
SOURCES="$PROTO tools/build-go-interop.sh interop/go/plugin/main.go interop/go/plugin/plugin.json interop/go/host/main.go"
STAMP="$OUT/stamp"
sum=$( (cat $SOURCES; go version; dpkg-query -W $PACKAGES) | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$sum" ] \
   && [ -x "$OUT/bin/aog-go-host" ] && [ -x "$OUT/bin/go-echo-plugin" ]; then
  exit 0
fi

echo "==> generating Go code for ProviderService from $PROTO"
rm -rf "$PKG_DIR"
mkdir -p "$PKG_DIR" "$OUT/bin"
protoc -I aogstream/rpc/protos \
  --go_out="$PKG_DIR" --go_opt=paths=source_relative \
  --go-grpc_out="$PKG_DIR" --go-grpc_opt=paths=source_relative \
  "$PROTO"

export GO111MODULE=off GOPROXY=off GOFLAGS=
export GOPATH="$GOPATH_OURS:/usr/share/gocode"
export GOCACHE="$OUT/gocache"
for prog in host:aog-go-host plugin:go-echo-plugin; do
  dir=${prog%%:*}; name=${prog#*:}
  echo "==> building $name (go build, GOPATH mode, offline)"
  go build -o "$OUT/bin/$name" "./interop/go/$dir"
done
echo "$sum" > "$STAMP"
echo "==> Go interop programs are in .cache/go-interop/bin"
