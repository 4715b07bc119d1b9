#!/usr/bin/env bash
# Installs Debian's PostgreSQL 15 server binaries when missing (the agent and backup
# tests run a real server). Idempotent; prints the bin directory.
set -euo pipefail
PG_MAJOR="${PG_MAJOR:-15}"
bindir="/usr/lib/postgresql/$PG_MAJOR/bin"
if [ ! -x "$bindir/postgres" ] || [ ! -x "$bindir/pg_basebackup" ]; then
  echo "ensure-postgres: installing postgresql-$PG_MAJOR from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "postgresql-$PG_MAJOR" postgresql-client-"$PG_MAJOR" >&2
fi
echo "$bindir"
