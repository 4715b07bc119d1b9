#!/usr/bin/env bash
# Filters a multi-document YAML stream on stdin, dropping the
# CustomResourceDefinitions: `make undeploy` removes the operator but never the
# CRDs (deleting a CRD deletes every Database, Backup and Restore with it, and
# hangs on the Backups' finalizers once the operator is gone).
set -euo pipefail
awk '
  function flush() { if (doc != "" && !crd) printf "%s", doc; doc = ""; crd = 0 }
  /^---[[:space:]]*$/ { flush(); print "---"; next }
  { doc = doc $0 "\n"; if ($0 ~ /^kind:[[:space:]]*CustomResourceDefinition[[:space:]]*$/) crd = 1 }
  END { flush() }
'
