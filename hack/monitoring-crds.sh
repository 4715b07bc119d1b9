#!/usr/bin/env bash
# Installs the Prometheus Operator's PodMonitor, ServiceMonitor and
# PrometheusRule CRDs (pinned, from its Go module: the example manifests in the
# module's zip) on the cluster in $KUBECONFIG, for clusters without the
# Prometheus Operator (the e2e suite applies config/prometheus against them).
set -euo pipefail
VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
dir="$(cd /tmp && go mod download -json "github.com/prometheus-operator/prometheus-operator@${VERSION}" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$dir" ] || [ ! -d "$dir/example/prometheus-operator-crd" ]; then
  echo "monitoring-crds: could not download prometheus-operator ${VERSION} from the Go module proxy" >&2
  exit 1
fi
for kind in podmonitors servicemonitors prometheusrules; do
  kubectl apply --server-side --force-conflicts -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_${kind}.yaml"
done
kubectl wait --for=condition=Established --timeout=60s \
  crd/podmonitors.monitoring.coreos.com crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com
