#!/usr/bin/env bash
# The e2e suite on a throwaway kind cluster: create it, build the one image with the Dockerfile,
# load it into the cluster, run tests/e2e/run.sh against it, delete the cluster.
#
#   tests/e2e/kind.sh [run.sh ARGS...]   (needs docker, kind, kubectl, helm and the skein CLI on
#                                         PATH, or give run.sh's --skein PATH)
#
# Not run in this project's CI (its machines have no container engine): there the same run.sh
# runs against the local cluster and `skein dev node` (tests/e2e.rs).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cluster=${KIND_CLUSTER:-skein-e2e}
image=skein
tag=e2e

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool is required on PATH" >&2; exit 2; }
done

kind create cluster --name "$cluster" --wait 120s
trap 'kind delete cluster --name "$cluster"' EXIT
docker build -t "$image:$tag" "$root"
kind load docker-image "$image:$tag" --name "$cluster"
"$root/tests/e2e/run.sh" --context "kind-$cluster" --image "$image" --tag "$tag" "$@"
