#!/usr/bin/env bash
# Router overhead: remote write straight to one ingestor, versus through a router to two
# ingestors at RF 1, and to three ingestors at RF 3 (ingestors without a hashring), for Wharf,
# Thanos Receive v0.42.4 (scripts/peers.sh), and a Wharf router in front of Thanos ingestors.
# Every server process is pinned to core 1, the generator (benches/loadgen.rs) to core 0.
# Prints one Markdown table (docs/benchmarks.md). --smoke runs Wharf alone.
#
#   scripts/bench-router.sh            # about 3 minutes, release build
#   scripts/bench-router.sh --smoke    # seconds, dev build (run by scripts/test.sh)
#   options: --out DIR (default target/bench-router/<time>),
#            --compression none|snappy (the router's --receive.grpc-compression, default snappy),
#            --ingestors-hold-ring (ingestors get the hashring and their local endpoint too)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0 out="" compression=snappy hold_ring=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out="$2"; shift ;;
    --compression) compression="$2"; shift ;;
    --ingestors-hold-ring) hold_ring=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$smoke" = 1 ]; then
  cargo build --quiet --bin wharf
  wharf_bin=target/debug/wharf
  lg=$(cargo test --bench loadgen --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)
  load=(--series 2000 --batch 500 --concurrency 2 --warmup 0.5 --duration 1.5)
else
  cargo build --release --quiet --bin wharf
  wharf_bin=target/release/wharf
  lg=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)
  load=(--series 100000 --batch 2000 --concurrency 4 --warmup 10 --duration 30 --rounds 720)
fi
[ -x "$lg" ] || { echo "loadgen binary not found" >&2; exit 1; }
LG() { "$lg" --bench "$@"; }

out=${out:-target/bench-router/$(date +%Y%m%d-%H%M%S)$([ "$smoke" = 1 ] && echo -smoke || true)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-router.XXXXXX")
if [ "$(nproc)" -ge 2 ]; then pin_target=(taskset -c 1) pin_gen=(taskset -c 0); else pin_target=() pin_gen=(); fi

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

thanos_bin=""
if [ "$smoke" = 0 ]; then
  scripts/peers.sh
  thanos_bin="$(scripts/peers.sh --print-dir)/thanos-v0.42.4/bin/thanos"
fi

# node KIND NAME RW GRPC HTTP [flags...]: starts one Wharf or Thanos Receive, sets npid.
node() {
  local kind=$1 name=$2 rw=$3 grpc=$4 http=$5 bin=$wharf_bin extra=() capnp
  shift 5
  mkdir -p "$work/$name"
  if [ "$kind" = thanos ]; then
    # Every thanos receive listens for Cap'n Proto on 19391 unless told otherwise.
    read -r capnp < <(LG --free-ports 1)
    bin=$thanos_bin extra=(--receive.capnproto-address "127.0.0.1:$capnp" --label "replica=\"$name\"")
  fi
  "${pin_target[@]}" "$bin" receive --remote-write.address "127.0.0.1:$rw" \
    --grpc-address "127.0.0.1:$grpc" --http-address "127.0.0.1:$http" \
    --tsdb.path "$work/$name" "${extra[@]}" "$@" >"$out/$name.log" 2>&1 &
  npid=$!
  pids+=("$npid")
  LG --wait-ready "http://127.0.0.1:$http/-/ready" --timeout 60 >/dev/null ||
    { echo "!! $name not ready" >&2; tail -20 "$out/$name.log" >&2; exit 1; }
}

stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# run NAME INGESTORS RF [ROUTER_KIND INGESTOR_KIND]: ingestors on a ring plus a router (none
# for 0 = direct); kinds are wharf (default) or thanos.
results="$out/results.jsonl"
: >"$results"
run() {
  local name=$1 n=$2 rf=$3 rkind=${4:-wharf} ikind=${5:-wharf} ring eps=() ingestor_pids=() i p
  echo "== $name"
  if [ "$n" = 0 ]; then
    read -r p1 p2 p3 < <(LG --free-ports 3)
    node "$ikind" "$name-ingestor" "$p1" "$p2" "$p3"
    "${pin_gen[@]}" "$lg" --bench --url "http://127.0.0.1:$p1/api/v1/receive" --pid "$npid" \
      --target-name "$name" --scenario router "${load[@]}" >"$out/$name.txt" 2>&1
  else
    ring="$work/$name-hashrings.json"
    local ports=()
    for i in $(seq "$n"); do
      read -r a b c < <(LG --free-ports 3)
      ports+=("$a $b $c")
      eps+=("\"127.0.0.1:$b\"")
    done
    (IFS=,; echo "[{\"hashring\":\"default\",\"endpoints\":[${eps[*]}]}]") >"$ring"
    for i in $(seq "$n"); do
      read -r a b c <<<"${ports[$((i - 1))]}"
      # Ingestor-only by default, as in Thanos's router/ingestor split (kube-thanos).
      ring_args=()
      [ "$hold_ring" = 1 ] && ring_args=(--receive.hashrings-file "$ring" \
        --receive.local-endpoint "127.0.0.1:$b" --receive.replication-factor "$rf")
      node "$ikind" "$name-ingestor-$i" "$a" "$b" "$c" "${ring_args[@]}"
      ingestor_pids+=("$npid")
    done
    read -r p1 p2 p3 < <(LG --free-ports 3)
    node "$rkind" "$name-router" "$p1" "$p2" "$p3" --receive.hashrings-file "$ring" \
      --receive.replication-factor "$rf" --receive.grpc-compression "$compression"
    "${pin_gen[@]}" "$lg" --bench --url "http://127.0.0.1:$p1/api/v1/receive" --pid "$npid" \
      --also-pids "$(IFS=,; echo "${ingestor_pids[*]}")" --target-name "$name" --scenario router \
      "${load[@]}" >"$out/$name.txt" 2>&1
  fi
  grep -v '^{' "$out/$name.txt" | sed 's/^/   /'
  grep '^{' "$out/$name.txt" | tail -1 >>"$results"
  stop_all
}

run direct 0 1
run router-rf1-2-ingestors 2 1
run router-rf3-3-ingestors 3 3
if [ "$smoke" = 0 ]; then
  run thanos-direct 0 1 thanos thanos
  run thanos-router-rf1-2-ingestors 2 1 thanos thanos
  run thanos-router-rf3-3-ingestors 3 3 thanos thanos
  run wharf-router-rf3-3-thanos-ingestors 3 3 wharf thanos
fi

python3 - "$results" <<'EOF' | tee "$out/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| setup | samples/s | router CPU-s / 1M | ingestors CPU-s / 1M | p50 | p99 |")
print("|---|---:|---:|---:|---:|---:|")
direct = {}
def family(name):
    # Compared with the direct run of the same ingestor program.
    return "thanos" if name.startswith("thanos") or name.endswith("thanos-ingestors") else "wharf"
for r in rows:
    name = r["target"]
    if name.endswith("direct"):
        direct[family(name)] = r.get("cpu_s_per_1m")
        router, ing = "–", f'{r.get("cpu_s_per_1m", 0):.3f}'
    else:
        router, ing = f'{r.get("cpu_s_per_1m", 0):.3f}', f'{r.get("also_cpu_s_per_1m", 0):.3f}'
    print(f'| {name} | {r["samples_per_s"]:,.0f} | {router} | {ing} | {r["p50_ms"]:.2f} ms | {r["p99_ms"]:.2f} ms |')
print()
for r in rows:
    d = direct.get(family(r["target"]))
    if not r["target"].endswith("direct") and r.get("cpu_s_per_1m") and d:
        print(f'{r["target"]}: router CPU per sample = {r["cpu_s_per_1m"] / d:.0%} of the ingestor\'s own')
EOF
bad=$(grep -c '"accepted_samples":0[,}]' "$results" || true)
[ "$bad" = 0 ] || { echo "!! a setup accepted no samples; see $out" >&2; exit 1; }
