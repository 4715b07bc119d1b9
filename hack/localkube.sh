#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, from upstream binaries, without
# Docker: containerd + runc, etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, CoreDNS and a hostPath volume provisioner.
#
#   hack/localkube.sh up          start (idempotent: a no-op when running)
#   hack/localkube.sh down        stop everything it started and undo host changes
#   hack/localkube.sh kubeconfig  print the admin kubeconfig path
#   hack/localkube.sh status
#   hack/localkube.sh containerd-socket
#
# Networking stays inside the machine: pods live on a private bridge (10.213.0.0/24,
# gateway 10.213.0.1, no masquerading), Services on 10.214.0.0/24. The API server
# and CoreDNS listen on the bridge's gateway address; every other component on
# loopback. State lives in $LOCALKUBE_STATE (default /var/lib/postgres-operator-localkube);
# binaries and images are cached under ~/.cache/postgres-operator and survive `down`.
# `down` wipes the cluster's data (etcd, volumes, pods): every `up` starts empty.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

STATE="${LOCALKUBE_STATE:-/var/lib/postgres-operator-localkube}"
BRIDGE=pgop0
POD_CIDR=10.213.0.0/24
GATEWAY=10.213.0.1
SERVICE_CIDR=10.214.0.0/24
KUBERNETES_SVC_IP=10.214.0.1
APISERVER="https://$GATEWAY:6443"
ETCD_URL=http://127.0.0.1:23790
PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
SOCK="$STATE/containerd/containerd.sock"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables)

log() { echo "localkube: $*" >&2; }
die() { log "$*"; exit 1; }

bin_dir() { hack/k8s-binaries.sh etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns; }

kctl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

running() { # running NAME: its recorded process is alive
  local f="$PIDS/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

start() { # start NAME CMD...: run in the background, log to $LOGS/NAME.log
  local name="$1"; shift
  running "$name" && return 0
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name.pid"
}

wait_for() { # wait_for SECONDS WHAT CMD...
  local secs="$1" what="$2"; shift 2
  local i
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  log "timed out waiting for $what"
  return 1
}

fail_with_log() { log "$1 failed; last lines of $LOGS/$2.log:"; tail -25 "$LOGS/$2.log" >&2 || true; exit 1; }

# --- host packages -------------------------------------------------------------

ensure_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v dig >/dev/null || missing+=(dnsutils)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

# --- PKI and kubeconfigs -------------------------------------------------------

cert() { # cert NAME CN O [SAN]
  local name="$1" cn="$2" o="$3" san="${4:-}"
  [ -f "$PKI/$name.crt" ] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  local subj="/CN=$cn"; [ -n "$o" ] && subj="/O=$o$subj"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

ensure_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    log "creating the cluster's certificate authority"
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=localkube-ca" -days 3650 -out "$PKI/ca.crt" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$GATEWAY,IP:$KUBERNETES_SVC_IP"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kube-proxy system:kube-proxy ""
  cert kubelet system:node:localhost system:nodes "DNS:localhost,IP:127.0.0.1,IP:$GATEWAY"
  cert coredns coredns ""
  cert provisioner localkube-provisioner system:masters
  if [ ! -f "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  local c
  for c in admin controller-manager scheduler kube-proxy kubelet coredns provisioner; do
    kubeconfig_for "$c"
  done
}

kubeconfig_for() { # kubeconfig_for NAME: $STATE/NAME.kubeconfig with NAME's client cert
  local name="$1" f="$STATE/$1.kubeconfig"
  [ -f "$f" ] && return 0
  "$BIN/kubectl" config --kubeconfig "$f" set-cluster localkube --server "$APISERVER" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  "$BIN/kubectl" config --kubeconfig "$f" set-credentials "$name" \
    --client-certificate "$PKI/$name.crt" --client-key "$PKI/$name.key" --embed-certs >/dev/null
  "$BIN/kubectl" config --kubeconfig "$f" set-context localkube --cluster localkube --user "$name" >/dev/null
  "$BIN/kubectl" config --kubeconfig "$f" use-context localkube >/dev/null
  chmod 600 "$f"
}

# --- host network and sysctls --------------------------------------------------

save_sysctls() {
  [ -f "$STATE/sysctl.orig" ] && return 0
  local k
  for k in "${SYSCTLS[@]}"; do
    if v=$(sysctl -n "$k" 2>/dev/null); then echo "$k=$v"; fi
  done > "$STATE/sysctl.orig"
}

restore_sysctls() {
  [ -f "$STATE/sysctl.orig" ] || return 0
  local line
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null 2>&1 || log "could not restore $line"
  done < "$STATE/sysctl.orig"
  rm -f "$STATE/sysctl.orig"
}

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | grep -q "inet $GATEWAY/" || ip addr add "$GATEWAY/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -q -w net.ipv4.ip_forward=1
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat > "$STATE/cni/net.d/10-localkube.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "localkube",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# --- components ----------------------------------------------------------------

# Network namespaces of the pods live under containerd's state directory (not
# /var/run/netns), on a bind mount of that directory with shared propagation:
# a mount namespace created while a pod runs (ip netns exec, a container being
# set up, another tool of this machine) copies the pod's netns bind mount, and
# on a private / (as here) that copy never learns of the unmount, so containerd
# cannot unlink the file ("device or resource busy") and the pod stays
# Terminating for good. A shared parent makes every copy a peer or a slave
# that receives the unmount (what iproute2 does for /run/netns).
netns_dir() { echo "$STATE/containerd/state/io.containerd.grpc.v1.cri/netns"; }
share_netns_dir() {
  local d
  d=$(netns_dir)
  mkdir -p "$d"
  mountpoint -q "$d" || mount --bind "$d" "$d"
  mount --make-shared "$d"
}

start_containerd() {
  mkdir -p "$STATE/containerd"
  share_netns_dir
  cat > "$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
EOF
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for 30 containerd ctr --address "$SOCK" version || fail_with_log containerd containerd
}

start_etcd() {
  start etcd "$BIN/etcd" --name localkube --data-dir "$STATE/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster localkube=http://127.0.0.1:23800 --listen-metrics-urls http://127.0.0.1:23810
  wait_for 30 etcd curl -fsS http://127.0.0.1:23810/health || fail_with_log etcd etcd
}

start_apiserver() {
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "$ETCD_URL" \
    --bind-address "$GATEWAY" --advertise-address "$GATEWAY" --secure-port 6443 \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types Hostname \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --profiling=false
  wait_for 90 kube-apiserver kctl get --raw /readyz || fail_with_log kube-apiserver kube-apiserver
}

start_controllers() {
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --use-service-account-credentials=true --service-cluster-ip-range "$SERVICE_CIDR"
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false
  mkdir -p "$STATE/bin" "$STATE/volumes"
  if [ ! -x "$STATE/bin/hostpath-provisioner" ] || [ hack/tools/hostpath-provisioner/main.go -nt "$STATE/bin/hostpath-provisioner" ]; then
    CGO_ENABLED=0 go build -o "$STATE/bin/hostpath-provisioner" ./hack/tools/hostpath-provisioner
  fi
  start hostpath-provisioner "$STATE/bin/hostpath-provisioner" \
    --kubeconfig "$STATE/provisioner.kubeconfig" --root "$STATE/volumes"
}

start_kubelet() {
  mkdir -p "$STATE/kubelet"
  echo "nameserver $GATEWAY" > "$STATE/resolv.conf"
  cat > "$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$SOCK
clusterDNS: [$GATEWAY]
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
failSwapOn: false
serializeImagePulls: false
# ConfigMap changes (spec.postgresql) reach pods within ~10s instead of ~1min.
syncFrequency: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
EOF
  start kubelet "$BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --hostname-override localhost --node-ip "$GATEWAY" --root-dir "$STATE/kubelet" --cert-dir "$PKI"
  wait_for 90 "node registration" kctl get node localhost || fail_with_log kubelet kubelet
  wait_for 120 "node Ready" kctl wait --for=condition=Ready node/localhost --timeout=2s || fail_with_log kubelet kubelet
}

start_proxy_and_dns() {
  cat > "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: localhost
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
EOF
  start kube-proxy "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
  # CoreDNS reads Services and EndpointSlices: give its identity exactly that.
  kctl apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "localkube:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "localkube:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "localkube:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: coredns}
EOF
  cat > "$STATE/Corefile" <<EOF
.:53 {
    bind $GATEWAY
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig localkube
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  start coredns "$BIN/coredns" -conf "$STATE/Corefile"
  wait_for 30 coredns dig +time=1 +tries=1 @"$GATEWAY" kubernetes.default.svc.cluster.local +short || fail_with_log coredns coredns
}

ensure_storage_class() {
  kctl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: postgres-operator.local/hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
}

ensure_kubectl_on_path() {
  if ! command -v kubectl >/dev/null; then
    ln -sf "$BIN/kubectl" /usr/local/bin/kubectl
    log "linked /usr/local/bin/kubectl -> $BIN/kubectl"
  fi
}

up() {
  "$(dirname "${BASH_SOURCE[0]}")/preflight.sh"
  log "Kubernetes binaries (cold: ~25 min of compiling on 2 cores; cached afterwards)"
  BIN=$(bin_dir)
  if running kubelet && running kube-apiserver && kctl get --raw /readyz >/dev/null 2>&1; then
    log "already running (KUBECONFIG=$KUBECONFIG_ADMIN)"
    return 0
  fi
  local t0=$SECONDS
  if [ -d "$PIDS" ]; then
    log "cleaning up after a cluster that did not shut down"
    down
  fi
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  ensure_packages
  ensure_kubectl_on_path
  ensure_pki
  save_sysctls
  ensure_bridge
  log "starting containerd, etcd, kube-apiserver"
  start_containerd
  start_etcd
  start_apiserver
  log "starting controller-manager, scheduler, provisioner"
  start_controllers
  log "importing images (cold: PostgreSQL images are built with debootstrap, ~3 min each)"
  CONTAINERD_ADDRESS="$SOCK" hack/images.sh import
  log "starting kubelet, kube-proxy, CoreDNS"
  start_kubelet
  start_proxy_and_dns
  ensure_storage_class
  wait_for 60 "default service account" kctl -n default get serviceaccount default
  log "up in $((SECONDS - t0))s; export KUBECONFIG=$KUBECONFIG_ADMIN"
}

stop_pid() { # stop_pid NAME: SIGTERM, then SIGKILL after 10s
  local f="$PIDS/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [ -d "$STATE" ] || { log "not running"; return 0; }
  local t0=$SECONDS
  BIN=$(hack/k8s-binaries.sh kubectl kube-proxy)
  stop_pid kubelet
  if [ -S "$SOCK" ]; then
    log "removing containers"
    local c
    for c in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    done
    for c in $(ctr --address "$SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  local n
  for n in coredns kube-proxy hostpath-provisioner kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do
    stop_pid "$n"
  done
  # Shims of our containerd outlive it when their tasks are gone.
  pkill -f "containerd-shim.*$STATE" 2>/dev/null || true
  "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # kubelet's own chains (KUBE-FIREWALL, canaries) are not kube-proxy's to clean.
  local save
  for save in iptables ip6tables; do
    command -v "$save-save" >/dev/null || continue
    if "$save-save" | grep -q KUBE-; then
      "$save-save" | grep -v -- "KUBE-" | "$save-restore"
    fi
  done
  log "unmounting and removing network namespaces, bridge and cgroups"
  # (No mount left is fine: grep's status must not end the script under pipefail.)
  { grep -F " $STATE/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for n in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$n" 2>/dev/null || true; done
  ip link delete "$BRIDGE" 2>/dev/null || true
  local d
  for d in /sys/fs/cgroup/*/kubepods*; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  restore_sysctls
  # Cluster data goes; PKI, kubeconfigs, containerd's image store and logs stay.
  rm -rf "$STATE/etcd" "$STATE/kubelet" "$STATE/volumes" "$STATE/cni" "$STATE/containerd/state" "$PIDS"
  log "down in $((SECONDS - t0))s"
}

status() {
  local n
  for n in containerd etcd kube-apiserver kube-controller-manager kube-scheduler hostpath-provisioner kubelet kube-proxy coredns; do
    if running "$n"; then echo "$n: running"; else echo "$n: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  kubeconfig) echo "$KUBECONFIG_ADMIN" ;;
  containerd-socket) echo "$SOCK" ;;
  status) status ;;
  *) echo "usage: $0 up|down|kubeconfig|status" >&2; exit 2 ;;
esac
