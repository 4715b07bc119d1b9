#!/usr/bin/env bash
# Unpacks the local PostgreSQL images (hack/images.sh) into root file systems,
# once, cached by archive name: the major-upgrade tests and `make bench-upgrade`
# run the upgrade's commands in them with chroot, exactly as the Jobs run them
# in the images. Prints the directory holding postgres-15-bookworm/ and
# postgres-17-trixie/.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_ROOT="${POSTGRES_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postgres-operator}"
IMAGES="$CACHE_ROOT/images"
OUT="$CACHE_ROOT/rootfs"
hack/images.sh build >&2
mkdir -p "$OUT"
for name in postgres-15-bookworm postgres-17-trixie; do
  archive="$IMAGES/$name.tar"
  stamp="$OUT/$name.stamp"
  want=$(stat -c '%s %Y' "$archive")
  if [ -d "$OUT/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    continue
  fi
  echo "pg-rootfs: unpacking $name" >&2
  rm -rf "$OUT/$name" "$OUT/.$name"
  mkdir -p "$OUT/.$name"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tar -xf "$archive" -C "$tmp"
  for layer in $(grep -o '[^"]*layer.tar' "$tmp/manifest.json"); do
    tar -xpf "$tmp/$layer" -C "$OUT/.$name"
  done
  rm -rf "$tmp"; trap - EXIT
  mv "$OUT/.$name" "$OUT/$name"
  echo "$want" > "$stamp"
done
echo "$OUT"
