#!/usr/bin/env bash
# Builds the local control plane's binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok), the local node's kube-proxy and CoreDNS, and helm (for the chart's tests) from their Go modules into a cache directory
# outside the clone, keyed by version, and prints that directory. A second run with the binaries
# present does nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/skein"
bin_dir="$cache_root/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}/bin"
mkdir -p "$bin_dir"

log() { echo "build.sh: $*" >&2; }

missing=()
for tool in $K8S_TOOLS; do
  [ -x "$bin_dir/$(basename "$tool")" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "building ${missing[*]} at ${K8S_VERSION} (cold: ~11 min on 2 cores)"
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w"
  # Without these the binaries report v0.0.0, which version-checking clients reject.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin_dir/" "${missing[@]}")
fi

if [ ! -x "$bin_dir/etcd" ]; then
  log "building etcd ${ETCD_VERSION}"
  (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" go.etcd.io/etcd/server/v3)
fi

if [ ! -x "$bin_dir/kwok" ]; then
  log "building kwok ${KWOK_VERSION}"
  GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  # kwok needs stage definitions to act on nodes and pods; they ship inside its module.
  stages=$(go env GOMODCACHE)/sigs.k8s.io/kwok@${KWOK_VERSION}/kustomize/stage
  rm -rf "$bin_dir/../kwok-stages" && cp -r "$stages" "$bin_dir/../kwok-stages" && chmod -R u+w "$bin_dir/../kwok-stages"
fi

# CoreDNS for the local node (`skein dev node`), built from its own module at COREDNS_VERSION;
# rebuilt when missing or another version. Its default plugin set includes `kubernetes`.
coredns_built=""
[ -x "$bin_dir/coredns" ] && coredns_built=$("$bin_dir/coredns" -version 2>/dev/null | sed -n 's/^CoreDNS-\([0-9.]*\).*/v\1/p' || true)
if [ "$coredns_built" != "$COREDNS_VERSION" ]; then
  log "building coredns ${COREDNS_VERSION} (cold: ~2 min on 2 cores)"
  GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}"
fi

# helm, for the chart's tests. Its own module (helm/go.mod), so its Kubernetes client libraries
# never move the control plane's dependency graph. Rebuilt when missing or not HELM_VERSION (the
# bin dir is keyed by the Kubernetes versions only).
helm_built=""
[ -x "$bin_dir/helm" ] && helm_built=$("$bin_dir/helm" version --template '{{.Version}}' 2>/dev/null || true)
if [ "$helm_built" != "$HELM_VERSION" ]; then
  log "building helm ${HELM_VERSION} (cold: ~3 min on 2 cores)"
  helm_mod() { (cd "$here/helm" && go list -m -f '{{.Version}}' "$1"); }
  pinned=$(helm_mod helm.sh/helm/v3)
  if [ "$pinned" != "$HELM_VERSION" ]; then
    log "tests/cluster/helm/go.mod requires helm ${pinned} but versions.env says ${HELM_VERSION}; run:"
    log "  (cd tests/cluster/helm && go get helm.sh/helm/v3@${HELM_VERSION} && go mod tidy)"
    exit 1
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
fi

# The proxy tests' gRPC and WebSocket peers (grpc-go and gorilla/websocket from this module's
# graph): rebuilt when their source changes.
peer="$bin_dir/skein-test-peer"
if [ ! -x "$peer" ] || [ "$here/peers/main.go" -nt "$peer" ]; then
  log "building skein-test-peer (gRPC and WebSocket peers for the proxy tests)"
  (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$peer" ./peers)
fi

echo "$bin_dir"
