//! The proxy's configuration as data: what a `--config` file holds (YAML or JSON, camelCase)
//! and, later, what the control plane streams. Plain serde types without behaviour; the
//! modules that act on them compile what they need (regexes, weights) when a config is loaded.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum MtlsMode {
    #[default]
    Permissive,
    Strict,
    Disabled,
}

/// Everything one proxy needs to know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Opaque version of this configuration, shown on `/config` and in metrics.
    #[serde(default)]
    pub version: String,
    /// The workload this proxy serves, for metric labels.
    #[serde(default)]
    pub workload: Workload,
    /// What happens to outbound traffic to a destination the mesh does not know.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Services of the mesh, addressed by VIP and by host name.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// External hosts allowed out under `RegistryOnly`.
    #[serde(default)]
    pub egress: Vec<EgressAllow>,
    /// Ports whose traffic is never inspected (server-speaks-first protocols).
    #[serde(default = "default_opaque_ports")]
    pub opaque_ports: Vec<u16>,
    /// How long to wait for a client's first bytes before treating a connection as opaque TCP.
    #[serde(default = "default_detect_timeout")]
    pub detect_timeout: Duration,
    /// This proxy's pod is terminating (the control plane says so): inbound HTTP/1 responses
    /// carry `Connection: close` and HTTP/2 clients get a GOAWAY, while the listeners keep
    /// serving (see `proxy::drain`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Which inbound connections must be mutual TLS.
    #[serde(default)]
    pub inbound_mtls: InboundMtls,
    /// The AccessPolicies that select this proxy's pod, enforced on inbound traffic (see
    /// `proxy::authz`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_policies: Vec<AccessPolicy>,
    /// The CA certificates peers' certificates may chain to (PEM), from the control plane:
    /// a CA rotation reaches every proxy at once, not with its next certificate. Empty: keep
    /// the bundle that came with the workload certificate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_bundle_pem: String,
}

/// The server side of mutual TLS: whether plaintext is accepted, mesh-wide and per port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundMtls {
    /// `Permissive` (the default) accepts mTLS and plaintext, `Strict` only mTLS, `Disabled`
    /// is plaintext (callers are not told to use mTLS).
    #[serde(default)]
    pub mode: MtlsMode,
    /// Ports whose mode differs from `mode`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_modes: BTreeMap<u16, MtlsMode>,
    /// The kubelet's probes, which are plaintext by nature: under `Strict` they are let in from
    /// `nodeIp` to these ports (and, for HTTP probes, these paths) only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<IpAddr>,
}

impl InboundMtls {
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.port_modes.get(&port).copied().unwrap_or(self.mode)
    }
}

/// A port the kubelet probes, with the HTTP paths it asks for (none for TCP probes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbePort {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_paths: Vec<String>,
}

/// The same as an empty file: no destinations, `RegistryOnly`.
impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            version: String::new(),
            workload: Workload::default(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            destinations: Vec::new(),
            egress: Vec::new(),
            opaque_ports: default_opaque_ports(),
            detect_timeout: default_detect_timeout(),
            draining: false,
            inbound_mtls: InboundMtls::default(),
            access_policies: Vec::new(),
            trust_bundle_pem: String::new(),
        }
    }
}

/// SMTP, MySQL, PostgreSQL, Redis, memcached, MongoDB and friends: the server speaks first, so
/// waiting for the client to speak would stall every connection.
pub fn default_opaque_ports() -> Vec<u16> {
    vec![25, 587, 3306, 4222, 5432, 6379, 11211, 27017]
}

pub fn default_detect_timeout() -> Duration {
    Duration::from_millis(1000)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

/// Istio's two modes; Skein's default is the safe one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundTrafficPolicy {
    /// Unknown destinations are blocked unless an [`EgressAllow`] matches.
    #[default]
    RegistryOnly,
    /// Unknown destinations are reached at their original address.
    AllowAny,
}

/// One Service of the mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Canonical name, e.g. `backend.demo.svc.cluster.local`: the `destination_service` label.
    pub name: String,
    /// Virtual IPs (ClusterIPs) that mean this destination.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Host names (HTTP `Host`, without port) that mean this destination: `backend`,
    /// `backend.demo`, `backend.demo.svc`, ...
    #[serde(default)]
    pub hosts: Vec<String>,
    pub ports: Vec<DestinationPort>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub limits: Limits,
    /// Ordered HTTP routes; the first that matches a request wins. A request no route matches
    /// goes to all endpoints of its port.
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationPort {
    /// The Service port the client connects to.
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    /// Endpoints of the Service's EndpointSlices that cannot take requests (not ready), only
    /// counted: messages and `skein explain` say how many pods exist besides the ready ones.
    #[serde(default, skip_serializing_if = "is_default")]
    pub not_ready_endpoints: u32,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// How a port's traffic is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Look at the first bytes: HTTP/2, HTTP/1 or opaque TCP.
    #[default]
    Detect,
    Http1,
    Http2,
    Grpc,
    /// Forwarded as bytes, never inspected.
    Opaque,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Pod labels (`version: v2`, ...), which route subsets select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The endpoint's workload, for metric labels.
    #[serde(default)]
    pub workload: Option<Workload>,
    /// Its pod is terminating but still serving: picked only when no other endpoint is left
    /// (as kube-proxy does), so callers move away while the pod drains.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminating: bool,
    /// The endpoint's pod is meshed and accepts mutual TLS as this identity
    /// (`spiffe://...`): callers originate mTLS and require it. Unset: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The endpoint's proxy takes HTTP/1 requests carried over HTTP/2: callers reaching it over
    /// mutual TLS multiplex their HTTP/1 requests on one connection to it (see
    /// `skein_proxy::http::multiplex`). Set by the control plane for pods whose injector says
    /// their proxy can; a proxy from before that would pass HTTP/2 on to an HTTP/1 app.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2_upgrade: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency.
    #[default]
    PeakEwma,
    RoundRobin,
    LeastRequest,
}

/// Ejecting endpoints that keep failing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or connect failures that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection; each further ejection of the same endpoint doubles it.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Duration,
    /// Never eject more than this share of a port's endpoints.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u8,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_percent() -> u8 {
    10
}

/// Circuit breaking: beyond these, requests are answered 503 at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Upstream connections across all endpoints of the destination. For HTTP each request in
    /// flight holds a connection, so this is enforced as a bound on requests in flight (with
    /// `maxPendingRequests`, the lower wins); opaque TCP connections are not limited yet.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection or in flight to the destination.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
}

/// One HTTP route of a destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: String,
    /// Any one of these matches the route; none at all matches every request.
    #[serde(default)]
    pub matches: Vec<RequestMatch>,
    /// Where matching requests go, split by weight; none means all endpoints.
    #[serde(default)]
    pub backends: Vec<WeightedSubset>,
    /// The whole request, retries included.
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub mirror: Option<Mirror>,
    #[serde(default)]
    pub request_headers: HeaderEdits,
    #[serde(default)]
    pub response_headers: HeaderEdits,
}

/// All conditions present must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default)]
    pub path: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<KeyMatch>,
    #[serde(default)]
    pub query: Vec<KeyMatch>,
}

/// A header or query parameter by name, with a condition on its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyMatch {
    pub name: String,
    #[serde(default)]
    pub value: StringMatch,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// The key is there, whatever its value.
    #[default]
    Present,
    Exact(String),
    Prefix(String),
    /// A regular expression (Rust `regex` syntax) that must match the whole value.
    Regex(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedSubset {
    /// Labels an endpoint must carry; empty selects every endpoint.
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (so `attempts: 2` means at most three tries).
    pub attempts: u32,
    #[serde(default)]
    pub per_try_timeout: Option<Duration>,
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Extra statuses worth retrying (with `retriable-status-codes`).
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// First back-off; doubles per retry, with full jitter, up to `maxBackoff`.
    #[serde(default = "default_base_backoff")]
    pub base_backoff: Duration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    #[serde(default)]
    pub budget: RetryBudget,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Unavailable,
        RetryOn::Cancelled,
    ]
}
fn default_base_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_max_backoff() -> Duration {
    Duration::from_millis(250)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectFailure,
    RefusedStream,
    Reset,
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504.
    GatewayError,
    RetriableStatusCodes,
    /// gRPC status UNAVAILABLE (14).
    Unavailable,
    /// gRPC status CANCELLED (1).
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
}

/// Retries may add at most `percent` of the requests (plus `minPerSecond`), so a failing
/// upstream is not buried under retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "default_budget_percent")]
    pub percent: f64,
    #[serde(default = "default_budget_min_per_second")]
    pub min_per_second: u32,
    /// The window over which requests and retries are counted.
    #[serde(default = "default_budget_window")]
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_per_second: default_budget_min_per_second(),
            window: default_budget_window(),
        }
    }
}

fn default_budget_percent() -> f64 {
    20.0
}
fn default_budget_min_per_second() -> u32 {
    10
}
fn default_budget_window() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub percent: f64,
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    pub percent: f64,
    pub status: u16,
}

/// A copy of matching requests, sent fire-and-forget; its responses are dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Endpoints of the same port carrying these labels.
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
}

fn default_mirror_percent() -> f64 {
    100.0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderEdits {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// An external host allowed out of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressAllow {
    /// `api.example.com`, or `*.example.com` for any subdomain (not the apex).
    pub host: String,
    /// Allowed ports; empty allows any.
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocol: EgressProtocol,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressProtocol {
    /// Plain HTTP (matched on `Host`), TLS (matched on SNI), or TCP.
    #[default]
    Any,
    Http,
    Tls,
    /// Matched on the destination address's host only when it is an IP literal written as
    /// `host`.
    Tcp,
}

/// One AccessPolicy as a proxy enforces it (the AccessPolicy resource has the semantics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    /// `namespace/name` of the AccessPolicy: what denials, logs and metrics name.
    pub name: String,
    pub action: AccessAction,
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessAction {
    Allow,
    Deny,
    /// Decided as `Allow`, but only counted and logged.
    Audit,
}

/// Matches when one `from` and one `to` entry match; an empty list matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    #[serde(default)]
    pub from: Vec<AccessSource>,
    #[serde(default)]
    pub to: Vec<AccessOperation>,
}

/// Every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessSource {
    /// Full SPIFFE IDs (`spiffe://cluster.local/ns/demo/sa/frontend`).
    #[serde(default)]
    pub identities: Vec<String>,
    /// Namespaces of the peer's identity.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Matches peers without a verified identity (and only them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
}

/// Every field set must match; methods and paths only match HTTP requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessOperation {
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Upper case.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<PathMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}
