#!/usr/bin/env bash
# Builds the local cluster's binaries from their Go modules into a cache directory outside the
# clone, keyed by version, and prints that directory. A second run with the binaries present does
# nothing. Pieces come in groups, so each command builds only what it needs:
#
#   tests/cluster/build.sh [GROUP...]    (default: all of them)
#     cluster  kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd (up.sh)
#     node     kube-proxy, CoreDNS and skein-kubelet-streams (`skein dev node`)
#     test     kwok, helm, Jaeger and the proxy tests' gRPC/WebSocket peers (tests/run.sh)
#
# Progress goes to stderr: which of the N steps runs, its cold estimate on 2 cores, and the time
# elapsed every minute of a long step.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/skein"
bin_dir="$cache_root/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}/bin"
mkdir -p "$bin_dir"

log() { echo "build.sh: $*" >&2; }

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(cluster node test)
wants() { local g; for g in "${groups[@]}"; do [ "$g" = "$1" ] && return 0; done; return 1; }
for g in "${groups[@]}"; do
  case "$g" in cluster|node|test) ;; *) log "unknown group '$g' (cluster, node, test)"; exit 2 ;; esac
done

# --- what is missing ----------------------------------------------------------------------------
k8s_missing=()
add_k8s() { [ -x "$bin_dir/$(basename "$1")" ] || k8s_missing+=("$1"); }
if wants cluster; then for tool in $K8S_CLUSTER_TOOLS; do add_k8s "$tool"; done; fi
if wants node; then for tool in $K8S_NODE_TOOLS; do add_k8s "$tool"; done; fi

built_version() { [ -x "$bin_dir/$1" ] && "$bin_dir/$1" "${@:2}" 2>/dev/null || true; }
# Each step: "name|cold estimate|function".
steps=()
[ ${#k8s_missing[@]} -eq 0 ] || steps+=("$(basename -a "${k8s_missing[@]}" | paste -sd ' ') ${K8S_VERSION}|~11 min|build_k8s")
if wants cluster && [ ! -x "$bin_dir/etcd" ]; then steps+=("etcd ${ETCD_VERSION}|~2 min|build_etcd"); fi
if wants node && [ "$(built_version coredns -version | sed -n 's/^CoreDNS-\([0-9.]*\).*/v\1/p')" != "$COREDNS_VERSION" ]; then
  steps+=("coredns ${COREDNS_VERSION}|~2 min|build_coredns")
fi
if wants node; then
  streams="$bin_dir/skein-kubelet-streams"
  if [ ! -x "$streams" ] || [ "$here/kubelet-streams/main.go" -nt "$streams" ]; then steps+=("skein-kubelet-streams (the node's exec and port-forward)|~1 min|build_kubelet_streams"); fi
fi
if wants test; then
  [ -x "$bin_dir/kwok" ] || steps+=("kwok ${KWOK_VERSION}|~2 min|build_kwok")
  [ "$(built_version helm version --template '{{.Version}}')" = "$HELM_VERSION" ] || steps+=("helm ${HELM_VERSION}|~3 min|build_helm")
  [ "$(cat "$bin_dir/jaeger.version" 2>/dev/null)" = "$JAEGER_VERSION" ] && [ -x "$bin_dir/jaeger" ] || steps+=("jaeger ${JAEGER_VERSION}|~8 min|build_jaeger")
  peer="$bin_dir/skein-test-peer"
  if [ ! -x "$peer" ] || [ "$here/peers/main.go" -nt "$peer" ]; then steps+=("skein-test-peer (the proxy tests' gRPC and WebSocket peers)|~1 min|build_peer"); fi
fi

if [ ${#steps[@]} -eq 0 ]; then
  echo "$bin_dir"
  exit 0
fi

# --- before anything slow: Go and disk ------------------------------------------------------------
need_go=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$here/go.mod")
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
if ! command -v go >/dev/null; then
  log "Go ${need_go} or newer is needed to build the local Kubernetes, and there is no 'go' on PATH: https://go.dev/doc/install"
  exit 1
fi
have_go=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if ! version_ge "$have_go" "$need_go"; then
  log "Go ${need_go} or newer is needed to build the local Kubernetes; found ${have_go:-an unknown version}: https://go.dev/doc/install"
  exit 1
fi
# A cold build of Kubernetes fills Go's module and build caches with about 9 GiB; the other
# pieces need far less.
need_gib=2
[ ${#k8s_missing[@]} -eq 0 ] || need_gib=10
gocache=$(go env GOCACHE)
mkdir -p "$gocache"
free_gib=$(( $(df -Pk "$gocache" | awk 'NR == 2 { print $4 }') / 1024 / 1024 ))
if [ "$free_gib" -lt "$need_gib" ]; then
  log "building needs about ${need_gib} GiB free for Go's caches, and $(df -P "$gocache" | awk 'NR == 2 { print $6 }') has ${free_gib} GiB"
  exit 1
fi

# --- the steps ----------------------------------------------------------------------------------
build_k8s() {
  local minor=${K8S_VERSION#v1.} ldflags="-s -w" pkg
  minor=${minor%%.*}
  # Without these the binaries report v0.0.0, which version-checking clients reject.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin_dir/" "${k8s_missing[@]}")
}

build_etcd() {
  (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  # kwok needs stage definitions to act on nodes and pods; they ship inside its module.
  local stages
  stages=$(go env GOMODCACHE)/sigs.k8s.io/kwok@${KWOK_VERSION}/kustomize/stage
  rm -rf "$bin_dir/../kwok-stages" && cp -r "$stages" "$bin_dir/../kwok-stages" && chmod -R u+w "$bin_dir/../kwok-stages"
}

# CoreDNS, from its own module at COREDNS_VERSION; its default plugin set includes `kubernetes`.
build_coredns() {
  GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}"
}

# The node's exec, attach and port-forward endpoints: the upstream kubelet streaming code
# (k8s.io/cri-streaming, from this module's Kubernetes graph).
build_kubelet_streams() {
  (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/skein-kubelet-streams" ./kubelet-streams)
}

# helm, for the chart's tests. Its own module (helm/go.mod), so its Kubernetes client libraries
# never move the control plane's dependency graph.
build_helm() {
  helm_mod() { (cd "$here/helm" && go list -m -f '{{.Version}}' "$1"); }
  local pinned client_go k8s_minor ldflags pkg
  pinned=$(helm_mod helm.sh/helm/v3)
  if [ "$pinned" != "$HELM_VERSION" ]; then
    log "tests/cluster/helm/go.mod requires helm ${pinned} but versions.env says ${HELM_VERSION}; run:"
    log "  (cd tests/cluster/helm && go get helm.sh/helm/v3@${HELM_VERSION} && go mod tidy)"
    return 1
  fi
  # As helm's Makefile does: stamp the version (else `helm version` says v3.N), and the Kubernetes
  # version that `helm template` and `helm lint` assume without a cluster, from the client-go it
  # is built with (v0.N.x is Kubernetes 1.N; unstamped it would be 1.20).
  client_go=$(helm_mod k8s.io/client-go); k8s_minor=${client_go#v0.}; k8s_minor=${k8s_minor%%.*}
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${k8s_minor}"
  done
  (cd "$here/helm" && go build -trimpath -ldflags "$ldflags" -o "$bin_dir/helm" helm.sh/helm/v3/cmd/helm)
}

# Jaeger, the tracing tests' backend. Its own module (jaeger/go.mod), so the OpenTelemetry
# collector's large graph never moves the control plane's. To bump: set JAEGER_VERSION in
# versions.env, then (cd tests/cluster/jaeger && go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@vX.Y.Z)
build_jaeger() {
  local pinned
  pinned=$(cd "$here/jaeger" && go list -m -f '{{.Version}}' github.com/jaegertracing/jaeger)
  if [ "$pinned" != "$JAEGER_VERSION" ]; then
    log "tests/cluster/jaeger/go.mod requires jaeger ${pinned} but versions.env says ${JAEGER_VERSION}; run:"
    log "  (cd tests/cluster/jaeger && go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@${JAEGER_VERSION})"
    return 1
  fi
  (cd "$here/jaeger" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
  echo "$JAEGER_VERSION" >"$bin_dir/jaeger.version"
}

# The proxy tests' gRPC and WebSocket peers (grpc-go and gorilla/websocket from this module's graph).
build_peer() {
  (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/skein-test-peer" ./peers)
}

started=$(date +%s)
total=${#steps[@]}
i=0
for step in "${steps[@]}"; do
  i=$((i + 1))
  IFS='|' read -r what estimate fn <<<"$step"
  step_started=$(date +%s)
  log "[$i/$total] building ${what} (cold: ${estimate} on 2 cores)"
  # A minute-by-minute heartbeat, so a long step never looks hung.
  ( while sleep 60; do log "[$i/$total] still building ${what}: $(( ($(date +%s) - step_started) / 60 )) min so far"; done ) &
  heartbeat=$!
  status=0
  "$fn" || status=$?
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    log "[$i/$total] building ${what} failed (exit ${status}); the output above says why"
    exit "$status"
  fi
  log "[$i/$total] built ${what} in $(( $(date +%s) - step_started ))s"
done
log "built ${total} step(s) in $(( $(date +%s) - started ))s into $bin_dir"
echo "$bin_dir"
