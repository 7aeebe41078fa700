//! The proxy's recent local errors: the last [`CAPACITY`] requests it answered itself or that
//! failed upstream (5xx), in a ring of fixed size that never grows. Only the error path writes
//! to it (one short lock); the admin server shows it at `GET /debug/recent-errors`, which
//! `skein explain` reads.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;

use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};

use super::Direction;

/// How many errors a proxy keeps.
pub const CAPACITY: usize = 32;
/// What a reader of `/debug/recent-errors` accepts: the ring is a few KiB in practice.
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 20;

/// One request the proxy answered itself, or whose upstream failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentError {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub method: String,
    pub authority: String,
    /// The path only: query strings (which may carry secrets) are never kept.
    pub path: String,
    pub status: u16,
    /// The `x-skein-error` reason: this proxy's own, or the one an upstream proxy gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plain-words message, for a response this proxy made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The endpoint last tried, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<SocketAddr>,
    /// Tries sent upstream (0: refused before any).
    #[serde(default)]
    pub attempts: u32,
    /// The trace this request's span belongs to (32 hex digits), when the proxy sampled it:
    /// the trace a tracing UI shows for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What `/debug/recent-errors` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentErrors {
    /// Errors recorded since the proxy started (more than `errors` holds once it wrapped).
    pub total: u64,
    pub capacity: usize,
    /// Oldest first.
    pub errors: Vec<RecentError>,
}

/// The ring.
#[derive(Debug)]
pub struct Ring {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    errors: VecDeque<RecentError>,
    total: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                errors: VecDeque::with_capacity(CAPACITY),
                total: 0,
            }),
        }
    }
}

impl Ring {
    /// Keeps `error`, forgetting the oldest when full.
    pub fn record(&self, error: RecentError) {
        // A poisoned lock only means another recorder panicked mid-push: the data is still
        // a valid ring.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.errors.len() == CAPACITY {
            inner.errors.pop_front();
        }
        inner.errors.push_back(error);
        inner.total += 1;
    }

    pub fn snapshot(&self) -> RecentErrors {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        RecentErrors {
            total: inner.total,
            capacity: CAPACITY,
            errors: inner.errors.iter().cloned().collect(),
        }
    }
}

/// What the ring would keep of a request, taken before it is forwarded (cloning these is a few
/// reference counts, no allocation), and how its tries went.
#[derive(Clone, Debug)]
pub struct RequestLine {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    /// The endpoint last tried.
    pub upstream: Option<SocketAddr>,
    /// Tries sent so far.
    pub attempts: u32,
}

impl RequestLine {
    pub fn of(parts: &Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            host: parts.headers.get(HOST).cloned(),
            upstream: None,
            attempts: 0,
        }
    }

    /// The entry for this request's failure; `trace_id` is its span's trace, if it was sampled.
    pub fn error(
        &self,
        direction: Direction,
        status: u16,
        reason: Option<String>,
        message: Option<String>,
        trace_id: Option<&[u8; 16]>,
    ) -> RecentError {
        let authority = self.uri.authority().map_or_else(
            || {
                self.host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            },
            ToString::to_string,
        );
        RecentError {
            at: skein_core::timestamp::rfc3339_micros(std::time::SystemTime::now()),
            direction: direction.to_string(),
            method: self.method.to_string(),
            authority,
            path: self.uri.path().to_owned(),
            status,
            reason,
            message,
            upstream: self.upstream,
            attempts: self.attempts,
            trace_id: trace_id.map(|id| crate::headers::hex(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(n: u16) -> RecentError {
        RecentError {
            at: String::new(),
            direction: "outbound".into(),
            method: "GET".into(),
            authority: "backend".into(),
            path: "/".into(),
            status: n,
            reason: None,
            message: None,
            upstream: None,
            attempts: 1,
            trace_id: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_capacity_errors_and_counts_all() {
        let ring = Ring::default();
        assert_eq!(ring.snapshot().errors, []);
        let extra = 5;
        for n in 0..(CAPACITY + extra) {
            ring.record(error(u16::try_from(n).unwrap()));
        }
        let snapshot = ring.snapshot();
        assert_eq!(snapshot.total, u64::try_from(CAPACITY + extra).unwrap());
        assert_eq!(snapshot.errors.len(), CAPACITY);
        assert_eq!(
            snapshot.errors[0].status,
            u16::try_from(extra).unwrap(),
            "oldest kept"
        );
        assert_eq!(
            snapshot.errors[CAPACITY - 1].status,
            u16::try_from(CAPACITY + extra - 1).unwrap()
        );
        assert!(
            ring.inner.lock().unwrap().errors.capacity() <= CAPACITY * 2,
            "no growth"
        );
    }

    #[test]
    fn an_entry_keeps_the_path_without_its_query() {
        let request = http::Request::get("/secret?token=abc")
            .header(HOST, "backend.demo:8080")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let mut line = RequestLine::of(&parts);
        line.upstream = Some("10.0.0.7:8080".parse().unwrap());
        let entry = line.error(
            Direction::Outbound,
            503,
            Some("no-endpoints".into()),
            Some("no-endpoints: ...".into()),
            Some(&[0xab; 16]),
        );
        assert_eq!(entry.path, "/secret");
        assert_eq!(entry.trace_id.as_deref(), Some("ab".repeat(16).as_str()));
        assert_eq!(entry.authority, "backend.demo:8080");
        assert_eq!(entry.method, "GET");
        assert_eq!(entry.direction, "outbound");
        assert_eq!(entry.upstream, line.upstream);
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["reason"], "no-endpoints");
        assert!(json["at"].as_str().unwrap().ends_with('Z'));
    }
}
