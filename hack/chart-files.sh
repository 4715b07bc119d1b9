#!/usr/bin/env bash
# Copies the files the Helm chart shares with config/ into dist/chart/files:
# the CRDs, the manager's RBAC rules and the monitoring manifests. The chart's
# templates read them with .Files.Get, so the chart never drifts from the
# kustomize install (internal/chart's test fails when these copies are stale).
set -euo pipefail
cd "$(dirname "$0")/.."
dst=dist/chart/files
rm -rf "$dst"
mkdir -p "$dst/crds"
cp config/crd/bases/*.yaml "$dst/crds/"
cp config/rbac/role.yaml "$dst/manager-role.yaml"
cp config/prometheus/podmonitor.yaml config/prometheus/servicemonitor.yaml \
   config/prometheus/prometheusrule.yaml config/prometheus/dashboard.json "$dst/"
