#!/usr/bin/env bash
# Stops the named local cluster (see up.sh) and deletes its state.
#   tests/cluster/down.sh [NAME]     (default NAME: skein-dev)
set -euo pipefail
name=${1:-skein-dev}
[[ "$name" =~ ^[a-z0-9][-a-z0-9]*$ ]] || { echo "down.sh: cluster name must be a DNS label, got '$name'" >&2; exit 2; }
dir=${SKEIN_STATE_DIR:-$HOME/.local/state/skein}/clusters/$name
[ -d "$dir" ] || { echo "down.sh[$name]: no such cluster" >&2; exit 0; }

# alive PID: the process exists and has not exited (a zombie whose parent has not reaped it has).
alive() { local state; state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $1}') && [ -n "$state" ] && [ "$state" != Z ]; }
# stop_all SECONDS PID...: SIGTERM, up to SECONDS for them to exit, then SIGKILL and wait until
# the kernel has torn them down (a killed etcd or apiserver takes a moment to release its ports).
stop_all() {
  local wait=$1 pid running; shift
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq $((wait * 5))); do
    running=0
    for pid in "$@"; do alive "$pid" && running=1; done
    [ "$running" = 0 ] && return 0
    sleep 0.2
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    running=0
    for pid in "$@"; do alive "$pid" && running=1; done
    [ "$running" = 0 ] && return 0
    sleep 0.2
  done
}

# What `skein dev up` runs first: the operator and control plane, and dev nodes (`skein dev node`):
# on SIGTERM a node agent stops its pods and removes its network namespaces itself; give it time,
# then clean up after one that was killed or is stuck.
node_pids=()
for f in "$dir"/pids/skein-* "$dir"/pids/node-*; do
  [ -f "$f" ] || continue
  node_pids+=("$(cat "$f")")
done
[ "${#node_pids[@]}" = 0 ] || stop_all 30 "${node_pids[@]}"
killed=()
kill_recorded() { # kill_recorded FILE: "<pid> <start time>", killed with its group if still that process
  local pid started now
  read -r pid started <"$1" 2>/dev/null || return 0
  now=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $20}') || return 0
  if [ -n "$pid" ] && [ "$now" = "$started" ] && kill -KILL -- "-$pid" 2>/dev/null; then killed+=("$pid"); fi
  return 0
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
# Already sent SIGKILL: only wait for them to be gone.
[ "${#killed[@]}" = 0 ] || stop_all 0 "${killed[@]}"

pids=()
# Stop in reverse start order so the apiserver never loses etcd under a running controller.
for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f=$dir/pids/$c
  [ -f "$f" ] || continue
  pids+=("$(cat "$f")")
done
[ "${#pids[@]}" = 0 ] || stop_all 10 "${pids[@]}"
rm -rf "$dir"
echo "down.sh[$name]: stopped and deleted" >&2
