//! The configuration stream's server: pushes each connected proxy its configuration over the
//! Delta ADS stream of [`crate::xds::discovery`], and keeps a registry of who is connected and
//! what they acknowledged.
//!
//! Protocol, per proxy (one bidirectional stream each):
//!
//! 0. The proxy authenticates with its pod's service-account token (audience `skein.dev`) in
//!    the gRPC metadata `authorization: Bearer TOKEN`, checked by
//!    [`crate::controlplane::identity::authn`]: no token or a refused one is
//!    `UNAUTHENTICATED`, a token that is not bound to a live pod `PERMISSION_DENIED`; either
//!    way the stream ends before any configuration is sent. The token is checked when the
//!    stream opens; the stream then lives as long as its connection (a deleted pod's proxy
//!    goes with its pod, and a reconnect presents the kubelet's current token).
//! 1. The proxy opens the stream with one subscription request per resource type
//!    ([`TYPE_URLS`]); the first carries its [`Node`], without which the stream is
//!    refused (`INVALID_ARGUMENT`). Its pod and namespace must be the authenticated pod's
//!    (else `PERMISSION_DENIED`, saying what was claimed and what was authenticated): the
//!    configuration is scoped by the authenticated pod only. Its IP is taken as given. Subscriptions are wildcard: every resource of the type.
//!    `initial_resource_versions` (after a reconnect) are taken as what the proxy holds, so
//!    only what differs is sent.
//! 2. For each subscribed type the server sends one response with the resources that are new
//!    or changed since what the proxy holds, and `removed_resources` for names that went
//!    away — one response per type, in [`TYPE_URLS`] order (destinations, egress, then the
//!    settings, which carry the configuration's version). The first response of each type is
//!    always sent, possibly empty: it tells the proxy that type is complete. After that, a type
//!    with no change gets no response.
//! 3. The proxy answers every response with its nonce: an ACK (no `error_detail`) or a NACK
//!    (`error_detail` says why). A NACK is logged and counted; the versions pushed stay
//!    recorded as sent, so the same rejected content is not pushed again and again: the next
//!    push carries only what changes next. A push counts as acknowledged (`ackedVersion`) once
//!    all its responses are ACKed.
//!
//! Pushes follow [`ConfigSource::changes`]: after a change the server waits until there has
//! been no further change for [`QUIET`], at most [`MAX_DELAY`] after the first, then computes
//! each proxy's configuration once (a burst of changes makes one push). When the server stops,
//! every stream ends with `UNAVAILABLE` and the proxies reconnect.
//!
//! Memory per connection is bounded: changes are a `watch` value (not a queue) and responses
//! go through a channel of [`RESPONSE_QUEUE`] (a slow proxy slows its own pushes only).
//!
//! Transport: plain gRPC over TCP (h2c) for now, with HTTP/2 keepalive so a proxy that
//! vanished without closing its connection is noticed; with `--xds-tls`, TLS with a serving
//! certificate the control plane issues itself from the mesh CA
//! ([`PushServer::serve_tls_with_listener`], [`crate::controlplane::identity::serving`]),
//! which proxies verify against the trust bundle (`--trust-bundle`). The same server answers
//! `Identity/Certify` ([`PushServer::with_identity`]).
//!
//! Metrics, registered on the registry given to [`PushServer::new`]:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `skein_controlplane_connected_proxies` | | streams open now |
//! | `skein_controlplane_pushes_total` | `type` | responses sent, by resource type (`ProxySettings`, `Destination`, `EgressPolicy`) |
//! | `skein_controlplane_pushed_bytes_total` | | encoded bytes of the resources sent |
//! | `skein_controlplane_acks_total` | | responses the proxies accepted |
//! | `skein_controlplane_nacks_total` | | responses the proxies rejected |
//! | `skein_controlplane_push_duration_seconds` | | histogram: computing one proxy's configuration and queueing what changed |

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::controlplane::identity::authn::bearer_token;
use crate::controlplane::identity::{Authenticate, IdentityService, IssuedCerts};
use crate::proxy::config::types::ProxyConfig;
use crate::timestamp::rfc3339;
pub use crate::xds::ProxyIdentity;
use crate::xds::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use crate::xds::identity::identity_server::IdentityServer;
use crate::xds::resources::{self, Resources, TYPE_URLS};

/// Quiet time after a change before pushing.
pub const QUIET: Duration = Duration::from_millis(100);
/// Longest a push waits after the first change of a burst.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// Responses queued to one proxy's stream (each is one type's changes).
pub const RESPONSE_QUEUE: usize = 4;
/// A TLS handshake must be done this soon after the connection is accepted.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A proxy must send its first request this soon after opening the stream.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings on idle connections, and how long an answer may take before the connection is
/// considered dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses remembered for matching ACKs/NACKs; older nonces are answered as stale.
const NONCES_KEPT: usize = 16;
/// Largest request accepted from a proxy. The largest real one is a reconnecting proxy's
/// subscription listing what it holds ([`MAX_HELD_PER_TYPE`] names of ~100 bytes); anything
/// larger only costs memory (a map decoded from 2 MiB of tiny entries is tens of MiB).
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// Resources of one type a subscription may say it holds: a mesh with more destinations than
/// this is beyond what one proxy is built for, and a longer list is refused
/// (`RESOURCE_EXHAUSTED`) rather than kept per stream.
pub const MAX_HELD_PER_TYPE: usize = 10_000;
/// Longest resource name and version in such a list (names are host names and ports, versions
/// 32 hex digits).
pub const MAX_HELD_NAME_BYTES: usize = 512;
pub const MAX_HELD_VERSION_BYTES: usize = 128;
/// A NACK's text is kept and logged up to this many bytes, then marked as truncated.
pub const MAX_NACK_BYTES: usize = 1024;
/// HTTP/2 streams one connection may have open at once: a proxy needs one stream and, now and
/// then, a certificate request.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Configuration streams one pod may have open at once (a restarted proxy's old stream can
/// linger until keepalive notices it); more are refused with `RESOURCE_EXHAUSTED`.
pub const MAX_STREAMS_PER_POD: usize = 4;
/// Largest request header block (the token is the largest header, ~1 KiB).
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// Where the push server gets each proxy's configuration.
pub trait ConfigSource: Send + Sync + 'static {
    /// The whole configuration this proxy should run now.
    fn config_for(&self, proxy: &ProxyIdentity) -> ProxyConfig;
    /// Bumped whenever any proxy's configuration may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// One connected proxy, for `/debug/proxies` and `skein proxy-status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub pod: String,
    pub namespace: String,
    pub ip: Option<IpAddr>,
    /// When the stream opened (RFC 3339, UTC).
    pub connected_since: String,
    /// The configuration version last pushed (its `version`, else a digest of its resources).
    pub sent_version: String,
    /// The version of the last push the proxy acknowledged.
    pub acked_version: String,
    /// The last rejection, `VERSION: REASON`; cleared once a later push is acknowledged.
    pub last_nack: Option<String>,
    /// Resources the proxy holds (as pushed).
    pub resources: usize,
    /// Pushes that sent this proxy something.
    pub pushes: u64,
    /// When the workload certificate this control plane last issued to the pod expires (RFC
    /// 3339, UTC); absent if it issued none that is still valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires: Option<String>,
    /// Seconds from this answer to [`cert_expires`](Self::cert_expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_in_seconds: Option<i64>,
}

/// The configuration stream's server; cheap to clone (clones share the registry).
#[derive(Clone)]
pub struct PushServer {
    inner: Arc<Inner>,
    /// `Identity/Certify`, served on the same port.
    identity: Option<IdentityServer<IdentityService>>,
    issued: Option<Arc<IssuedCerts>>,
    /// `Tap/Watch`, served on the same port ([`crate::controlplane::tap`]).
    tap: Option<crate::controlplane::tap::TapHub>,
}

struct Inner {
    source: Arc<dyn ConfigSource>,
    authn: Arc<dyn Authenticate>,
    metrics: PushMetrics,
    proxies: Mutex<HashMap<u64, ProxyStatus>>,
    next_id: AtomicU64,
}

impl PushServer {
    pub fn new(
        source: Arc<dyn ConfigSource>,
        authn: Arc<dyn Authenticate>,
        registry: &mut Registry,
    ) -> Self {
        Self {
            identity: None,
            issued: None,
            tap: None,
            inner: Arc::new(Inner {
                source,
                authn,
                metrics: PushMetrics::register(registry),
                proxies: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Also serves `Identity/Certify`, and shows what it issued in [`proxies`](Self::proxies).
    #[must_use]
    pub fn with_identity(mut self, service: IdentityService) -> Self {
        self.issued = Some(service.issued.clone());
        self.identity = Some(service.into_server());
        self
    }

    /// Also serves the proxies' tap streams into `hub`.
    #[must_use]
    pub fn with_tap(mut self, hub: crate::controlplane::tap::TapHub) -> Self {
        self.tap = Some(hub);
        self
    }

    fn tap_service(
        &self,
        stop: &watch::Receiver<bool>,
    ) -> Option<crate::xds::tap::tap_server::TapServer<crate::controlplane::tap::TapService>> {
        self.tap
            .as_ref()
            .map(|hub| hub.server(self.inner.authn.clone(), stop.clone()))
    }

    /// Serves the stream on `addr` until `shutdown` completes.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (stop, stopped) = watch::channel(false);
        Self::transport()
            .add_optional_service(self.tap_service(&stopped))
            .add_service(self.service(stopped))
            .add_optional_service(self.identity.clone())
            .serve_with_shutdown(addr, stop_streams(shutdown, stop))
            .await
    }

    /// Like [`serve`](Self::serve), on a listener already bound (tests bind port 0).
    pub async fn serve_with_listener(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (stop, stopped) = watch::channel(false);
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(KEEPALIVE_INTERVAL));
        Self::transport()
            .add_optional_service(self.tap_service(&stopped))
            .add_service(self.service(stopped))
            .add_optional_service(self.identity.clone())
            .serve_with_incoming_shutdown(incoming, stop_streams(shutdown, stop))
            .await
    }

    /// Like [`serve_with_listener`](Self::serve_with_listener), over TLS with `tls` (see
    /// [`crate::controlplane::identity::serving`]).
    pub async fn serve_tls_with_listener(
        self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (stop, stopped) = watch::channel(false);
        Self::transport()
            .add_optional_service(self.tap_service(&stopped))
            .add_service(self.service(stopped))
            .add_optional_service(self.identity.clone())
            .serve_with_incoming_shutdown(tls_incoming(listener, tls), stop_streams(shutdown, stop))
            .await
    }

    /// Connected proxies, for /debug/proxies and `skein proxy-status`.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let mut proxies: Vec<ProxyStatus> = self.inner.registry().values().cloned().collect();
        if let Some(issued) = &self.issued {
            let now = SystemTime::now();
            for proxy in &mut proxies {
                let expiry = issued.expiry(&proxy.namespace, &proxy.pod);
                proxy.cert_expires = expiry.map(rfc3339);
                proxy.cert_expires_in_seconds =
                    expiry.map(|at| crate::proxy::identity::seconds_until(at, now));
            }
        }
        proxies
    }

    fn transport() -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .tcp_nodelay(true)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(MAX_HEADER_BYTES)
            // Reset floods, by the client (CVE-2023-44487) or provoked from the server's side:
            // the connection is closed (tonic leaves the second guard off by default).
            .http2_max_pending_accept_reset_streams(Some(32))
            .http2_max_local_error_reset_streams(Some(256))
    }

    fn service(&self, stop: watch::Receiver<bool>) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads {
            inner: self.inner.clone(),
            stop,
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// Connections on `listener` once their TLS handshake is done. Each handshake runs on its own
/// task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow client holds up nobody else; accepting
/// stops when the server drops the stream.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (ready, mut handshaken) = mpsc::channel(RESPONSE_QUEUE * 16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %err, "configuration stream: accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, ready) = (acceptor.clone(), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::info!(%peer, error = %err, "configuration stream: TLS handshake failed")
                    }
                    Err(_) => {
                        tracing::info!(%peer, "configuration stream: TLS handshake timed out")
                    }
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| handshaken.poll_recv(cx))
}

/// The server's graceful shutdown waits for open streams, and proxy streams never end by
/// themselves: once `shutdown` completes, every connection is told to end its stream.
async fn stop_streams(shutdown: impl std::future::Future<Output = ()>, stop: watch::Sender<bool>) {
    shutdown.await;
    tracing::info!("configuration stream: shutting down, closing proxy streams");
    let _ = stop.send(true);
}

impl Inner {
    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyStatus>> {
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut ProxyStatus)) {
        if let Some(status) = self.registry().get_mut(&id) {
            change(status);
        }
    }
}

/// The gRPC service; one per [`PushServer::serve`] call.
struct Ads {
    inner: Arc<Inner>,
    stop: watch::Receiver<bool>,
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = request.remote_addr();
        // Before reading anything: an unauthenticated client learns nothing.
        let token = bearer_token(request.metadata()).map_err(|err| err.status())?;
        let authenticated = self.inner.authn.authenticate(token).await.map_err(|err| {
            tracing::info!(?peer, error = %err, "configuration stream refused");
            err.status()
        })?;
        let mut requests = request.into_inner();
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no request on the stream")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("the stream ended before a request")),
            Ok(Ok(Some(first))) => first,
        };
        let identity = identity(first.node.as_ref())?;
        check_held(&first.initial_resource_versions).map_err(Status::resource_exhausted)?;
        if (identity.pod.as_str(), identity.namespace.as_str())
            != (authenticated.pod.as_str(), authenticated.namespace.as_str())
        {
            tracing::warn!(?peer, claimed_pod = %identity.pod, claimed_namespace = %identity.namespace, pod = %authenticated.pod, namespace = %authenticated.namespace, "configuration stream refused: the node is not the authenticated pod");
            return Err(Status::permission_denied(format!(
                "the node claims pod {}/{} but the token is pod {}/{}'s",
                identity.namespace, identity.pod, authenticated.namespace, authenticated.pod
            )));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Connection::new(id, identity);
        let registered = Registration::new(self.inner.clone(), &connection).map_err(|open| {
            tracing::warn!(pod = %connection.identity.pod, namespace = %connection.identity.namespace, open, ?peer, "configuration stream refused: too many streams for this pod");
            Status::resource_exhausted(format!(
                "pod {}/{} already has {open} configuration streams open (at most {MAX_STREAMS_PER_POD})",
                connection.identity.namespace, connection.identity.pod
            ))
        })?;
        tracing::info!(pod = %connection.identity.pod, namespace = %connection.identity.namespace, ip = ?connection.identity.ip, ?peer, "proxy connected");
        let (responses, mut queued) = mpsc::channel(RESPONSE_QUEUE);
        tokio::spawn(run_connection(
            registered,
            connection,
            first,
            requests,
            responses,
            self.stop.clone(),
        ));
        let stream = futures::stream::poll_fn(move |cx| queued.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The identity a stream's first request declares.
fn identity(node: Option<&Node>) -> Result<ProxyIdentity, Status> {
    let node = node.ok_or_else(|| {
        Status::invalid_argument("the first request of a stream must carry the node")
    })?;
    if node.pod.is_empty() || node.namespace.is_empty() {
        return Err(Status::invalid_argument(
            "the node must name its pod and namespace",
        ));
    }
    let ip = match node.ip.as_str() {
        "" => None,
        text => Some(text.parse().map_err(|_| {
            Status::invalid_argument(format!("node ip {text:?} is not an IP address"))
        })?),
    };
    Ok(ProxyIdentity {
        pod: node.pod.clone(),
        namespace: node.namespace.clone(),
        ip,
    })
}

/// Serves one proxy until its stream ends, the server stops, or the source is gone.
async fn run_connection(
    registered: Registration,
    mut connection: Connection,
    first: DeltaDiscoveryRequest,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    mut stop: watch::Receiver<bool>,
) {
    let inner = registered.inner.clone();
    let mut changes = inner.source.changes();
    changes.mark_unchanged();
    let mut source_open = true;
    let mut pending = None;
    let mut request = Some(first);
    let reason = loop {
        if let Some(request) = request.take() {
            match connection.receive(request) {
                Received::Subscribed => pending = Some(Debounce::immediate(Instant::now())),
                Received::Refused(why) => {
                    tracing::warn!(pod = %connection.identity.pod, namespace = %connection.identity.namespace, %why, "configuration stream refused");
                    let _ = responses.try_send(Err(Status::resource_exhausted(why)));
                    break "its subscription was refused";
                }
                received => record(&inner, &connection, received),
            }
        }
        let deadline = pending.map(|p: Debounce| p.deadline);
        tokio::select! {
            biased;
            () = stopped(&mut stop) => {
                // Tells the proxy why, so it reconnects (to another replica, or later).
                let _ = responses.try_send(Err(Status::unavailable("the control plane is stopping")));
                break "the server is stopping";
            }
            message = requests.message() => match message {
                Ok(Some(next)) => request = Some(next),
                Ok(None) => break "the proxy closed the stream",
                Err(_) => break "the stream broke",
            },
            changed = changes.changed(), if source_open => match changed {
                Ok(()) => pending = Some(Debounce::change(pending, Instant::now())),
                Err(_) => source_open = false,
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                pending = None;
                if push(&inner, &mut connection, &responses, &mut stop).await.is_err() {
                    break "the proxy stopped reading, or the server is stopping";
                }
            }
        }
    };
    tracing::info!(
        pod = %connection.identity.pod,
        namespace = %connection.identity.namespace,
        reason,
        "proxy disconnected"
    );
    drop(registered);
}

/// A subscription's list of what the proxy holds, within [`MAX_HELD_PER_TYPE`] entries of
/// bounded size; else why not.
fn check_held(held: &BTreeMap<String, String>) -> Result<(), String> {
    if held.len() > MAX_HELD_PER_TYPE {
        return Err(format!(
            "the subscription lists {} held resources, more than the {MAX_HELD_PER_TYPE} accepted",
            held.len()
        ));
    }
    if let Some((name, version)) = held.iter().find(|(name, version)| {
        name.len() > MAX_HELD_NAME_BYTES || version.len() > MAX_HELD_VERSION_BYTES
    }) {
        return Err(format!(
            "the subscription lists a held resource with a {}-byte name and a {}-byte version, \
             more than the {MAX_HELD_NAME_BYTES} and {MAX_HELD_VERSION_BYTES} accepted",
            name.len(),
            version.len()
        ));
    }
    Ok(())
}

/// `text` cut to at most [`MAX_NACK_BYTES`] (on a character boundary), marked when cut.
fn truncated(text: &str) -> String {
    if text.len() <= MAX_NACK_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_NACK_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated: {} bytes in all]", &text[..end], text.len())
}

/// The server is stopping (or gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// The stream is gone, or the server is stopping.
struct Closed;

/// Computes the proxy's configuration and sends what changed.
async fn push(
    inner: &Inner,
    connection: &mut Connection,
    responses: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Closed> {
    let started = std::time::Instant::now();
    let identity = &connection.identity;
    let config = inner.source.config_for(identity);
    let resources = match resources::split(&config) {
        Ok(resources) => resources,
        Err(err) => {
            tracing::error!(pod = %identity.pod, namespace = %identity.namespace, error = %err, "invalid configuration for this proxy: not pushed");
            return Ok(());
        }
    };
    let version = resources::config_version(&config, &resources);
    let planned = connection.plan(&resources, &version);
    if planned.is_empty() {
        return Ok(());
    }
    for response in planned {
        let type_name = resources::short_type_name(&response.type_url).to_owned();
        let bytes: usize = response
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .map(|any| any.value.len())
            .sum();
        // A proxy that does not read must not hold up the server's shutdown.
        tokio::select! {
            sent = responses.send(Ok(response)) => sent.map_err(|_| Closed)?,
            () = stopped(stop) => return Err(Closed),
        }
        inner
            .metrics
            .pushes
            .get_or_create(&TypeLabels { r#type: type_name })
            .inc();
        inner.metrics.pushed_bytes.inc_by(bytes as u64);
    }
    let held = connection.resource_count();
    inner.update(connection.id, |status| {
        status.sent_version = version.clone();
        status.resources = held;
        status.pushes += 1;
    });
    inner
        .metrics
        .push_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(pod = %connection.identity.pod, namespace = %connection.identity.namespace, %version, "pushed");
    Ok(())
}

/// Records an ACK or NACK in the registry and the metrics.
fn record(inner: &Inner, connection: &Connection, received: Received) {
    let identity = &connection.identity;
    match received {
        Received::Subscribed | Received::Refused(_) => {}
        Received::UnknownType(type_url) => {
            tracing::warn!(pod = %identity.pod, namespace = %identity.namespace, %type_url, "subscription to an unknown resource type ignored");
        }
        Received::Ack { accepted } => {
            inner.metrics.acks.inc();
            if let Some(version) = accepted {
                inner.update(connection.id, |status| {
                    status.acked_version = version;
                    status.last_nack = None;
                });
            }
        }
        Received::Nack { version, message } => {
            inner.metrics.nacks.inc();
            let version = version.unwrap_or_default();
            let message = truncated(&message);
            tracing::warn!(pod = %identity.pod, namespace = %identity.namespace, %version, error = %message, "the proxy rejected its configuration");
            inner.update(connection.id, |status| {
                status.last_nack = Some(format!("{version}: {message}"));
            });
        }
    }
}

/// Keeps the proxy in the registry (and the gauge) exactly as long as its stream runs.
struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Registration {
    /// Registers the stream, unless its pod has [`MAX_STREAMS_PER_POD`] open already (then
    /// that count).
    fn new(inner: Arc<Inner>, connection: &Connection) -> Result<Self, usize> {
        let identity = connection.identity.clone();
        let mut registry = inner.registry();
        let open = registry
            .values()
            .filter(|status| status.pod == identity.pod && status.namespace == identity.namespace)
            .count();
        if open >= MAX_STREAMS_PER_POD {
            return Err(open);
        }
        registry.insert(
            connection.id,
            ProxyStatus {
                pod: identity.pod,
                namespace: identity.namespace,
                ip: identity.ip,
                connected_since: rfc3339(SystemTime::now()),
                sent_version: String::new(),
                acked_version: String::new(),
                last_nack: None,
                resources: 0,
                pushes: 0,
                cert_expires: None,
                cert_expires_in_seconds: None,
            },
        );
        drop(registry);
        inner.metrics.connected.inc();
        Ok(Self {
            inner,
            id: connection.id,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.registry().remove(&self.id);
        self.inner.metrics.connected.dec();
    }
}

/// When the next push is due: [`QUIET`] after the last change, at most [`MAX_DELAY`] after
/// the first one since the previous push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Debounce {
    first: Instant,
    deadline: Instant,
}

impl Debounce {
    /// A change at `now`, `pending` being the push already waiting, if any.
    fn change(pending: Option<Self>, now: Instant) -> Self {
        let first = pending.map_or(now, |p| p.first);
        Self {
            first,
            deadline: (now + QUIET).min(first + MAX_DELAY),
        }
    }

    /// A push due at once (a new subscription).
    fn immediate(now: Instant) -> Self {
        Self {
            first: now,
            deadline: now,
        }
    }
}

/// One stream's protocol state, without I/O: what each subscribed type holds and which
/// responses await an answer.
#[derive(Debug)]
struct Connection {
    id: u64,
    identity: ProxyIdentity,
    /// Subscribed types → name → version the proxy holds (as sent).
    held: BTreeMap<&'static str, Held>,
    /// Recent responses not answered yet, oldest first.
    sent: VecDeque<Sent>,
    /// Responses sent, for nonces.
    responses: u64,
    /// Pushes made (a push is the responses of one configuration).
    pushes: u64,
    /// The last push the proxy rejected a response of.
    rejected: Option<u64>,
}

#[derive(Debug, Default)]
struct Held {
    versions: BTreeMap<String, String>,
    /// A response of this type was sent on this stream.
    answered: bool,
}

/// A response sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    nonce: String,
    /// The push it belongs to.
    push: u64,
    /// The configuration version of that push.
    version: String,
}

/// What a request from the proxy was.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    Subscribed,
    /// A subscription whose list of held resources is beyond the limits (why).
    Refused(String),
    UnknownType(String),
    /// An ACK; `accepted` is the version of a push whose responses the proxy has now all
    /// accepted (`None` while some are unanswered, if one was rejected, or for a nonce no
    /// longer known: an older stream's, or pushed out of [`NONCES_KEPT`]).
    Ack {
        accepted: Option<String>,
    },
    /// A NACK of a response of the push of `version` (`None` for an unknown nonce).
    Nack {
        version: Option<String>,
        message: String,
    },
}

impl Connection {
    fn new(id: u64, identity: ProxyIdentity) -> Self {
        Self {
            id,
            identity,
            held: BTreeMap::new(),
            sent: VecDeque::new(),
            responses: 0,
            pushes: 0,
            rejected: None,
        }
    }

    fn receive(&mut self, request: DeltaDiscoveryRequest) -> Received {
        if request.response_nonce.is_empty() {
            let Some(type_url) = resources::known_type(&request.type_url) else {
                return Received::UnknownType(request.type_url);
            };
            if let Err(why) = check_held(&request.initial_resource_versions) {
                return Received::Refused(why);
            }
            // A (re)subscription: start from what the proxy says it holds.
            self.held.insert(
                type_url,
                Held {
                    versions: request.initial_resource_versions,
                    answered: false,
                },
            );
            return Received::Subscribed;
        }
        let sent = self
            .sent
            .iter()
            .position(|sent| sent.nonce == request.response_nonce)
            .and_then(|index| self.sent.remove(index));
        match request.error_detail {
            Some(error) => {
                self.rejected = sent.as_ref().map(|sent| sent.push).or(self.rejected);
                Received::Nack {
                    version: sent.map(|sent| sent.version),
                    message: error.message,
                }
            }
            None => Received::Ack {
                accepted: sent
                    .filter(|sent| {
                        self.rejected != Some(sent.push)
                            && !self.sent.iter().any(|other| other.push == sent.push)
                    })
                    .map(|sent| sent.version),
            },
        }
    }

    /// The responses that bring the proxy from what it holds to `current`, recorded as sent.
    fn plan(&mut self, current: &Resources, version: &str) -> Vec<DeltaDiscoveryResponse> {
        let empty = resources::ResourceSet::new();
        let mut planned = Vec::new();
        let push = self.pushes + 1;
        for type_url in TYPE_URLS {
            let Some(held) = self.held.get_mut(type_url) else {
                continue;
            };
            let delta = resources::diff(&held.versions, current.get(type_url).unwrap_or(&empty));
            if held.answered && delta.is_empty() {
                continue;
            }
            held.answered = true;
            for name in &delta.removed {
                held.versions.remove(name);
            }
            for resource in &delta.changed {
                held.versions
                    .insert(resource.name.clone(), resource.version.clone());
            }
            self.responses += 1;
            let nonce = format!("{}-{}", self.id, self.responses);
            self.sent.push_back(Sent {
                nonce: nonce.clone(),
                push,
                version: version.to_owned(),
            });
            if self.sent.len() > NONCES_KEPT {
                self.sent.pop_front();
            }
            planned.push(DeltaDiscoveryResponse {
                system_version_info: version.to_owned(),
                resources: delta.changed,
                type_url: type_url.to_owned(),
                removed_resources: delta.removed,
                nonce,
            });
        }
        if !planned.is_empty() {
            self.pushes = push;
        }
        planned
    }

    fn resource_count(&self) -> usize {
        self.held.values().map(|held| held.versions.len()).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

#[derive(Debug, Clone)]
struct PushMetrics {
    connected: Gauge,
    pushes: Family<TypeLabels, Counter>,
    pushed_bytes: Counter,
    acks: Counter,
    nacks: Counter,
    push_seconds: Histogram,
}

impl PushMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            connected: Gauge::default(),
            pushes: Family::default(),
            pushed_bytes: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            // 1 ms to 4 s.
            push_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
            ),
        };
        registry.register(
            "skein_controlplane_connected_proxies",
            "Proxies connected to the configuration stream",
            metrics.connected.clone(),
        );
        // Counters get `_total` appended when encoded.
        registry.register(
            "skein_controlplane_pushes",
            "Configuration responses sent, by resource type",
            metrics.pushes.clone(),
        );
        registry.register(
            "skein_controlplane_pushed_bytes",
            "Encoded bytes of the resources sent",
            metrics.pushed_bytes.clone(),
        );
        registry.register(
            "skein_controlplane_acks",
            "Configuration responses the proxies accepted",
            metrics.acks.clone(),
        );
        registry.register(
            "skein_controlplane_nacks",
            "Configuration responses the proxies rejected",
            metrics.nacks.clone(),
        );
        registry.register(
            "skein_controlplane_push_duration_seconds",
            "Time to compute one proxy's configuration and queue what changed",
            metrics.push_seconds.clone(),
        );
        for type_url in TYPE_URLS {
            let _ = metrics.pushes.get_or_create(&TypeLabels {
                r#type: resources::short_type_name(type_url).to_owned(),
            });
        }
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::discovery::Status as NackStatus;
    use crate::xds::resources::{DESTINATION_TYPE, SETTINGS_TYPE, split};

    fn config(yaml: &str) -> ProxyConfig {
        crate::proxy::config::load::parse(yaml).expect("valid config")
    }

    fn web_identity() -> ProxyIdentity {
        ProxyIdentity {
            pod: "web-1".to_owned(),
            namespace: "demo".to_owned(),
            ip: "10.1.0.7".parse().ok(),
        }
    }

    fn subscribe(type_url: &str, held: &[(&str, &str)]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            initial_resource_versions: held
                .iter()
                .map(|(name, version)| ((*name).to_owned(), (*version).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    const TWO: &str = r#"
version: "1"
destinations:
  - {name: a, addresses: ["198.19.0.1"], ports: [{port: 80, endpoints: []}]}
  - {name: b, addresses: ["198.19.0.2"], ports: [{port: 80, endpoints: []}]}
"#;

    #[test]
    fn the_first_push_sends_every_subscribed_type_then_only_changes() {
        let mut connection = Connection::new(7, web_identity());
        let resources = split(&config(TWO)).expect("split");
        assert!(
            connection.plan(&resources, "1").is_empty(),
            "nothing subscribed"
        );
        for type_url in TYPE_URLS {
            assert_eq!(
                connection.receive(subscribe(type_url, &[])),
                Received::Subscribed
            );
        }
        let first = connection.plan(&resources, "1");
        assert_eq!(
            first
                .iter()
                .map(|r| r.type_url.as_str())
                .collect::<Vec<_>>(),
            TYPE_URLS
        );
        assert_eq!(names(&first[0]), ["a", "b"]);
        assert!(first.iter().all(|r| r.system_version_info == "1"));
        let nonces: std::collections::HashSet<_> = first.iter().map(|r| &r.nonce).collect();
        assert_eq!(nonces.len(), 3, "a fresh nonce per response");
        assert_eq!(connection.resource_count(), 4);

        assert!(
            connection.plan(&resources, "1").is_empty(),
            "no change, no push"
        );

        let changed = config(
            r#"
version: "2"
destinations:
  - {name: a, addresses: ["198.19.0.9"], ports: [{port: 80, endpoints: []}]}
"#,
        );
        let second = connection.plan(&split(&changed).expect("split"), "2");
        let types: Vec<_> = second.iter().map(|r| r.type_url.as_str()).collect();
        // The settings carry the version, which changed too; they come last.
        assert_eq!(types, [DESTINATION_TYPE, SETTINGS_TYPE]);
        assert_eq!(names(&second[0]), ["a"]);
        assert_eq!(second[0].removed_resources, ["b"]);
        assert_eq!(connection.resource_count(), 3);
    }

    #[test]
    fn a_reconnecting_proxy_is_sent_only_what_differs() {
        let resources = split(&config(TWO)).expect("split");
        let destinations = &resources[DESTINATION_TYPE];
        let mut connection = Connection::new(1, web_identity());
        connection.receive(subscribe(
            DESTINATION_TYPE,
            &[
                ("a", destinations["a"].version.as_str()),
                ("b", "stale"),
                ("gone", "v1"),
            ],
        ));
        let planned = connection.plan(&resources, "1");
        assert_eq!(planned.len(), 1, "only the subscribed type");
        assert_eq!(names(&planned[0]), ["b"]);
        assert_eq!(planned[0].removed_resources, ["gone"]);

        // Holding exactly the current set: still one (empty) response, which tells the proxy
        // the type is in sync.
        let mut connection = Connection::new(2, web_identity());
        let held: Vec<_> = destinations
            .values()
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect();
        connection.receive(subscribe(DESTINATION_TYPE, &held));
        let planned = connection.plan(&resources, "1");
        assert_eq!(planned.len(), 1);
        assert!(planned[0].resources.is_empty() && planned[0].removed_resources.is_empty());
    }

    fn answer(response: &DeltaDiscoveryResponse, error: Option<&str>) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: error.map(|message| NackStatus {
                code: 3,
                message: message.to_owned(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_push_is_acknowledged_once_all_its_responses_are() {
        let mut connection = Connection::new(3, web_identity());
        for type_url in TYPE_URLS {
            connection.receive(subscribe(type_url, &[]));
        }
        let first = connection.plan(&split(&config(TWO)).expect("split"), "1");
        assert_eq!(first.len(), 3);
        let accepted = |connection: &mut Connection, response, error| match connection
            .receive(answer(response, error))
        {
            Received::Ack { accepted } => accepted,
            other => panic!("not an ACK: {other:?}"),
        };
        assert_eq!(accepted(&mut connection, &first[0], None), None);
        assert_eq!(accepted(&mut connection, &first[2], None), None);
        assert_eq!(
            accepted(&mut connection, &first[1], None),
            Some("1".to_owned()),
            "the last answer completes the push, whatever the order"
        );
        assert_eq!(
            accepted(&mut connection, &first[1], None),
            None,
            "answered already"
        );

        let mut changed = config(TWO);
        changed.version = "2".to_owned();
        changed.destinations.pop();
        let second = connection.plan(&split(&changed).expect("split"), "2");
        assert_eq!(second.len(), 2);
        assert_eq!(
            connection.receive(answer(&second[0], Some("bad"))),
            Received::Nack {
                version: Some("2".to_owned()),
                message: "bad".to_owned()
            }
        );
        assert_eq!(
            accepted(&mut connection, &second[1], None),
            None,
            "a push with a rejected response is not acknowledged"
        );
        // The rejected content stays recorded as sent: not pushed again.
        assert!(
            connection
                .plan(&split(&changed).expect("split"), "2")
                .is_empty()
        );
        assert_eq!(
            connection.receive(subscribe("type.googleapis.com/x.Unknown", &[])),
            Received::UnknownType("type.googleapis.com/x.Unknown".to_owned())
        );
    }

    #[test]
    fn unanswered_responses_are_bounded() {
        let mut connection = Connection::new(4, web_identity());
        connection.receive(subscribe(SETTINGS_TYPE, &[]));
        for version in 0..(NONCES_KEPT * 3) {
            let config = ProxyConfig {
                version: version.to_string(),
                ..ProxyConfig::default()
            };
            connection.plan(&split(&config).expect("split"), &config.version);
        }
        assert_eq!(connection.sent.len(), NONCES_KEPT);
    }

    #[test]
    fn bursts_of_changes_are_debounced_within_bounds() {
        let start = Instant::now();
        let first = Debounce::change(None, start);
        assert_eq!(first.deadline, start + QUIET);
        let later = Debounce::change(Some(first), start + Duration::from_millis(50));
        assert_eq!(later.deadline, start + Duration::from_millis(150));
        let late = Debounce::change(Some(later), start + Duration::from_millis(950));
        assert_eq!(late.deadline, start + MAX_DELAY, "never later than the cap");
        assert_eq!(Debounce::immediate(start).deadline, start);
    }

    #[test]
    fn nodes_are_checked() {
        assert_eq!(
            identity_of(None).code(),
            tonic::Code::InvalidArgument,
            "no node"
        );
        let node = Node {
            id: String::new(),
            pod: "web-1".to_owned(),
            namespace: "demo".to_owned(),
            ip: "10.1.0.7".to_owned(),
        };
        assert_eq!(identity(Some(&node)).expect("valid"), web_identity());
        let bad_ip = Node {
            ip: "10.1.0".to_owned(),
            ..node.clone()
        };
        assert_eq!(
            identity_of(Some(&bad_ip)).code(),
            tonic::Code::InvalidArgument
        );
        let no_pod = Node {
            pod: String::new(),
            ..node
        };
        assert_eq!(
            identity_of(Some(&no_pod)).code(),
            tonic::Code::InvalidArgument
        );
    }

    fn identity_of(node: Option<&Node>) -> Status {
        identity(node).expect_err("invalid")
    }

    // ---- A real server and a real proxy client ----

    use std::sync::atomic::AtomicUsize;

    use crate::controlplane::identity::authn::FixedTokens;
    use crate::proxy::client::{self, ClientSettings};
    use crate::proxy::config::{Compiled, ConfigStore};

    struct FakeSource {
        config: Mutex<ProxyConfig>,
        changes: watch::Sender<u64>,
    }

    impl FakeSource {
        fn new(config: ProxyConfig) -> Arc<Self> {
            Arc::new(Self {
                config: Mutex::new(config),
                changes: watch::channel(0).0,
            })
        }

        fn set(&self, config: ProxyConfig) {
            *self.config.lock().unwrap() = config;
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    impl ConfigSource for FakeSource {
        fn config_for(&self, _: &ProxyIdentity) -> ProxyConfig {
            self.config.lock().unwrap().clone()
        }

        fn changes(&self) -> watch::Receiver<u64> {
            self.changes.subscribe()
        }
    }

    /// Polls `condition` every 20 ms for up to 10 s.
    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one series, 0 if absent.
    fn metric(registry: &Mutex<Registry>, series: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry.lock().unwrap())
            .expect("encode");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    }

    fn destinations(version: &str, backend_endpoint: &str, regex: &str) -> ProxyConfig {
        config(&format!(
            r#"
version: "{version}"
destinations:
  - name: backend.demo.svc.cluster.local
    addresses: ["198.19.0.20"]
    ports: [{{port: 80, endpoints: [{{address: "{backend_endpoint}"}}]}}]
    routes: [{{matches: [{{path: {{regex: "{regex}"}}}}]}}]
  - name: frontend.demo.svc.cluster.local
    addresses: ["198.19.0.21"]
    ports: [{{port: 80, endpoints: [{{address: "198.18.0.9:8080"}}]}}]
egress: [{{host: api.example.com}}]
"#
        ))
    }

    /// One HTTP/1.1 GET: the status code and the body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: debug\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("an HTTP response");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_follows_the_control_plane_through_changes_rejections_and_restarts() {
        let first = destinations("1", "198.18.0.5:8080", "/v[0-9]+");
        let source = FakeSource::new(first.clone());
        let registry = Arc::new(Mutex::new(Registry::default()));
        let authn = Arc::new(FixedTokens::pod("web-1-token", "demo", "web-1"));
        let server = PushServer::new(source.clone(), authn, &mut registry.lock().unwrap());
        let token = FixedTokens::file("web-1-token");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.clone().serve_with_listener(listener, async {
            let _ = stopped.await;
        }));

        let store = Arc::new(ConfigStore::new(Compiled::passthrough()));
        let (applied, rejected) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let client = tokio::spawn(client::run(
            ClientSettings {
                address: addr.to_string(),
                identity: web_identity(),
                token_path: Some(token.path().to_owned()),
                trust: Default::default(),
            },
            store.clone(),
            {
                let (applied, rejected) = (applied.clone(), rejected.clone());
                move |result| {
                    let counter = if result.is_ok() { &applied } else { &rejected };
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            },
        ));

        // The initial configuration arrives and is applied, in one go.
        eventually("the first configuration", || {
            store.current().source == first
        })
        .await;
        assert_eq!(applied.load(Ordering::SeqCst), 1);
        eventually("the ACKs", || {
            server.proxies().first().map(|p| p.acked_version.as_str()) == Some("1")
        })
        .await;
        let status = server.proxies().remove(0);
        assert_eq!(
            (status.pod.as_str(), status.namespace.as_str()),
            ("web-1", "demo")
        );
        assert_eq!(status.ip, web_identity().ip);
        assert_eq!(status.resources, 4);
        assert_eq!(metric(&registry, "skein_controlplane_connected_proxies"), 1);
        assert_eq!(metric(&registry, "skein_controlplane_acks_total"), 3);

        // The debug routes show it.
        let debug = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let debug_addr = debug.local_addr().expect("addr");
        let router = crate::controlplane::debug::router(server.clone(), source.clone());
        tokio::spawn(async move { axum::serve(debug, router).await });
        let (code, body) = get(debug_addr, "/debug/proxies").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("\"pod\":\"web-1\"") && body.contains("\"ackedVersion\":\"1\""),
            "{body}"
        );
        let (code, body) = get(debug_addr, "/debug/config?pod=demo/web-1").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<ProxyConfig>(&body).expect("config"),
            first
        );
        assert_eq!(get(debug_addr, "/debug/config?pod=demo/other").await.0, 404);
        assert_eq!(get(debug_addr, "/debug/config?pod=demo").await.0, 400);
        assert_eq!(get(debug_addr, "/debug/config").await.0, 400);

        // One destination changes: only it is pushed.
        let pushes = |kind: &str| {
            metric(
                &registry,
                &format!("skein_controlplane_pushes_total{{type=\"{kind}\"}}"),
            )
        };
        let (settings_before, egress_before) = (pushes("ProxySettings"), pushes("EgressPolicy"));
        let destinations_before = pushes("Destination");
        let bytes_before = metric(&registry, "skein_controlplane_pushed_bytes_total");
        let mut second = destinations("1", "198.18.0.6:8080", "/v[0-9]+");
        source.set(second.clone());
        eventually("the changed endpoint", || store.current().source == second).await;
        eventually("the push to be counted", || {
            pushes("Destination") == destinations_before + 1
        })
        .await;
        assert_eq!(pushes("ProxySettings"), settings_before);
        assert_eq!(pushes("EgressPolicy"), egress_before);
        let backend =
            &split(&second).expect("split")[DESTINATION_TYPE]["backend.demo.svc.cluster.local"];
        let backend_bytes = backend.resource.as_ref().map_or(0, |any| any.value.len()) as u64;
        assert_eq!(
            metric(&registry, "skein_controlplane_pushed_bytes_total") - bytes_before,
            backend_bytes,
            "only that destination's bytes"
        );

        // A route the proxy cannot compile: NACKed, and the proxy keeps the previous config.
        let bad = destinations("2", "198.18.0.6:8080", "(");
        source.set(bad);
        eventually("the NACK", || {
            server
                .proxies()
                .first()
                .is_some_and(|p| p.last_nack.is_some())
        })
        .await;
        let status = server.proxies().remove(0);
        let nack = status.last_nack.clone().unwrap_or_default();
        assert!(
            nack.starts_with("2: ") && nack.contains("backend.demo.svc.cluster.local"),
            "{nack}"
        );
        assert_eq!(status.sent_version, "2");
        assert_eq!(status.acked_version, "1");
        assert_eq!(store.current().source, second, "the previous config stays");
        assert!(rejected.load(Ordering::SeqCst) >= 1);
        // One NACK for that push: its destination response is held (ACKed) until the
        // settings that end the push arrive, and the whole push is then rejected once.
        eventually("the push's NACK", || {
            metric(&registry, "skein_controlplane_nacks_total") == 1
        })
        .await;

        // Fixed: applied, acknowledged, and the NACK is history.
        second.version = "3".to_owned();
        source.set(second.clone());
        eventually("the fixed config", || store.current().source == second).await;
        eventually("the fixed config's ACK", || {
            server
                .proxies()
                .first()
                .is_some_and(|p| p.acked_version == "3" && p.last_nack.is_none())
        })
        .await;

        // Broken again, and left so: the proxy's held resources include the rejected one
        // when it reconnects below.
        source.set(destinations("4", "198.18.0.6:8080", "("));
        eventually("the second NACK", || {
            metric(&registry, "skein_controlplane_nacks_total") == 2
        })
        .await;

        // The control plane goes away; the configuration changes meanwhile; it comes back on
        // the same port and the proxy catches up.
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the server stops, closing the streams")
            .expect("server task")
            .expect("server");
        eventually("the registry to empty", || server.proxies().is_empty()).await;
        assert_eq!(metric(&registry, "skein_controlplane_connected_proxies"), 0);
        assert_eq!(store.current().source, second, "kept while disconnected");

        second.version = "5".to_owned();
        second.destinations[1].ports[0].endpoints[0].address = "198.18.0.10:8080".parse().unwrap();
        source.set(second.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.clone().serve(addr, async {
            let _ = stopped.await;
        }));
        eventually("the resync", || store.current().source == second).await;
        eventually("the reconnected proxy", || {
            server.proxies().first().map(|p| p.acked_version.as_str()) == Some("5")
        })
        .await;

        client.abort();
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the server stops")
            .expect("server task")
            .expect("server");
    }

    /// The first request's status: what a client gets with `token` claiming `node`.
    async fn open(
        addr: SocketAddr,
        token: Option<&str>,
        node: Option<Node>,
    ) -> Result<DeltaDiscoveryResponse, Status> {
        use crate::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let mut first = subscribe(SETTINGS_TYPE, &[]);
        first.node = node;
        // Kept open: a stream the proxy closes ends before anything is pushed.
        let requests =
            futures::StreamExt::chain(futures::stream::iter([first]), futures::stream::pending());
        let mut request = Request::new(requests);
        if let Some(token) = token {
            crate::proxy::identity::authorize(&mut request, token).expect("header");
        }
        let mut responses = client
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(responses.message().await?.expect("a response"))
    }

    #[tokio::test]
    async fn only_an_authenticated_pod_gets_a_configuration_and_only_its_own() {
        let source = FakeSource::new(ProxyConfig::default());
        let authn = Arc::new(FixedTokens::pod("web-1-token", "demo", "web-1"));
        let server = PushServer::new(source, authn, &mut Registry::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(server.serve_with_listener(listener, std::future::pending()));
        let node = |namespace: &str, pod: &str| Node {
            id: String::new(),
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            ip: "10.1.0.7".to_owned(),
        };
        let refused = |result: Result<DeltaDiscoveryResponse, Status>| result.expect_err("refused");

        let no_token = refused(open(addr, None, Some(node("demo", "web-1"))).await);
        assert_eq!(no_token.code(), tonic::Code::Unauthenticated, "{no_token}");
        let bad_token = refused(open(addr, Some("stolen"), Some(node("demo", "web-1"))).await);
        assert_eq!(
            bad_token.code(),
            tonic::Code::Unauthenticated,
            "{bad_token}"
        );
        assert!(
            bad_token.message().contains("token has expired"),
            "{bad_token}"
        );

        let other_pod = refused(open(addr, Some("web-1-token"), Some(node("demo", "db-0"))).await);
        assert_eq!(
            other_pod.code(),
            tonic::Code::PermissionDenied,
            "{other_pod}"
        );
        assert!(
            other_pod.message().contains("demo/db-0") && other_pod.message().contains("demo/web-1"),
            "says what was claimed and what was authenticated: {other_pod}"
        );
        let other_namespace =
            refused(open(addr, Some("web-1-token"), Some(node("prod", "web-1"))).await);
        assert_eq!(other_namespace.code(), tonic::Code::PermissionDenied);

        let no_node = refused(open(addr, Some("web-1-token"), None).await);
        assert_eq!(no_node.code(), tonic::Code::InvalidArgument, "{no_node}");

        let own = open(addr, Some("web-1-token"), Some(node("demo", "web-1"))).await;
        assert_eq!(own.expect("served").type_url, SETTINGS_TYPE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_a_proxy_trusting_the_mesh_ca_syncs_and_others_cannot_connect() {
        use crate::controlplane::identity::ca::CaStore;
        use crate::controlplane::identity::serving::ServingCerts;
        use crate::pki::Ca;

        // Signed by an intermediate, as installed: the proxy trusts the root alone.
        let root = Ca::generate("mesh-ca", Duration::from_secs(3600)).unwrap();
        let bundle_pem = root.pem.cert_pem.clone();
        let issuer = root
            .issue_intermediate("issuer", Duration::from_secs(3600))
            .unwrap();
        let store = Arc::new(CaStore::default());
        store.load_ca(
            Ca::from_pem(&issuer.cert_pem, &issuer.key_pem).unwrap(),
            bundle_pem.clone(),
        );
        let certs = Arc::new(ServingCerts::new(store, vec!["127.0.0.1".to_owned()]));
        let tls = Arc::new(certs.server_config().unwrap());

        let first = destinations("1", "198.18.0.5:8080", "/v[0-9]+");
        let source = FakeSource::new(first.clone());
        let authn = Arc::new(FixedTokens::pod("web-1-token", "demo", "web-1"));
        let server = PushServer::new(source, authn, &mut Registry::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(server.serve_tls_with_listener(listener, tls, std::future::pending()));

        let token = FixedTokens::file("web-1-token");
        let bundle = FixedTokens::file(&bundle_pem);
        let store = Arc::new(ConfigStore::new(Compiled::passthrough()));
        let proxy = tokio::spawn(client::run(
            ClientSettings {
                address: addr.to_string(),
                identity: web_identity(),
                token_path: Some(token.path().to_owned()),
                trust: crate::proxy::stream_trust::StreamTrust::file(bundle.path()),
            },
            store.clone(),
            |_| {},
        ));
        eventually("the configuration over TLS", || {
            store.current().source == first
        })
        .await;
        proxy.abort();

        // A client trusting another CA fails the handshake; a plaintext one gets no HTTP/2.
        let other = Ca::generate("other-ca", Duration::from_secs(3600)).unwrap();
        let other_bundle = FixedTokens::file(&other.pem.cert_pem);
        let distrusting = client::endpoint(
            &addr.to_string(),
            &crate::proxy::stream_trust::StreamTrust::file(other_bundle.path()),
        )
        .await
        .expect("endpoint");
        assert!(distrusting.connect().await.is_err(), "an unknown CA");
        let plaintext = client::endpoint(&addr.to_string(), &Default::default())
            .await
            .expect("endpoint");
        let refused = match plaintext.connect().await {
            Err(_) => true,
            Ok(channel) => {
                use crate::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
                let mut request = Request::new(futures::stream::pending());
                crate::proxy::identity::authorize(&mut request, "web-1-token").expect("header");
                AggregatedDiscoveryServiceClient::new(channel)
                    .delta_aggregated_resources(request)
                    .await
                    .is_err()
            }
        };
        assert!(refused, "plaintext is not served");
    }
}
