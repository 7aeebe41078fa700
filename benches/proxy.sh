#!/usr/bin/env bash
# Data-plane benchmark: the same 1 KiB workload measured direct (client -> app), through Skein as
# a mesh runs it (client pod: `skein init` capture + `skein proxy` sidecar -> server pod: capture +
# sidecar -> app, two hops), plaintext and with mutual TLS between the two sidecars, and through
# nginx and HAProxy doing the same two hops as sidecars would: behind the same capture rules,
# listening on the capture ports as the proxy UID (one worker each, keep-alive upstream pools).
# Plus opaque TCP with a real request/response protocol: Redis (redis-benchmark GET and SET).
#
#   client netns skbench-PID-client (198.18.200.1)  <-veth->  server netns skbench-PID-server (198.18.200.2, .3)
#   load generator (CPU 0)                                     app: nginx `return 200` 1 KiB (h1 :8080, h2c :8081),
#   client-side proxy (CPU 1)                                       gRPC greeter (:50051), 1 KiB replies,
#                                                                   or redis-server (:6379)
#                                                              server-side proxy (CPU 1)
#
# The load generator always addresses the app, 198.18.200.2:APP. In every mode but `direct` both
# namespaces carry the capture rules of the real `skein init --proxy-uid 2170 --inbound-port
# 16006 --outbound-port 16001` (iptables nat REDIRECT, so conntrack too), and each proxy runs as
# uid 2170 listening on :16001 (client side, outbound) and :16006 (server side, inbound):
#
#   direct:   loadgen -> 198.18.200.2:APP (no rules)
#   direct-rules: the same rules installed, no proxy: the load generator runs as the proxy UID
#             (its connections cross the client's rules and conntrack but are not redirected: an
#             outbound REDIRECT needs something listening in the client netns, which is a proxy)
#             and the app listens on :16006 as well, so every connection to 198.18.200.2:APP is
#             REDIRECTed (NAT + conntrack) straight to the app: what capture costs the kernel on
#             the inbound side, without a proxy
#   skein:    loadgen -> (REDIRECT) skein :16001 -> (REDIRECT) skein :16006 -> 198.18.200.2:APP
#             (the original destination: its own pod). Both proxies get --pod-ip and a --config
#             as the control plane writes it in production: a Destination (the Service's address,
#             hosts, two endpoints 198.18.200.2 and .3 with pod labels and workload, ports with
#             their protocols), what a TrafficPolicy adds (the balancer, outlier detection,
#             connection limits) and a RouteRule's route (path prefix /, subset version=v1,
#             timeout, simpleRetry), after which the MeshConfig's default retry catch-all, and the
#             client's Service: routes, the balancer (two endpoints), retries and metric labels
#             all run
#   skein-mtls: as skein, the hop between the sidecars mutual TLS (TLS 1.3): both proxies hold a
#             static workload certificate (--workload-cert; a throw-away CA made with openssl,
#             spiffe://cluster.local/ns/bench/sa/{client,server}) and the endpoints carry their
#             pods' identities (the only difference from `skein`), and, as the control plane
#             says of proxies that take it, `http2Upgrade`: the client proxy carries HTTP/1
#             requests to the server proxy over one HTTP/2 connection (src/proxy/http/multiplex.rs)
#   skein-mtls-h1 (not run unless named in --modes): as skein-mtls without `http2Upgrade`: HTTP/1
#             stays HTTP/1 between the proxies, one pooled connection per request in flight; what
#             carrying it over HTTP/2 saves, next to skein-mtls in the same run
#   skein-base, skein-mtls-base (not run unless named in --modes; need SKEIN_BASELINE_BIN): as skein
#             and skein-mtls, with the proxies of another build: an A/B of two builds side by side
#             in one run (the report's "this build vs the baseline build")
#   skein-trace0, skein-trace1, skein-trace100 (not run unless named in --modes): as skein, both
#             proxies exporting spans (Zipkin JSON) to a sink in their namespace (nginx answering
#             202 on 127.0.0.1:9411, on the load generator's CPU), sampling 0%, 1% and 100% of the
#             requests: what tracing costs, next to `skein` (no exporter) in the same run
#   nginx:    loadgen -> (REDIRECT) nginx :16001 -> (REDIRECT) nginx :16006 -> 127.0.0.1:APP
#   haproxy:  loadgen -> (REDIRECT) haproxy :16001 -> (REDIRECT) haproxy :16006 -> 127.0.0.1:APP
#
# nginx and HAProxy cannot read the original destination (SO_ORIGINAL_DST) of a redirected
# connection: their client side is configured with the fixed upstream instead (the server's two
# addresses, round robin, as Skein's two endpoints), which is fair here because the benchmark has
# one destination; Skein looks it up per connection. nginx's h2 mode speaks HTTP/1.1 between the
# hops (its proxy_pass has no HTTP/2 upstream; gRPC uses grpc_pass, which is HTTP/2).
#
# Protocols: h1 (HTTP/1.1, oha), h2 (h2c prior knowledge, oha --http2), grpc (ghz, unary
# SayHello), redis (redis-benchmark -t set,get -P 1, 1 KiB values, a fixed number of clients;
# HAProxy in `mode tcp`, nginx `stream`, Skein forwarding port 6379 as opaque TCP).
# Per HTTP mode, after a warm-up: an open-loop run at 1,000 rps (oha -q RATE --latency-correction;
# ghz --rps RATE --async), the maximum (closed loop, fixed connections), then open-loop runs at 50%
# and 80% of that mode's maximum. Each mode is measured --reps times, the repetitions interleaved
# (round 1 of every mode, then round 2, ...), and every figure is reported as the median and the
# min..max over the repetitions.
# Reported: p50/p99/p99.9, latency added vs direct at 1,000 rps (per hop = added / 2, paired by
# round), max rps and what capped it (the CPU of the load generator, the app, the proxies, and how
# busy each CPU was: "limit"), proxy CPU per 1,000 rps at 1,000 rps and at 50% / 80% of the max
# (utime+stime deltas in /proc/PID/stat), PSS per proxy (/proc/PID/smaps_rollup summed over a
# proxy's processes), and issue 16's goals, met or not; a table per protocol, then one JSON
# object as the last line.
# Connection cost (h1; direct, direct-rules, skein, skein-mtls): short closed-loop runs with a
# new connection per request (oha --disable-keepalive, SKBENCH_HANDSHAKE_CONNECTIONS at a time):
# to the HTTP port (the client proxy still pools its connections to the server proxy) and to port
# 11211, which the app also serves and the proxies forward as opaque TCP (in their default opaque
# ports): there each request is one new proxy-to-proxy connection, so skein-mtls minus skein there
# is the cost of one TLS handshake on that hop (resumed, as the proxies do: session tickets). The
# report closes with "mTLS vs plaintext": added p50/p99 at 1,000 rps, CPU per 1,000 rps, max rps,
# handshake cost.
#
# Usage: sudo benches/proxy.sh [--quick] [--reps N] [--protocols h1,h2,grpc,redis]
#          [--modes direct,direct-rules,skein,skein-mtls,nginx,haproxy] [--keep]
#   e.g. the cost of tracing: sudo benches/proxy.sh --protocols h1 --modes direct,skein,skein-trace0,skein-trace1,skein-trace100
#   --quick      h1 only, short runs, 1,000 rps and 80% of max, one repetition (a few minutes once tools are built)
#   --reps N     repetitions of every mode (default 5; 1 with --quick)
#   --keep       keep the work directory (configs, logs, raw load-generator output)
# Environment: SKEIN_BIN (use this binary, and the skein-proxy beside it, instead of `cargo build --release`),
#   SKEIN_BASELINE_BIN (the same for another build, which the -base modes run; e.g. main's before a change),
#   SKBENCH_LOADGEN_CPU (default 0), SKBENCH_SERVER_CPU (default 1: app and every proxy),
#   SKBENCH_CONNECTIONS (default 64 in-flight requests), SKBENCH_MAX_SECONDS, SKBENCH_RATE_SECONDS,
#   SKBENCH_WARMUP_SECONDS, SKBENCH_HANDSHAKE_SECONDS (each connection-cost run; 2, or 5 without
#   --quick), SKBENCH_HANDSHAKE_CONNECTIONS (default 4), SKBENCH_REDIS_REQUESTS (per test and
#   repetition; default 200000, 20000 with --quick), SKBENCH_REDIS_CLIENTS (default 50).
# Installs what is missing: nginx, haproxy, curl, iproute2, iptables, util-linux, openssl and, for
# redis, redis-server (with redis-benchmark) and libnginx-mod-stream (apt); oha (cargo install)
# and, for grpc, ghz (go install) plus benches/proxy/greeter (go build), cached in
# ${XDG_CACHE_HOME:-~/.cache}/skein/bench-tools. Needs root. All traffic stays inside the two
# namespaces it creates (no route leaves them); they, the processes in them and the work directory
# are removed on exit, Ctrl-C included.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HELPERS="$HERE/proxy"
REPORT_PY="$HELPERS/report.py"

OHA_VERSION=1.16.0
GHZ_VERSION=v0.120.0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/skein/bench-tools"

# 198.18.0.0/15: reserved for benchmarking, and only inside our netns pair (a /29).
CLIENT_IP=198.18.200.1
SERVER_IP=198.18.200.2
SERVER_IP2=198.18.200.3 # a second address of the server pod: the destination's second endpoint
PROXY_UID=2170
# The capture ports (what `skein init` redirects to) and Skein's admin port.
OUT_PORT=16001
IN_PORT=16006
ADMIN_PORT=16000
APP_H1_PORT=8080
APP_H2_PORT=8081
APP_GRPC_PORT=50051
APP_REDIS_PORT=6379 # in Skein's default opaque ports too
# The app's h1 answer again, on a port both proxies forward as opaque TCP (memcached's, one of their
# default opaque ports): a new client connection there is a new proxy-to-proxy connection.
APP_TCP_PORT=11211
SPAN_SINK_PORT=9411 # the tracing modes' span sinks (Zipkin's port)
MESH_TRUST_DOMAIN=spiffe://cluster.local
BENCH_NS=bench
BODY_BYTES=1024
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

QUICK=0 KEEP=0 PROTOCOLS="" REPS="" MODES="direct,direct-rules,skein,skein-mtls,nginx,haproxy"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --protocols) PROTOCOLS=${2:?--protocols needs a value}; shift ;;
    --protocols=*) PROTOCOLS=${1#*=} ;;
    --modes) MODES=${2:?--modes needs a value}; shift ;;
    --modes=*) MODES=${1#*=} ;;
    --reps) REPS=${2:?--reps needs a value}; shift ;;
    --reps=*) REPS=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "proxy.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" -ne 0 ]; then
  echo "proxy.sh: must run as root (it creates network namespaces, iptables rules and runs the proxies as uid $PROXY_UID)" >&2
  exit 1
fi

if [ "$QUICK" = 1 ]; then
  : "${PROTOCOLS:=h1}" "${REPS:=1}"
  WARMUP=${SKBENCH_WARMUP_SECONDS:-1} MAX_SECONDS=${SKBENCH_MAX_SECONDS:-2} RATE_SECONDS=${SKBENCH_RATE_SECONDS:-2}
  RATE_RUNS="r1000 r80"
  HS_SECONDS=${SKBENCH_HANDSHAKE_SECONDS:-2}
  REDIS_REQUESTS=${SKBENCH_REDIS_REQUESTS:-20000}
else
  : "${PROTOCOLS:=h1,h2,grpc,redis}" "${REPS:=5}"
  WARMUP=${SKBENCH_WARMUP_SECONDS:-3} MAX_SECONDS=${SKBENCH_MAX_SECONDS:-10} RATE_SECONDS=${SKBENCH_RATE_SECONDS:-15}
  RATE_RUNS="r1000 r50 r80"
  HS_SECONDS=${SKBENCH_HANDSHAKE_SECONDS:-5}
  REDIS_REQUESTS=${SKBENCH_REDIS_REQUESTS:-200000}
fi
CONNS=${SKBENCH_CONNECTIONS:-64}
HS_CONNS=${SKBENCH_HANDSHAKE_CONNECTIONS:-4}
REDIS_CLIENTS=${SKBENCH_REDIS_CLIENTS:-50}
H2_CONNS=4 # HTTP/2 and gRPC: CONNS streams over this many connections
H2_STREAMS=$(((CONNS + H2_CONNS - 1) / H2_CONNS))

for p in ${PROTOCOLS//,/ }; do
  case "$p" in h1 | h2 | grpc | redis) ;; *) echo "proxy.sh: unknown protocol '$p' (h1, h2, grpc, redis)" >&2; exit 2 ;; esac
done
ALL_MODES="direct direct-rules skein skein-mtls skein-mtls-h1 skein-base skein-mtls-base skein-trace0 skein-trace1 skein-trace100 nginx haproxy"
for m in ${MODES//,/ }; do
  [[ " $ALL_MODES " == *" $m "* ]] || { echo "proxy.sh: unknown mode '$m' (${ALL_MODES// /, })" >&2; exit 2; }
done
want_proto() { [[ ",$PROTOCOLS," == *",$1,"* ]]; }
want_mode() { [[ ",$MODES," == *",$1,"* ]]; }
if [[ ",$MODES," == *-base,* ]] && [ ! -x "${SKEIN_BASELINE_BIN:-}" ]; then
  echo "proxy.sh: the -base modes run SKEIN_BASELINE_BIN, a skein binary of another build (with its skein-proxy beside it)" >&2
  exit 2
fi

CPUS=$(nproc)
LOADGEN_CPU=${SKBENCH_LOADGEN_CPU:-0}
SERVER_CPU=${SKBENCH_SERVER_CPU:-1}
for n in "$LOADGEN_CPU" "$SERVER_CPU" "$CONNS" "$REPS" "${SKBENCH_WARMUP_SECONDS:-1}" \
  "${SKBENCH_MAX_SECONDS:-1}" "${SKBENCH_RATE_SECONDS:-1}" "${SKBENCH_HANDSHAKE_SECONDS:-1}" "$HS_CONNS" \
  "$REDIS_REQUESTS" "$REDIS_CLIENTS"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "proxy.sh: '$n' is not a whole number (--reps, SKBENCH_* settings)" >&2; exit 2; }
done
[ "$REPS" -ge 1 ] || { echo "proxy.sh: --reps must be at least 1" >&2; exit 2; }
if [ "$CPUS" -lt 2 ] && [ -z "${SKBENCH_SERVER_CPU:-}" ]; then
  SERVER_CPU=0
  echo "proxy.sh: warning: one CPU only: load generator, app and proxies share CPU 0" >&2
fi

log() { printf '[proxy.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'proxy.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: every process this script starts runs inside one of its network namespaces, so ending
# the processes of those namespaces (and deleting them) ends everything it started.

CREATED_NS=()
STARTED_PIDS=()
SERVICE_PIDS=() # long-running processes of the current mode: a wait fails as soon as one exits
WORK=""

kill_netns_processes() {
  local ns=$1 pids i
  for i in $(seq 1 50); do
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ') || return 0
    [ -n "${pids// /}" ] || return 0
    if [ "$i" -eq 1 ]; then
      # shellcheck disable=SC2086 # a list of pids
      kill -TERM $pids 2>/dev/null || true
    elif [ "$i" -eq 40 ]; then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
    sleep 0.1
  done
}

reap() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  STARTED_PIDS=()
}

delete_netns() {
  local ns kept=()
  for ns in "${CREATED_NS[@]}"; do
    kill_netns_processes "$ns"
  done
  reap
  SERVICE_PIDS=()
  for ns in "${CREATED_NS[@]}"; do
    ip netns del "$ns" 2>/dev/null || kept+=("$ns")
  done
  CREATED_NS=("${kept[@]}")
  if [ ${#kept[@]} -gt 0 ]; then
    log "warning: could not delete network namespace(s) ${kept[*]}"
  fi
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  set +e
  delete_netns
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then
      # Said before the report when the run succeeds: the last line stays the JSON.
      [ "$status" -eq 0 ] || log "work directory kept: $WORK"
    else
      rm -rf -- "$WORK"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------------------------------------
# Tools.

install_apt() {
  local missing=() pair
  for pair in nginx:nginx haproxy:haproxy curl:curl ip:iproute2 iptables:iptables \
    setpriv:util-linux taskset:util-linux python3:python3 openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if want_proto redis; then
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
    [ -f "$NGINX_STREAM_MODULE" ] || missing+=(libnginx-mod-stream)
  fi
  [ ${#missing[@]} -gt 0 ] || return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # One by one: a package this Debian lacks (say the nginx stream module) fails only its mode.
  local pkg
  for pkg in "${missing[@]}"; do
    apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null || log "warning: apt-get install $pkg failed"
  done
}

install_oha() {
  OHA="$CACHE/oha-$OHA_VERSION/bin/oha"
  if [ ! -x "$OHA" ]; then
    command -v cargo >/dev/null || die "cargo is needed to install oha"
    log "cargo install oha $OHA_VERSION (once; cached in $CACHE)"
    cargo install oha --version "$OHA_VERSION" --locked --root "$CACHE/oha-$OHA_VERSION" >&2 ||
      die "cargo install oha failed"
  fi
  if "$OHA" --help | grep -q -- '--output-format'; then
    OHA_JSON=(--output-format json)
  else
    OHA_JSON=(-j)
  fi
}

# Sets GRPC_UNAVAILABLE to a reason when ghz or the greeter cannot be had.
install_grpc_tools() {
  GRPC_UNAVAILABLE=""
  if ! command -v go >/dev/null; then
    GRPC_UNAVAILABLE="Go is not installed (needed to build ghz and the greeter)"
    return
  fi
  GHZ="$CACHE/ghz-$GHZ_VERSION/ghz"
  if [ ! -x "$GHZ" ]; then
    log "go install github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION (once; cached in $CACHE)"
    if ! GOBIN="$CACHE/ghz-$GHZ_VERSION" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" >&2; then
      GRPC_UNAVAILABLE="ghz could not be built (go install github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION failed)"
      return
    fi
  fi
  # grpc-go's own greeter_server cannot be `go install`ed (its module has replace directives):
  # benches/proxy/greeter is the same Greeter with a fixed 1 KiB reply and server reflection.
  local sum
  sum=$(cat "$HELPERS/greeter/go.mod" "$HELPERS/greeter/go.sum" "$HELPERS/greeter/main.go" | sha256sum | cut -c1-12)
  GREETER="$CACHE/greeter-$sum/greeter"
  if [ ! -x "$GREETER" ]; then
    log "go build benches/proxy/greeter (once; cached in $CACHE)"
    if ! (cd "$HELPERS/greeter" && GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" go build -o "$GREETER" .) >&2; then
      GRPC_UNAVAILABLE="the gRPC greeter could not be built (go build in benches/proxy/greeter failed)"
    fi
  fi
}

# Sets REDIS_UNAVAILABLE (every redis mode) and STREAM_UNAVAILABLE (nginx's) to a reason.
check_redis_tools() {
  REDIS_UNAVAILABLE="" STREAM_UNAVAILABLE=""
  if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null || ! command -v redis-cli >/dev/null; then
    REDIS_UNAVAILABLE="redis-server, redis-cli or redis-benchmark is missing (apt-get install redis-server)"
  fi
  [ -f "$NGINX_STREAM_MODULE" ] || STREAM_UNAVAILABLE="nginx's stream module is missing (apt-get install libnginx-mod-stream)"
}

build_skein() {
  if [ -n "${SKEIN_BIN:-}" ]; then
    [ -x "$SKEIN_BIN" ] || die "SKEIN_BIN=$SKEIN_BIN is not an executable"
    SKEIN_SRC="$SKEIN_BIN"
    return
  fi
  command -v cargo >/dev/null || die "cargo is needed to build skein (or set SKEIN_BIN)"
  local target_dir
  target_dir=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') ||
    die "cargo metadata failed in $REPO"
  log "cargo build --release --bin skein --bin skein-proxy (target dir $target_dir)"
  (cd "$REPO" && cargo build --release --bin skein --bin skein-proxy >&2) ||
    die "cargo build --release failed in $REPO (SKEIN_BIN=/path/to/skein benchmarks a binary built elsewhere)"
  SKEIN_SRC="$target_dir/release/skein"
}

# ---------------------------------------------------------------------------------------------
# Topology.

NS_C="skbench-$$-client"
NS_S="skbench-$$-server"
# Runs a command as the proxy UID (its connections are never captured).
AS_PROXY=(setpriv --reuid "$PROXY_UID" --regid "$PROXY_UID" --clear-groups)
# How the load generator (and every check made from the client netns) runs: as root, or in
# direct-rules as the proxy UID.
CLIENT_AS=()

make_pair() {
  local ns
  for ns in "$NS_C" "$NS_S"; do
    ip netns add "$ns" || return 1
    CREATED_NS+=("$ns")
  done
  # Created directly inside the namespaces: no interface ever exists in the machine's namespace,
  # and neither namespace has a route beyond the pair's /29.
  ip link add eth0 netns "$NS_C" type veth peer name eth0 netns "$NS_S" || return 1
  for ns in "$NS_C" "$NS_S"; do
    ip -n "$ns" link set lo up && ip -n "$ns" link set eth0 up || return 1
  done
  ip -n "$NS_C" addr add "$CLIENT_IP/29" dev eth0 &&
    ip -n "$NS_S" addr add "$SERVER_IP/29" dev eth0 &&
    ip -n "$NS_S" addr add "$SERVER_IP2/29" dev eth0
}

# capture NETNS SIDE: the pod's capture rules, made by the real `skein init` exactly as for the
# Skein modes (the same ports and UID for every proxy).
capture() {
  ip netns exec "$1" "$SKEIN" init --proxy-uid "$PROXY_UID" --inbound-port "$IN_PORT" --outbound-port "$OUT_PORT" \
    >"$WORK/logs/skein-init-$2.log" 2>&1 || { log "skein init failed in $1: $(tail -3 "$WORK/logs/skein-init-$2.log")"; return 1; }
}

# start NAME NETNS CPU CMD...: CMD in the background, pinned; its pid in LAST_PID (`ip netns exec`,
# `taskset` and `setpriv` exec, so it is the command itself), its output in $WORK/logs/NAME.log.
start() {
  local name=$1 ns=$2 cpu=$3
  shift 3
  ip netns exec "$ns" taskset -c "$cpu" "$@" >"$WORK/logs/$name.log" 2>&1 &
  LAST_PID=$!
  STARTED_PIDS+=("$LAST_PID")
  SERVICE_PIDS+=("$LAST_PID")
}

# wait_until SECONDS DESCRIPTION CMD...: retries CMD every 0.1 s.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2 pid
  shift 2
  until "$@" >/dev/null 2>&1; do
    for pid in "${SERVICE_PIDS[@]}"; do
      if ! alive "$pid"; then
        log "waiting for $what: process $pid exited"
        return 1
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

alive() { kill -0 "$1" 2>/dev/null; }

# in_ns NETNS CMD...: CMD in that namespace; in the client's, as the load generator runs.
in_ns() {
  local ns=$1
  shift
  if [ "$ns" = "$NS_C" ]; then
    ip netns exec "$ns" "${CLIENT_AS[@]}" "$@"
  else
    ip netns exec "$ns" "$@"
  fi
}

# problems LOG...: the lines of these logs that report a problem, on one line (the last ones).
problems() {
  cat "$@" 2>/dev/null | grep -iE 'alert|emerg|error|fatal|panick|fail|cannot|denied|not a valid' | tail -3 | tr '\n' ' ' | cut -c1-400
}

http_ok() { # NS URL [curl flags...]: a 200 with the 1 KiB body
  local ns=$1 url=$2 got
  shift 2
  got=$(in_ns "$ns" curl -sS --max-time 2 "$@" -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$url") || return 1
  [ "${got%% *}" = 200 ] && [ "$(echo "$got" | cut -d' ' -f2)" = "$BODY_BYTES" ]
}

http2_ok() { # NS URL: as http_ok, over h2c with prior knowledge, and really HTTP/2
  local got
  got=$(in_ns "$1" curl -sS --max-time 2 --http2-prior-knowledge -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$2") || return 1
  [ "$got" = "200 $BODY_BYTES 2" ]
}

http_200() { [ "$(ip netns exec "$1" curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$2")" = 200 ]; }

tcp_open() { in_ns "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; }

grpc_ok() { # NS TARGET
  in_ns "$1" timeout 10 "$GHZ" --insecure --call helloworld.Greeter.SayHello -d '{"name":"skein"}' \
    -n 1 -c 1 -O json "$2" 2>/dev/null | grep -q '"OK":1'
}

redis_ok() { # NS HOST PORT: a SET and a GET of a 1 KiB value answered
  local value
  value=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
  [ "$(in_ns "$1" timeout 2 redis-cli -h "$2" -p "$3" set skbench "$value" 2>/dev/null)" = OK ] &&
    [ "$(in_ns "$1" timeout 2 redis-cli -h "$2" -p "$3" get skbench 2>/dev/null)" = "$value" ]
}

NGINX_USER=nobody
getent passwd www-data >/dev/null 2>&1 && NGINX_USER=www-data

# nginx's h2c listener syntax: `http2 on` from 1.25.1, `listen ... http2` before.
nginx_h2_listen() { # ADDR:PORT
  if [ "$NGINX_NEW_H2" = 1 ]; then
    printf 'listen %s;\n        http2 on;' "$1"
  else
    printf 'listen %s http2;' "$1"
  fi
}

# nginx_conf DIR USER: the main and events context (USER empty: nginx runs as whoever starts it,
# as the proxies do, as the proxy UID; the `user` directive would only warn there).
nginx_conf() {
  [ -n "$2" ] && echo "user $2;"
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 16384; }
EOF
}

nginx_http_open() { # DIR: `http {` and what every http context needs
  cat <<EOF
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

# start_nginx NAME NS CPU USER CONF_BODY: CONF_BODY holds whole http/stream blocks; USER empty:
# run the whole nginx (master and worker) as the proxy UID.
start_nginx() {
  local name=$1 ns=$2 cpu=$3 user=$4 dir="$WORK/$1"
  mkdir -p "$dir/tmp"
  rm -f "$dir/error.log"
  {
    [[ "$5" == *"stream {"* ]] && echo "load_module $NGINX_STREAM_MODULE;"
    nginx_conf "$dir" "$user"
    printf '%s\n' "$5"
  } >"$dir/nginx.conf"
  if [ -n "$user" ]; then
    start "$name" "$ns" "$cpu" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
  else
    chown -R "$PROXY_UID:$PROXY_UID" "$dir"
    start "$name" "$ns" "$cpu" "${AS_PROXY[@]}" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
  fi
}

# start_app PROTO [captured]: the app in the server namespace; `captured` (direct-rules): it also
# listens on the inbound capture port, where the rules redirect every connection to it.
start_app() {
  local proto=$1 captured=${2:-}
  case "$proto" in
    grpc)
      local port=$APP_GRPC_PORT
      [ -n "$captured" ] && port=$IN_PORT
      start app "$NS_S" "$SERVER_CPU" "$GREETER" -listen "0.0.0.0:$port" -procs 1
      APP_PIDS=$LAST_PID
      wait_until 10 "the gRPC app" tcp_open "$NS_S" 127.0.0.1 "$port" || return 1
      return 0 ;;
    redis)
      local port=$APP_REDIS_PORT
      [ -n "$captured" ] && port=$IN_PORT
      mkdir -p "$WORK/redis"
      start app "$NS_S" "$SERVER_CPU" redis-server --port "$port" --bind 0.0.0.0 --protected-mode no \
        --save '' --appendonly no --daemonize no --dir "$WORK/redis" --logfile ''
      APP_PIDS=$LAST_PID
      wait_until 10 "redis-server" redis_ok "$NS_S" 127.0.0.1 "$port" || return 1
      return 0 ;;
  esac
  local body extra_h1="" extra_h2=""
  body=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
  if [ -n "$captured" ]; then
    if [ "$proto" = h2 ]; then
      # A second listen of the h2c server (whose first one already switched HTTP/2 on).
      extra_h2="listen 0.0.0.0:$IN_PORT$([ "$NGINX_NEW_H2" = 1 ] || echo ' http2');"
    else
      extra_h1="listen 0.0.0.0:$IN_PORT;"
    fi
  fi
  start_nginx app "$NS_S" "$SERVER_CPU" "$NGINX_USER" "$(
    nginx_http_open "$WORK/app"
    cat <<EOF
    server {
        listen 0.0.0.0:$APP_H1_PORT;
        $extra_h1
        location / { default_type application/octet-stream; return 200 '$body'; }
    }
    server {
        $(nginx_h2_listen "0.0.0.0:$APP_H2_PORT")
        $extra_h2
        location / { default_type application/octet-stream; return 200 '$body'; }
    }
    server {
        listen 0.0.0.0:$APP_TCP_PORT;
        location / { default_type application/octet-stream; return 200 '$body'; }
    }
}
EOF
  )"
  APP_PIDS=$LAST_PID
  wait_until 10 "the app (nginx)" http_ok "$NS_S" "http://127.0.0.1:$APP_H1_PORT/" || return 1
}

# make_certs: a throw-away CA and one workload certificate per side (EC P-256, one spiffe:// URI
# SAN, server and client auth), in $WORK/mtls, readable by the proxy user. Once per run.
make_certs() {
  local dir="$WORK/mtls" side
  [ -f "$dir/ca.pem" ] && return 0
  mkdir -p "$dir"
  cat >"$dir/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
O = skein-bench
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -config "$dir/openssl.cnf" -extensions ca -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 -subj "/O=skein-bench/CN=skein-bench CA" \
    >"$WORK/logs/openssl.log" 2>&1 || return 1
  for side in client server; do
    cat >"$dir/$side.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:$MESH_TRUST_DOMAIN/ns/$BENCH_NS/sa/$side
authorityKeyIdentifier = keyid
EOF
    openssl req -new -config "$dir/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$dir/$side.key" -out "$dir/$side.csr" -subj "/O=skein-bench" >>"$WORK/logs/openssl.log" 2>&1 &&
      openssl x509 -req -in "$dir/$side.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
        -extfile "$dir/$side.ext" -out "$dir/$side.pem" >>"$WORK/logs/openssl.log" 2>&1 || return 1
  done
  rm -f "$dir/ca.key" "$dir"/*.csr
  chown "$PROXY_UID:$PROXY_UID" "$dir/client.key" "$dir/server.key"
  chmod 600 "$dir/client.key" "$dir/server.key"
  chmod 644 "$dir/ca.pem" "$dir/client.pem" "$dir/server.pem"
}

# skein_config FILE SIDE [mtls]: the --config of the SIDE (client or server) proxy as the control
# plane translates it (src/controlplane/translate) for namespace bench, whose Services both
# proxies see:
#   Service `server`: two ready endpoints, the server pod's two addresses 198.18.200.2 and .3
#     (labels app=server,version=v1, workload server), so the balancer chooses between two, with
#     TrafficPolicy: loadBalancer PeakEwma, connectionPool maxConnections/maxPendingRequests
#     10000 (never reached here: checked on every request), outlierDetection 5 failures / 30s /
#     50%, opaquePorts [6379, 11211];
#     RouteRule: one route, path prefix /, to subset version=v1 (weight 100), timeout 10s,
#     simpleRetry 2 attempts, perTryTimeout 5s, on connect-failure, refused-stream, unavailable,
#     cancelled and gateway-error (502-504; none happen here: the policy is evaluated, not used);
#     MeshConfig defaults (traffic.retry: 2 attempts on connect-failure, refused-stream,
#     unavailable; no timeout): the catch-all route after the rule's, as the translation appends;
#   Service `client`: the client pod (198.18.200.1:8080, workload client): how the server's
#     inbound side names its caller in metrics.
# mtls: endpoints carry their pod's identity (spiffe://cluster.local/ns/bench/sa/NAME), except,
# in the server proxy's own config, the server pod's: a proxy never speaks mTLS to its own pod
# (the injector's POD_IP, --pod-ip, covers one address: the second one is only this bench's); and
# http2Upgrade, as for a pod injected by this build. mtls-h1: the identities only.
skein_config() {
  python3 - "$1" "$2" "${3:-}" "$BENCH_NS" "$MESH_TRUST_DOMAIN" "$CLIENT_IP" "$SERVER_IP" "$SERVER_IP2" \
    "$APP_H1_PORT" "$APP_H2_PORT" "$APP_GRPC_PORT" "$APP_TCP_PORT" "$APP_REDIS_PORT" <<'EOF'
import json, sys
path, side, mtls, ns, trust, client_ip, ip, ip2, h1, h2, grpc, tcp, redis = sys.argv[1:]
def port(p, pod, addresses, protocol="detect", labels=None):
    endpoints = []
    for address in addresses:
        endpoint = {"address": f"{address}:{p}", "labels": {"app": pod, **(labels or {})},
                    "workload": {"name": pod, "namespace": ns}}
        if mtls and pod != side:
            endpoint["identity"] = f"{trust}/ns/{ns}/sa/{pod}"
            if mtls != "mtls-h1":
                endpoint["http2Upgrade"] = True
        endpoints.append(endpoint)
    return {"port": int(p), "protocol": protocol, "endpoints": endpoints}
def server_port(p, protocol="detect"):
    return port(p, "server", (ip, ip2), protocol, {"version": "v1"})
retry_on = ["connect-failure", "refused-stream", "unavailable"]
json.dump({
    "version": f"bench-{side}" + ("-mtls" if mtls else ""),
    "workload": {"name": side, "namespace": ns},
    "outboundTrafficPolicy": "RegistryOnly",
    "destinations": [{
        "name": f"server.{ns}.svc.cluster.local",
        "addresses": [ip],
        "hosts": ["server", f"server.{ns}", f"server.{ns}.svc", f"server.{ns}.svc.cluster.local"],
        "ports": [server_port(h1), server_port(h2), server_port(grpc), server_port(tcp, "opaque"), server_port(redis, "opaque")],
        "loadBalancer": "peakEwma",
        "outlierDetection": {"consecutiveFailures": 5, "baseEjectionTime": "30s", "maxEjectionPercent": 50},
        "limits": {"maxConnections": 10000, "maxPendingRequests": 10000},
        "routes": [
            {
                "name": "bench",
                "matches": [{"path": {"prefix": "/"}}],
                "backends": [{"subset": {"version": "v1"}, "weight": 100}],
                "timeout": "10s",
                "retry": {"attempts": 2, "perTryTimeout": "5s", "retryOn": retry_on + ["cancelled", "gateway-error"]},
            },
            {"name": "default", "retry": {"attempts": 2, "retryOn": retry_on}},
        ],
    }, {
        "name": f"client.{ns}.svc.cluster.local",
        "addresses": [client_ip],
        "hosts": ["client", f"client.{ns}", f"client.{ns}.svc", f"client.{ns}.svc.cluster.local"],
        "ports": [port(h1, "client", (client_ip,))],
        "routes": [{"name": "default", "retry": {"attempts": 2, "retryOn": retry_on}}],
    }],
}, open(path, "w"), indent=1)
EOF
}

# Where the tracing modes' proxies send spans: an nginx in each namespace answering 202 (it reads
# and drops the body), on the load generator's CPU so it takes none from the proxies'.
start_span_sinks() {
  local side ns
  for side in client server; do
    ns=$NS_C
    [ "$side" = server ] && ns=$NS_S
    start_nginx "spans-$side" "$ns" "$LOADGEN_CPU" "$NGINX_USER" "$(
      nginx_http_open "$WORK/spans-$side"
      echo "    server { listen 127.0.0.1:$SPAN_SINK_PORT; location / { return 202; } }"
      echo "}"
    )"
    wait_until 10 "the span sink in $ns" tcp_open "$ns" 127.0.0.1 "$SPAN_SINK_PORT" || return 1
  done
}

start_skein() { # [mtls | mtls-h1 | trace PERCENT]: both sidecars (the capture rules are in place)
  local side ns pids=() extra mtls="" pod_ip
  mkdir -p "$WORK/mtls"
  if [ "${1:-}" = trace ]; then
    start_span_sinks || return 1
  fi
  if [ "${1:-}" = mtls ] || [ "${1:-}" = mtls-h1 ]; then
    make_certs || { log "openssl could not make the certificates: $(tail -3 "$WORK/logs/openssl.log")"; return 1; }
    mtls=$1
  fi
  chmod 755 "$WORK/mtls"
  for side in client server; do
    ns=$NS_C pod_ip=$CLIENT_IP
    [ "$side" = server ] && ns=$NS_S pod_ip=$SERVER_IP
    skein_config "$WORK/mtls/$side-config.json" "$side" "$mtls" || return 1
    chmod 644 "$WORK/mtls/$side-config.json"
    # --pod-ip: what the injector passes as POD_IP.
    extra=(--config "$WORK/mtls/$side-config.json" --pod-ip "$pod_ip")
    if [ -n "$mtls" ]; then
      extra+=(--workload-cert "$WORK/mtls/$side.pem" --workload-key "$WORK/mtls/$side.key" --trust-bundle "$WORK/mtls/ca.pem")
    fi
    if [ "${1:-}" = trace ]; then
      extra+=(--zipkin-endpoint "http://127.0.0.1:$SPAN_SINK_PORT/api/v2/spans" --trace-sampling-percentage "$2")
    fi
    start "skein-$side" "$ns" "$SERVER_CPU" "${AS_PROXY[@]}" \
      env SKEIN_LOG="${SKBENCH_SKEIN_LOG:-warn}" "${SKEIN_RUN:-$SKEIN}" proxy --outbound-port "$OUT_PORT" --inbound-port "$IN_PORT" --admin-port "$ADMIN_PORT" \
      --drain-window 0s --drain-timeout 1s "${extra[@]}"
    pids+=("$LAST_PID")
  done
  PROXY_GROUPS=("client=${pids[0]}" "server=${pids[1]}")
  for ns in "$NS_C" "$NS_S"; do
    wait_until 20 "skein proxy /ready in $ns" http_200 "$ns" "http://127.0.0.1:$ADMIN_PORT/ready" || return 1
  done
}

# nginx as both sidecars for PROTO: the client side on the outbound capture port with the fixed
# upstream (the server's two addresses), the server side on the inbound capture port in front of
# the app on loopback. h2: HTTP/1.1 between the hops (proxy_pass has no HTTP/2 upstream).
start_nginx_proxies() {
  local proto=$1 client_conf server_conf pool="keepalive 256; keepalive_requests 1000000; keepalive_timeout 300s;"
  local h1_pass='proxy_pass http://next; proxy_http_version 1.1; proxy_set_header Connection "";'
  local app_pass='proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";'
  case "$proto" in
    h1 | h2)
      local listen="listen 0.0.0.0:$OUT_PORT;"
      [ "$proto" = h2 ] && listen=$(nginx_h2_listen "0.0.0.0:$OUT_PORT")
      client_conf="$(nginx_http_open "$WORK/nginx-client")
    upstream next { server $SERVER_IP:$APP_H1_PORT; server $SERVER_IP2:$APP_H1_PORT; $pool }
    server { $listen location / { $h1_pass } }
}"
      server_conf="$(nginx_http_open "$WORK/nginx-server")
    upstream app { server 127.0.0.1:$APP_H1_PORT; $pool }
    server { listen 0.0.0.0:$IN_PORT; location / { $app_pass } }
}" ;;
    grpc)
      client_conf="$(nginx_http_open "$WORK/nginx-client")
    upstream next { server $SERVER_IP:$APP_GRPC_PORT; server $SERVER_IP2:$APP_GRPC_PORT; $pool }
    server { $(nginx_h2_listen "0.0.0.0:$OUT_PORT") location / { grpc_pass grpc://next; } }
}"
      server_conf="$(nginx_http_open "$WORK/nginx-server")
    upstream app { server 127.0.0.1:$APP_GRPC_PORT; $pool }
    server { $(nginx_h2_listen "0.0.0.0:$IN_PORT") location / { grpc_pass grpc://app; } }
}" ;;
    redis)
      client_conf="stream {
    upstream next { server $SERVER_IP:$APP_REDIS_PORT; server $SERVER_IP2:$APP_REDIS_PORT; }
    server { listen 0.0.0.0:$OUT_PORT; proxy_pass next; }
}"
      server_conf="stream {
    server { listen 0.0.0.0:$IN_PORT; proxy_pass 127.0.0.1:$APP_REDIS_PORT; }
}" ;;
  esac
  # The server side first: a connection to the client side before it listens would mark the
  # upstreams down (max_fails) for the next 10 s, and a stream connection dials at once.
  start_nginx nginx-server "$NS_S" "$SERVER_CPU" "" "$server_conf"
  local server=$LAST_PID
  wait_until 10 "nginx (server side)" in_proxy_ns_open "$NS_S" "$IN_PORT" || return 1
  start_nginx nginx-client "$NS_C" "$SERVER_CPU" "" "$client_conf"
  PROXY_GROUPS=("client=$LAST_PID" "server=$server")
  wait_until 10 "nginx (client side)" in_proxy_ns_open "$NS_C" "$OUT_PORT"
}

# in_proxy_ns_open NS PORT: something listens on 127.0.0.1:PORT in NS (checked as root: loopback
# is never captured).
in_proxy_ns_open() { ip netns exec "$1" timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$2" 2>/dev/null; }

# HAProxy as both sidecars for PROTO, as nginx (h2 and gRPC: h2c between the hops; redis: mode tcp).
start_haproxy_proxies() {
  local proto=$1 dir="$WORK/haproxy" mode=http h2="" app_port
  mkdir -p "$dir"
  case "$proto" in
    h1) app_port=$APP_H1_PORT ;;
    h2) app_port=$APP_H2_PORT h2=" proto h2" ;;
    grpc) app_port=$APP_GRPC_PORT h2=" proto h2" ;;
    redis) app_port=$APP_REDIS_PORT mode=tcp ;;
  esac
  local side bind servers
  for side in client server; do
    if [ "$side" = client ]; then
      bind=$OUT_PORT
      servers="    server a $SERVER_IP:$app_port$h2
    server b $SERVER_IP2:$app_port$h2"
    else
      bind=$IN_PORT
      servers="    server app 127.0.0.1:$app_port$h2"
    fi
    {
      cat <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode $mode
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    maxconn 4096
EOF
      [ "$mode" = http ] && printf '    timeout http-keep-alive 300s\n    option http-keep-alive\n    http-reuse always\n'
      cat <<EOF
frontend in
    bind 0.0.0.0:$bind$h2
    default_backend out
backend out
    balance roundrobin
$servers
EOF
    } >"$dir/$side.cfg"
  done
  # The server side first, as for nginx.
  start haproxy-server "$NS_S" "$SERVER_CPU" "${AS_PROXY[@]}" haproxy -db -f "$dir/server.cfg"
  local server=$LAST_PID
  wait_until 10 "HAProxy (server side)" in_proxy_ns_open "$NS_S" "$IN_PORT" || return 1
  start haproxy-client "$NS_C" "$SERVER_CPU" "${AS_PROXY[@]}" haproxy -db -f "$dir/client.cfg"
  PROXY_GROUPS=("client=$LAST_PID" "server=$server")
  wait_until 10 "HAProxy (client side)" in_proxy_ns_open "$NS_C" "$OUT_PORT"
}

# ---------------------------------------------------------------------------------------------
# Measuring.

sample() { # FILE: CPU and memory of the proxy groups and the app, and every CPU's busy time
  python3 "$REPORT_PY" sample "${PROXY_GROUPS[@]}" "app=$APP_PIDS" >"$1"
}

# run_loadgen USAGE STDOUT STDERR CMD...: the load generator in the client netns, pinned. In the
# background with `wait`, so that Ctrl-C or SIGTERM runs the traps at once. USAGE gets the wall
# clock and this shell's children CPU times (`times`) around it: the load generator's own CPU.
run_loadgen() {
  local usage=$1 out=$2 err=$3 pid
  shift 3
  times >"$WORK/times.0"
  local t0=$EPOCHREALTIME
  if [ "$out" = "$err" ]; then
    ip netns exec "$NS_C" taskset -c "$LOADGEN_CPU" "${CLIENT_AS[@]}" "$@" >"$out" 2>&1 &
  else
    ip netns exec "$NS_C" taskset -c "$LOADGEN_CPU" "${CLIENT_AS[@]}" "$@" >"$out" 2>"$err" &
  fi
  pid=$!
  STARTED_PIDS+=("$pid")
  wait "$pid" || true
  local t1=$EPOCHREALTIME
  times >"$WORK/times.1"
  echo "$t0 $t1 $(tail -1 "$WORK/times.0") $(tail -1 "$WORK/times.1")" >"$usage"
}

# load PROTO DIR RUN RATE SECONDS [newconn]: one load-generator run (RATE 0: closed-loop maximum);
# newconn (h1 only): HS_CONNS at a time, a new connection per request.
load() {
  local proto=$1 dir=$2 run=$3 rate=$4 secs=$5 newconn=${6:-} args=()
  local out="$dir/$run.json"
  if [ "$proto" = grpc ]; then
    args=(--insecure --call helloworld.Greeter.SayHello -d '{"name":"skein"}' --cpus 1
      -c "$CONNS" --connections "$H2_CONNS" -z "${secs}s" --duration-stop ignore -O json -o "$out")
    [ "$rate" = 0 ] || args+=(--rps "$rate" --async)
    sample "$dir/$run.before"
    run_loadgen "$dir/$run.loadgen" "$dir/$run.log" "$dir/$run.log" "$GHZ" "${args[@]}" "$TARGET"
    sample "$dir/$run.after"
  else
    # One runtime thread: the load generator has one CPU.
    args=(--no-tui "${OHA_JSON[@]}" --worker-threads 1 -z "${secs}s")
    if [ -n "$newconn" ]; then
      args+=(--disable-keepalive -c "$HS_CONNS")
    elif [ "$proto" = h2 ]; then
      args+=(--http2 -c "$H2_CONNS" -p "$H2_STREAMS")
    else
      args+=(-c "$CONNS")
    fi
    [ "$rate" = 0 ] || args+=(-q "$rate" --latency-correction)
    sample "$dir/$run.before"
    run_loadgen "$dir/$run.loadgen" "$out" "$dir/$run.log" "$OHA" "${args[@]}" "$TARGET"
    sample "$dir/$run.after"
  fi
  [ "$rate" = 0 ] || echo "$rate" >"$dir/$run.target"
  local kind=oha summary
  [ "$proto" = grpc ] && kind=ghz
  if summary=$(python3 "$REPORT_PY" check "$kind" "$out" 2>&1); then
    log "  $run: $summary"
  else
    log "  $run: FAILED: $summary ($(tail -c 300 "$dir/$run.log" | tr '\n' ' '))"
    return 1
  fi
}

# load_redis DIR RUN REQUESTS: redis-benchmark SET then GET, REQUESTS each, 1 KiB values, no
# pipelining, REDIS_CLIENTS connections (closed loop: each test runs at its maximum).
load_redis() {
  local dir=$1 run=$2 n=$3
  sample "$dir/$run.before"
  run_loadgen "$dir/$run.loadgen" "$dir/$run.csv" "$dir/$run.log" redis-benchmark -h "$SERVER_IP" -p "$APP_REDIS_PORT" \
    -c "$REDIS_CLIENTS" -n "$n" -d "$BODY_BYTES" -P 1 -t set,get --csv
  sample "$dir/$run.after"
  echo $((2 * n)) >"$dir/$run.requests"
  local summary
  if summary=$(python3 "$REPORT_PY" check redis "$dir/$run.csv" 2>&1); then
    log "  $run: $summary"
  else
    log "  $run: FAILED: $summary ($(tail -c 300 "$dir/$run.log" | tr '\n' ' '))"
    return 1
  fi
}

proxy_cpu_used() { # BEFORE AFTER: every proxy instance used some CPU
  python3 - "$1" "$2" <<'EOF'
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:3])
idle = [g for g, v in after["groups"].items() if g != "app" and v["cpu_s"] - before["groups"].get(g, {}).get("cpu_s", 0) <= 0]
if idle:
    print(", ".join(idle))
    sys.exit(1)
EOF
}

# bench_mode PROTO MODE REP: sets up the pair, the capture rules, the app and the mode's proxies,
# measures one repetition into RESULTS/PROTO/MODE/repREP, tears down.
bench_mode() {
  local proto=$1 mode=$2 dir="$RESULTS/$1/$2/rep$3"
  mkdir -p "$dir"
  APP_PIDS="" PROXY_GROUPS=() CLIENT_AS=()
  log "round $3/$REPS: $proto / $mode"
  if ! make_pair; then
    echo "failed: could not create the network namespaces" >"$dir/status"
    return 1
  fi
  if [ "$mode" != direct ]; then
    if ! capture "$NS_C" client || ! capture "$NS_S" server; then
      echo "failed: skein init could not install the capture rules: $(problems "$WORK"/logs/skein-init-*.log)" >"$dir/status"
      return 1
    fi
  fi
  local captured=""
  [ "$mode" = direct-rules ] && captured=yes
  if ! start_app "$proto" ${captured:+"$captured"}; then
    echo "failed: the app did not start: $(problems "$WORK"/logs/app.log "$WORK"/app/error.log)" >"$dir/status"
    return 1
  fi

  local app_port=$APP_H1_PORT
  case "$proto" in
    h2) app_port=$APP_H2_PORT ;;
    grpc) app_port=$APP_GRPC_PORT ;;
    redis) app_port=$APP_REDIS_PORT ;;
  esac
  local proxy=${mode%%-*}
  local via="(REDIRECT) $proxy :$OUT_PORT -> (REDIRECT) $proxy :$IN_PORT -> 127.0.0.1:$app_port"
  case "$mode" in
    direct)
      echo "loadgen -> $SERVER_IP:$app_port (no capture rules)" >"$dir/note" ;;
    direct-rules)
      CLIENT_AS=("${AS_PROXY[@]}")
      chown -R "$PROXY_UID:$PROXY_UID" "$dir" # ghz writes its own output file
      echo "loadgen (as the proxy UID: crosses the client's rules, not redirected) -> $SERVER_IP:$app_port (REDIRECT) -> the app on :$IN_PORT" >"$dir/note" ;;
    skein)
      start_skein || { echo "failed: skein proxy did not become ready: $(problems "$WORK"/logs/skein-*.log)" >"$dir/status"; return 1; }
      echo "loadgen -> ${via%127.0.0.1:*}$SERVER_IP:$app_port; production-like --config (destination, 2 endpoints, route, retries), plaintext" >"$dir/note" ;;
    skein-trace*)
      local percent=${mode#skein-trace}
      start_skein trace "$percent" || { echo "failed: skein proxy (tracing) did not become ready: $(problems "$WORK"/logs/skein-*.log "$WORK"/spans-*/error.log)" >"$dir/status"; return 1; }
      echo "as skein, both proxies exporting spans to a local sink (Zipkin JSON), sampling $percent% of new traces" >"$dir/note" ;;
    skein-mtls)
      start_skein mtls || { echo "failed: skein proxy (mTLS) did not become ready: $(problems "$WORK"/logs/skein-*.log "$WORK"/logs/openssl.log)" >"$dir/status"; return 1; }
      echo "loadgen -> (REDIRECT) skein :$OUT_PORT -mTLS-> (REDIRECT) skein :$IN_PORT -> $SERVER_IP:$app_port; as skein, the endpoints with their identities ($MESH_TRUST_DOMAIN/ns/$BENCH_NS/sa/server) and http2Upgrade (HTTP/1 carried over HTTP/2 between the proxies)" >"$dir/note" ;;
    skein-base)
      SKEIN_RUN=$SKEIN_BASELINE start_skein || { echo "failed: the baseline's skein proxy did not become ready: $(problems "$WORK"/logs/skein-*.log)" >"$dir/status"; return 1; }
      echo "as skein, with the baseline build's proxies (SKEIN_BASELINE_BIN: $SKEIN_BASELINE_REV)" >"$dir/note" ;;
    skein-mtls-base)
      SKEIN_RUN=$SKEIN_BASELINE start_skein mtls || { echo "failed: the baseline's skein proxy (mTLS) did not become ready: $(problems "$WORK"/logs/skein-*.log "$WORK"/logs/openssl.log)" >"$dir/status"; return 1; }
      echo "as skein-mtls, with the baseline build's proxies (SKEIN_BASELINE_BIN: $SKEIN_BASELINE_REV)" >"$dir/note" ;;
    skein-mtls-h1)
      start_skein mtls-h1 || { echo "failed: skein proxy (mTLS) did not become ready: $(problems "$WORK"/logs/skein-*.log "$WORK"/logs/openssl.log)" >"$dir/status"; return 1; }
      echo "as skein-mtls without http2Upgrade: HTTP/1 stays HTTP/1 between the proxies" >"$dir/note" ;;
    nginx)
      start_nginx_proxies "$proto" || { echo "failed: nginx did not start: $(problems "$WORK"/nginx-*/error.log "$WORK"/logs/nginx-*.log)" >"$dir/status"; return 1; }
      case "$proto" in
        h1) echo "loadgen -> $via, HTTP/1.1 keep-alive pools; PSS = master + worker" >"$dir/note" ;;
        h2) echo "loadgen -h2c-> (REDIRECT) nginx :$OUT_PORT -HTTP/1.1-> (REDIRECT) nginx :$IN_PORT -HTTP/1.1-> 127.0.0.1:$APP_H1_PORT (no h2c upstream in nginx); PSS = master + worker" >"$dir/note" ;;
        grpc) echo "loadgen -> $via, grpc_pass, keep-alive pools; PSS = master + worker" >"$dir/note" ;;
        redis) echo "loadgen -> $via, nginx stream; PSS = master + worker" >"$dir/note" ;;
      esac ;;
    haproxy)
      start_haproxy_proxies "$proto" || { echo "failed: HAProxy did not start: $(problems "$WORK"/logs/haproxy-*.log)" >"$dir/status"; return 1; }
      case "$proto" in
        h1) echo "loadgen -> $via, HTTP/1.1, http-reuse always" >"$dir/note" ;;
        redis) echo "loadgen -> $via, mode tcp" >"$dir/note" ;;
        *) echo "loadgen -h2c-> (REDIRECT) haproxy :$OUT_PORT -h2c-> (REDIRECT) haproxy :$IN_PORT -h2c-> 127.0.0.1:$app_port, http-reuse always" >"$dir/note" ;;
      esac ;;
  esac

  # One request must go through end to end before anything is measured.
  local ok=0
  case "$proto" in
    h1) TARGET="http://$SERVER_IP:$app_port/"; wait_until 5 "a first response" http_ok "$NS_C" "$TARGET" && ok=1 ;;
    h2) TARGET="http://$SERVER_IP:$app_port/"; wait_until 5 "a first h2c response" http2_ok "$NS_C" "$TARGET" && ok=1 ;;
    grpc) TARGET="$SERVER_IP:$app_port"; wait_until 10 "a first gRPC response" grpc_ok "$NS_C" "$TARGET" && ok=1 ;;
    redis) TARGET="$SERVER_IP:$app_port"; wait_until 10 "a first Redis answer" redis_ok "$NS_C" "$SERVER_IP" "$app_port" && ok=1 ;;
  esac
  if [ "$ok" != 1 ]; then
    echo "failed: no correct answer through $TARGET" >"$dir/status"
    return 1
  fi

  if [ "$proto" = redis ]; then
    load_redis "$dir" warmup $(((REDIS_REQUESTS + 9) / 10)) || { echo "failed: warm-up run failed" >"$dir/status"; return 1; }
    rm -f "$dir/warmup.csv"
  else
    load "$proto" "$dir" warmup 0 "$WARMUP" || { echo "failed: warm-up run failed" >"$dir/status"; return 1; }
    rm -f "$dir/warmup.json" "$dir/warmup.target"
  fi
  if [ ${#PROXY_GROUPS[@]} -gt 0 ]; then
    local idle
    if ! idle=$(proxy_cpu_used "$dir/warmup.before" "$dir/warmup.after"); then
      echo "failed: the $idle proxy used no CPU during the warm-up: traffic did not go through it" >"$dir/status"
      return 1
    fi
  fi
  if [ "$proto" = redis ]; then
    load_redis "$dir" redis "$REDIS_REQUESTS" || { echo "failed: the redis-benchmark run failed" >"$dir/status"; return 1; }
  else
    # 1,000 rps first: its memory is that of a proxy that has seen no more than warm-up.
    local run max rate
    [[ " $RATE_RUNS " == *" r1000 "* ]] && { load "$proto" "$dir" r1000 1000 "$RATE_SECONDS" || true; }
    load "$proto" "$dir" max 0 "$MAX_SECONDS" || { echo "failed: the maximum run failed" >"$dir/status"; return 1; }
    local kind=oha
    [ "$proto" = grpc ] && kind=ghz
    max=$(python3 "$REPORT_PY" rps "$kind" "$dir/max.json" 2>/dev/null || echo 0)
    for run in $RATE_RUNS; do
      case "$run" in
        r50) rate=$(python3 -c "print(max(1, round($max * 0.5)))") ;;
        r80) rate=$(python3 -c "print(max(1, round($max * 0.8)))") ;;
        *) continue ;;
      esac
      load "$proto" "$dir" "$run" "$rate" "$RATE_SECONDS" || true
    done
    # The cost of a connection (h1, the modes that reach the app's address without a fixed
    # upstream): a new one per request, to the HTTP port and to the opaque TCP port (one new
    # proxy-to-proxy connection each).
    if [ "$proto" = h1 ] && [[ "$mode" == direct* || "$mode" == skein* ]]; then
      if wait_until 5 "an answer on port $APP_TCP_PORT" http_ok "$NS_C" "http://$SERVER_IP:$APP_TCP_PORT/"; then
        load "$proto" "$dir" conn-http 0 "$HS_SECONDS" newconn || true
        local http_target=$TARGET
        TARGET="http://$SERVER_IP:$APP_TCP_PORT/"
        load "$proto" "$dir" conn-tcp 0 "$HS_SECONDS" newconn || true
        TARGET=$http_target
      fi
    fi
  fi
  if [[ "$mode" == skein* ]]; then
    # What the proxies made of the traffic (the report tells HTTP-aware from opaque TCP by it).
    ip netns exec "$NS_C" curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$dir/metrics-client.txt" || true
    ip netns exec "$NS_S" curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$dir/metrics-server.txt" || true
  fi
  local pid
  for pid in $APP_PIDS "${PROXY_GROUPS[@]#*=}"; do
    alive "$pid" || { echo "ok (but pid $pid exited during the runs)" >"$dir/status"; return 0; }
  done
  echo ok >"$dir/status"
}

# ---------------------------------------------------------------------------------------------
# Main.

install_apt
for tool in nginx haproxy curl ip iptables setpriv taskset python3 openssl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing and could not be installed"
done
if [ "$LOADGEN_CPU" -ge "$CPUS" ] || [ "$SERVER_CPU" -ge "$CPUS" ]; then
  die "CPU $LOADGEN_CPU or $SERVER_CPU does not exist here ($CPUS CPUs)"
fi
mkdir -p "$CACHE"
install_oha
GRPC_UNAVAILABLE="" REDIS_UNAVAILABLE="" STREAM_UNAVAILABLE=""
want_proto grpc && install_grpc_tools
want_proto redis && check_redis_tools
build_skein

WORK=$(mktemp -d /tmp/skbench.XXXXXX)
chmod 755 "$WORK" # the proxy UID and nginx workers reach their files through it
mkdir -p "$WORK/logs" "$WORK/bin"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
# Copies: the proxy user must be able to run them (the cache is under root's home; direct-rules
# runs the load generator as that user), and a concurrent `cargo build` cannot swap skein.
SKEIN="$WORK/skein"
install -m 755 "$SKEIN_SRC" "$SKEIN"
# `skein proxy` runs the lean skein-proxy beside it, as in the image; without one (a SKEIN_BIN
# directory that lacks it) the proxies run inside the whole skein binary, which maps more memory.
SKEIN_PROXY_BINARY="skein (in process: no skein-proxy beside $SKEIN_SRC)"
if [ -x "$(dirname "$SKEIN_SRC")/skein-proxy" ]; then
  install -m 755 "$(dirname "$SKEIN_SRC")/skein-proxy" "$WORK/skein-proxy"
  SKEIN_PROXY_BINARY="skein-proxy (the lean binary)"
fi
if [ -n "${SKEIN_BASELINE_BIN:-}" ]; then
  mkdir -p "$WORK/baseline"
  chmod 755 "$WORK/baseline"
  SKEIN_BASELINE="$WORK/baseline/skein"
  install -m 755 "$SKEIN_BASELINE_BIN" "$SKEIN_BASELINE"
  SKEIN_BASELINE_REV="$SKEIN_BASELINE_BIN, in process: no skein-proxy beside it"
  if [ -x "$(dirname "$SKEIN_BASELINE_BIN")/skein-proxy" ]; then
    install -m 755 "$(dirname "$SKEIN_BASELINE_BIN")/skein-proxy" "$WORK/baseline/skein-proxy"
    SKEIN_BASELINE_REV="$SKEIN_BASELINE_BIN, its skein-proxy sha256 $(sha256sum "$WORK/baseline/skein-proxy" | cut -c1-12)"
  fi
fi
install -m 755 "$OHA" "$WORK/bin/oha"
OHA="$WORK/bin/oha"
if want_proto grpc && [ -z "$GRPC_UNAVAILABLE" ]; then
  install -m 755 "$GHZ" "$WORK/bin/ghz"
  GHZ="$WORK/bin/ghz"
fi

NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
NGINX_NEW_H2=0
if [ "$(printf '%s\n%s\n' 1.25.1 "$NGINX_VERSION" | sort -V | head -1)" = 1.25.1 ]; then
  NGINX_NEW_H2=1
fi
HAPROXY_VERSION=$(haproxy -v 2>/dev/null | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')
OHA_VER=$("$OHA" --version 2>/dev/null | head -1)
REDIS_VER=""
want_proto redis && [ -z "$REDIS_UNAVAILABLE" ] && REDIS_VER="; $(redis-server --version | cut -d' ' -f1-3)"
if [ -n "${SKEIN_BIN:-}" ]; then
  SKEIN_REV="SKEIN_BIN; built from what, unknown"
else
  SKEIN_REV="release build of $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git -C "$REPO" diff --quiet HEAD 2>/dev/null || SKEIN_REV="$SKEIN_REV with uncommitted changes"
fi

PLACEMENT="load generator on CPU $LOADGEN_CPU; app and every proxy on CPU $SERVER_CPU (taskset); nginx and HAProxy one worker/thread each, skein one thread each (its default, --workers 1)"
{
  echo "quick=$QUICK"
  echo "loadgen_cpu=$LOADGEN_CPU"
  echo "server_cpu=$SERVER_CPU"
  echo "placement=$PLACEMENT"
  echo "fairness=every mode but direct runs behind the same \`skein init\` capture rules (REDIRECT to :$OUT_PORT out, :$IN_PORT in; conntrack); the load generator always dials the app ($SERVER_IP:APP); every proxy runs as uid $PROXY_UID on the capture ports; nginx and HAProxy cannot read SO_ORIGINAL_DST, so their client side has the fixed upstream ($SERVER_IP and $SERVER_IP2, round robin; the bench has one destination), Skein reads it and routes by its --config"
  echo "direct_rules=direct-rules: the capture rules in both namespaces and no proxy: the app also listens on :$IN_PORT, so each connection is REDIRECTed to it on the server side; the load generator runs as uid $PROXY_UID, so the client side's rules are crossed but do not redirect (that needs a listener there: a proxy)"
  echo "skein_config=both Skein proxies: --config as the control plane writes it: Destinations server.$BENCH_NS (2 endpoints with labels and workload) and client.$BENCH_NS, TrafficPolicy (peakEwma, limits, outlier detection, opaque 6379/11211), RouteRule route (prefix /, subset v1, timeout 10s, 2 retries) + MeshConfig default retry route"
  echo "skein=$SKEIN_SRC ($SKEIN_REV); the proxies run $SKEIN_PROXY_BINARY"
  echo "versions=nginx $NGINX_VERSION; HAProxy $HAPROXY_VERSION; $OHA_VER; ghz $GHZ_VERSION$REDIS_VER"
  RATES_TEXT=${RATE_RUNS//r1000/1,000 rps,}
  RATES_TEXT=${RATES_TEXT//r50/50% of max,}
  RATES_TEXT=${RATES_TEXT//r80/80% of max,}
  echo "durations=warm-up ${WARMUP}s, maximum ${MAX_SECONDS}s, each fixed rate ${RATE_SECONDS}s (${RATES_TEXT%,}); redis $REDIS_REQUESTS requests per test"
  echo "reps=$REPS per mode, interleaved (round 1 of every mode, then round 2, ...)"
  echo "machine=$CPUS CPUs, $(uname -r), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "desc_h1=h1: HTTP/1.1 GET, 1 KiB response, $CONNS keep-alive connections (oha; open loop with --latency-correction at fixed rates)"
  echo "desc_h2=h2: HTTP/2 h2c prior knowledge GET, 1 KiB response, $H2_CONNS connections x $H2_STREAMS streams (oha --http2; open loop with --latency-correction)"
  echo "desc_conn=connection cost: h1 GET with a new connection per request (oha --disable-keepalive), $HS_CONNS at a time, closed loop, ${HS_SECONDS}s per run"
  echo "desc_grpc=grpc: unary helloworld.Greeter/SayHello, 1 KiB reply, $CONNS workers over $H2_CONNS connections (ghz; fixed rates with --rps --async, no coordinated-omission correction; max run closed loop)"
  echo "desc_redis=redis: opaque TCP, redis-benchmark -t set,get -P 1 -d $BODY_BYTES -c $REDIS_CLIENTS -n $REDIS_REQUESTS (closed loop; HAProxy mode tcp, nginx stream, Skein opaque port 6379)"
} >"$RESULTS/meta.env"

log "placement: $PLACEMENT"
n_http=0 n_redis=0 n_modes=0
for p in ${PROTOCOLS//,/ }; do
  if [ "$p" = redis ]; then n_redis=1; else n_http=$((n_http + 1)); fi
done
for m in ${MODES//,/ }; do n_modes=$((n_modes + 1)); done
n_rates=$(wc -w <<<"$RATE_RUNS")
per_round=$(((WARMUP + MAX_SECONDS + n_rates * RATE_SECONDS + 4) * n_http + n_redis * (REDIS_REQUESTS / 5000 + 4)))
log "this takes about $((per_round * n_modes * REPS)) s ($REPS round(s))"
log "work directory $WORK; network namespaces $NS_C and $NS_S ($CLIENT_IP <-> $SERVER_IP, $SERVER_IP2, no other route)"
read -r LOAD1 _ </proc/loadavg
if python3 -c "import sys; sys.exit(0 if $LOAD1 > 0.5 else 1)"; then
  log "warning: load average $LOAD1 before the run: other work on this machine will skew the numbers"
fi

# Namespaces of earlier runs that died without cleaning up (kill -9): named, not touched.
for ns in $(ip netns list 2>/dev/null | awk '/^skbench-[0-9]+-/ {print $1}'); do
  pid=${ns#skbench-}
  pid=${pid%%-*}
  kill -0 "$pid" 2>/dev/null ||
    log "warning: network namespace $ns is left from an earlier run (pid $pid is gone); remove it with: ip netns del $ns"
done

# unavailable PROTO MODE: why that combination cannot run here, or nothing.
unavailable() {
  case "$1/$2" in
    redis/skein-trace*) echo "not applicable: opaque TCP carries no HTTP requests to trace" ;;
    grpc/*) [ -z "$GRPC_UNAVAILABLE" ] || echo "$GRPC_UNAVAILABLE" ;;
    redis/nginx) echo "${REDIS_UNAVAILABLE:-$STREAM_UNAVAILABLE}" ;;
    redis/*) echo "$REDIS_UNAVAILABLE" ;;
  esac
}

for rep in $(seq 1 "$REPS"); do
  for proto in h1 h2 grpc redis; do
    want_proto "$proto" || continue
    for mode in $ALL_MODES; do
      want_mode "$mode" || continue
      why=$(unavailable "$proto" "$mode")
      if [ -n "$why" ]; then
        mkdir -p "$RESULTS/$proto/$mode/rep$rep"
        [[ "$why" == "not applicable"* ]] || why="unavailable: $why"
        echo "$why" >"$RESULTS/$proto/$mode/rep$rep/status"
        continue
      fi
      if ! bench_mode "$proto" "$mode" "$rep"; then
        log "$proto / $mode: $(cat "$RESULTS/$proto/$mode/rep$rep/status")"
      fi
      delete_netns
    done
  done
done

echo "machine_end=load average at end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/meta.env"
[ "$KEEP" = 1 ] && log "work directory kept: $WORK (configs, logs, raw load-generator output, results/full.json)"
python3 "$REPORT_PY" report "$RESULTS"
