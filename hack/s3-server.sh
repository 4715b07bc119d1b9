#!/usr/bin/env bash
# Builds (once, cached by version outside the repository) versitygw, a real
# S3-compatible server, for the backup tests and the local cluster. Prints its path.
set -euo pipefail
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
CACHE_ROOT="${POSTGRES_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postgres-operator}"
dir="$CACHE_ROOT/versitygw-$VERSITYGW_VERSION"
if [ ! -x "$dir/versitygw" ]; then
  echo "s3-server: building versitygw $VERSITYGW_VERSION (cold: ~1.5 min)" >&2
  mkdir -p "$dir"
  GOBIN="$dir" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" \
    "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >&2
fi
echo "$dir/versitygw"
