#!/bin/sh
# Builds the native (CLIProxyAPI C ABI) test plugins of tests/test_native_*.py from
# tests/native/test_plugin.c into .cache/native-plugins: the good plugin and one library
# per load failure the tests check; two that crash (for isolation: process); the claude-speaking executor (tests/native/claude_plugin.c);
# the hooks plugin (tests/native/hooks_plugin.c, and
# built with FRONTEND the frontend-auth one); the translator plugins
# (tests/native/translate_plugin.c, with SECOND the second one) and the executors of
# other formats (tests/native/format_plugin.c: x-lines, with GEMINI the gemini one, with OTHER x-other); the auth provider (tests/native/auth_plugin.c); the
# per-auth models / import / refresh / scheduler / raw HTTP one (tests/native/auth_ops_plugin.c,
# as c-authx, c-authy with OAUTH_SCOPE and c-authz with STATIC_SCOPE); the
# benchmarks' native relay executor (benchmarks/native_relay); and the Rust test plugin (tests/native/rust, no
# external crates, built offline by cargo) as rust-test.so. The C ones share the ABI
# boilerplate of tests/native/cliproxy_plugin.h. Quick when nothing changed.
set -e
cd "$(dirname "$0")/.."
src=tests/native/test_plugin.c
header=tests/native/cliproxy_plugin.h
out=.cache/native-plugins
mkdir -p "$out"
build() {  # build <file name> [define] [source]
  from=${3:-$src}
  if [ ! -f "$out/$1" ] || [ "$from" -nt "$out/$1" ] || [ "$header" -nt "$out/$1" ]; then
    gcc -O2 -Wall -Wextra -shared -fPIC -pthread ${2:+-D$2} -o "$out/$1.tmp" "$from"
    mv "$out/$1.tmp" "$out/$1"
  fi
}
build c-test.so
build bad-abi.so BAD_ABI
build bad-rc.so BAD_RC
build bad-json.so BAD_JSON
build no-init.so NO_INIT
build c-crash.so CRASH
build crash-init.so CRASH_INIT
build c-hooks.so "" tests/native/hooks_plugin.c
build c-gate.so FRONTEND tests/native/hooks_plugin.c
build c-auth.so "" tests/native/auth_plugin.c
build c-authx.so "" tests/native/auth_ops_plugin.c
build c-authy.so OAUTH_SCOPE tests/native/auth_ops_plugin.c
build c-authz.so STATIC_SCOPE tests/native/auth_ops_plugin.c
build c-claude.so "" tests/native/claude_plugin.c
build c-xlate.so "" tests/native/translate_plugin.c
build c-xlate2.so SECOND tests/native/translate_plugin.c
build c-lines.so "" tests/native/format_plugin.c
build c-gemini.so GEMINI tests/native/format_plugin.c
build c-other.so OTHER tests/native/format_plugin.c
build native-relay.so "" benchmarks/native_relay/native_relay.c
cargo build --quiet --offline --release --manifest-path tests/native/rust/Cargo.toml \
  --target-dir "$out/rust-target"
cmp -s "$out/rust-target/release/librust_test_plugin.so" "$out/rust-test.so" ||
  cp "$out/rust-target/release/librust_test_plugin.so" "$out/rust-test.so"
