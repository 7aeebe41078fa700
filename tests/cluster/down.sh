#!/usr/bin/env bash
# Stops the named local cluster (see up.sh) and deletes its state.
#   tests/cluster/down.sh [NAME]     (default NAME: skein-dev)
set -euo pipefail
name=${1:-skein-dev}
[[ "$name" =~ ^[a-z0-9][-a-z0-9]*$ ]] || { echo "down.sh: cluster name must be a DNS label, got '$name'" >&2; exit 2; }
dir=${SKEIN_STATE_DIR:-$HOME/.local/state/skein}/clusters/$name
[ -d "$dir" ] || { echo "down.sh[$name]: no such cluster" >&2; exit 0; }

pids=()
# Stop in reverse start order so the apiserver never loses etcd under a running controller.
for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f=$dir/pids/$c
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 50); do
  running=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  [ "$running" = 0 ] && break
  sleep 0.2
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
rm -rf "$dir"
echo "down.sh[$name]: stopped and deleted" >&2
