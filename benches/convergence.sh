#!/usr/bin/env bash
# Control-plane convergence benchmark (see benches/convergence.rs): 1,000 Services, 10,000
# endpoints and 100 connected proxies; the time from an EndpointSlice change in the apiserver to
# each proxy's ACK (p50/p99), bytes pushed per change, and the control plane's memory. Prints a
# table, then one JSON object as the last line.
#
# Usage: sudo benches/convergence.sh
# Runs on a local cluster of its own, `skein-bench-convergence` (started or reused; stop it with
# `tests/cluster/down.sh skein-bench-convergence`). Builds what it needs (Kubernetes binaries
# from their Go modules, cached; the benchmark in release mode).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh >/dev/null
tests/cluster/build.sh >/dev/null
exec cargo bench --bench convergence
