#!/usr/bin/env bash
# Images for the local cluster, without a registry or a container engine.
#
#   hack/images.sh build             build (once, cached) every image archive
#   hack/images.sh import            build what is missing, import into containerd
#   hack/images.sh operator-image    (re)pack bin/manager, import it, print its name
#
# PostgreSQL 15 (Debian bookworm) and 17 (Debian trixie) are laid out like the
# official images: user postgres uid/gid 999, binaries on PATH,
# PGDATA=/var/lib/postgresql/data. They are tagged docker.io/library/postgres:15,
# :15.18 (a second tag, for minor-version rolling updates) and :17 (also :latest,
# a tag without a major). versitygw:local
# is an S3-compatible server for the end-to-end suite.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_ROOT="${POSTGRES_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postgres-operator}"
IMAGES="$CACHE_ROOT/images"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CONTAINERD_ADDRESS="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
mkdir -p "$IMAGES"
log() { echo "images: $*" >&2; }
TMPDIRS=()
cleanup() { [ ${#TMPDIRS[@]} -eq 0 ] || rm -rf "${TMPDIRS[@]}"; }
trap cleanup EXIT

mkimage() {
  local bin="$IMAGES/mkimage"
  if [ ! -x "$bin" ] || [ hack/tools/mkimage/main.go -nt "$bin" ]; then
    CGO_ENABLED=0 go build -o "$bin" ./hack/tools/mkimage
  fi
  "$bin" "$@"
}

# postgres_image MAJOR SUITE TAG... : debootstrap a minimal Debian with PostgreSQL.
postgres_image() {
  local major="$1" suite="$2"; shift 2
  local out="$IMAGES/postgres-$major-$suite.tar"
  [ -f "$out" ] && return 0
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2; }
  local tmp; tmp=$(mktemp -d "$IMAGES/.rootfs-XXXXXX"); TMPDIRS+=("$tmp")
  log "debootstrap $suite with postgresql-$major (cold: ~3 min)"
  debootstrap --variant=minbase --include="postgresql-$major" "$suite" "$tmp/rootfs" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$tmp/debootstrap.log" >&2; return 1; }
  local r="$tmp/rootfs"
  # The official images' postgres user is uid/gid 999; the operator runs pods as 999.
  local olduid oldgid
  olduid=$(chroot "$r" id -u postgres); oldgid=$(chroot "$r" id -g postgres)
  chroot "$r" groupmod -g 999 postgres
  chroot "$r" usermod -u 999 -g 999 postgres
  find "$r" -xdev \( -uid "$olduid" -o -gid "$oldgid" \) -exec chown -h 999:999 {} + 2>/dev/null || true
  # No Debian-managed cluster: the data directory belongs to the operator's agent.
  rm -rf "$r/var/lib/postgresql/$major" "$r/etc/postgresql/$major"
  # Inside the chroot: the root file system's /var/run is an absolute link to /run,
  # which seen from outside would be the host's.
  chroot "$r" sh -c "mkdir -p /var/lib/postgresql/data /var/run/postgresql &&
    chown -R 999:999 /var/lib/postgresql /var/run/postgresql && chmod 2777 /var/run/postgresql"
  rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/var/lib/apt/lists/* \
    "$r"/var/cache/apt/* "$r"/var/log/* "$r"/usr/share/locale/* "$r/debootstrap"
  local version; version=$(chroot "$r" "/usr/lib/postgresql/$major/bin/postgres" --version | awk '{print $3}')
  log "packing PostgreSQL $version ($suite) as $*"
  local tags=(); for t in "$@"; do tags+=(-tag "$t"); done
  mkimage -rootfs "$r" -o "$out" "${tags[@]}" \
    -env "PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    -env "PGDATA=/var/lib/postgresql/data" -env "LANG=C.UTF-8" -env "PG_MAJOR=$major" -env "PG_VERSION=$version" \
    -cmd '["postgres"]'
}

pause_image() {
  local out="$IMAGES/pause.tar"
  [ -f "$out" ] && return 0
  local tmp; tmp=$(mktemp -d "$IMAGES/.pause-XXXXXX"); TMPDIRS+=("$tmp")
  mkdir -p "$tmp/rootfs"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/rootfs/pause" ./hack/tools/pause
  mkimage -rootfs "$tmp/rootfs" -o "$out" -tag "$PAUSE_IMAGE" -entrypoint '["/pause"]' -user 65535
}

# operator_image packs bin/manager as postgres-operator:<content hash> (and :latest).
operator_image() {
  [ -x bin/manager ] || make -s build >&2
  local sum; sum=$(sha256sum bin/manager | cut -c1-12)
  local name="docker.io/library/postgres-operator:$sum" out="$IMAGES/operator-$sum.tar"
  if [ ! -f "$out" ]; then
    local tmp; tmp=$(mktemp -d "$IMAGES/.operator-XXXXXX"); TMPDIRS+=("$tmp")
    install -D -m 0755 bin/manager "$tmp/rootfs/manager"
    # A CA bundle, as in the distroless base of the Dockerfile: the Jobs copy it
    # for https:// object stores.
    [ ! -f /etc/ssl/certs/ca-certificates.crt ] || install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$tmp/rootfs/etc/ssl/certs/ca-certificates.crt"
    mkimage -rootfs "$tmp/rootfs" -o "$out" -tag "$name" -tag docker.io/library/postgres-operator:latest \
      -entrypoint '["/manager"]' -user 65532:65532
    # Keep the newest few.
    ls -t "$IMAGES"/operator-*.tar 2>/dev/null | tail -n +4 | xargs -r rm -f
  fi
  import_archive "$out" "$name"
  echo "postgres-operator:$sum"
}

ctr_() { ctr --address "$CONTAINERD_ADDRESS" -n k8s.io "$@"; }

# import_archive ARCHIVE NAME: import unless NAME is already there.
# (grep without -q reads all of the list: with -q it may exit first, and under
# pipefail the SIGPIPE of ctr would read as "not there".)
import_archive() {
  local archive="$1" name="$2"
  if ctr_ images ls -q | grep -xF "$name" >/dev/null; then
    return 0
  fi
  log "importing $name"
  ctr_ images import "$archive" >/dev/null
}

# s3_image packs versitygw (hack/s3-server.sh), an S3-compatible server for the
# e2e suite's in-cluster object store.
s3_image() {
  local out="$IMAGES/versitygw.tar"
  [ -f "$out" ] && return 0
  local tmp; tmp=$(mktemp -d "$IMAGES/.s3-XXXXXX"); TMPDIRS+=("$tmp")
  install -D -m 0755 "$(hack/s3-server.sh)" "$tmp/rootfs/versitygw"
  mkimage -rootfs "$tmp/rootfs" -o "$out" -tag docker.io/library/versitygw:local -entrypoint '["/versitygw"]' -user 65532:65532
}

build_all() {
  pause_image
  s3_image
  postgres_image 15 bookworm docker.io/library/postgres:15 docker.io/library/postgres:15.18
  postgres_image 17 trixie docker.io/library/postgres:17
}

case "${1:-}" in
  build) build_all ;;
  import)
    build_all
    import_archive "$IMAGES/pause.tar" "$PAUSE_IMAGE"
    ctr_ images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null
    import_archive "$IMAGES/postgres-15-bookworm.tar" docker.io/library/postgres:15
    import_archive "$IMAGES/postgres-15-bookworm.tar" docker.io/library/postgres:15.18
    import_archive "$IMAGES/postgres-17-trixie.tar" docker.io/library/postgres:17
    # A tag that names no major version (what `latest` or a digest look like to the
    # operator): the e2e suite changes a PostgreSQL 15 Database to it.
    if ! ctr_ images ls -q | grep -xF docker.io/library/postgres:latest >/dev/null; then
      ctr_ images tag docker.io/library/postgres:17 docker.io/library/postgres:latest >/dev/null
    fi
    import_archive "$IMAGES/versitygw.tar" docker.io/library/versitygw:local
    ;;
  operator-image) operator_image ;;
  *) echo "usage: $0 build|import|operator-image" >&2; exit 2 ;;
esac
