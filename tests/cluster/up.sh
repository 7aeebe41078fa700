#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler, built from their Go modules by build.sh. Idempotent: a healthy cluster of the
# same name is reused. Several clusters (different names) run side by side on their own ports.
#
#   tests/cluster/up.sh [NAME] [--node-network]      (default NAME: skein-dev)
#
# --node-network: the apiserver reaches pods, Services and the node (webhooks behind Services, the
# kubelet API) as on a real cluster, through `skein dev node`: its "cluster" egress goes as HTTP
# CONNECT to NAME/egress.sock, which the node serves from inside its network namespace. Without a
# node running, such calls fail (as they would with every node down). A running cluster started
# without it is replaced; one started with it is reused by callers that do not ask.
#
# The last line printed is `export KUBECONFIG=<absolute path>` (an admin, system:masters kubeconfig).
# State and logs: ${SKEIN_STATE_DIR:-$HOME/.local/state/skein}/clusters/NAME/{pki,logs,...}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:-skein-dev}
node_network=false
[ "${2:-}" = --node-network ] && node_network=true
[[ "$name" =~ ^[a-z0-9][-a-z0-9]*$ ]] || { echo "up.sh: cluster name must be a DNS label, got '$name'" >&2; exit 2; }

state_root=${SKEIN_STATE_DIR:-$HOME/.local/state/skein}/clusters
dir=$state_root/$name
# Service and pod ranges come from 198.18.0.0/15, reserved for benchmarking (RFC 2544) and never
# routed on real networks, so they cannot collide with anything the machine already reaches.
service_cidr=${SKEIN_SERVICE_CIDR:-198.19.0.0/16}

log() { echo "up.sh[$name]: $*" >&2; }

bin_dir=$("$here/build.sh" cluster)
export PATH="$bin_dir:$PATH"

mkdir -p "$state_root"
# Serialise concurrent `up.sh NAME` calls (parallel test binaries) on the same cluster.
exec 9>"$state_root/$name.lock"
flock 9

components=(etcd kube-apiserver kube-controller-manager kube-scheduler)

alive() { [ -f "$dir/pids/$1" ] && kill -0 "$(cat "$dir/pids/$1")" 2>/dev/null; }

healthy() {
  [ -f "$dir/kubeconfig" ] || return 1
  # Clusters from before the apiserver had a front proxy (the tap API needs it) are replaced.
  [ -f "$dir/pki/front-proxy-client.crt" ] || return 1
  for c in "${components[@]}"; do alive "$c" || return 1; done
  kubectl --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1
}

# A running cluster serves either way, unless --node-network asks for what it lacks.
network_as_asked() { [ "$node_network" = false ] || [ -f "$dir/egress-selector.yaml" ]; }

if healthy && network_as_asked; then
  log "reusing the running cluster"
  echo "export KUBECONFIG=$dir/kubeconfig"
  exit 0
fi

if [ -d "$dir" ]; then
  if network_as_asked; then
    log "found a stale or partial cluster; replacing it"
  else
    log "the running cluster was started without --node-network; replacing it"
  fi
  "$here/down.sh" "$name" >&2
fi
mkdir -p "$dir"/{pki,logs,pids,etcd}
started=$(date +%s)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
etcd_port=$(free_port); etcd_peer_port=$(free_port); api_port=$(free_port)
echo "$api_port" >"$dir/apiserver-port"

# --- PKI: one CA signs the serving certificate and every client certificate. -----------------
pki=$dir/pki
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=skein-local-ca-$name" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
sign() { # sign NAME SUBJECT [EXTFILE]
  openssl_quiet req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr"
  openssl_quiet x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/$1.crt" ${3:+-extfile "$3"}
}
cat >"$pki/apiserver.ext" <<EOF
subjectAltName=IP:127.0.0.1,IP:${service_cidr%.0/*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
echo "extendedKeyUsage=clientAuth" >"$pki/client.ext"
sign apiserver "/CN=kube-apiserver" "$pki/apiserver.ext"
sign admin "/O=system:masters/CN=skein-admin" "$pki/client.ext"
sign controller-manager "/CN=system:kube-controller-manager" "$pki/client.ext"
sign scheduler "/CN=system:kube-scheduler" "$pki/client.ext"
# What the apiserver shows a node's kubelet API (`kubectl logs`; `skein dev node` checks it).
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$pki/client.ext"
# The front proxy: the apiserver calls aggregated APIs (Skein's tap API) with this client
# certificate and the user in X-Remote-* headers; its own CA, as kubeadm sets it up.
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=skein-front-proxy-ca-$name" \
  -keyout "$pki/front-proxy-ca.key" -out "$pki/front-proxy-ca.crt"
openssl_quiet req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
  -keyout "$pki/front-proxy-client.key" -out "$pki/front-proxy-client.csr"
openssl_quiet x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" \
  -CAkey "$pki/front-proxy-ca.key" -CAcreateserial -days 3650 -out "$pki/front-proxy-client.crt" \
  -extfile "$pki/client.ext"
openssl_quiet genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
openssl_quiet pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

kubeconfig_for() { # kubeconfig_for CERTNAME FILE
  cat >"$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: $name
  context: {cluster: $name, user: $1}
current-context: $name
EOF
}
kubeconfig_for admin "$dir/kubeconfig.tmp"
kubeconfig_for controller-manager "$dir/controller-manager.kubeconfig"
kubeconfig_for scheduler "$dir/scheduler.kubeconfig"

start() { # start NAME ARGS...: detached from this shell, so the cluster outlives it
  local c=$1; shift
  # 9>&-: the daemons must not inherit (and so hold forever) the lock taken above.
  setsid "$c" "$@" >"$dir/logs/$c.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pids/$c"
}

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$what did not become ready; last log lines:"
      for c in "${components[@]}"; do
        [ -f "$dir/logs/$c.log" ] && { echo "--- $c" >&2; tail -n 20 "$dir/logs/$c.log" >&2; }
      done
      exit 1
    fi
    sleep 0.2
  done
}

# --- etcd ------------------------------------------------------------------------------------------
start etcd --name "$name" --data-dir "$dir/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "$name=http://127.0.0.1:$etcd_peer_port" --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

# --- kube-apiserver --------------------------------------------------------------------------------
egress_args=()
if [ "$node_network" = true ]; then
  cat >"$dir/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $dir/egress.sock
EOF
  egress_args=(--egress-selector-config-file "$dir/egress-selector.yaml")
fi
# --advertise-address/--endpoint-reconciler-type: this host may have no default route, and nothing
# outside loopback should ever be advertised.
start kube-apiserver \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" \
  --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
  --authorization-mode Node,RBAC \
  --service-cluster-ip-range "$service_cidr" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --allow-privileged=true \
  --profiling=false \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  "${egress_args[@]}" \
  --v=1
wait_for kube-apiserver 60 kubectl --kubeconfig "$dir/kubeconfig.tmp" get --raw /readyz

# --- controllers and scheduler ---------------------------------------------------------------------
start kube-controller-manager \
  --kubeconfig "$dir/controller-manager.kubeconfig" \
  --secure-port 0 --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials=true \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --v=1
start kube-scheduler \
  --kubeconfig "$dir/scheduler.kubeconfig" \
  --secure-port 0 --leader-elect=false \
  --v=1

# The controller-manager is working once it has created the default namespace's service account.
wait_for kube-controller-manager 60 kubectl --kubeconfig "$dir/kubeconfig.tmp" -n default get serviceaccount default
for c in kube-controller-manager kube-scheduler; do
  alive "$c" || { log "$c exited; last log lines:"; tail -n 30 "$dir/logs/$c.log" >&2; exit 1; }
done

mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
log "ready in $(( $(date +%s) - started ))s (apiserver https://127.0.0.1:$api_port, logs in $dir/logs)"
echo "export KUBECONFIG=$dir/kubeconfig"
