#!/usr/bin/env bash
# Data-plane benchmark: the same 1 KiB workload measured direct (client -> app), through Skein as
# a mesh runs it (client pod: `skein init` capture + `skein proxy` sidecar -> server pod: capture +
# sidecar -> app, two hops), plaintext and with mutual TLS between the two sidecars, and through
# nginx and HAProxy doing the same two hops (a client-side and a server-side instance, one worker
# each, keep-alive upstream pools).
#
#   client netns skbench-PID-client (198.18.200.1)  <-veth->  server netns skbench-PID-server (198.18.200.2)
#   load generator (CPU 0)                                     app: nginx `return 200` 1 KiB (h1 :8080, h2c :8081)
#   client-side proxy (CPU 1)                                       or gRPC greeter (:50051), 1 KiB replies
#                                                              server-side proxy (CPU 1)
#
#   direct:   loadgen -> 198.18.200.2:APP
#   skein:    loadgen -> 198.18.200.2:APP, captured -> skein :16001 -> (captured) skein :16006 -> 127.0.0.1:APP
#   skein-mtls: as skein, the hop between the sidecars mutual TLS (TLS 1.3): both proxies hold a
#             static workload certificate (--workload-cert; a throw-away CA made with openssl,
#             spiffe://cluster.local/ns/bench/sa/{client,server}) and the client proxy has a
#             --config naming 198.18.200.2's ports with the server's identity (plain `skein` has the
#             same --config without the identity, so the two differ only in mTLS)
#   skein-trace0, skein-trace1, skein-trace100 (not run unless named in --modes): as skein, both
#             proxies exporting spans (Zipkin JSON) to a sink in their namespace (nginx answering
#             202 on 127.0.0.1:9411, on the load generator's CPU), sampling 0%, 1% and 100% of the
#             requests: what tracing costs, next to `skein` (no exporter) in the same run
#   nginx:    loadgen -> 127.0.0.1:1008x nginx -> 198.18.200.2:1008x nginx -> 127.0.0.1:APP
#   haproxy:  loadgen -> 127.0.0.1:1008x haproxy -> 198.18.200.2:1008x haproxy -> 127.0.0.1:APP
#
# Protocols: h1 (HTTP/1.1, oha), h2 (h2c prior knowledge, oha --http2), grpc (ghz, unary SayHello).
# Per mode, after a warm-up: an open-loop run at 1,000 rps (oha -q RATE --latency-correction; ghz
# --rps RATE --async), the maximum (closed loop, fixed connections), then open-loop runs at 50% and
# 80% of that mode's maximum.
# Reported: p50/p99/p99.9, latency added vs direct at 1,000 rps (per hop = added / 2), max rps,
# proxy CPU per 1,000 rps (utime+stime deltas in /proc/PID/stat) and RSS (VmRSS/VmHWM); a table,
# then one JSON object as the last line.
# Connection cost (h1; direct, skein, skein-mtls): short closed-loop runs with a new connection per
# request (oha --disable-keepalive, SKBENCH_HANDSHAKE_CONNECTIONS at a time): to the HTTP port (the
# client proxy still pools its connections to the server proxy) and to port 11211, which the app
# also serves and the proxies forward as opaque TCP (in their default opaque ports): there each
# request is one new proxy-to-proxy connection, so skein-mtls minus skein there is the cost of one
# TLS handshake on that hop (resumed, as the proxies do: session tickets). The report closes with
# "mTLS vs plaintext": added p50/p99 at 1,000 rps, CPU per 1,000 rps, max rps, handshake cost.
#
# Usage: sudo benches/proxy.sh [--quick] [--protocols h1,h2,grpc] [--modes direct,skein,skein-mtls,nginx,haproxy] [--keep]
#   e.g. the cost of tracing: sudo benches/proxy.sh --protocols h1 --modes direct,skein,skein-trace0,skein-trace1,skein-trace100
#   --quick      h1 only, short runs, 1,000 rps and 80% of max (under a minute once tools are built)
#   --keep       keep the work directory (configs, logs, raw load-generator output)
# Environment: SKEIN_BIN (use this binary instead of `cargo build --release`),
#   SKBENCH_LOADGEN_CPU (default 0), SKBENCH_SERVER_CPU (default 1: app and every proxy),
#   SKBENCH_CONNECTIONS (default 64 in-flight requests), SKBENCH_MAX_SECONDS, SKBENCH_RATE_SECONDS,
#   SKBENCH_WARMUP_SECONDS, SKBENCH_HANDSHAKE_SECONDS (each connection-cost run; 2, or 5 without
#   --quick), SKBENCH_HANDSHAKE_CONNECTIONS (default 4).
# Installs what is missing: nginx, haproxy, curl, iproute2, iptables, util-linux, openssl (apt); oha (cargo
# install) and, for grpc, ghz (go install) plus benches/proxy/greeter (go build), cached in
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

CLIENT_IP=198.18.200.1 # 198.18.0.0/15: reserved for benchmarking, and only inside our netns pair
SERVER_IP=198.18.200.2
PROXY_UID=2170
APP_H1_PORT=8080
APP_H2_PORT=8081
APP_GRPC_PORT=50051
# The app's h1 answer again, on a port both proxies forward as opaque TCP (memcached's, one of their
# default opaque ports): a new client connection there is a new proxy-to-proxy connection.
APP_TCP_PORT=11211
SPAN_SINK_PORT=9411 # the tracing modes' span sinks (Zipkin's port)
MESH_TRUST_DOMAIN=spiffe://cluster.local
BENCH_NS=bench
# Client-side proxy listeners (127.0.0.1 in the client netns) and server-side ones (SERVER_IP).
FRONT_H1=10080 FRONT_H2=10082 FRONT_GRPC=10084
BACK_H1=10081 BACK_H2=10083 BACK_GRPC=10085
BODY_BYTES=1024

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

QUICK=0 KEEP=0 PROTOCOLS="" MODES="direct,skein,skein-mtls,nginx,haproxy"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --protocols) PROTOCOLS=${2:?--protocols needs a value}; shift ;;
    --protocols=*) PROTOCOLS=${1#*=} ;;
    --modes) MODES=${2:?--modes needs a value}; shift ;;
    --modes=*) MODES=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "proxy.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" -ne 0 ]; then
  echo "proxy.sh: must run as root (it creates network namespaces, iptables rules and runs the proxy as uid $PROXY_UID)" >&2
  exit 1
fi

if [ "$QUICK" = 1 ]; then
  : "${PROTOCOLS:=h1}"
  WARMUP=${SKBENCH_WARMUP_SECONDS:-1} MAX_SECONDS=${SKBENCH_MAX_SECONDS:-2} RATE_SECONDS=${SKBENCH_RATE_SECONDS:-2}
  RATE_RUNS="r1000 r80"
  HS_SECONDS=${SKBENCH_HANDSHAKE_SECONDS:-2}
else
  : "${PROTOCOLS:=h1,h2,grpc}"
  WARMUP=${SKBENCH_WARMUP_SECONDS:-3} MAX_SECONDS=${SKBENCH_MAX_SECONDS:-10} RATE_SECONDS=${SKBENCH_RATE_SECONDS:-15}
  RATE_RUNS="r1000 r50 r80"
  HS_SECONDS=${SKBENCH_HANDSHAKE_SECONDS:-5}
fi
CONNS=${SKBENCH_CONNECTIONS:-64}
HS_CONNS=${SKBENCH_HANDSHAKE_CONNECTIONS:-4}
H2_CONNS=4 # HTTP/2 and gRPC: CONNS streams over this many connections
H2_STREAMS=$(((CONNS + H2_CONNS - 1) / H2_CONNS))

for p in ${PROTOCOLS//,/ }; do
  case "$p" in h1 | h2 | grpc) ;; *) echo "proxy.sh: unknown protocol '$p' (h1, h2, grpc)" >&2; exit 2 ;; esac
done
for m in ${MODES//,/ }; do
  case "$m" in direct | skein | skein-mtls | skein-trace0 | skein-trace1 | skein-trace100 | nginx | haproxy) ;; *) echo "proxy.sh: unknown mode '$m' (direct, skein, skein-mtls, skein-trace0, skein-trace1, skein-trace100, nginx, haproxy)" >&2; exit 2 ;; esac
done
want_proto() { [[ ",$PROTOCOLS," == *",$1,"* ]]; }
want_mode() { [[ ",$MODES," == *",$1,"* ]]; }

CPUS=$(nproc)
LOADGEN_CPU=${SKBENCH_LOADGEN_CPU:-0}
SERVER_CPU=${SKBENCH_SERVER_CPU:-1}
for n in "$LOADGEN_CPU" "$SERVER_CPU" "${SKBENCH_CONNECTIONS:-64}" "${SKBENCH_WARMUP_SECONDS:-1}" \
  "${SKBENCH_MAX_SECONDS:-1}" "${SKBENCH_RATE_SECONDS:-1}" "${SKBENCH_HANDSHAKE_SECONDS:-1}" "${SKBENCH_HANDSHAKE_CONNECTIONS:-1}"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "proxy.sh: '$n' is not a whole number (SKBENCH_* settings)" >&2; exit 2; }
done
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
  [ ${#missing[@]} -gt 0 ] || return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
  log "cargo build --release --bin skein (target dir $target_dir)"
  (cd "$REPO" && cargo build --release --bin skein >&2) ||
    die "cargo build --release failed in $REPO (SKEIN_BIN=/path/to/skein benchmarks a binary built elsewhere)"
  SKEIN_SRC="$target_dir/release/skein"
}

# ---------------------------------------------------------------------------------------------
# Topology.

NS_C="skbench-$$-client"
NS_S="skbench-$$-server"

make_pair() {
  local ns
  for ns in "$NS_C" "$NS_S"; do
    ip netns add "$ns" || return 1
    CREATED_NS+=("$ns")
  done
  # Created directly inside the namespaces: no interface ever exists in the machine's namespace,
  # and neither namespace has a route beyond the pair's /30.
  ip link add eth0 netns "$NS_C" type veth peer name eth0 netns "$NS_S" || return 1
  for ns in "$NS_C" "$NS_S"; do
    ip -n "$ns" link set lo up && ip -n "$ns" link set eth0 up || return 1
  done
  ip -n "$NS_C" addr add "$CLIENT_IP/30" dev eth0 &&
    ip -n "$NS_S" addr add "$SERVER_IP/30" dev eth0
}

# start NAME NETNS CPU CMD...: CMD in the background, pinned; its pid in LAST_PID (`ip netns exec`
# and `taskset` exec, so it is the command itself), its output in $WORK/logs/NAME.log.
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

# problems LOG...: the lines of these logs that report a problem, on one line (the last ones).
problems() {
  cat "$@" 2>/dev/null | grep -iE 'alert|emerg|error|fatal|panick|fail|cannot|denied' | tail -3 | tr '\n' ' ' | cut -c1-400
}

http_ok() { # NS URL [curl flags...]: a 200 with the 1 KiB body
  local ns=$1 url=$2 got
  shift 2
  got=$(ip netns exec "$ns" curl -sS --max-time 2 "$@" -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$url") || return 1
  [ "${got%% *}" = 200 ] && [ "$(echo "$got" | cut -d' ' -f2)" = "$BODY_BYTES" ]
}

http2_ok() { # NS URL: as http_ok, over h2c with prior knowledge, and really HTTP/2
  local got
  got=$(ip netns exec "$1" curl -sS --max-time 2 --http2-prior-knowledge -o /dev/null -w '%{http_code} %{size_download} %{http_version}' "$2") || return 1
  [ "$got" = "200 $BODY_BYTES 2" ]
}

tcp_open() { ip netns exec "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; }

grpc_ok() { # NS TARGET
  ip netns exec "$1" timeout 10 "$GHZ" --insecure --call helloworld.Greeter.SayHello -d '{"name":"skein"}' \
    -n 1 -c 1 -O json "$2" 2>/dev/null | grep -q '"OK":1'
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

nginx_common() { # DIR
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
user $NGINX_USER;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 16384; }
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

start_nginx() { # NAME NS CONF_BODY
  local name=$1 ns=$2 dir="$WORK/$1"
  mkdir -p "$dir/tmp"
  rm -f "$dir/error.log"
  { nginx_common "$dir"; printf '%s\n}\n' "$3"; } >"$dir/nginx.conf"
  start "$name" "$ns" "$SERVER_CPU" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
}

start_app() { # PROTO
  if [ "$1" = grpc ]; then
    start app "$NS_S" "$SERVER_CPU" "$GREETER" -listen "0.0.0.0:$APP_GRPC_PORT" -procs 1
    APP_PIDS=$LAST_PID
    wait_until 10 "the gRPC app" tcp_open "$NS_S" 127.0.0.1 "$APP_GRPC_PORT" || return 1
    return 0
  fi
  local body
  body=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
  start_nginx app "$NS_S" "$(
    cat <<EOF
    server {
        listen 0.0.0.0:$APP_H1_PORT;
        location / { default_type application/octet-stream; return 200 '$body'; }
    }
    server {
        $(nginx_h2_listen "0.0.0.0:$APP_H2_PORT")
        location / { default_type application/octet-stream; return 200 '$body'; }
    }
    server {
        listen 0.0.0.0:$APP_TCP_PORT;
        location / { default_type application/octet-stream; return 200 '$body'; }
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

# client_config FILE [IDENTITY]: the client proxy's view of the server, as a control plane would
# send it: every app port at SERVER_IP, one endpoint there (APP_TCP_PORT forwarded as opaque TCP)
# that speaks mTLS as IDENTITY when one is given. Both skein modes use it, so they differ only
# in mTLS.
client_config() {
  python3 - "$1" "$SERVER_IP" "${2:-}" "$BENCH_NS" \
    "$APP_H1_PORT" "$APP_H2_PORT" "$APP_GRPC_PORT" "$APP_TCP_PORT" <<'EOF'
import json, sys
path, ip, identity, ns, h1, h2, grpc, tcp = sys.argv[1:]
def port(p, protocol="detect"):
    endpoint = {"address": f"{ip}:{p}", "workload": {"name": "server", "namespace": ns}}
    if identity:
        endpoint["identity"] = identity
    return {"port": int(p), "protocol": protocol, "endpoints": [endpoint]}
json.dump({
    "version": "bench-mtls" if identity else "bench",
    "workload": {"name": "client", "namespace": ns},
    "destinations": [{
        "name": f"server.{ns}.svc.cluster.local",
        "addresses": [ip],
        "ports": [port(h1), port(h2), port(grpc), port(tcp, "opaque")],
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
    mkdir -p "$WORK/spans-$side/tmp"
    { nginx_common "$WORK/spans-$side"; printf '%s\n}\n' "    server { listen 127.0.0.1:$SPAN_SINK_PORT; location / { return 202; } }"; } >"$WORK/spans-$side/nginx.conf"
    start "spans-$side" "$ns" "$LOADGEN_CPU" nginx -e "$WORK/spans-$side/error.log" -p "$WORK/spans-$side" -c "$WORK/spans-$side/nginx.conf"
    wait_until 10 "the span sink in $ns" tcp_open "$ns" 127.0.0.1 "$SPAN_SINK_PORT" || return 1
  done
}

start_skein() { # [mtls | trace PERCENT]
  local side ns pids=() extra
  mkdir -p "$WORK/mtls"
  if [ "${1:-}" = trace ]; then
    start_span_sinks || return 1
  fi
  if [ "${1:-}" = mtls ]; then
    make_certs || { log "openssl could not make the certificates: $(tail -3 "$WORK/logs/openssl.log")"; return 1; }
    client_config "$WORK/mtls/client-config.json" "$MESH_TRUST_DOMAIN/ns/$BENCH_NS/sa/server" || return 1
  else
    client_config "$WORK/mtls/client-config.json" || return 1
  fi
  chmod 755 "$WORK/mtls"
  chmod 644 "$WORK/mtls/client-config.json"
  for side in client server; do
    ns=$NS_C
    [ "$side" = server ] && ns=$NS_S
    extra=()
    if [ "${1:-}" = mtls ]; then
      extra=(--workload-cert "$WORK/mtls/$side.pem" --workload-key "$WORK/mtls/$side.key" --trust-bundle "$WORK/mtls/ca.pem")
    fi
    [ "$side" = client ] && extra+=(--config "$WORK/mtls/client-config.json")
    if [ "${1:-}" = trace ]; then
      extra+=(--zipkin-endpoint "http://127.0.0.1:$SPAN_SINK_PORT/api/v2/spans" --trace-sampling-percentage "$2")
    fi
    ip netns exec "$ns" "$SKEIN" init --proxy-uid "$PROXY_UID" --inbound-port 16006 --outbound-port 16001 \
      >"$WORK/logs/skein-init-$side.log" 2>&1 || { log "skein init failed in $ns: $(tail -3 "$WORK/logs/skein-init-$side.log")"; return 1; }
    start "skein-$side" "$ns" "$SERVER_CPU" setpriv --reuid "$PROXY_UID" --regid "$PROXY_UID" --clear-groups \
      env SKEIN_LOG=warn "$SKEIN" proxy --outbound-port 16001 --inbound-port 16006 --admin-port 16000 --drain-timeout 1s \
      "${extra[@]}"
    pids+=("$LAST_PID")
  done
  PROXY_GROUPS=("client=${pids[0]}" "server=${pids[1]}")
  for ns in "$NS_C" "$NS_S"; do
    wait_until 20 "skein proxy /ready in $ns" http_200 "$ns" http://127.0.0.1:16000/ready || return 1
  done
}

http_200() { [ "$(ip netns exec "$1" curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$2")" = 200 ]; }

start_nginx_proxies() {
  # Client side: listeners on loopback, one keep-alive pool to the server-side instance.
  # nginx has no HTTP/2 upstream for proxy_pass: h2c comes in, HTTP/1.1 goes on (gRPC uses grpc_pass).
  start_nginx nginx-client "$NS_C" "$(
    cat <<EOF
    upstream next_h1 { server $SERVER_IP:$BACK_H1; keepalive 256; keepalive_requests 1000000; keepalive_timeout 300s; }
    upstream next_grpc { server $SERVER_IP:$BACK_GRPC; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
    server {
        listen 127.0.0.1:$FRONT_H1;
        location / { proxy_pass http://next_h1; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        $(nginx_h2_listen "127.0.0.1:$FRONT_H2")
        location / { proxy_pass http://next_h1; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        $(nginx_h2_listen "127.0.0.1:$FRONT_GRPC")
        location / { grpc_pass grpc://next_grpc; }
    }
EOF
  )"
  local client=$LAST_PID
  start_nginx nginx-server "$NS_S" "$(
    cat <<EOF
    upstream app_h1 { server 127.0.0.1:$APP_H1_PORT; keepalive 256; keepalive_requests 1000000; keepalive_timeout 300s; }
    upstream app_grpc { server 127.0.0.1:$APP_GRPC_PORT; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
    server {
        listen $SERVER_IP:$BACK_H1;
        location / { proxy_pass http://app_h1; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        $(nginx_h2_listen "$SERVER_IP:$BACK_GRPC")
        location / { grpc_pass grpc://app_grpc; }
    }
EOF
  )"
  PROXY_GROUPS=("client=$client" "server=$LAST_PID")
  wait_until 10 "nginx (client side)" tcp_open "$NS_C" 127.0.0.1 "$FRONT_H1" &&
    wait_until 10 "nginx (server side)" tcp_open "$NS_S" "$SERVER_IP" "$BACK_H1"
}

haproxy_common() {
  cat <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
    maxconn 4096
EOF
}

start_haproxy_proxies() {
  local dir="$WORK/haproxy"
  mkdir -p "$dir"
  {
    haproxy_common
    cat <<EOF
frontend h1
    bind 127.0.0.1:$FRONT_H1
    default_backend next_h1
backend next_h1
    server next $SERVER_IP:$BACK_H1
frontend h2
    bind 127.0.0.1:$FRONT_H2 proto h2
    default_backend next_h2
backend next_h2
    server next $SERVER_IP:$BACK_H2 proto h2
frontend grpc
    bind 127.0.0.1:$FRONT_GRPC proto h2
    default_backend next_grpc
backend next_grpc
    server next $SERVER_IP:$BACK_GRPC proto h2
EOF
  } >"$dir/client.cfg"
  {
    haproxy_common
    cat <<EOF
frontend h1
    bind $SERVER_IP:$BACK_H1
    default_backend app_h1
backend app_h1
    server app 127.0.0.1:$APP_H1_PORT
frontend h2
    bind $SERVER_IP:$BACK_H2 proto h2
    default_backend app_h2
backend app_h2
    server app 127.0.0.1:$APP_H2_PORT proto h2
frontend grpc
    bind $SERVER_IP:$BACK_GRPC proto h2
    default_backend app_grpc
backend app_grpc
    server app 127.0.0.1:$APP_GRPC_PORT proto h2
EOF
  } >"$dir/server.cfg"
  start haproxy-client "$NS_C" "$SERVER_CPU" haproxy -db -f "$dir/client.cfg"
  local client=$LAST_PID
  start haproxy-server "$NS_S" "$SERVER_CPU" haproxy -db -f "$dir/server.cfg"
  PROXY_GROUPS=("client=$client" "server=$LAST_PID")
  wait_until 10 "HAProxy (client side)" tcp_open "$NS_C" 127.0.0.1 "$FRONT_H1" &&
    wait_until 10 "HAProxy (server side)" tcp_open "$NS_S" "$SERVER_IP" "$BACK_H1"
}

# ---------------------------------------------------------------------------------------------
# Measuring.

sample() { # FILE: CPU and memory of the proxy groups (an empty object without proxies)
  python3 "$REPORT_PY" sample "${PROXY_GROUPS[@]}" >"$1"
}

# run_loadgen USAGE STDOUT STDERR CMD...: the load generator in the client netns, pinned. In the
# background with `wait`, so that Ctrl-C or SIGTERM runs the traps at once. USAGE gets the wall
# clock and this shell's children CPU times (`times`) around it: the load generator's own CPU.
run_loadgen() {
  local usage=$1 out=$2 err=$3 pid t0 t1
  shift 3
  times >"$WORK/times.0"
  t0=$EPOCHREALTIME
  if [ "$out" = "$err" ]; then
    ip netns exec "$NS_C" taskset -c "$LOADGEN_CPU" "$@" >"$out" 2>&1 &
  else
    ip netns exec "$NS_C" taskset -c "$LOADGEN_CPU" "$@" >"$out" 2>"$err" &
  fi
  pid=$!
  STARTED_PIDS+=("$pid")
  wait "$pid" || true
  t1=$EPOCHREALTIME
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

proxy_cpu_used() { # BEFORE AFTER: every proxy instance used some CPU
  python3 - "$1" "$2" <<'EOF'
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:3])
idle = [g for g, v in after["groups"].items() if v["cpu_s"] - before["groups"].get(g, {}).get("cpu_s", 0) <= 0]
if idle:
    print(", ".join(idle))
    sys.exit(1)
EOF
}

# bench_mode PROTO MODE: sets up the pair, the app and the mode's proxies, measures, tears down.
bench_mode() {
  local proto=$1 mode=$2 dir="$RESULTS/$1/$2"
  mkdir -p "$dir"
  APP_PIDS="" PROXY_GROUPS=()
  log "$proto / $mode"
  if ! make_pair; then
    echo "failed: could not create the network namespaces" >"$dir/status"
    return 1
  fi
  if ! start_app "$proto"; then
    echo "failed: the app did not start (see --keep logs)" >"$dir/status"
    return 1
  fi

  local app_port=$APP_H1_PORT front=$FRONT_H1
  case "$proto" in
    h2) app_port=$APP_H2_PORT front=$FRONT_H2 ;;
    grpc) app_port=$APP_GRPC_PORT front=$FRONT_GRPC ;;
  esac
  local host=$SERVER_IP port=$app_port
  case "$mode" in
    direct)
      echo "loadgen -> app" >"$dir/note" ;;
    skein)
      start_skein || { echo "failed: skein proxy did not become ready: $(problems "$WORK"/logs/skein-*.log)" >"$dir/status"; return 1; }
      echo "loadgen -> (iptables REDIRECT) skein -> (REDIRECT) skein -> app; client proxy with --config (destination $SERVER_IP, plaintext endpoint)" >"$dir/note" ;;
    skein-trace*)
      local percent=${mode#skein-trace}
      start_skein trace "$percent" || { echo "failed: skein proxy (tracing) did not become ready: $(problems "$WORK"/logs/skein-*.log "$WORK"/spans-*/error.log)" >"$dir/status"; return 1; }
      echo "as skein, both proxies exporting spans to a local sink (Zipkin JSON), sampling $percent% of new traces" >"$dir/note" ;;
    skein-mtls)
      start_skein mtls || { echo "failed: skein proxy (mTLS) did not become ready: $(problems "$WORK"/logs/skein-*.log "$WORK"/logs/openssl.log)" >"$dir/status"; return 1; }
      echo "loadgen -> (REDIRECT) skein -mTLS-> (REDIRECT) skein -> app; client proxy with --config (destination $SERVER_IP, endpoint identity $MESH_TRUST_DOMAIN/ns/$BENCH_NS/sa/server)" >"$dir/note" ;;
    nginx)
      start_nginx_proxies || { echo "failed: nginx did not start: $(problems "$WORK"/nginx-*/error.log "$WORK"/logs/nginx-*.log)" >"$dir/status"; return 1; }
      host=127.0.0.1 port=$front
      case "$proto" in
        h1) echo "loadgen -> nginx -> nginx -> app, HTTP/1.1 keep-alive pools; RSS = master + worker" >"$dir/note" ;;
        h2) echo "loadgen -h2c-> nginx -HTTP/1.1-> nginx -HTTP/1.1-> app :$APP_H1_PORT (nginx proxy_pass has no HTTP/2 upstream: no h2c between hops); RSS = master + worker" >"$dir/note" ;;
        grpc) echo "loadgen -> nginx -grpc_pass-> nginx -grpc_pass-> app, keep-alive pools; RSS = master + worker" >"$dir/note" ;;
      esac ;;
    haproxy)
      start_haproxy_proxies || { echo "failed: HAProxy did not start: $(problems "$WORK"/logs/haproxy-*.log)" >"$dir/status"; return 1; }
      host=127.0.0.1 port=$front
      case "$proto" in
        h1) echo "loadgen -> haproxy -> haproxy -> app, HTTP/1.1, http-reuse always" >"$dir/note" ;;
        *) echo "loadgen -h2c-> haproxy -h2c-> haproxy -h2c-> app, http-reuse always" >"$dir/note" ;;
      esac ;;
  esac

  # One request must go through end to end before anything is measured.
  local ok=0
  case "$proto" in
    h1) TARGET="http://$host:$port/"; wait_until 5 "a first response" http_ok "$NS_C" "$TARGET" && ok=1 ;;
    h2) TARGET="http://$host:$port/"; wait_until 5 "a first h2c response" http2_ok "$NS_C" "$TARGET" && ok=1 ;;
    grpc) TARGET="$host:$port"; wait_until 10 "a first gRPC response" grpc_ok "$NS_C" "$TARGET" && ok=1 ;;
  esac
  if [ "$ok" != 1 ]; then
    if [ "$proto" = h2 ] && [[ "$mode" != skein* ]]; then
      echo "unavailable: no h2c (prior knowledge) answer through $mode" >"$dir/status"
    else
      echo "failed: no correct answer through $TARGET" >"$dir/status"
    fi
    return 1
  fi

  load "$proto" "$dir" warmup 0 "$WARMUP" || { echo "failed: warm-up run failed" >"$dir/status"; return 1; }
  rm -f "$dir/warmup.json" "$dir/warmup.target"
  if [ ${#PROXY_GROUPS[@]} -gt 0 ]; then
    local idle
    if ! idle=$(proxy_cpu_used "$dir/warmup.before" "$dir/warmup.after"); then
      echo "failed: the $idle proxy used no CPU during the warm-up: traffic did not go through it" >"$dir/status"
      return 1
    fi
  fi
  # 1,000 rps first: its RSS and HWM are those of a proxy that has seen no more than warm-up.
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
  # The cost of a connection (h1, the modes that dial the app's address): a new one per request,
  # to the HTTP port and to the opaque TCP port (one new proxy-to-proxy connection each).
  if [ "$proto" = h1 ] && [[ "$mode" == direct || "$mode" == skein* ]]; then
    if wait_until 5 "an answer on port $APP_TCP_PORT" http_ok "$NS_C" "http://$SERVER_IP:$APP_TCP_PORT/"; then
      load "$proto" "$dir" conn-http 0 "$HS_SECONDS" newconn || true
      local http_target=$TARGET
      TARGET="http://$SERVER_IP:$APP_TCP_PORT/"
      load "$proto" "$dir" conn-tcp 0 "$HS_SECONDS" newconn || true
      TARGET=$http_target
    fi
  fi
  [ ${#PROXY_GROUPS[@]} -gt 0 ] && sample "$dir/final.sample"
  if [[ "$mode" == skein* ]]; then
    # What the proxies made of the traffic (the report tells HTTP-aware from opaque TCP by it).
    ip netns exec "$NS_C" curl -s --max-time 2 http://127.0.0.1:16000/metrics >"$dir/metrics-client.txt" || true
    ip netns exec "$NS_S" curl -s --max-time 2 http://127.0.0.1:16000/metrics >"$dir/metrics-server.txt" || true
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
GRPC_UNAVAILABLE=""
want_proto grpc && install_grpc_tools
build_skein

WORK=$(mktemp -d /tmp/skbench.XXXXXX)
chmod 755 "$WORK" # nginx workers (not root) reach their temp paths through it
mkdir -p "$WORK/logs"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
# A copy: the proxy user must be able to run it, and a concurrent `cargo build` cannot swap it.
SKEIN="$WORK/skein"
install -m 755 "$SKEIN_SRC" "$SKEIN"

NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
NGINX_NEW_H2=0
if [ "$(printf '%s\n%s\n' 1.25.1 "$NGINX_VERSION" | sort -V | head -1)" = 1.25.1 ]; then
  NGINX_NEW_H2=1
fi
HAPROXY_VERSION=$(haproxy -v 2>/dev/null | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')
OHA_VER=$("$OHA" --version 2>/dev/null | head -1)
if [ -n "${SKEIN_BIN:-}" ]; then
  SKEIN_REV="SKEIN_BIN; built from what, unknown"
else
  SKEIN_REV="release build of $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git -C "$REPO" diff --quiet HEAD 2>/dev/null || SKEIN_REV="$SKEIN_REV with uncommitted changes"
fi

PLACEMENT="load generator on CPU $LOADGEN_CPU; app and every proxy on CPU $SERVER_CPU (taskset); nginx and HAProxy one worker/thread each, skein one thread each (its default, --workers 1)"
{
  echo "quick=$QUICK"
  echo "placement=$PLACEMENT"
  echo "skein=$SKEIN_SRC ($SKEIN_REV)"
  echo "versions=nginx $NGINX_VERSION; HAProxy $HAPROXY_VERSION; $OHA_VER; ghz $GHZ_VERSION"
  RATES_TEXT=${RATE_RUNS//r1000/1,000 rps,}
  RATES_TEXT=${RATES_TEXT//r50/50% of max,}
  RATES_TEXT=${RATES_TEXT//r80/80% of max,}
  echo "durations=warm-up ${WARMUP}s, maximum ${MAX_SECONDS}s, each fixed rate ${RATE_SECONDS}s (${RATES_TEXT%,})"
  echo "machine=$CPUS CPUs, $(uname -r), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "desc_h1=h1: HTTP/1.1 GET, 1 KiB response, $CONNS keep-alive connections (oha; open loop with --latency-correction at fixed rates)"
  echo "desc_h2=h2: HTTP/2 h2c prior knowledge GET, 1 KiB response, $H2_CONNS connections x $H2_STREAMS streams (oha --http2; open loop with --latency-correction)"
  echo "desc_conn=connection cost: h1 GET with a new connection per request (oha --disable-keepalive), $HS_CONNS at a time, closed loop, ${HS_SECONDS}s per run"
  echo "desc_grpc=grpc: unary helloworld.Greeter/SayHello, 1 KiB reply, $CONNS workers over $H2_CONNS connections (ghz; fixed rates with --rps --async, no coordinated-omission correction; max run closed loop)"
} >"$RESULTS/meta.env"

log "placement: $PLACEMENT"
n_protocols=0 n_modes=0
for p in ${PROTOCOLS//,/ }; do n_protocols=$((n_protocols + 1)); done
for m in ${MODES//,/ }; do n_modes=$((n_modes + 1)); done
n_rates=$(wc -w <<<"$RATE_RUNS")
log "this takes about $(((WARMUP + MAX_SECONDS + n_rates * RATE_SECONDS + 4) * n_modes * n_protocols)) s"
log "work directory $WORK; network namespaces $NS_C and $NS_S ($CLIENT_IP <-> $SERVER_IP, no other route)"
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

for proto in h1 h2 grpc; do
  want_proto "$proto" || continue
  for mode in direct skein skein-mtls skein-trace0 skein-trace1 skein-trace100 nginx haproxy; do
    want_mode "$mode" || continue
    if [ "$proto" = grpc ] && [ -n "$GRPC_UNAVAILABLE" ]; then
      mkdir -p "$RESULTS/$proto/$mode"
      echo "unavailable: $GRPC_UNAVAILABLE" >"$RESULTS/$proto/$mode/status"
      continue
    fi
    if ! bench_mode "$proto" "$mode"; then
      log "$proto / $mode: $(cat "$RESULTS/$proto/$mode/status")"
    fi
    delete_netns
  done
done

echo "machine_end=load average at end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/meta.env"
[ "$KEEP" = 1 ] && log "work directory kept: $WORK (configs, logs, raw load-generator output, results/full.json)"
python3 "$REPORT_PY" report "$RESULTS"
