#!/usr/bin/env bash
# Deploys the operator, built from this checkout, onto the local cluster
# (hack/localkube.sh up): builds the static binary, packs and imports it as an
# image tagged with its content hash, and `make deploy`s that tag, so every change
# of the binary rolls the operator and the instance pods' agent.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "deploy-local: $*" >&2; }

export KUBECONFIG="${KUBECONFIG:-$(hack/localkube.sh kubeconfig)}"
log "building bin/manager"
make -s build
img=$(CONTAINERD_ADDRESS="$(hack/localkube.sh containerd-socket)" hack/images.sh operator-image)
log "deploying $img"
make -s deploy IMG="$img" >&2
# Keep the committed kustomization pointing at the generic name.
git checkout -q -- config/manager/kustomization.yaml 2>/dev/null || true
kubectl -n postgres-operator-system rollout status deploy/postgres-operator-controller-manager --timeout=180s >&2
