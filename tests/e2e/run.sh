#!/usr/bin/env bash
# Skein's end-to-end suite, for any cluster Skein can be installed on (kind: tests/e2e/kind.sh; in
# CI: the local cluster with `skein dev node`, tests/e2e.rs). It installs the CRDs and the operator
# with the Helm chart, lets the operator install the mesh from a MeshConfig, meshes the demo in a
# labelled namespace, checks what a user relies on, then uninstalls and checks nothing is left.
#
#   tests/e2e/run.sh [--kubeconfig FILE] [--context NAME] [--image REPOSITORY] [--tag TAG]
#                    [--skein PATH] [--junit FILE] [--keep]
#
# Needs kubectl, helm and curl on PATH, and the skein CLI (--skein, default: skein on PATH). Every check is a JUnit test case (default file:
# e2e-junit.xml); the last line is the summary; the exit code is non-zero if any check failed.
# The suite removes what it installed, also when it fails or is interrupted; --keep leaves it
# (and skips the uninstall check).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

kube_args=() helm_args=() image_args=() junit=e2e-junit.xml keep=false skein=skein
while [ $# -gt 0 ]; do
  case "$1" in
    --kubeconfig) kube_args+=(--kubeconfig "$2"); helm_args+=(--kubeconfig "$2"); shift 2 ;;
    --context) kube_args+=(--context "$2"); helm_args+=(--kube-context "$2"); shift 2 ;;
    --image) image_args+=(--set "image.repository=$2" --set "meshConfig.spec.image=$2"); shift 2 ;;
    --tag) image_args+=(--set "image.tag=$2" --set "meshConfig.spec.version=$2"); shift 2 ;;
    --skein) skein=$2; shift 2 ;;
    --junit) junit=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    *) echo "run.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for tool in kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required on PATH" >&2; exit 2; }
done
command -v "$skein" >/dev/null || { echo "run.sh: the skein CLI is required: on PATH, or give --skein PATH" >&2; exit 2; }

readonly NS=skein-e2e-demo EXTERNAL_NS=skein-e2e-external MESH_NS=skein-system RELEASE=skein WAIT=180s
k() { kubectl "${kube_args[@]}" "$@"; }
log() { echo "e2e: $*" >&2; }

# --- checks and their JUnit record -------------------------------------------------------------
cases=() passed=0 failed=0 suite_started=$(date +%s)
xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }
# check NAME FUNCTION: runs FUNCTION, records its time, output and verdict.
check() {
  local name=$1 fn=$2 started output status
  started=$(date +%s)
  log "check: $name"
  output=$("$fn" 2>&1)
  status=$?
  local seconds=$(( $(date +%s) - started ))
  local case="<testcase classname=\"skein.e2e\" name=\"$(xml_escape <<<"$name")\" time=\"$seconds\">"
  if [ "$status" -eq 0 ]; then
    passed=$((passed + 1))
    log "  ok ($seconds s)"
  else
    failed=$((failed + 1))
    log "  FAILED ($seconds s):"
    sed 's/^/    /' <<<"$output" | tail -n 30 >&2
    case+="<failure message=\"$(tail -n 1 <<<"$output" | xml_escape)\">$(xml_escape <<<"$output")</failure>"
  fi
  cases+=("$case</testcase>")
  return "$status"
}
write_junit() {
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<testsuite name=\"skein-e2e\" tests=\"$((passed + failed))\" failures=\"$failed\" time=\"$(( $(date +%s) - suite_started ))\">"
    printf '%s\n' "${cases[@]}"
    echo '</testsuite>'
  } >"$junit"
}
# until SECONDS COMMAND...: retries COMMAND every second; its last output says why it failed.
until_ok() {
  local deadline=$(( $(date +%s) + $1 )) out; shift
  while true; do
    if out=$("$@" 2>&1); then printf '%s\n' "$out"; return 0; fi
    [ "$(date +%s)" -ge "$deadline" ] && { printf '%s\n' "$out"; return 1; }
    sleep 1
  done
}

# The apiserver's proxy reaches Services and pods from outside the cluster (kubectl proxy keeps
# the credentials of whatever kubeconfig is used). Started once, stopped on exit.
proxy_port=""
start_kubectl_proxy() {
  local out=$(mktemp)
  # kubectl itself, not the k function: a function in the background is a subshell, and
  # killing $! would leave kubectl running.
  kubectl "${kube_args[@]}" proxy --port 0 >"$out" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 50); do
    proxy_port=$(sed -n 's/^Starting to serve on 127.0.0.1:\([0-9]*\).*/\1/p' "$out")
    [ -n "$proxy_port" ] && break
    sleep 0.2
  done
  rm -f "$out"
  [ -n "$proxy_port" ] || { log "kubectl proxy did not start"; return 1; }
}
# frontend [CURL ARGS...]: one request to the demo's frontend Service through the apiserver.
frontend() {
  curl -fsS --max-time 10 "$@" "http://127.0.0.1:$proxy_port/api/v1/namespaces/$NS/services/frontend:80/proxy/"
}

uninstall() {
  k delete namespace "$NS" "$EXTERNAL_NS" --ignore-not-found --wait=false >/dev/null 2>&1
  k delete meshconfig default --ignore-not-found --wait --timeout=120s >/dev/null 2>&1
  helm "${helm_args[@]}" uninstall "$RELEASE" -n "$MESH_NS" --wait >/dev/null 2>&1
}
cleanup() {
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null
  if [ "$keep" = false ]; then uninstall; fi
  write_junit
  log "$passed passed, $failed failed in $(( $(date +%s) - suite_started ))s (JUnit: $junit)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the checks ---------------------------------------------------------------------------------
install_with_helm() {
  helm "${helm_args[@]}" upgrade --install "$RELEASE" "$root/charts/skein" -n "$MESH_NS" \
    --create-namespace --set meshConfig.create=true "${image_args[@]}" --wait --timeout 5m
}

mesh_ready() {
  k wait meshconfig/default --for=condition=Ready --timeout="$WAIT" &&
    k -n "$MESH_NS" wait deployment --all --for=condition=Available --timeout="$WAIT"
}

demo_meshed_and_ready() {
  k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null &&
    k label namespace "$NS" injection=enabled --overwrite >/dev/null &&
    k -n "$NS" apply -f "$root/config/demo/demo-app.yaml" >/dev/null &&
    k -n "$NS" wait deployment --all --for=condition=Available --timeout="$WAIT" || return 1
  local pods unmeshed
  pods=$(k -n "$NS" get pods -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.initContainers[*].name}{" "}{.spec.containers[*].name}{"\n"}{end}')
  unmeshed=$(grep -v 'skein-proxy' <<<"$pods" | grep -v '^$' || true)
  [ "$(grep -c . <<<"$pods")" -ge 4 ] || { echo "expected 4 demo pods, got: $pods"; return 1; }
  [ -z "$unmeshed" ] || { echo "pods without the skein-proxy sidecar: $unmeshed"; return 1; }
  echo "$pods"
}

three_tiers() {
  local reply
  reply=$(until_ok 60 frontend) || { echo "$reply"; return 1; }
  for role in frontend middleware backend; do
    grep -q "\"role\":\"$role\"" <<<"$reply" || { echo "no $role in the chain: $reply"; return 1; }
  done
}

# Counts the backend versions that answered N requests made with CURL ARGS.
backend_versions() {
  local n=$1; shift
  for _ in $(seq "$n"); do
    frontend "$@" | grep -o '{"role":"backend","version":"v[0-9]*"' | sed 's/.*"version":"//; s/"$//'
  done | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }'
}

route_rule() { # route_rule V1_WEIGHT V2_WEIGHT
  k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: skein.dev/v1alpha1
kind: RouteRule
metadata: {name: backend}
spec:
  service: backend
  http:
  - name: canary
    match: [{headers: [{name: x-canary, exact: "1"}]}]
    route: [{subset: {version: v2}, weight: 100}]
  - name: split
    route: [{subset: {version: v1}, weight: $1}, {subset: {version: v2}, weight: $2}]
EOF
}

header_route_and_split() {
  route_rule 100 0 || return 1
  # The rule reaches the proxies within a second or two: poll until it is in force.
  local deadline=$(( $(date +%s) + 60 )) plain canary
  while true; do
    plain=$(backend_versions 10)
    canary=$(backend_versions 10 -H 'x-canary: 1')
    [ "$plain" = "v1=10 " ] && [ "$canary" = "v2=10 " ] && break
    [ "$(date +%s)" -ge "$deadline" ] && { echo "with 100/0: plain $plain, x-canary $canary"; return 1; }
    sleep 1
  done
  route_rule 0 100 || return 1
  deadline=$(( $(date +%s) + 60 ))
  while [ "$(backend_versions 10)" != "v2=10 " ]; do
    [ "$(date +%s)" -ge "$deadline" ] && { echo "with 0/100: $(backend_versions 10)"; return 1; }
    sleep 1
  done
  k -n "$NS" get routerule backend -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}' | grep -qx True ||
    { echo "the RouteRule is not Accepted: $(k -n "$NS" get routerule backend -o yaml)"; return 1; }
  k -n "$NS" delete routerule backend >/dev/null
}

# failures N CURL ARGS...: how many of N requests to the frontend fail.
failures() {
  local n=$1 failed=0; shift
  for _ in $(seq "$n"); do frontend "$@" >/dev/null 2>&1 || failed=$((failed + 1)); done
  echo "$failed"
}

retry_hides_a_flaky_backend() {
  local flaky=(-H 'x-demo-backend-fail-percent: 30') failed
  # Without a retry rule about 30% fail (fewer than 3 of 40 would happen once in 10^4 runs).
  failed=$(failures 40 "${flaky[@]}")
  [ "$failed" -ge 3 ] || { echo "the flaky backend failed only $failed/40 without retries"; return 1; }
  k -n "$NS" apply -f - >/dev/null <<EOF || return 1
apiVersion: skein.dev/v1alpha1
kind: RouteRule
metadata: {name: backend-retry}
spec:
  service: backend
  http:
  - timeout: 1s
    simpleRetry: {attempts: 5, retryOn: [5xx]}
EOF
  # The rule is in force once its timeout cuts a slow backend (the middleware's proxy answers
  # 504, which the chain reports as a failure).
  local deadline=$(( $(date +%s) + 60 ))
  until ! frontend -H 'x-demo-backend-latency-ms: 3000' >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && { echo "the RouteRule's timeout never cut a slow backend"; return 1; }
    sleep 1
  done
  # A request now fails only if six tries in a row do (0.3^6: about 3 in 100 runs see one of 40).
  failed=$(failures 40 "${flaky[@]}")
  k -n "$NS" delete routerule backend-retry >/dev/null
  [ "$failed" -le 1 ] || { echo "with retries $failed/40 still failed"; return 1; }
}

# An "external" host: a pod outside the mesh (its namespace is not labelled), reached by its IP,
# not through a Service. A meshed client calls it (the demo app with --next pointing at it); its
# proxy blocks the call until an EgressRule names the host, and again once the rule is deleted.
egress_client() {
  curl -sS --max-time 10 "http://127.0.0.1:$proxy_port/api/v1/namespaces/$NS/services/egress-client:80/proxy/"
}
# Blocked: the client's proxy refused the call (the demo reports its 502) and counted it.
egress_blocked() {
  local reply pod metrics
  reply=$(egress_client) || return 1
  grep -q 'answered 502' <<<"$reply" || { echo "not blocked: $reply"; return 1; }
  pod=$(k -n "$NS" get pods -l app=egress-client -o jsonpath='{.items[0].metadata.name}')
  metrics=$(curl -fsS --max-time 10 "http://127.0.0.1:$proxy_port/api/v1/namespaces/$NS/pods/$pod:16000/proxy/metrics") || return 1
  grep -Eq '^skein_proxy_egress_blocked_total\{protocol="http",reason="not_allowed"\} [1-9]' <<<"$metrics" ||
    { echo "the client's proxy counted no blocked egress:"; grep egress_blocked <<<"$metrics"; return 1; }
}
egress_open() {
  local reply
  reply=$(egress_client) || return 1
  grep -q '"role":"external"' <<<"$reply" || { echo "the external host did not answer: $reply"; return 1; }
}
egress_rule_opens_one_host() {
  local image ip
  # The demo's image, whatever registry the cluster pulls it from.
  image=$(k -n "$NS" get deployment frontend -o jsonpath='{.spec.template.spec.containers[0].image}') || return 1
  k create namespace "$EXTERNAL_NS" --dry-run=client -o yaml | k apply -f - >/dev/null &&
    k -n "$EXTERNAL_NS" run api --image="$image" --restart=Never --port=8080 \
      -- demo-app --role external --version ext >/dev/null &&
    k -n "$EXTERNAL_NS" wait pod/api --for=condition=Ready --timeout="$WAIT" >/dev/null || return 1
  ip=$(k -n "$EXTERNAL_NS" get pod api -o jsonpath='{.status.podIP}')
  [ -n "$ip" ] || { echo "the external pod has no IP"; return 1; }
  k -n "$NS" apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: Service
metadata: {name: egress-client}
spec:
  selector: {app: egress-client}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: egress-client}
spec:
  selector: {matchLabels: {app: egress-client}}
  template:
    metadata: {labels: {app: egress-client}}
    spec:
      containers:
      - name: client
        image: $image
        args: [demo-app, --role, frontend, --version, egress, --next, "http://$ip:8080"]
        ports: [{containerPort: 8080}]
EOF
  k -n "$NS" wait deployment egress-client --for=condition=Available --timeout="$WAIT" >/dev/null || return 1
  until_ok 30 egress_blocked || return 1
  k -n "$NS" apply -f - >/dev/null <<EOF || return 1
apiVersion: skein.dev/v1alpha1
kind: EgressRule
metadata: {name: partner}
spec:
  hosts: ["$ip"]
  ports: [{port: 8080}]   # an IP address: matched as the HTTP Host and as the TCP destination
EOF
  until_ok 30 egress_open || return 1
  k -n "$NS" get egressrule partner -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}' | grep -qx True ||
    { echo "the EgressRule is not Accepted: $(k -n "$NS" get egressrule partner -o yaml)"; return 1; }
  k -n "$NS" delete egressrule partner >/dev/null || return 1
  until_ok 30 egress_blocked || return 1
  k -n "$NS" delete deployment,service egress-client --wait >/dev/null &&
    k delete namespace "$EXTERNAL_NS" --wait=false >/dev/null
}

metrics_per_tier() {
  local app pod metrics
  for app in frontend middleware backend; do
    pod=$(k -n "$NS" get pods -l "app=$app" -o jsonpath='{.items[0].metadata.name}')
    metrics=$(curl -fsS --max-time 10 "http://127.0.0.1:$proxy_port/api/v1/namespaces/$NS/pods/$pod:16000/proxy/metrics") ||
      { echo "no metrics from $pod's proxy"; return 1; }
    grep -q '^skein_proxy_requests_total{.*direction="inbound"' <<<"$metrics" ||
      { echo "$pod's proxy counted no inbound requests:"; grep '^skein_proxy_requests' <<<"$metrics"; return 1; }
  done
}

# skein proxy-status, as a user runs it (no flags but the cluster's): it port-forwards through
# the apiserver to every control-plane pod. Each demo pod's proxy must be connected and have
# ACKed the configuration it was last sent.
every_proxy_synced() {
  local pods
  pods=$(k -n "$NS" get pods --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}') || return 1
  [ -n "$pods" ] || { echo "no Running demo pods"; return 1; }
  # A push in flight (the last RouteRule was just deleted) is STALE for a moment. $pods unquoted:
  # one argument per pod.
  until_ok 30 proxies_synced $pods
}
proxies_synced() {
  local table pod
  table=$("$skein" proxy-status "${kube_args[@]}" -n "$NS" 2>&1) || { echo "$table"; return 1; }
  for pod in "$@"; do
    grep -Eq "^$NS +$pod +[^ ]* +[^ ]+ +[^ ]+ +SYNCED " <<<"$table" ||
      { echo "the proxy of $pod is not listed as SYNCED:"; echo "$table"; return 1; }
  done
  echo "$table"
}

clean_uninstall() {
  uninstall || return 1
  local left
  left=$(k get mutatingwebhookconfigurations,validatingwebhookconfigurations -o name | grep -i skein || true)
  [ -z "$left" ] || { echo "left behind: $left"; return 1; }
  # With the mesh gone, a labelled namespace still gets its pods (no webhook refuses them).
  k create namespace skein-e2e-after >/dev/null &&
    k label namespace skein-e2e-after injection=enabled >/dev/null || return 1
  local ok=0
  k -n skein-e2e-after run after --image=registry.k8s.io/pause:3.10 --restart=Never >/dev/null || ok=1
  if [ "$ok" -eq 0 ]; then
    k -n skein-e2e-after get pod after -o jsonpath='{.spec.containers[*].name}' | grep -qv skein-proxy || ok=1
  fi
  k delete namespace skein-e2e-after --wait=false >/dev/null
  return "$ok"
}

check "the chart installs the operator" install_with_helm || exit 1
check "the operator installs the mesh (MeshConfig Ready)" mesh_ready || exit 1
check "the demo's pods are meshed and Ready" demo_meshed_and_ready || exit 1
start_kubectl_proxy || exit 1
check "a request crosses frontend, middleware and backend" three_tiers
check "a RouteRule routes by header and by weight" header_route_and_split
check "a simpleRetry hides a backend failing 30%" retry_hides_a_flaky_backend
check "an EgressRule opens one external host, and deleting it closes it" egress_rule_opens_one_host
check "every tier's proxy serves its metrics" metrics_per_tier
check "skein proxy-status shows every proxy SYNCED" every_proxy_synced
# --keep leaves the mesh and the demo installed to look at, so it skips the uninstall check.
if [ "$keep" = false ]; then
  check "uninstall leaves no webhook and pods are still created" clean_uninstall
fi
exit $(( failed > 0 ))
