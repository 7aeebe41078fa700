#!/usr/bin/env bash
# Installs what building and testing Skein needs on a fresh Debian machine that already has Go
# and Rust (rustup): rustfmt and clippy, the system tools of tests/cluster/host-tools.txt (the
# list `skein dev up` checks too) and those only the tests use, tests/test-tools.txt (a browser,
# Prometheus). Idempotent and quiet when everything is present.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

missing_apt=()
while read -r tool package _; do
  case "$tool" in ''|'#'*) continue ;; esac
  command -v "$tool" >/dev/null || missing_apt+=("$package")
done < <(cat "$here/cluster/host-tools.txt" "$here/test-tools.txt")
if [ ${#missing_apt[@]} -gt 0 ]; then
  mapfile -t missing_apt < <(printf '%s\n' "${missing_apt[@]}" | sort -u)
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
