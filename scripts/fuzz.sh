#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a while, starting from its committed
# seed corpus; fails if any target crashes, hangs or allocates without bound. docs/fuzzing.md
# explains the targets and how this runs on a stable toolchain.
#
#   scripts/fuzz.sh [--seconds N] [--build-only] [target...]     (default: every target, 5 s)
#
# Environment: FUZZ_SANITIZER (none | address; address needs a nightly toolchain or
# RUSTC_BOOTSTRAP), FUZZ_ARGS (more libFuzzer flags), FUZZ_WORK (corpus and crash artifacts,
# default fuzz/target/work).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=5
build_only=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

all=()
for f in fuzz/fuzz_targets/*.rs; do all+=("$(basename "$f" .rs)"); done
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t (have: ${all[*]})" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# libfuzzer-sys compiles libFuzzer (C++).
if ! command -v c++ >/dev/null 2>&1; then
  echo "== installing g++ (libFuzzer is C++)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

# Without a sanitizer cargo-fuzz passes rustc only stable flags (-Cpasses=sancov-module and
# -Cllvm-args), so a stable toolchain builds the targets as they are. A sanitizer needs
# -Zsanitizer, which a stable rustc accepts only with RUSTC_BOOTSTRAP=1 (nightly ignores it).
sanitizer="${FUZZ_SANITIZER:-none}"
[ "$sanitizer" = none ] || export RUSTC_BOOTSTRAP=1
# Release code with debug assertions and overflow checks: arithmetic on untrusted values that
# overflows is a finding even though release builds of the server would wrap silently.
build=(cargo fuzz build --fuzz-dir fuzz --release --debug-assertions --sanitizer "$sanitizer")
start=$(date +%s)
if [ ${#targets[@]} -eq ${#all[@]} ]; then
  "${build[@]}"                      # all targets in one cargo invocation
else
  for t in "${targets[@]}"; do "${build[@]}" "$t"; done
fi
echo "== fuzz targets built in $(( $(date +%s) - start )) s"
[ "$build_only" -eq 0 ] || exit 0

bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
work="${FUZZ_WORK:-fuzz/target/work}"
# Targets that write files (WAL, blocks) do so under $TMPDIR: use memory when there is some.
tmp_base=/dev/shm
[ -d "$tmp_base" ] && [ -w "$tmp_base" ] || tmp_base="$work"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  log="$work/$t/last.log"
  tmp=$(mktemp -d "$tmp_base/wharf-fuzz-$t.XXXXXX")
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  # New inputs go to the work corpus; the committed seeds are only read.
  # shellcheck disable=SC2086
  if TMPDIR="$tmp" "$bin_dir/$t" "$work/$t/corpus" "fuzz/corpus/$t" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
      -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-} >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    printf '%-16s ok   %9s execs in %s s, %s\n' "$t" "${execs:-?}" "$seconds" "${cov:-cov: ?}"
  else
    printf '%-16s FAILED (log: %s)\n' "$t" "$log"
    grep -E -A25 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -60 || tail -40 "$log"
    failed+=("$t")
  fi
  rm -rf "$tmp"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]}; reproduce with: $bin_dir/<target> <artifact>" >&2
  exit 1
fi
