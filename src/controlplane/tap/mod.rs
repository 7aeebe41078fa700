//! Live tap, the control plane's side: proxies keep a `Tap/Watch` stream open to the control
//! plane ([`TapService`], served beside the configuration stream on the same port and
//! authenticated the same way: the pod's token, so each stream is known to be that pod's); a
//! tap (`GET /debug/tap`, [`http`]) starts on every tappable pod of its target, their events
//! are merged into one stream of lines, and the taps stop when the client goes away.
//!
//! # The `/debug/tap` stream (`application/x-ndjson`, one JSON object per line)
//!
//! - `{"tapping":{"pods":["ns/pod",...]}}` first: the pods tapped;
//! - `{"untappable":{"pod":"ns/pod","reason":"..."}}` for each pod of the target that cannot be
//!   tapped ([`target::untappable`]: not meshed, created before its namespace was labelled,
//!   proxy not connected to this control plane, proxy too old);
//! - `{"event":{...}}` per request/response that passed the filter, with the fields of
//!   [`Event`]: `pod` (`ns/pod`, the proxy that saw it), `direction` (`inbound`: to the pod's
//!   app; `outbound`: from it), `source` and `destination` (`{"workload","namespace","identity"}`;
//!   `identity` is the SPIFFE id proven by mTLS, `null` without), `service` (the destination
//!   service/host), `tls`, `method`, `authority`, `path`, `status` (HTTP status; 0 if none),
//!   `grpcStatus` (or `null`), `latencyMs` (to the response's end), `requestBytes` and
//!   `responseBytes` (declared lengths; `null`: unknown), `retries`, `error` (the
//!   `x-skein-error` reason when the proxy answered itself, else `null`), `completed` (false:
//!   the response was cut off), `startedAt` (Unix milliseconds);
//! - `{"dropped":{"pod":"ns/pod","count":N}}` when events of that pod were dropped because the
//!   tap could not keep up: `count` is the running total for the pod.
//!
//! Header values are never sent. Bounded everywhere: a proxy keeps [`crate::proxy::tap::TAP_BUFFER`]
//! events per tap, a tap's merged stream [`SESSION_BUFFER`] lines; beyond, events are
//! dropped and counted.

pub mod api;
pub mod front_proxy;
pub mod http;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::controlplane::identity::Authenticate;
use crate::controlplane::identity::authn::bearer_token;
use crate::xds::tap::tap_command::Command;
use crate::xds::tap::tap_report::Report;
use crate::xds::tap::tap_server::{Tap, TapServer};
use crate::xds::tap::{StartTap, StopTap, TapCommand, TapEvent, TapFilter, TapReport};

/// Lines one tap's merged stream may have waiting; more events are dropped and counted.
pub const SESSION_BUFFER: usize = 1024;
/// Commands queued to one proxy's tap stream.
const COMMAND_QUEUE: usize = 16;

/// One line of a tap's stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TapLine {
    Tapping { pods: Vec<String> },
    Untappable { pod: String, reason: String },
    Event(Box<Event>),
    Dropped { pod: String, count: u64 },
}

/// A peer of an [`Event`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventPeer {
    pub workload: String,
    pub namespace: String,
    pub identity: Option<String>,
}

/// One request and its response, as the module doc describes its JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub pod: String,
    pub direction: String,
    pub source: EventPeer,
    pub destination: EventPeer,
    pub service: String,
    pub tls: bool,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u32,
    pub grpc_status: Option<i32>,
    pub latency_ms: f64,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    pub retries: u32,
    pub error: Option<String>,
    pub completed: bool,
    pub started_at: u64,
}

impl Event {
    /// Pure: the proxy's message as the stream's JSON shows it.
    pub fn from_proto(pod: &str, event: TapEvent) -> Self {
        let peer = |peer: Option<crate::xds::tap::Peer>| {
            let peer = peer.unwrap_or_default();
            EventPeer {
                workload: peer.workload,
                namespace: peer.namespace,
                identity: Some(peer.identity).filter(|id| !id.is_empty()),
            }
        };
        let latency_ms =
            std::time::Duration::from_micros(event.latency_micros).as_secs_f64() * 1000.0;
        Self {
            pod: pod.to_owned(),
            direction: event.direction,
            source: peer(event.source),
            destination: peer(event.destination),
            service: event.destination_service,
            tls: event.tls,
            method: event.method,
            authority: event.authority,
            path: event.path,
            status: event.status,
            grpc_status: event.grpc_status,
            latency_ms,
            request_bytes: event.request_bytes,
            response_bytes: event.response_bytes,
            retries: event.retries,
            error: Some(event.error).filter(|e| !e.is_empty()),
            completed: event.completed,
            started_at: event.started_unix_ms,
        }
    }
}

/// The proxies' tap streams and the taps running on them; cheap to clone.
#[derive(Clone, Default)]
pub struct TapHub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    next_id: AtomicU64,
    /// Open tap streams by `namespace/pod` (a restarted proxy's old stream may linger: the
    /// newest is used).
    streams: Mutex<HashMap<String, Vec<ProxyStream>>>,
    /// Running taps by id: where their events go.
    sessions: Mutex<HashMap<u64, Arc<SessionRoute>>>,
}

struct ProxyStream {
    id: u64,
    commands: mpsc::Sender<TapCommand>,
}

/// Where one tap's lines go, and what was dropped on the way, per pod.
struct SessionRoute {
    /// The pods tapped and the filter, to start the tap again on a proxy whose stream
    /// reconnects while it runs.
    pods: Vec<String>,
    filter: TapFilter,
    lines: mpsc::Sender<TapLine>,
    /// Per pod: (the proxy's running total, dropped here).
    drops: Mutex<BTreeMap<String, (u64, u64)>>,
    drops_changed: AtomicBool,
}

impl SessionRoute {
    fn dropped(&self, pod: &str, change: impl FnOnce(&mut (u64, u64))) {
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        change(drops.entry(pod.to_owned()).or_default());
        self.drops_changed.store(true, Ordering::Release);
    }

    /// The pods whose drop totals changed since last asked, with their totals.
    fn drop_lines(&self) -> Vec<TapLine> {
        if !self.drops_changed.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops
            .iter()
            .map(|(pod, (proxy, here))| TapLine::Dropped {
                pod: pod.clone(),
                count: proxy + here,
            })
            .collect()
    }
}

/// A running tap: its lines, until dropped (which stops it on every proxy).
pub struct TapSession {
    id: u64,
    pods: Vec<String>,
    lines: mpsc::Receiver<TapLine>,
    route: Arc<SessionRoute>,
    hub: TapHub,
}

impl TapSession {
    /// The next line: drop totals first when they changed, then events as they come. `None`
    /// once no proxy can send any more (every tapped pod's stream closed).
    pub async fn next(&mut self) -> Option<TapLine> {
        loop {
            if let Some(line) = self.route.drop_lines().into_iter().next() {
                return Some(line);
            }
            let line = self.lines.recv().await?;
            // Reports of drops are totals kept in the route; the line just wakes us.
            if matches!(line, TapLine::Dropped { .. }) {
                continue;
            }
            return Some(line);
        }
    }

    pub fn pods(&self) -> &[String] {
        &self.pods
    }
}

impl Drop for TapSession {
    fn drop(&mut self) {
        self.hub.lock_sessions().remove(&self.id);
        let streams = self.hub.lock_streams();
        for pod in &self.route.pods {
            if let Some(stream) = streams.get(pod).and_then(|s| s.last()) {
                let stop = TapCommand {
                    command: Some(Command::Stop(StopTap { id: self.id })),
                };
                // A full queue means the stream is stuck; its proxy's tap ends with it.
                let _ = stream.commands.try_send(stop);
            }
        }
        tracing::info!(tap = self.id, pods = self.pods.len(), "tap stopped");
    }
}

impl TapHub {
    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<ProxyStream>>> {
        self.inner.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionRoute>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `namespace/pod` has a tap stream open.
    pub fn has_stream(&self, pod: &str) -> bool {
        self.lock_streams().get(pod).is_some_and(|s| !s.is_empty())
    }

    /// Starts a tap with `filter` on each of `pods` (`namespace/pod`, each with a stream);
    /// the pods whose stream could not take the command are returned with the session's
    /// untappable lines.
    pub fn open(&self, pods: &[String], filter: &TapFilter) -> (TapSession, Vec<TapLine>) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (lines, receiver) = mpsc::channel(SESSION_BUFFER);
        // Registered before any proxy is told, so no early event finds no session. Pods whose
        // stream is missing now are tapped when it comes (see `register`).
        let route = Arc::new(SessionRoute {
            pods: pods.to_vec(),
            filter: filter.clone(),
            lines,
            drops: Mutex::default(),
            drops_changed: AtomicBool::new(false),
        });
        self.lock_sessions().insert(id, route.clone());
        let mut tapped = Vec::new();
        let mut refused = Vec::new();
        {
            let streams = self.lock_streams();
            for pod in pods {
                let start = TapCommand {
                    command: Some(Command::Start(StartTap {
                        id,
                        filter: Some(filter.clone()),
                    })),
                };
                match streams.get(pod).and_then(|s| s.last()) {
                    Some(stream) if stream.commands.try_send(start).is_ok() => {
                        tapped.push(pod.clone());
                    }
                    Some(_) => refused.push(TapLine::Untappable {
                        pod: pod.clone(),
                        reason: "its tap stream is not taking commands (too many taps at once)"
                            .to_owned(),
                    }),
                    None => refused.push(TapLine::Untappable {
                        pod: pod.clone(),
                        reason: target::NO_TAP_STREAM.to_owned(),
                    }),
                }
            }
        }
        tracing::info!(tap = id, pods = ?tapped, "tap started");
        let session = TapSession {
            id,
            pods: tapped,
            lines: receiver,
            route,
            hub: self.clone(),
        };
        (session, refused)
    }

    /// Adds a proxy's new stream; the taps running on its pod start on it too (a proxy whose
    /// stream broke and came back, or a restarted one, would otherwise fall silent).
    fn register(&self, pod: &str, commands: mpsc::Sender<TapCommand>) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        // Under the streams' lock: a tap that ends meanwhile then finds this stream and stops
        // it (`TapSession::drop` takes this lock after removing the session).
        let mut streams = self.lock_streams();
        let running: Vec<(u64, TapFilter)> = self
            .lock_sessions()
            .iter()
            .filter(|(_, route)| route.pods.iter().any(|p| p == pod))
            .map(|(&tap, route)| (tap, route.filter.clone()))
            .collect();
        for (tap, filter) in running {
            let start = TapCommand {
                command: Some(Command::Start(StartTap {
                    id: tap,
                    filter: Some(filter),
                })),
            };
            if commands.try_send(start).is_err() {
                tracing::warn!(%pod, tap, "could not restart the tap on the new stream");
            }
        }
        streams
            .entry(pod.to_owned())
            .or_default()
            .push(ProxyStream { id, commands });
        id
    }

    fn unregister(&self, pod: &str, id: u64) {
        let mut streams = self.lock_streams();
        if let Some(open) = streams.get_mut(pod) {
            open.retain(|s| s.id != id);
            if open.is_empty() {
                streams.remove(pod);
            }
        }
    }

    /// A proxy's report, to the tap it belongs to; never waits.
    fn route(&self, pod: &str, report: TapReport) {
        let Some(route) = self.lock_sessions().get(&report.tap_id).cloned() else {
            return;
        };
        match report.report {
            Some(Report::Event(event)) => {
                let line = TapLine::Event(Box::new(Event::from_proto(pod, event)));
                if route.lines.try_send(line).is_err() {
                    route.dropped(pod, |(_, here)| *here += 1);
                }
            }
            Some(Report::Dropped(total)) => {
                route.dropped(pod, |(proxy, _)| *proxy = total);
                // Wakes the reader if it waits; when the buffer is full it will look anyway.
                let _ = route.lines.try_send(TapLine::Dropped {
                    pod: pod.to_owned(),
                    count: total,
                });
            }
            None => {}
        }
    }

    /// The gRPC service proxies open their tap stream on; its streams end when `stop` turns
    /// true (the server is shutting down).
    pub fn server(
        &self,
        authn: Arc<dyn Authenticate>,
        stop: watch::Receiver<bool>,
    ) -> TapServer<TapService> {
        TapServer::new(TapService {
            hub: self.clone(),
            authn,
            stop,
        })
    }
}

/// `Tap/Watch`: one stream per proxy.
pub struct TapService {
    hub: TapHub,
    authn: Arc<dyn Authenticate>,
    stop: watch::Receiver<bool>,
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<TapCommand, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Tap for TapService {
    type WatchStream = CommandStream;

    async fn watch(
        &self,
        request: Request<Streaming<TapReport>>,
    ) -> Result<Response<CommandStream>, Status> {
        let peer = request.remote_addr();
        let token = bearer_token(request.metadata()).map_err(|err| err.status())?;
        let proxy = self.hub_authn().authenticate(token).await.map_err(|err| {
            tracing::info!(?peer, error = %err, "tap stream refused");
            err.status()
        })?;
        let pod = format!("{}/{}", proxy.namespace, proxy.pod);
        let (commands, mut queued) = mpsc::channel(COMMAND_QUEUE);
        let id = self.hub.register(&pod, commands);
        tracing::debug!(%pod, "tap stream open");
        let mut reports = request.into_inner();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            while let Ok(Some(report)) = reports.message().await {
                hub.route(&pod, report);
            }
            hub.unregister(&pod, id);
            tracing::debug!(%pod, "tap stream closed");
        });
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let commands = futures::stream::poll_fn(move |cx| queued.poll_recv(cx))
            .map(Ok)
            .take_until(stopped);
        Ok(Response::new(Box::pin(commands)))
    }
}

impl TapService {
    fn hub_authn(&self) -> &dyn Authenticate {
        self.authn.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_json_object_named_by_kind() {
        let tapping = TapLine::Tapping {
            pods: vec!["demo/a".into()],
        };
        assert_eq!(
            serde_json::to_string(&tapping).unwrap(),
            r#"{"tapping":{"pods":["demo/a"]}}"#
        );
        let dropped = TapLine::Dropped {
            pod: "demo/a".into(),
            count: 3,
        };
        assert_eq!(
            serde_json::to_string(&dropped).unwrap(),
            r#"{"dropped":{"pod":"demo/a","count":3}}"#
        );
        let event = TapEvent {
            direction: "inbound".into(),
            source: Some(crate::xds::tap::Peer {
                workload: "frontend".into(),
                namespace: "demo".into(),
                identity: "spiffe://cluster.local/ns/demo/sa/frontend".into(),
            }),
            destination_service: "backend".into(),
            tls: true,
            method: "GET".into(),
            path: "/work".into(),
            status: 200,
            latency_micros: 1500,
            completed: true,
            ..TapEvent::default()
        };
        let line = TapLine::Event(Box::new(Event::from_proto("demo/b", event)));
        let json: serde_json::Value = serde_json::to_value(&line).unwrap();
        let event = &json["event"];
        assert_eq!(event["pod"], "demo/b");
        assert_eq!(
            event["source"]["identity"],
            "spiffe://cluster.local/ns/demo/sa/frontend"
        );
        assert_eq!(event["destination"]["identity"], serde_json::Value::Null);
        assert_eq!(event["latencyMs"], 1.5);
        assert_eq!(event["grpcStatus"], serde_json::Value::Null);
        assert_eq!(event["requestBytes"], serde_json::Value::Null);
        assert_eq!(event["error"], serde_json::Value::Null);
        let back: TapLine = serde_json::from_value(json).unwrap();
        assert_eq!(back, line);
    }

    /// A proxy whose tap stream comes back while a tap runs gets the tap again, filter and all.
    #[test]
    fn a_reconnected_stream_is_tapped_again() {
        let hub = TapHub::default();
        let (first, mut first_commands) = mpsc::channel(COMMAND_QUEUE);
        let stream = hub.register("demo/a", first);
        let filter = TapFilter {
            method: "GET".into(),
            ..TapFilter::default()
        };
        let (session, _) = hub.open(&["demo/a".to_owned()], &filter);
        let Some(Command::Start(started)) = first_commands.try_recv().unwrap().command else {
            panic!("no start");
        };
        hub.unregister("demo/a", stream);
        let (second, mut second_commands) = mpsc::channel(COMMAND_QUEUE);
        hub.register("demo/a", second);
        let Some(Command::Start(again)) = second_commands.try_recv().unwrap().command else {
            panic!("the tap was not started on the new stream");
        };
        assert_eq!((again.id, again.filter), (started.id, Some(filter)));
        // A pod the tap does not cover gets nothing; after the tap ends, nobody does.
        let (other, mut other_commands) = mpsc::channel(COMMAND_QUEUE);
        hub.register("demo/b", other);
        assert!(other_commands.try_recv().is_err());
        drop(session);
        let (third, mut third_commands) = mpsc::channel(COMMAND_QUEUE);
        hub.register("demo/a", third);
        assert!(third_commands.try_recv().is_err());
    }

    /// A tap reader that does not read: the merged stream holds its buffer, counts the rest,
    /// and says so before the next event.
    #[tokio::test]
    async fn a_stalled_session_is_bounded_and_reports_its_drops() {
        let hub = TapHub::default();
        let (commands, mut started) = mpsc::channel(COMMAND_QUEUE);
        hub.register("demo/a", commands);
        let (mut session, refused) = hub.open(&["demo/a".to_owned()], &TapFilter::default());
        assert!(refused.is_empty());
        let id = match started.try_recv().unwrap().command {
            Some(Command::Start(start)) => start.id,
            other => panic!("{other:?}"),
        };
        for _ in 0..SESSION_BUFFER + 10 {
            let event = TapEvent {
                path: "/x".into(),
                ..TapEvent::default()
            };
            hub.route(
                "demo/a",
                TapReport {
                    tap_id: id,
                    report: Some(Report::Event(event)),
                },
            );
        }
        assert_eq!(
            session.next().await,
            Some(TapLine::Dropped {
                pod: "demo/a".into(),
                count: 10
            })
        );
        assert!(matches!(session.next().await, Some(TapLine::Event(_))));
        drop(session);
        assert!(matches!(
            started.try_recv().unwrap().command,
            Some(Command::Stop(StopTap { id: stopped })) if stopped == id
        ));
        let (_, refused) = hub.open(&["demo/gone".to_owned()], &TapFilter::default());
        assert_eq!(
            refused,
            [TapLine::Untappable {
                pod: "demo/gone".into(),
                reason: target::NO_TAP_STREAM.into()
            }]
        );
    }
}
