#!/usr/bin/env bash
# The test command (README): installs what it needs, builds the local Kubernetes control plane
# (cached after the first run), starts or reuses the `skein-test` cluster and runs every test.
# With CI=true the clusters are stopped at the end; otherwise they are kept for fast reruns (stop
# them with `tests/cluster/down.sh NAME`; TEST_CLUSTERS below names them all).
set -euo pipefail
cd "$(dirname "$0")/.."

# Every cluster the tests start: the shared one, the operator's, the federation remotes, the node
# tests', `skein dev up`'s (its test downs it itself; this is for a failed run), and those of the
# tests on a meshed demo of their own (traffic, AccessPolicy, MtlsPolicy, stats, dashboard, ...).
# A test binary that starts a cluster of its own adds its name here.
TEST_CLUSTERS="skein-test skein-test-operator skein-test-remote skein-test-flap skein-test-node
  skein-test-devup skein-test-traffic skein-test-cli skein-test-cli2 skein-test-e2e skein-test-authz
  skein-test-identity skein-test-mtlspol skein-test-rbac skein-test-stats skein-test-check
  skein-test-prom skein-test-dash skein-test-explain skein-test-tap"

tests/install-deps.sh
tests/cluster/build.sh >/dev/null
# Each cluster's Go components, the node agents, Jaeger, Prometheus and Chromium each take inotify
# instances; with every test cluster up at once Debian's default of 128 per user runs out (Jaeger
# then fails to start with "too many open files"). Raised for this machine when lower.
if [ "$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 1024)" -lt 1024 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sysctl -q -w fs.inotify.max_user_instances=1024
  else
    echo "run.sh: fs.inotify.max_user_instances is under 1024; as root: sysctl -w fs.inotify.max_user_instances=1024" >&2
  fi
fi
if [ "${CI:-}" = true ]; then
  trap 'for c in $TEST_CLUSTERS; do tests/cluster/down.sh "$c"; done' EXIT
fi
kubeconfig_line=$(tests/cluster/up.sh skein-test | tail -n 1)
export SKEIN_TEST_KUBECONFIG=${kubeconfig_line#export KUBECONFIG=}

# Unit, integration and (as a short smoke run) benchmark targets. The crate has no doc tests.
log=$(mktemp)
cargo test --all-targets 2>&1 | tee "$log"
# One closing line for the whole run, summing every test binary's result line.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
rm -f "$log"
