//! Live tap, the proxy's side: the control plane starts taps on the proxy's tap stream
//! ([`client`]), and each finished HTTP request (both directions; HTTP/1, HTTP/2, gRPC) that
//! matches a tap's filter is sent to it.
//!
//! Cost: with no tap active the request path pays one atomic load ([`TapHub::is_tapping`]) and
//! nothing else. While taps are active, a request's method, authority and path are kept until
//! its response ends ([`TapRequest`]), then matched against each tap's filter.
//!
//! Memory: each tap has a bounded buffer of [`TAP_BUFFER`] events; when it is full (the tap
//! client or the stream cannot keep up) the event is dropped and counted, and the count is
//! reported to the tapper. A proxy holds at most [`MAX_TAPS`] taps at once.
//!
//! Bytes are those the messages declared (`Content-Length`); a streamed body's size is not
//! counted (that would be work on every request) and is reported as unknown. Header values are
//! never sent.

pub mod client;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use skein_core::xds::tap::{Peer, TapEvent, TapFilter};

/// Events one tap may have waiting; more are dropped and counted.
pub const TAP_BUFFER: usize = 256;
/// Taps one proxy runs at once; more are refused (logged, and the tapper sees no events from
/// this pod).
pub const MAX_TAPS: usize = 32;

/// The taps running on this proxy.
#[derive(Debug, Default)]
pub struct TapHub {
    /// How many taps are running: the request path reads only this when it is zero.
    active: AtomicUsize,
    taps: RwLock<Vec<Arc<ActiveTap>>>,
}

/// One running tap.
#[derive(Debug)]
struct ActiveTap {
    id: u64,
    filter: TapFilter,
    events: mpsc::Sender<TapEvent>,
    dropped: Arc<AtomicU64>,
}

/// A started tap's side for its reader: its events (they end when the tap stops) and how many
/// were dropped because the buffer was full.
#[derive(Debug)]
pub struct TapReader {
    pub id: u64,
    pub events: mpsc::Receiver<TapEvent>,
    pub dropped: Arc<AtomicU64>,
}

/// Why a tap was not started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartError {
    #[error("{MAX_TAPS} taps are already running on this proxy")]
    TooMany,
    #[error("tap {0} is already running")]
    Duplicate(u64),
}

impl TapHub {
    /// Whether any tap runs: the one check the request path makes.
    #[inline]
    pub fn is_tapping(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0
    }

    /// Starts tap `id`; its events arrive on the reader until [`stop`](Self::stop).
    pub fn start(&self, id: u64, filter: TapFilter) -> Result<TapReader, StartError> {
        let mut taps = self.write();
        if taps.iter().any(|tap| tap.id == id) {
            return Err(StartError::Duplicate(id));
        }
        if taps.len() >= MAX_TAPS {
            return Err(StartError::TooMany);
        }
        let (events, receiver) = mpsc::channel(TAP_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        taps.push(Arc::new(ActiveTap {
            id,
            filter,
            events,
            dropped: dropped.clone(),
        }));
        self.active.store(taps.len(), Ordering::Relaxed);
        Ok(TapReader {
            id,
            events: receiver,
            dropped,
        })
    }

    /// Stops tap `id` (its receiver then ends).
    pub fn stop(&self, id: u64) {
        let mut taps = self.write();
        taps.retain(|tap| tap.id != id);
        self.active.store(taps.len(), Ordering::Relaxed);
    }

    /// Stops every tap (the stream that started them is gone).
    pub fn stop_all(&self) {
        let mut taps = self.write();
        taps.clear();
        self.active.store(0, Ordering::Relaxed);
    }

    /// Offers a finished request to every tap whose filter matches; never waits.
    pub fn publish(&self, event: &TapEvent) {
        let taps = self.taps.read().unwrap_or_else(|e| e.into_inner());
        for tap in taps.iter().filter(|tap| matches(&tap.filter, event)) {
            if tap.events.try_send(event.clone()).is_err() {
                tap.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<ActiveTap>>> {
        self.taps.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Pure: whether `event` passes `filter` (an empty field matches everything).
pub fn matches(filter: &TapFilter, event: &TapEvent) -> bool {
    let destination = event.destination.as_ref();
    let field = |wanted: &str, actual: &str| wanted.is_empty() || wanted == actual;
    field(
        &filter.to_workload,
        destination.map_or("", |d| d.workload.as_str()),
    ) && field(&filter.to_namespace, destination_namespace(event))
        && (filter.to_service.is_empty()
            || service_matches(&filter.to_service, &event.destination_service))
        && (filter.method.is_empty() || filter.method.eq_ignore_ascii_case(&event.method))
        && event.path.starts_with(&filter.path_prefix)
        && (filter.authority.is_empty() || filter.authority.eq_ignore_ascii_case(&event.authority))
}

/// The destination workload's namespace; before an endpoint was chosen (a request the proxy
/// answered itself), the Service's, from its name `NAME.NAMESPACE.svc...`.
fn destination_namespace(event: &TapEvent) -> &str {
    match event.destination.as_ref().map(|d| d.namespace.as_str()) {
        Some(namespace) if !namespace.is_empty() => namespace,
        _ => {
            let mut labels = event.destination_service.split('.');
            match (labels.next(), labels.next(), labels.next()) {
                (Some(_), Some(namespace), Some("svc")) => namespace,
                _ => "",
            }
        }
    }
}

/// `backend` matches `backend`, `backend.demo` and `backend.demo.svc.cluster.local`.
fn service_matches(wanted: &str, service: &str) -> bool {
    let service = service.split(':').next().unwrap_or(service);
    service.eq_ignore_ascii_case(wanted)
        || service
            .get(..wanted.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(wanted))
            && service.as_bytes().get(wanted.len()) == Some(&b'.')
}

/// What a tapped request carries from its arrival to its response's end; made only while a
/// tap runs.
#[derive(Debug, Default)]
pub struct TapRequest {
    pub started_unix_ms: u64,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub request_bytes: Option<u64>,
    /// Outbound: the endpoint of the last try (its mTLS identity, if meshed).
    pub upstream: Option<SocketAddr>,
    pub retries: u32,
}

impl TapRequest {
    pub fn new(parts: &http::request::Parts) -> Box<Self> {
        Box::new(Self {
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            method: parts.method.as_str().to_owned(),
            authority: crate::http::request_host(parts)
                .unwrap_or_default()
                .to_owned(),
            path: parts.uri.path().to_owned(),
            request_bytes: content_length(&parts.headers),
            upstream: None,
            retries: 0,
        })
    }
}

/// The length a message declared, if any.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A peer of the event.
pub fn peer(workload: &str, namespace: &str, identity: Option<String>) -> Peer {
    Peer {
        workload: workload.to_owned(),
        namespace: namespace.to_owned(),
        identity: identity.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(service: &str, workload: &str, method: &str, path: &str) -> TapEvent {
        TapEvent {
            direction: "outbound".into(),
            destination: Some(peer(workload, "demo", None)),
            destination_service: service.into(),
            method: method.into(),
            authority: "backend.demo:8080".into(),
            path: path.into(),
            ..TapEvent::default()
        }
    }

    #[test]
    fn filters_match_destination_method_path_and_authority() {
        let any = TapFilter::default();
        let e = event(
            "backend.demo.svc.cluster.local",
            "backend",
            "GET",
            "/work/1",
        );
        assert!(matches(&any, &e));
        let f = |edit: fn(&mut TapFilter)| {
            let mut filter = TapFilter::default();
            edit(&mut filter);
            matches(&filter, &e)
        };
        assert!(f(|f| f.to_service = "backend".into()));
        assert!(f(|f| f.to_service = "backend.demo".into()));
        assert!(!f(|f| f.to_service = "back".into()));
        assert!(!f(|f| f.to_service = "middleware".into()));
        assert!(f(|f| f.to_workload = "backend".into()));
        assert!(!f(|f| f.to_workload = "frontend".into()));
        assert!(f(|f| f.to_namespace = "demo".into()));
        assert!(!f(|f| f.to_namespace = "other".into()));
        assert!(f(|f| f.method = "get".into()));
        assert!(!f(|f| f.method = "POST".into()));
        assert!(f(|f| f.path_prefix = "/work".into()));
        assert!(!f(|f| f.path_prefix = "/health".into()));
        assert!(f(|f| f.authority = "backend.demo:8080".into()));
        assert!(!f(|f| f.authority = "frontend".into()));
        assert!(service_matches("backend", "backend:8080"));
    }

    #[test]
    fn no_tap_means_no_work_and_stopping_ends_the_stream() {
        let hub = TapHub::default();
        assert!(!hub.is_tapping());
        let mut reader = hub.start(1, TapFilter::default()).unwrap();
        assert!(hub.is_tapping());
        assert_eq!(
            hub.start(1, TapFilter::default()).unwrap_err(),
            StartError::Duplicate(1)
        );
        hub.publish(&event("backend", "backend", "GET", "/"));
        assert_eq!(reader.events.try_recv().unwrap().path, "/");
        hub.stop(1);
        assert!(!hub.is_tapping());
        assert_eq!(
            reader.events.try_recv().unwrap_err(),
            mpsc::error::TryRecvError::Disconnected,
            "closed once stopped"
        );
    }

    /// A tap nobody reads keeps at most its buffer and counts the rest.
    #[test]
    fn a_stalled_tap_holds_its_buffer_and_counts_drops() {
        let hub = TapHub::default();
        let stalled = hub.start(7, TapFilter::default()).unwrap();
        let mut other = hub
            .start(
                8,
                TapFilter {
                    path_prefix: "/none".into(),
                    ..TapFilter::default()
                },
            )
            .unwrap();
        for _ in 0..10_000 {
            hub.publish(&event("backend", "backend", "GET", "/work"));
        }
        assert_eq!(
            stalled.dropped.load(Ordering::Relaxed),
            10_000 - TAP_BUFFER as u64
        );
        assert_eq!(
            stalled.events.len(),
            TAP_BUFFER,
            "the buffer is full, never more"
        );
        assert_eq!(other.dropped.load(Ordering::Relaxed), 0);
        assert!(other.events.try_recv().is_err());
    }

    #[test]
    fn taps_are_bounded_per_proxy() {
        let hub = TapHub::default();
        let mut kept = Vec::new();
        for id in 0..MAX_TAPS as u64 {
            kept.push(hub.start(id, TapFilter::default()).unwrap());
        }
        assert_eq!(
            hub.start(999, TapFilter::default()).unwrap_err(),
            StartError::TooMany
        );
        hub.stop_all();
        assert!(!hub.is_tapping());
    }
}
