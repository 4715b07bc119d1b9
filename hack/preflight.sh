#!/usr/bin/env bash
# Checks the machine before the long builds of the local cluster: root, Debian
# (apt, debootstrap), amd64 (the cached binaries and images), and free disk for
# the Kubernetes build cache, the images and the volumes. Fails with what to do.
set -euo pipefail
CACHE_ROOT="${POSTGRES_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postgres-operator}"
NEED_GIB="${PREFLIGHT_FREE_GIB:-15}"
fail() { echo "preflight: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "the local cluster needs root (network namespaces, mounts, cgroups): run as root (sudo -E make ...)"
[ -r /etc/debian_version ] && command -v apt-get >/dev/null || fail "the local cluster is built for Debian (apt-get, debootstrap); this is $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-an unknown system}")"
arch=$(uname -m)
[ "$arch" = x86_64 ] || fail "the local cluster is built for amd64 (x86_64); this machine is $arch"
command -v go >/dev/null || fail "Go is needed (https://go.dev/dl/); it builds every other tool"
mkdir -p "$CACHE_ROOT"
for dir in "$CACHE_ROOT" /var/lib; do
  free_kib=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
  [ "$free_kib" -ge $((NEED_GIB * 1024 * 1024)) ] ||
    fail "$dir has $((free_kib / 1024 / 1024)) GiB free; the cluster's build cache, images and volumes need about $NEED_GIB GiB (PREFLIGHT_FREE_GIB overrides)"
done
