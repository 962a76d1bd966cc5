#!/usr/bin/env bash
# Whole-server comparison: Wharf vs Thanos Receive vs Prometheus vs VictoriaMetrics under the same remote-write load
# (benches/loadgen.rs). Each target runs on 127.0.0.1 with a fresh data dir, pinned to core 1;
# the generator is pinned to core 0. Prints one Markdown table (docs/benchmarks.md).
#
#   scripts/bench-compare.sh                 # full run, ~15 min; installs prometheus and
#                                            # victoria-metrics from Debian if missing
#   scripts/bench-compare.sh --smoke         # seconds: tiny sizes, Wharf (+ Prometheus if
#                                            # installed), dev build; fails on zero accepted
#                                            # samples or a non-2xx majority
#   options: --targets "wharf thanos prometheus victoria-metrics"  --scenarios "steady churn small disk"
#            (also scale-100k, scale-1m, scale-5m: cost per sample as the head grows)
#            --out DIR (default target/bench-compare/<time>)  --perf (perf record Wharf in steady)
#   env: WHARF_BIN=path/to/wharf to run a prebuilt Wharf instead of building this tree's
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0 perf=0 targets="" scenarios="steady churn small disk" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --perf) perf=1 ;;
    --targets) targets="$2"; shift ;;
    --scenarios) scenarios="$2"; shift ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$smoke" = 0 ]; then
  need=()
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
  if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
if [ -z "$targets" ]; then
  targets="wharf"
  command -v prometheus >/dev/null 2>&1 && targets+=" prometheus"
  [ "$smoke" = 1 ] || targets+=" thanos victoria-metrics"
fi
# Thanos Receive v0.42.4, built once by scripts/peers.sh (the pinned peer of the interop tests).
thanos_bin=""
if [[ " $targets " == *" thanos "* ]]; then
  scripts/peers.sh
  thanos_bin="$(scripts/peers.sh --print-dir)/thanos-v0.42.4/bin/thanos"
fi

# Build once; call the binaries directly so taskset applies to them. WHARF_BIN=path runs a
# prebuilt Wharf instead (e.g. another revision's release build).
if [ -n "${WHARF_BIN:-}" ]; then
  wharf_bin=$WHARF_BIN
elif [ "$smoke" = 1 ]; then
  cargo build --quiet --bin wharf
  wharf_bin=target/debug/wharf
else
  cargo build --release --quiet --bin wharf
  wharf_bin=target/release/wharf
fi
if [ "$smoke" = 1 ]; then
  lg=$(cargo test --bench loadgen --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)
else
  lg=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)
fi
[ -x "$lg" ] || { echo "loadgen binary not found" >&2; exit 1; }
LG() { "$lg" --bench "$@"; }

out=${out:-target/bench-compare/$(date +%Y%m%d-%H%M%S)$([ "$smoke" = 1 ] && echo -smoke || true)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
results="$out/results.jsonl"
: >"$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")

if [ "$(nproc)" -ge 2 ]; then
  pin_target=(taskset -c 1) pin_gen=(taskset -c 0)
else
  pin_target=() pin_gen=()
fi

children=()
cleanup() {
  local p
  for p in "${children[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${children[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_target NAME SCENARIO [extra flags...]: sets tpid, url, data.
start_target() {
  local name=$1 scen=$2
  shift 2
  local p1 p2 p3 p4 ready log="$out/$name-$scen.log"
  read -r p1 p2 p3 p4 < <(LG --free-ports 4)
  data="$work/$name-$scen"
  rm -rf "$data"
  mkdir -p "$data"
  case "$name" in
    wharf)
      "${pin_target[@]}" "$wharf_bin" receive --remote-write.address "127.0.0.1:$p1" \
        --grpc-address "127.0.0.1:$p2" --http-address "127.0.0.1:$p3" --tsdb.path "$data" \
        "$@" >"$log" 2>&1 &
      url="http://127.0.0.1:$p1/api/v1/receive" ready="http://127.0.0.1:$p3/-/ready" ;;
    thanos)
      # An ingestor without a hashring; its Cap'n Proto listener defaults to 19391 for every
      # instance, so it gets a port of its own.
      "${pin_target[@]}" "$thanos_bin" receive --remote-write.address "127.0.0.1:$p1" \
        --grpc-address "127.0.0.1:$p2" --http-address "127.0.0.1:$p3" \
        --receive.capnproto-address "127.0.0.1:$p4" --tsdb.path "$data" \
        --label 'replica="bench"' "$@" >"$log" 2>&1 &
      url="http://127.0.0.1:$p1/api/v1/receive" ready="http://127.0.0.1:$p3/-/ready" ;;
    prometheus)
      printf 'global:\n  scrape_interval: 15s\n' >"$work/prometheus.yml"
      "${pin_target[@]}" prometheus --config.file="$work/prometheus.yml" \
        --storage.tsdb.path="$data" --web.listen-address="127.0.0.1:$p1" \
        --web.enable-remote-write-receiver "$@" >"$log" 2>&1 &
      url="http://127.0.0.1:$p1/api/v1/write" ready="http://127.0.0.1:$p1/-/ready" ;;
    victoria-metrics)
      "${pin_target[@]}" victoria-metrics -storageDataPath="$data" -httpListenAddr="127.0.0.1:$p1" \
        "$@" >"$log" 2>&1 &
      url="http://127.0.0.1:$p1/api/v1/write" ready="http://127.0.0.1:$p1/health" ;;
    *) echo "unknown target $name" >&2; exit 2 ;;
  esac
  tpid=$!
  children+=("$tpid")
  vm_base="http://127.0.0.1:$p1"
  local waited=0
  until LG --wait-ready "$ready" --timeout 1 2>/dev/null; do
    waited=$((waited + 1))
    if ! kill -0 "$tpid" 2>/dev/null || [ "$waited" -ge 60 ]; then
      echo "!! $name did not become ready; last lines of $log:" >&2
      tail -20 "$log" >&2
      exit 1
    fi
  done
}

stop_target() {
  kill "$tpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
}

# Sum of `du -sb` over the given paths (0 for none).
bytes_of() {
  local b=0 d
  for d in "$@"; do b=$((b + $(du -sb "$d" | cut -f1))); done
  echo "$b"
}

# disk_line NAME ACCEPTED_SAMPLES: bytes per sample in blocks (Prometheus, Wharf once it cuts
# them), in the whole data dir after a flush (VictoriaMetrics), or in the WAL.
disk_line() {
  local name=$1 accepted=$2 metas=() m d bb=0 bs=0 wal dbps kind
  mapfile -t wals < <(find "$data" -type d -name wal -prune)
  wal=$(bytes_of "${wals[@]}")
  mapfile -t metas < <(find "$data" -name meta.json -not -path '*/wal/*')
  for m in "${metas[@]}"; do
    d=$(dirname "$m")
    bb=$((bb + $(du -sb "$d" | cut -f1)))
    bs=$((bs + $(grep -o '"numSamples": *[0-9]*' "$m" | grep -o '[0-9]*$' || echo 0)))
  done
  if [ "$name" = victoria-metrics ]; then
    dbps=$(awk -v b="$(bytes_of "$data")" -v s="$accepted" 'BEGIN{printf "%.4f", s ? b/s : 0}')
    kind="whole data dir after force_flush"
    wal=""
  elif [ "$bs" -gt 0 ]; then
    dbps=$(awk -v b="$bb" -v s="$bs" 'BEGIN{printf "%.4f", b/s}')
    kind="${#metas[@]} block(s), $bs samples"
  else
    dbps=$(awk -v b="$wal" -v s="$accepted" 'BEGIN{printf "%.4f", s ? b/s : 0}')
    kind="WAL: no block cut"
  fi
  local walps="null"
  [ -n "$wal" ] && walps=$(awk -v b="$wal" -v s="$accepted" 'BEGIN{printf "%.4f", s ? b/s : 0}')
  printf '{"target":"%s","scenario":"disk","disk_bytes_per_sample":%s,"disk_kind":"%s","wal_bytes_per_sample":%s}\n' \
    "$name" "$dbps" "$kind" "$walps" >>"$results"
}

failed=0
# Timed scenarios stop after 60 s (30 s) or 720 rounds, whichever comes first: 720 samples per
# series at 15 s is 3 h, the most a head holds before a 2 h block is cut, so a fast target's
# memory is not measured on a head no real one would hold.
max_rounds=720
# run_scenario NAME SCENARIO: one fresh target, one load.
run_scenario() {
  local name=$1 scen=$2 tflags=() lflags=() now start
  case "$scen" in
    steady) if [ "$smoke" = 1 ]; then lflags=(--series 2000 --batch 500 --concurrency 2 --warmup 0.5 --duration 1.5)
            else lflags=(--series 100000 --batch 2000 --concurrency 4 --warmup 10 --duration 60 --rounds "$max_rounds"); fi ;;
    churn)  if [ "$smoke" = 1 ]; then lflags=(--series 5000 --batch 500 --concurrency 2 --rounds 1)
            else lflags=(--series 1000000 --batch 2000 --concurrency 4 --rounds 1); fi ;;
    small)  if [ "$smoke" = 1 ]; then lflags=(--series 1000 --batch 100 --concurrency 1 --warmup 0.3 --duration 1.5)
            else lflags=(--series 10000 --batch 100 --concurrency 1 --warmup 5 --duration 30 --rounds "$max_rounds"); fi ;;
    disk)
      # Blocks of 30 min (= one 120-sample chunk per series), starting on a block boundary, so
      # that 240 rounds (1 h) leave the first 30 min in a block on Prometheus and Wharf.
      now=$(date +%s)
      start=$(( (now - 3 * 3600) / 1800 * 1800 * 1000 ))
      if [ "$smoke" = 1 ]; then lflags=(--series 1000 --batch 500 --concurrency 2 --rounds 20 --start-ms "$start")
      else lflags=(--series 20000 --batch 2000 --concurrency 4 --rounds 240 --start-ms "$start"); fi
      case "$name" in
        prometheus) tflags=(--storage.tsdb.min-block-duration=30m --storage.tsdb.max-block-duration=30m) ;;
        thanos) tflags=(--tsdb.min-block-duration=30m --tsdb.max-block-duration=30m) ;;
        wharf)
          tflags=(--tsdb.min-block-duration=30m --tsdb.max-block-duration=30m)
          # Check for a cut every second where this build has the (hidden) flag.
          "$wharf_bin" receive --tsdb.compaction-interval=1s --help >/dev/null 2>&1 &&
            tflags+=(--tsdb.compaction-interval=1s) ;;
      esac ;;
    scale-*)
      # Cost per sample as the head grows: every series exists before the measured window.
      local n=${scen#scale-}
      n=${n//k/000}; n=${n//m/000000}
      if [ "$smoke" = 1 ]; then lflags=(--series 3000 --batch 500 --concurrency 2 --warmup 0.5 --duration 1)
      else lflags=(--series "$n" --batch 2000 --concurrency 4 --warmup $(( 10 + n / 250000 )) --duration 30 --rounds "$max_rounds"); fi ;;
    *) echo "unknown scenario $scen" >&2; exit 2 ;;
  esac
  echo "== $scen: $name"
  start_target "$name" "$scen" "${tflags[@]}"
  local perf_pid=""
  if [ "$perf" = 1 ] && [ "$name" = wharf ] && [ "$scen" = steady ] && command -v perf >/dev/null; then
    (sleep 15 && exec perf record -g -o "$out/wharf-steady.perf.data" -p "$tpid" -- sleep 30) \
      >"$out/perf.log" 2>&1 &
    perf_pid=$!
    children+=("$perf_pid")
  fi
  local lgout="$out/$name-$scen.loadgen.txt" rc=0
  "${pin_gen[@]}" "$lg" --bench --url "$url" --pid "$tpid" --target-name "$name" --scenario "$scen" \
    "${lflags[@]}" >"$lgout" 2>&1 || rc=$?
  grep -v '^{' "$lgout" | sed 's/^/   /'
  grep '^{' "$lgout" | tail -1 >>"$results" || true
  if [ "$rc" != 0 ]; then
    echo "!! $name $scen: loadgen exit $rc" >&2
    failed=1
  fi
  [ -n "$perf_pid" ] && { wait "$perf_pid" || true; }
  if [ "$scen" = disk ]; then
    local accepted
    accepted=$(grep '^{' "$lgout" | tail -1 | grep -o '"accepted_samples":[0-9]*' | cut -d: -f2)
    if [ "$name" = victoria-metrics ]; then
      LG --get "$vm_base/internal/force_flush" >/dev/null || true
      sleep 3
    elif [ "$smoke" = 0 ]; then
      # Wait (up to 3 min) for the first block.
      for _ in $(seq 180); do
        [ -n "$(find "$data" -name meta.json -not -path '*/wal/*' | head -1)" ] && break
        sleep 1
      done
      sleep 5
    fi
    disk_line "$name" "${accepted:-0}"
  fi
  stop_target
  rm -rf "$data"
}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "== targets: $targets; scenarios: $scenarios; results in $out"
[ "$smoke" = 1 ] || {
  echo "== versions: $("$wharf_bin" --version 2>/dev/null || echo wharf)"
  dpkg-query -W prometheus victoria-metrics 2>/dev/null | sed 's/^/   /' || true
}
echo "== generator ceiling (in-process sink, generator core only)"
ceil_flags=(--series 100000 --batch 2000 --concurrency 4 --duration 5)
[ "$smoke" = 1 ] && ceil_flags=(--series 2000 --batch 500 --concurrency 2 --duration 0.5)
"${pin_gen[@]}" "$lg" --bench --sink --target-name sink --scenario ceiling "${ceil_flags[@]}" \
  >"$out/sink.loadgen.txt" 2>&1 || failed=1
grep -v '^{' "$out/sink.loadgen.txt" | sed 's/^/   /'
grep '^{' "$out/sink.loadgen.txt" | tail -1 >>"$results" || true

for scen in $scenarios; do
  for name in $targets; do
    run_scenario "$name" "$scen"
  done
done

echo
LG --report "$results" | tee "$out/table.md"
if [ "$failed" != 0 ]; then
  echo "!! some loads failed (zero accepted samples or a non-2xx majority); see $out" >&2
  exit 1
fi
