#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine with the Rust toolchain, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
began=$SECONDS
stage() { echo "== $* (at $((SECONDS - began)) s)"; }

# The peers' Go build (minutes, once; cached after) runs beside the Rust builds below, which
# leave a core idle much of the time; the tests that need the peers wait for it.
mkdir -p target
setsid -w scripts/peers.sh > target/peers.log 2>&1 &
peers_pid=$!
trap 'kill -- -"$peers_pid" 2>/dev/null || true' EXIT

need_apt=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  stage "installing ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The package may start a system Prometheus on :9090; the tests use their own on free ports.

if ! cargo nextest --version >/dev/null 2>&1; then
  stage "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

stage "formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

stage "building the tests"
cargo nextest run --lib --bins --tests --no-run --cargo-quiet

stage "real peers for the interop tests (Thanos v0.42.4, Prometheus v3.14.0; built once into ~/.cache/wharf-peers)"
if ! wait "$peers_pid"; then
  cat target/peers.log
  echo "== the peers could not be built (log above): the interop tests cannot run" >&2
  exit 1
fi
grep '^== peers' target/peers.log || true

stage "unit, property and end-to-end tests"
cargo nextest run --lib --bins --tests --no-fail-fast --failure-output final

stage "fuzz smoke run (each cargo-fuzz target 3 s from its seed corpus; docs/fuzzing.md)"
scripts/fuzz.sh --seconds 3

stage "benchmark smoke run (each benchmark once)"
cargo test --benches --quiet
scripts/bench-compare.sh --smoke
scripts/bench-router.sh --smoke
stage "all passed"
