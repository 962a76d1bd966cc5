#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine with the Rust toolchain, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The package may start a system Prometheus on :9090; the tests use their own on free ports.

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== real peers for the interop tests (Thanos v0.42.4, Prometheus v3.14.0; built once into ~/.cache/wharf-peers)"
scripts/peers.sh

echo "== unit, property and end-to-end tests"
cargo nextest run --lib --bins --tests --no-fail-fast --failure-output final

echo "== fuzz smoke run (each cargo-fuzz target 3 s from its seed corpus; docs/fuzzing.md)"
scripts/fuzz.sh --seconds 3

echo "== benchmark smoke run (each benchmark once)"
cargo test --benches --quiet
scripts/bench-compare.sh --smoke
scripts/bench-router.sh --smoke
