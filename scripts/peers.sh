#!/usr/bin/env bash
# Builds the pinned real peers the interop tests run against (Thanos and Prometheus 3) from the Go
# module sources the toolchain's configured proxy serves, into a cache outside the repository:
#
#   ${WHARF_PEERS_DIR:-~/.cache/wharf-peers}/<name>-<version>/bin/<binary>
#
# A peer is built only when its stamp file (written last, holding the recipe) is missing or names
# another recipe, so an interrupted build, or a changed pin, builds again. A peer that cannot be
# built stops the script with the build's error and a non-zero exit.
#
#   scripts/peers.sh              build what is missing
#   scripts/peers.sh --print-dir  print the cache directory (nothing is built)
#   scripts/peers.sh --check      exit 1 and name what is missing or stale (nothing is built)
#
# Both modules carry `replace` directives, so `go install module@version` refuses them: each is
# built inside a writable copy of the module directory that `go mod download -json` unpacks, where
# its own go.mod and go.sum apply. GOWORK=off because the Prometheus zip holds a go.work naming
# modules it lacks. Measured on 2 cores: Thanos ~280 s, Prometheus ~110 s, ~1.6 GB module cache.
set -euo pipefail

PEERS_DIR="${WHARF_PEERS_DIR:-$HOME/.cache/wharf-peers}"

# name version module module-version tags packages...
PEERS=(
  "thanos v0.42.4 github.com/thanos-io/thanos v0.42.4 netgo,slicelabels ./cmd/thanos"
  "prometheus v3.14.0 github.com/prometheus/prometheus v0.314.0 netgo,remove_all_sd ./cmd/prometheus ./cmd/promtool"
)

recipe() { # the stamp's content: everything that decides what the binaries are
  local name=$1 version=$2 module=$3 modver=$4 tags=$5
  shift 5
  echo "$name $version $module@$modver tags=$tags pkgs=$* trimpath CGO_ENABLED=0"
}

up_to_date() {
  local name=$1 version=$2
  local dir="$PEERS_DIR/$name-$version"
  [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$(recipe "$@")" ] || return 1
  shift 5
  local pkg
  for pkg in "$@"; do [ -x "$dir/bin/$(basename "$pkg")" ] || return 1; done
}

work=""
cleanup() { # the writable source copy: ~1 GB of build inputs nobody needs afterwards
  if [ -n "$work" ]; then
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
    work=""
  fi
}
trap cleanup EXIT

build() {
  local name=$1 version=$2 module=$3 modver=$4 tags=$5
  shift 5
  local dir="$PEERS_DIR/$name-$version"
  local started=$SECONDS
  echo "== peers: building $name $version ($module@$modver) into $dir/bin"
  rm -rf "$dir"
  mkdir -p "$dir/bin"

  cleanup
  work=$(mktemp -d "${TMPDIR:-/tmp}/wharf-peer-$name.XXXXXX")

  local json src
  if ! json=$(cd "$work" && GOWORK=off go mod download -json "$module@$modver"); then
    echo "peers: go mod download $module@$modver failed:" >&2
    echo "$json" >&2
    exit 1
  fi
  src=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  if [ -z "$src" ] || [ ! -d "$src" ]; then
    echo "peers: go mod download $module@$modver gave no module directory:" >&2
    echo "$json" >&2
    exit 1
  fi
  cp -R "$src/." "$work/src"
  chmod -R u+w "$work/src"

  local pkg
  for pkg in "$@"; do
    echo "   go build -tags $tags $pkg"
    if ! (cd "$work/src" &&
      GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=readonly \
        go build -trimpath -tags "$tags" -o "$dir/bin/$(basename "$pkg")" "$pkg"); then
      echo "peers: building $name $version ($pkg) failed; see the go build error above" >&2
      exit 1
    fi
  done
  recipe "$name" "$version" "$module" "$modver" "$tags" "$@" >"$dir/stamp.tmp"
  mv "$dir/stamp.tmp" "$dir/stamp" # last: a build interrupted before this line builds again
  cleanup
  echo "== peers: $name $version built in $((SECONDS - started)) s"
}

case "${1:-}" in
--print-dir)
  echo "$PEERS_DIR"
  exit 0
  ;;
--check)
  missing=0
  for p in "${PEERS[@]}"; do
    # shellcheck disable=SC2086 # word splitting of the spec is intended
    if ! up_to_date $p; then
      echo "missing or stale: $PEERS_DIR/${p%% *}-$(echo "$p" | cut -d' ' -f2)" >&2
      missing=1
    fi
  done
  exit $missing
  ;;
"") ;;
*)
  echo "usage: $0 [--print-dir|--check]" >&2
  exit 2
  ;;
esac

command -v go >/dev/null 2>&1 || {
  echo "peers: the Go toolchain (go) is not on PATH" >&2
  exit 1
}
mkdir -p "$PEERS_DIR"
# One builder at a time (two test runs starting together would build into the same directory).
exec 9>"$PEERS_DIR/.lock"
flock 9

for p in "${PEERS[@]}"; do
  # shellcheck disable=SC2086 # word splitting of the spec is intended
  if up_to_date $p; then
    echo "== peers: ${p%% *} up to date"
  else
    # shellcheck disable=SC2086
    build $p
  fi
done
