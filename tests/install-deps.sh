#!/usr/bin/env bash
# Installs what building and testing Skein needs on a fresh Debian machine that already has Go
# and Rust (rustup): rustfmt and clippy, and the few system tools the local cluster scripts use.
# Idempotent and quiet when everything is present.
set -euo pipefail

missing_apt=()
# iptables/ip: `skein init` and the network-namespace tests.
for tool_pkg in openssl:openssl curl:curl python3:python3 flock:util-linux setsid:util-linux setpriv:util-linux iptables:iptables ip:iproute2; do
  command -v "${tool_pkg%%:*}" >/dev/null || missing_apt+=("${tool_pkg#*:}")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "install-deps: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "install-deps: Rust is required (rustup)" >&2; exit 1; }
if command -v rustup >/dev/null; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for component in rustfmt clippy; do
    grep -q "^$component" <<<"$installed" || rustup component add "$component" >&2
  done
fi
