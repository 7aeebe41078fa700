#!/usr/bin/env bash
# Stops the named local cluster (see up.sh) and deletes its state.
#   tests/cluster/down.sh [NAME]     (default NAME: skein-dev)
set -euo pipefail
name=${1:-skein-dev}
[[ "$name" =~ ^[a-z0-9][-a-z0-9]*$ ]] || { echo "down.sh: cluster name must be a DNS label, got '$name'" >&2; exit 2; }
dir=${SKEIN_STATE_DIR:-$HOME/.local/state/skein}/clusters/$name
[ -d "$dir" ] || { echo "down.sh[$name]: no such cluster" >&2; exit 0; }

# What `skein dev up` runs first: the operator and control plane, and dev nodes (`skein dev node`):
# on SIGTERM a node agent stops its pods and removes its network namespaces itself; give it time,
# then clean up after one that was killed or is stuck.
node_pids=()
for f in "$dir"/pids/skein-* "$dir"/pids/node-*; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null && node_pids+=("$pid")
done
for _ in $(seq 150); do
  running=0
  for pid in "${node_pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  [ "$running" = 0 ] && break
  sleep 0.2
done
for pid in "${node_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
kill_recorded() { # kill_recorded FILE: "<pid> <start time>", killed with its group if still that process
  local pid started now
  read -r pid started <"$1" 2>/dev/null || return 0
  now=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $20}') || return 0
  [ -n "$pid" ] && [ "$now" = "$started" ] && kill -KILL -- "-$pid" 2>/dev/null || true
}
for node in "$dir"/nodes/*/; do
  [ -d "$node" ] || continue
  for f in "$node"*.pid "$node"pods/*/pids/*; do [ -f "$f" ] && kill_recorded "$f"; done
  for f in "$node"pods/*/netns "$node"netns; do
    [ -f "$f" ] && ip netns delete "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$node"mountpoints; do
    [ -f "$f" ] && tac "$f" | while read -r p; do rmdir "$p" 2>/dev/null || { [ -s "$p" ] || rm -f "$p"; } 2>/dev/null || true; done
  done
  rm -rf "/run/skein-dev-node/$name-$(basename "$node")"
done

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
