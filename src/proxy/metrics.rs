//! The proxy's Prometheus metrics, served on `GET /metrics` of the admin port.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `skein_proxy_tcp_connections_opened_total` | `direction` | connections accepted and handed to forwarding (after the original destination was found) |
//! | `skein_proxy_tcp_connections_closed_total` | `direction` | of those, the ones that have ended, however they ended (`opened - closed` are open now) |
//! | `skein_proxy_tcp_connect_failures_total` | `direction` | upstream connects that failed or timed out (the client's connection is then reset) |
//! | `skein_proxy_tcp_bytes_total` | `direction`, `flow` | bytes forwarded |
//! | `skein_proxy_tcp_connections_rejected_total` | `direction`, `reason` | connections closed at once, without connecting anywhere |
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
use prometheus_client::registry::Registry;

use super::Direction;

/// Why a connection was closed without being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    NoOriginalDestination,
    Loop,
}

impl RejectReason {
    pub const ALL: [RejectReason; 2] = [RejectReason::NoOriginalDestination, RejectReason::Loop];

    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoOriginalDestination => "no_original_destination",
            RejectReason::Loop => "loop",
        }
    }
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
}

/// The TCP counters of one direction.
#[derive(Debug, Clone)]
pub struct TcpMetrics {
    pub opened: Counter,
    pub closed: Counter,
    pub connect_failures: Counter,
    /// Bytes that left the pod.
    pub bytes_sent: Counter,
    /// Bytes that came into the pod.
    pub bytes_received: Counter,
    rejected_no_original_destination: Counter,
    rejected_loop: Counter,
}

impl TcpMetrics {
    pub fn rejected(&self, reason: RejectReason) -> &Counter {
        match reason {
            RejectReason::NoOriginalDestination => &self.rejected_no_original_destination,
            RejectReason::Loop => &self.rejected_loop,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("skein_proxy");
        let opened = Family::<DirectionLabels, Counter>::default();
        let closed = Family::<DirectionLabels, Counter>::default();
        let connect_failures = Family::<DirectionLabels, Counter>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let rejected = Family::<RejectLabels, Counter>::default();
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
            "tcp_bytes",
            "Bytes forwarded; flow=sent left the pod, flow=received came into it",
            bytes.clone(),
        );
        registry.register(
            "tcp_connections_rejected",
            "TCP connections closed without forwarding",
            rejected.clone(),
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
                bytes_sent: bytes(Flow::Sent),
                bytes_received: bytes(Flow::Received),
                rejected_no_original_destination: rejected(RejectReason::NoOriginalDestination),
                rejected_loop: rejected(RejectReason::Loop),
            }
        };
        let (inbound, outbound) = (tcp(Direction::Inbound), tcp(Direction::Outbound));
        Self {
            registry,
            inbound,
            outbound,
        }
    }

    pub fn tcp(&self, direction: Direction) -> &TcpMetrics {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
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
