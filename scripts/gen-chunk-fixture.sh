#!/usr/bin/env bash
# Regenerates tests/data/promtool-block/{input.om,chunks/000001}: a real
# Prometheus TSDB chunk segment written by `promtool tsdb create-blocks-from
# openmetrics`, used by src/tsdb/chunkenc.rs to prove our XOR codec is
# bit-compatible with Prometheus. Needs promtool (Debian: apt-get install prometheus).
#
# Usage: scripts/gen-chunk-fixture.sh [repo-root]   (default: this script's repo)
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
dest="$root/tests/data/promtool-block"
promtool="${PROMTOOL:-promtool}"
command -v "$promtool" >/dev/null || { echo "promtool not found (apt-get install prometheus)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
om="$work/input.om"

# Deterministic (no $RANDOM) so the fixture only changes when this script does.
# Timestamps stay inside one 2h block: [1699999200, 1700006400) seconds.
awk 'BEGIN {
  base = 1700000000; seed = 42
  # LCG kept below 2^31 so awk doubles stay exact.
  # 150 samples > 120, so Prometheus has to cut more than one chunk.
  v = 0
  for (i = 0; i < 150; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648
    v += seed % 1000
    printf "wharf_requests_total{job=\"api\",instance=\"a:9090\"} %d %d\n", v, base + 15 * i
  }
  # Gauge with millisecond jitter on both timestamp and value.
  for (i = 0; i < 60; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648
    ms = (base + 15 * i) * 1000 + seed % 2000 - 1000
    seed = (seed * 1103515245 + 12345) % 2147483648
    printf "wharf_temperature_celsius{sensor=\"rack1\"} %d.%02d %d.%03d\n", 20 + seed % 5, seed % 100, int(ms / 1000), ms % 1000
  }
  # Special values, each repeated once so the "unchanged value" bit shows up too.
  n = split("NaN NaN +Inf +Inf -Inf -0 -0 0 5e-324 5e-324 2.2250738585072014e-308 4.9406564584124654e-320 1.7976931348623157e308 -1.7976931348623157e308 1e300 1e-300 42 42 42 NaN 1 1.0000000000000002 1.0000000000000004 0.1", sv, " ")
  for (i = 1; i <= n; i++)
    printf "wharf_special{kind=\"edge\"} %s %d\n", sv[i], base + 30 * i
  # Constant value with irregular gaps: delta-of-deltas in every size bucket
  # (0, 14-bit, 17-bit, 20-bit, 64-bit) including their exact boundaries.
  ms = base * 1000; d = 1000
  n = split("0 0 1 -1 8192 -8191 8193 -8192 65536 -65535 65537 -65536 524288 -524287 524289 -524288 600000 -600000 0 0", dods, " ")
  printf "wharf_gaps{kind=\"dod\"} 7 %d.%03d\n", int(ms / 1000), ms % 1000
  for (i = 1; i <= n; i++) {
    if (i > 1) d += dods[i]
    ms += d
    printf "wharf_gaps{kind=\"dod\"} 7 %d.%03d\n", int(ms / 1000), ms % 1000
  }
  # One-sample chunk: Prometheus 2.x leaves its trailing empty byte here.
  printf "wharf_single{kind=\"lonely\"} 3.25 %d\n", base + 60
  print "# EOF"
}' >"$om"

"$promtool" tsdb create-blocks-from openmetrics "$om" "$work/out" >/dev/null
blocks=("$work"/out/*/)
[ "${#blocks[@]}" -eq 1 ] || { echo "expected exactly one block, got ${#blocks[@]}" >&2; exit 1; }
segs=("${blocks[0]}"chunks/*)
[ "${#segs[@]}" -eq 1 ] || { echo "expected exactly one chunk segment, got ${#segs[@]}" >&2; exit 1; }

mkdir -p "$dest/chunks"
cp "$om" "$dest/input.om"
cp "${blocks[0]}chunks/000001" "$dest/chunks/000001"
echo "wrote $dest ($(wc -c <"$dest/input.om") + $(wc -c <"$dest/chunks/000001") bytes)"
