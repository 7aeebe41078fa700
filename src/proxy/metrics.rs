//! The proxy's Prometheus metrics, served on `GET /metrics` of the admin port.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `skein_proxy_tcp_connections_opened_total` | `direction` | connections accepted and handed to forwarding (after the original destination was found) |
//! | `skein_proxy_tcp_connections_closed_total` | `direction` | of those, the ones that have ended, however they ended (`opened - closed` are open now) |
//! | `skein_proxy_tcp_connect_failures_total` | `direction` | upstream connects that failed or timed out (the client's connection is then reset) |
//! | `skein_proxy_tcp_server_first_total` | `direction` | connections whose client said nothing at first and whose server spoke first ([`super::server_first`]): forwarded as opaque TCP, the destination remembered |
//! | `skein_proxy_tcp_bytes_total` | `direction`, `flow` | bytes forwarded |
//! | `skein_proxy_tcp_connections_rejected_total` | `direction`, `reason` | connections closed at once, without connecting anywhere: `no_original_destination`, `loop`, `not_local` (inbound to an address that is not the pod's), `plaintext_refused` (mTLS `Strict`), `mtls_handshake_failed`, `no_certificate`, `connection_limit` (the listener holds `--max-connections`) |
//! | `skein_proxy_tcp_connections_cut_total` | `direction`, `reason` | client connections the proxy closed for breaking a limit ([`super::limits`]): `header_timeout`, `header_too_large` (answered 431), `idle_timeout` |
//!
//! | `skein_proxy_requests_total` | request labels (below) | HTTP requests answered, by response |
//! | `skein_proxy_request_duration_seconds` | `direction`, `destination_service`, `classification` | histogram: request start to the end of the response, in seconds (buckets 0.5 ms to 10 s) |
//! | `skein_proxy_retries_total` | `destination_service`, `result` | retries sent (`result=sent`) or refused by the retry budget (`result=budget_exhausted`) |
//! | `skein_proxy_local_responses_total` | `direction`, `reason` | responses the proxy made itself instead of an upstream's; `reason` is the `x-skein-error` header they carry: `access-denied`, `mtls-required`, `egress-blocked`, `no-endpoints`, `connect-failure`, `timeout`, `overloaded`, `upstream-reset`, `fault-abort`, `client-body-error`, `upstream-protocol-switch` (an upstream answered 101 to a request the proxy did not upgrade) |
//! | `skein_proxy_egress_blocked_total` | `protocol`, `reason` | requests (`http`) and connections (`tls`, `tcp`) to unknown destinations refused under `RegistryOnly`: `not_allowed` (no EgressRule), `unresolved` (an allowed name that does not resolve), `no_configuration` (before the control plane's first configuration) |
//! | `skein_proxy_outlier_ejections_total` | `destination_service` | endpoints ejected by outlier detection |
//! | `skein_proxy_config_reloads_total` | `result` | configuration changes `applied` or `rejected` (the previous one stays) |
//! | `skein_proxy_config_info` | `version` | 1 for the active configuration's version |
//! | `skein_proxy_authz_denied_total` | `policy`, `protocol` | inbound requests (`http`, `grpc`) and connections (`tcp`) an AccessPolicy (`namespace/name`) denied |
//! | `skein_proxy_authz_audit_would_deny_total` | `policy`, `protocol` | inbound traffic an `Audit` AccessPolicy would have denied (it passed) |
//! | `skein_proxy_identity_cert_expiry_seconds`, `skein_proxy_identity_renewals_total` | `result` | the workload certificate: see [`super::identity`] |
//! | `skein_proxy_identity_trusted_roots` | | CA certificates in the trust bundle (two during a CA rotation) |
//! | `skein_proxy_identity_mtls_inbound_handshakes_total` | `kind` | inbound mTLS handshakes, `full` or `resumed` (TLS 1.3 session resumption: no certificates, no signatures) |
//! | `skein_proxy_trace_spans_exported_total` | `exporter` | spans a tracing backend accepted: `zipkin` or `otlp` (a span sent to both counts once for each) |
//! | `skein_proxy_trace_spans_dropped_total` | `reason` | spans lost: `queue_full` (2048 waiting for export), `export_failed` (the backend refused, or did not answer; per exporter) or `shutdown` (finished after the proxy's last export) |
//!
//! Request labels, as the meshes users know name them: `direction`, `protocol` (`http` or
//! `grpc`), `source_workload`, `source_namespace`, `destination_service`,
//! `destination_workload`, `destination_namespace`, `status_code` (HTTP status; 0 if the
//! client went away first), `grpc_status` (empty for plain HTTP) and `classification`:
//! `failure` for 5xx, a gRPC status other than OK, or no response; `success` otherwise.
//! Outbound, the source is this proxy's workload; inbound, the destination is. Inbound requests
//! also carry `tls` (`true` over mutual TLS) and `source_principal` (the client's proven
//! identity, `spiffe://...`; empty for plaintext); with mTLS, `source_workload` is named only
//! if the workload at the client's address has that identity.
//!
//! Labels:
//! - `direction`: `outbound` (the app connecting out) or `inbound` (a client connecting to the
//!   pod).
//! - `flow`: from the pod's point of view, `sent` are bytes that leave the pod (outbound: what
//!   the app sent to its upstream; inbound: the app's replies to the client) and `received` are
//!   bytes that come into the pod (outbound: the upstream's replies; inbound: what the client
//!   sent). Counted as they are forwarded, so long-lived connections show up while open.
//! - `reason`: `no_original_destination` (the connection was not redirected by `skein init`, or
//!   conntrack lost it) or `loop` (its original destination is the proxy itself).
//!
//! Every series exists from start-up (with 0), so rates and alerts work before the first
//! connection.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Direction;

/// Why a connection was closed without being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    NoOriginalDestination,
    Loop,
    /// Inbound, to an address that is not the pod's (someone routed it through the pod).
    NotLocal,
    /// Plaintext to a port whose mTLS mode is `Strict`.
    PlaintextRefused,
    /// A client asked for mutual TLS and the handshake failed (untrusted or wrong identity).
    MtlsHandshakeFailed,
    /// A client asked for mutual TLS and this proxy has no certificate yet.
    NoCertificate,
    /// The listener already holds `--max-connections` connections.
    ConnectionLimit,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::NoOriginalDestination,
        RejectReason::Loop,
        RejectReason::NotLocal,
        RejectReason::PlaintextRefused,
        RejectReason::MtlsHandshakeFailed,
        RejectReason::NoCertificate,
        RejectReason::ConnectionLimit,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoOriginalDestination => "no_original_destination",
            RejectReason::Loop => "loop",
            RejectReason::NotLocal => "not_local",
            RejectReason::PlaintextRefused => "plaintext_refused",
            RejectReason::MtlsHandshakeFailed => "mtls_handshake_failed",
            RejectReason::NoCertificate => "no_certificate",
            RejectReason::ConnectionLimit => "connection_limit",
        }
    }
}

/// Why the proxy closed a client's connection it had accepted (the limits of
/// [`super::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CutReason {
    /// No whole HTTP/1 request head within `--header-read-timeout`.
    HeaderTimeout,
    /// An HTTP/1 request head over `--max-request-header-bytes` (answered 431).
    HeaderTooLarge,
    /// No byte either way for `--idle-timeout`.
    IdleTimeout,
}

impl CutReason {
    pub const ALL: [CutReason; 3] = [
        CutReason::HeaderTimeout,
        CutReason::HeaderTooLarge,
        CutReason::IdleTimeout,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CutReason::HeaderTimeout => "header_timeout",
            CutReason::HeaderTooLarge => "header_too_large",
            CutReason::IdleTimeout => "idle_timeout",
        }
    }
}

impl EncodeLabelValue for CutReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CutLabels {
    direction: Direction,
    reason: CutReason,
}

/// Which way bytes went, from the pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Flow {
    Sent,
    Received,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        self.as_str().encode(encoder)
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        self.as_str().encode(encoder)
    }
}

impl EncodeLabelValue for Flow {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        match self {
            Flow::Sent => "sent",
            Flow::Received => "received",
        }
        .encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BytesLabels {
    direction: Direction,
    flow: Flow,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    direction: Direction,
    reason: RejectReason,
}

/// The registry and, per direction, handles on its counters (cheap to clone: they share the
/// values in the registry).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    inbound: TcpMetrics,
    outbound: TcpMetrics,
    pub http: HttpMetrics,
    pub identity: super::identity::IdentityMetrics,
    pub trace: super::trace::TraceMetrics,
}

/// Labels of one answered HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub protocol: &'static str,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_principal: String,
    pub tls: &'static str,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub status_code: u16,
    pub grpc_status: String,
    pub classification: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub destination_service: String,
    pub classification: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    pub destination_service: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LocalResponseLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EgressLabels {
    pub protocol: &'static str,
    /// [`crate::egress::BlockReason`].
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    pub destination_service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `namespace/name` of the AccessPolicy.
    pub policy: String,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// Request-level metrics (HTTP, gRPC) and the proxy's own events.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: LatencyFamily,
    pub retries: Family<RetryLabels, Counter>,
    pub local_responses: Family<LocalResponseLabels, Counter>,
    pub egress_blocked: Family<EgressLabels, Counter>,
    pub outlier_ejections: Family<ServiceLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_info: Family<VersionLabels, Gauge>,
    pub authz_denied: Family<AuthzLabels, Counter>,
    pub authz_audit_would_deny: Family<AuthzLabels, Counter>,
}

/// Latency buckets in seconds, as Prometheus names every duration: sub-millisecond hops up to
/// ten-second stalls.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ])
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            retries: Family::default(),
            local_responses: Family::default(),
            egress_blocked: Family::default(),
            outlier_ejections: Family::default(),
            config_reloads: Family::default(),
            config_info: Family::default(),
            authz_denied: Family::default(),
            authz_audit_would_deny: Family::default(),
        };
        registry.register(
            "requests",
            "HTTP requests answered",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request start to the end of the response",
            metrics.latency.clone(),
        );
        registry.register(
            "retries",
            "Retries sent, or refused by the retry budget",
            metrics.retries.clone(),
        );
        registry.register(
            "local_responses",
            "Responses the proxy made itself",
            metrics.local_responses.clone(),
        );
        registry.register(
            "egress_blocked",
            "Traffic to unknown destinations refused under RegistryOnly",
            metrics.egress_blocked.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            metrics.outlier_ejections.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration changes applied or rejected",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "config_info",
            "The active configuration's version",
            metrics.config_info.clone(),
        );
        registry.register(
            "authz_denied",
            "Inbound traffic denied by an AccessPolicy",
            metrics.authz_denied.clone(),
        );
        registry.register(
            "authz_audit_would_deny",
            "Inbound traffic an Audit AccessPolicy would have denied",
            metrics.authz_audit_would_deny.clone(),
        );
        for result in ["applied", "rejected"] {
            let _ = metrics
                .config_reloads
                .get_or_create(&ResultLabels { result });
        }
        for protocol in ["http", "tls", "tcp"] {
            for reason in crate::egress::BlockReason::ALL {
                let _ = metrics.egress_blocked.get_or_create(&EgressLabels {
                    protocol,
                    reason: reason.as_str(),
                });
            }
        }
        metrics
    }

    /// Marks `version` as the active configuration.
    pub fn set_config_version(&self, version: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
    }

    pub fn local_response(&self, direction: Direction, reason: &'static str) {
        self.local_responses
            .get_or_create(&LocalResponseLabels { direction, reason })
            .inc();
    }
}

/// The TCP counters of one direction.
#[derive(Debug, Clone)]
pub struct TcpMetrics {
    pub opened: Counter,
    pub closed: Counter,
    pub connect_failures: Counter,
    /// Connections whose server spoke first ([`super::server_first`]).
    pub server_first: Counter,
    /// Bytes that left the pod.
    pub bytes_sent: Counter,
    /// Bytes that came into the pod.
    pub bytes_received: Counter,
    /// By [`RejectReason`], in the order of [`RejectReason::ALL`].
    rejected: [Counter; RejectReason::ALL.len()],
    /// By [`CutReason`], in the order of [`CutReason::ALL`].
    cut: [Counter; CutReason::ALL.len()],
}

impl TcpMetrics {
    pub fn rejected(&self, reason: RejectReason) -> &Counter {
        &self.rejected[reason as usize]
    }

    pub fn cut(&self, reason: CutReason) -> &Counter {
        &self.cut[reason as usize]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_identity(std::sync::Arc::default())
    }

    /// With the workload certificate's metrics reading `credentials`.
    pub fn with_identity(credentials: std::sync::Arc<super::mtls::Credentials>) -> Self {
        let mut registry = Registry::with_prefix("skein_proxy");
        let opened = Family::<DirectionLabels, Counter>::default();
        let closed = Family::<DirectionLabels, Counter>::default();
        let connect_failures = Family::<DirectionLabels, Counter>::default();
        let server_first = Family::<DirectionLabels, Counter>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let cut = Family::<CutLabels, Counter>::default();
        // Counter names get `_total` appended when encoded.
        registry.register(
            "tcp_connections_opened",
            "TCP connections accepted and forwarded",
            opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Forwarded TCP connections that have ended",
            closed.clone(),
        );
        registry.register(
            "tcp_connect_failures",
            "Failed or timed-out connects to upstreams",
            connect_failures.clone(),
        );
        registry.register(
            "tcp_server_first",
            "Connections whose client was quiet and whose server spoke first",
            server_first.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes forwarded; flow=sent left the pod, flow=received came into it",
            bytes.clone(),
        );
        registry.register(
            "tcp_connections_rejected",
            "TCP connections closed without forwarding",
            rejected.clone(),
        );
        registry.register(
            "tcp_connections_cut",
            "Client connections the proxy closed for breaking a limit",
            cut.clone(),
        );

        let tcp = |direction: Direction| {
            let by_direction = DirectionLabels { direction };
            let bytes = |flow| {
                bytes
                    .get_or_create(&BytesLabels { direction, flow })
                    .clone()
            };
            let rejected = |reason| {
                rejected
                    .get_or_create(&RejectLabels { direction, reason })
                    .clone()
            };
            TcpMetrics {
                opened: opened.get_or_create(&by_direction).clone(),
                closed: closed.get_or_create(&by_direction).clone(),
                connect_failures: connect_failures.get_or_create(&by_direction).clone(),
                server_first: server_first.get_or_create(&by_direction).clone(),
                bytes_sent: bytes(Flow::Sent),
                bytes_received: bytes(Flow::Received),
                rejected: RejectReason::ALL.map(rejected),
                cut: CutReason::ALL
                    .map(|reason| cut.get_or_create(&CutLabels { direction, reason }).clone()),
            }
        };
        let (inbound, outbound) = (tcp(Direction::Inbound), tcp(Direction::Outbound));
        let http = HttpMetrics::register(&mut registry);
        let identity = super::identity::IdentityMetrics::register(&mut registry, credentials);
        let trace = super::trace::TraceMetrics::register(&mut registry);
        Self {
            registry,
            inbound,
            outbound,
            http,
            identity,
            trace,
        }
    }

    pub fn tcp(&self, direction: Direction) -> &TcpMetrics {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// The registry, for the admin server's `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_from_the_start_with_its_documented_name() {
        let metrics = Metrics::new();
        let text = metrics.encode().expect("encode");
        for direction in Direction::ALL {
            let d = direction.as_str();
            for series in [
                format!("skein_proxy_tcp_connections_opened_total{{direction=\"{d}\"}} 0"),
                format!("skein_proxy_tcp_connections_closed_total{{direction=\"{d}\"}} 0"),
                format!("skein_proxy_tcp_connect_failures_total{{direction=\"{d}\"}} 0"),
                format!("skein_proxy_tcp_server_first_total{{direction=\"{d}\"}} 0"),
                format!("skein_proxy_tcp_bytes_total{{direction=\"{d}\",flow=\"sent\"}} 0"),
                format!("skein_proxy_tcp_bytes_total{{direction=\"{d}\",flow=\"received\"}} 0"),
            ] {
                assert!(text.contains(&series), "{series} missing from:\n{text}");
            }
            for reason in RejectReason::ALL {
                let series = format!(
                    "skein_proxy_tcp_connections_rejected_total{{direction=\"{d}\",reason=\"{}\"}} 0",
                    reason.as_str()
                );
                assert!(text.contains(&series), "{series} missing from:\n{text}");
            }
        }
    }

    #[test]
    fn handles_update_the_registry() {
        let metrics = Metrics::new();
        metrics.tcp(Direction::Outbound).opened.inc();
        metrics.tcp(Direction::Inbound).bytes_sent.inc_by(42);
        metrics
            .tcp(Direction::Inbound)
            .rejected(RejectReason::Loop)
            .inc();
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains("skein_proxy_tcp_connections_opened_total{direction=\"outbound\"} 1")
        );
        assert!(
            text.contains("skein_proxy_tcp_bytes_total{direction=\"inbound\",flow=\"sent\"} 42")
        );
        assert!(text.contains(
            "skein_proxy_tcp_connections_rejected_total{direction=\"inbound\",reason=\"loop\"} 1"
        ));
    }
}
