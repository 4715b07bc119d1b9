#!/usr/bin/env bash
# Builds CoreDNS from the Go module proxy (static, CGO_ENABLED=0) and caches it
# by version outside the repository; prints the path of the binary. A binary
# already in the cache is not rebuilt.
#
#   hack/cluster/coredns.sh            (COREDNS_VERSION, default v1.15.0)
#
# v1.15.0 is the newest v1.x the module proxy served when this was written
# (`go list -m -versions github.com/coredns/coredns`). Its go.mod has no replace
# directives, so `go install module@version` works without a wrapper module.
set -euo pipefail

COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE_ROOT="${POSTGRES_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postgres-operator}"
BIN_DIR="$CACHE_ROOT/coredns-$COREDNS_VERSION/bin"

if [ ! -x "$BIN_DIR/coredns" ]; then
  echo "coredns: building CoreDNS $COREDNS_VERSION (cold: ~3 min on 2 cores)" >&2
  tmp=$(mktemp -d "$CACHE_ROOT/.coredns-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # GOFLAGS from the caller (e.g. -mod=vendor) must not leak into a module-mode install.
  (cd "$tmp" && GOFLAGS= GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@$COREDNS_VERSION")
  mkdir -p "$BIN_DIR"
  mv "$tmp/coredns" "$BIN_DIR/coredns"
fi
echo "$BIN_DIR/coredns"
