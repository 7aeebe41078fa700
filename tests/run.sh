#!/usr/bin/env bash
# The test command (README): installs what it needs, builds the local Kubernetes control plane
# (cached after the first run), starts or reuses the `skein-test` cluster and runs every test.
# With CI=true the cluster is stopped at the end; otherwise it is kept for fast reruns
# (stop it with `tests/cluster/down.sh skein-test`).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/install-deps.sh
tests/cluster/build.sh >/dev/null
if [ "${CI:-}" = true ]; then
  trap 'tests/cluster/down.sh skein-test' EXIT
fi
kubeconfig_line=$(tests/cluster/up.sh skein-test | tail -n 1)
export SKEIN_TEST_KUBECONFIG=${kubeconfig_line#export KUBECONFIG=}

cargo test --all-targets
cargo test --doc
