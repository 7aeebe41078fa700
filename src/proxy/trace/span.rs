//! One span: what a proxy records of one HTTP/gRPC request, filled in as the request goes
//! through (head, then response head, then the end of the response body).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::Direction;
use crate::headers::TraceContext;

/// Client (outbound: the app calling out) or server (inbound: a client calling the app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

impl From<Direction> for Kind {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::Outbound => Kind::Client,
            Direction::Inbound => Kind::Server,
        }
    }
}

/// A span, built while its request is in flight and exported once its response has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub context: TraceContext,
    pub kind: Kind,
    /// The local workload (this proxy's pod) and its namespace: the span's service.
    pub service: String,
    pub namespace: String,
    /// When the request came in (wall clock, for the backend) ...
    pub start: SystemTime,
    /// ... and how long until its response ended (monotonic).
    pub duration: Duration,
    pub method: String,
    pub path: String,
    /// The service the request was for (outbound: the mesh service or host; inbound: the host).
    pub destination: String,
    pub grpc: bool,
    /// Outbound: the endpoint the last try went to; inbound: the client.
    pub peer: Option<SocketAddr>,
    /// 0 when there was no response (the client went away first).
    pub status_code: u16,
    pub grpc_status: Option<i32>,
    /// The `x-skein-error` reason when the proxy answered itself.
    pub proxy_error: Option<&'static str>,
    /// Retries after the first try.
    pub retries: u32,
    /// Whether the response body ended normally.
    pub completed: bool,
}

impl Span {
    /// A span for a request that starts now; the rest is filled in as it goes.
    pub fn start(
        context: TraceContext,
        direction: Direction,
        parts: &http::request::Parts,
        grpc: bool,
    ) -> Self {
        Span {
            context,
            kind: direction.into(),
            service: String::new(),
            namespace: String::new(),
            start: SystemTime::now(),
            duration: Duration::ZERO,
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            destination: String::new(),
            grpc,
            peer: None,
            status_code: 0,
            grpc_status: None,
            proxy_error: None,
            retries: 0,
            completed: false,
        }
    }

    /// The span's name: the method and the service it was for (`GET backend`); paths would
    /// make one operation per URL.
    pub fn name(&self) -> String {
        if self.destination.is_empty() {
            self.method.clone()
        } else {
            format!("{} {}", self.method, self.destination)
        }
    }

    /// Failed as the request metrics count failures: a 5xx, a gRPC status other than OK, or no
    /// (whole) response.
    pub fn is_error(&self) -> bool {
        self.status_code >= 500
            || self.status_code == 0
            || self.grpc_status.is_some_and(|s| s != 0)
            || !self.completed
    }

    /// Why it failed, in a few words (the backend's error message).
    pub fn error_message(&self) -> Option<String> {
        if !self.is_error() {
            return None;
        }
        Some(match (self.proxy_error, self.grpc_status) {
            (Some(reason), _) => format!("{reason} ({})", self.status_code),
            (None, Some(status)) if status != 0 => format!("grpc-status {status}"),
            _ if self.status_code == 0 => "no response".to_owned(),
            _ if !self.completed => format!("response {} cut short", self.status_code),
            _ => format!("status {}", self.status_code),
        })
    }

    /// Microseconds since the Unix epoch (both formats count from there).
    pub fn start_micros(&self) -> u64 {
        self.start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    pub fn start_nanos(&self) -> u64 {
        self.start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) fn example() -> Span {
    Span {
        context: TraceContext {
            trace_id: [0x4b; 16],
            span_id: [0x0f; 8],
            parent_span_id: Some([0x11; 8]),
        },
        kind: Kind::Client,
        service: "frontend".to_owned(),
        namespace: "demo".to_owned(),
        start: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
        duration: Duration::from_micros(2_500),
        method: "GET".to_owned(),
        path: "/api/items".to_owned(),
        destination: "backend".to_owned(),
        grpc: false,
        peer: Some("10.0.0.7:8080".parse().expect("address")),
        status_code: 200,
        grpc_status: None,
        proxy_error: None,
        retries: 0,
        completed: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_what_the_metrics_call_failures() {
        let ok = example();
        assert!(!ok.is_error());
        assert_eq!(ok.error_message(), None);
        let mut failed = example();
        failed.status_code = 503;
        assert_eq!(failed.error_message().as_deref(), Some("status 503"));
        failed.proxy_error = Some("no-endpoints");
        assert_eq!(
            failed.error_message().as_deref(),
            Some("no-endpoints (503)")
        );
        let mut grpc = example();
        grpc.grpc_status = Some(14);
        assert_eq!(grpc.error_message().as_deref(), Some("grpc-status 14"));
        let mut gone = example();
        gone.status_code = 0;
        assert_eq!(gone.error_message().as_deref(), Some("no response"));
        let mut cut = example();
        cut.completed = false;
        assert!(cut.is_error());
        assert_eq!(example().name(), "GET backend");
    }
}
