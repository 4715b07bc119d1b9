#!/usr/bin/env bash
# Quick start: a local cluster, the operator, and a Ready Database you can connect to.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "==> $*" >&2; }

log "bringing up the local cluster (cold: builds Kubernetes from source, ~25 min; warm: seconds)"
hack/localkube.sh up
export KUBECONFIG
KUBECONFIG="$(hack/localkube.sh kubeconfig)"
log "deploying the operator"
hack/deploy-local.sh
log "creating the sample Database (config/samples/database_v1_database.yaml)"
kubectl apply -f config/samples/database_v1_database.yaml
kubectl wait --for=condition=Ready database/my-database --timeout=10m
kubectl get database my-database
cat <<MSG

The Database is Ready. To connect:

  export KUBECONFIG=$KUBECONFIG
  kubectl port-forward svc/my-database 5432:5432 &
  PGPASSWORD="\$(kubectl get secret my-database-credentials -o jsonpath='{.data.password}' | base64 -d)" \\
    psql -h 127.0.0.1 -U admin mydb

Tear down with: make cluster-down
MSG
