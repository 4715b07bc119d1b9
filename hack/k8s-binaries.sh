#!/usr/bin/env bash
# Builds Kubernetes and etcd binaries from the Go module proxy and caches them by
# version outside the repository. Prints the directory holding the binaries.
#
#   hack/k8s-binaries.sh [component ...]   (default: etcd kube-apiserver)
#
# Components: etcd kube-apiserver kube-controller-manager kube-scheduler kubelet
# kube-proxy kubectl coredns. A component already in the cache is not rebuilt.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.1}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE_ROOT="${POSTGRES_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postgres-operator}"
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION/bin"
STAGING_VERSION="v0${K8S_VERSION#v1}"   # v1.37.1 -> v0.37.1

log() { echo "k8s-binaries: $*" >&2; }

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kube-apiserver)

missing=()
for c in "${components[@]}"; do
  [ -x "$BIN_DIR/$c" ] || missing+=("$c")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$BIN_DIR"
  exit 0
fi

mkdir -p "$BIN_DIR"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# build_module_main builds the main package at the root of a module (etcd, CoreDNS)
# through a throw-away wrapper module.
build_module_main() {
  local name="$1" module="$2" version="$3"
  local w="$CACHE_ROOT/wrap-$name-$version"
  mkdir -p "$w"
  if [ ! -f "$w/go.sum" ]; then
    log "resolving $name $version modules"
    (cd "$w" && rm -f go.mod && go mod init "wrap-$name" >/dev/null 2>&1 &&
      printf '//go:build tools\npackage tools\nimport _ "%s"\n' "$module" > tools.go &&
      go get "$module@$version" >/dev/null 2>&1 && go mod tidy >/dev/null 2>&1)
  fi
  log "building $name $version"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/$name.tmp" "$module")
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
}

k8s_wrapper() {
  local w="$CACHE_ROOT/wrap-k8s-$K8S_VERSION"
  if [ ! -f "$w/go.sum" ]; then
    log "resolving k8s.io/kubernetes $K8S_VERSION modules (cold: ~1 min)"
    mkdir -p "$w"
    local modfile
    modfile=$(cd "$w" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
      echo "module wrap-k8s"
      echo
      echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$modfile" | awk '{print $1}' |
        grep -vE 'sample-cli-plugin|sample-controller' |
        while read -r m; do echo "replace $m => $m $STAGING_VERSION"; done
    } > "$w/go.mod"
    cat > "$w/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    (cd "$w" && go mod tidy >&2)
  fi
  echo "$w"
}

build_k8s() {
  local c="$1" w
  w=$(k8s_wrapper)
  log "building $c $K8S_VERSION (cold kube-apiserver: ~12 min on 2 cores)"
  (cd "$w" && go build -trimpath \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)" \
    -o "$BIN_DIR/$c.tmp" "k8s.io/kubernetes/cmd/$c")
  mv "$BIN_DIR/$c.tmp" "$BIN_DIR/$c"
}

for c in "${missing[@]}"; do
  case "$c" in
    etcd) build_module_main etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" ;;
    coredns) build_module_main coredns github.com/coredns/coredns "$COREDNS_VERSION" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl) build_k8s "$c" ;;
    *) log "unknown component $c"; exit 2 ;;
  esac
done
echo "$BIN_DIR"
