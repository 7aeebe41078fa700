//! Requests to upstreams: over a connection from the [`pool`], opened here when it has none,
//! in the HTTP version the client spoke, over mutual TLS to meshed endpoints; and what a failed
//! send means for retries. HTTP/1 to meshed endpoints that take it travels over HTTP/2
//! ([`multiplex`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::ProxyBody;
use super::multiplex;
use super::pool::{self, Checkin, Endpoint, Http1Sender, Http2Sender, Pool};
use crate::config::ConfigStore;
use crate::mtls::{Carries, Mtls};
use crate::retry::AttemptOutcome;
use crate::tcp::{self, ConnectError, ErrorChain};

/// A request whose pooled connection closed before it went out is sent again on another, up
/// to this many times in all (a fresh connection's failure is final anyway).
const MAX_UNSENT_TRIES: usize = 3;

/// Why an upstream gave no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: SocketAddr, reason: String },
    #[error("{address} refused the stream (it did not process the request)")]
    RefusedStream { address: SocketAddr },
    #[error("{address} reset or closed the connection before responding: {reason}")]
    Reset { address: SocketAddr, reason: String },
}

impl UpstreamError {
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Self::Connect { .. } => AttemptOutcome::ConnectFailure,
            Self::RefusedStream { .. } => AttemptOutcome::RefusedStream,
            Self::Reset { .. } => AttemptOutcome::Reset,
        }
    }
}

/// Sends requests to upstreams, shared by all connections of the proxy.
pub struct Upstreams {
    pool: Arc<Pool>,
    connect_timeout: Duration,
    config: Arc<ConfigStore>,
    mtls: Arc<Mtls>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstreams")
    }
}

impl Upstreams {
    /// `pool_idle`: how long an idle connection is kept
    /// ([`Limits::upstream_pool_idle`](crate::limits::Limits::upstream_pool_idle)). Inside a
    /// tokio runtime, starts the task that closes idle connections ([`pool::reap`]).
    pub fn new(
        connect_timeout: Duration,
        pool_idle: Duration,
        mtls: Arc<Mtls>,
        config: Arc<ConfigStore>,
    ) -> Self {
        let pool = Arc::new(Pool::new(pool_idle));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(pool::reap(Arc::downgrade(&pool)));
        }
        Self {
            pool,
            connect_timeout,
            config,
            mtls,
        }
    }

    /// Sends one try of a request to `address`, speaking the version the client spoke, over
    /// mutual TLS if the endpoint is meshed. Takes the head by value: a try that may be retried
    /// sends a copy, the last one the original, so no try copies the headers twice.
    ///
    /// An HTTP/1 request to a meshed endpoint whose proxy takes it goes over HTTP/2
    /// ([`multiplex`]); its response is handed back as HTTP/1.1.
    pub async fn send(
        &self,
        address: SocketAddr,
        mut parts: Parts,
        body: ProxyBody,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (meshed, carried) = {
            let config = self.config.current();
            let meshed = self.mtls.identity_for(&config, address).is_some();
            let carried =
                meshed && config.takes_http2_upgrade(address) && multiplex::can_carry(&parts);
            (meshed, carried)
        };
        if carried {
            multiplex::carry(&mut parts);
        }
        let endpoint = self.pool.endpoint(address);
        if parts.version == Version::HTTP_2 {
            let request = http2_request(&endpoint, meshed, parts, body);
            let mut response = self.send_http2(address, &endpoint, meshed, request).await?;
            if carried {
                *response.version_mut() = Version::HTTP_11;
            }
            Ok(response)
        } else {
            let request = http1_request(&endpoint, parts, body);
            self.send_http1(address, endpoint, meshed, request).await
        }
    }

    async fn send_http1(
        &self,
        address: SocketAddr,
        endpoint: Arc<Endpoint>,
        mtls: bool,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut tries = 1;
        loop {
            // The last try opens a connection of its own.
            let pooled = (tries < MAX_UNSENT_TRIES)
                .then(|| endpoint.take_http1(mtls, Instant::now()))
                .flatten();
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                // Boxed: connecting is rare, and its future would otherwise make every
                // request's future as large.
                None => Box::pin(self.connect_http1(address, mtls)).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let checkin = Checkin::new(endpoint, mtls, sender);
                    return Ok(response.map(|body| UpstreamBody::new(body, Some(checkin))));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(classify(address, &err.into_error())),
                },
            }
            tries += 1;
        }
    }

    async fn send_http2(
        &self,
        address: SocketAddr,
        endpoint: &Endpoint,
        mtls: bool,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        for _ in 0..MAX_UNSENT_TRIES {
            let (mut sender, reused) = endpoint
                .http2(mtls, || Box::pin(self.connect_http2(address, mtls)))
                .await?;
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response.map(|body| UpstreamBody::new(body, None))),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => {
                        endpoint.forget_closed_http2(mtls);
                        request = unsent;
                    }
                    _ => return Err(classify(address, &err.into_error())),
                },
            }
        }
        Err(UpstreamError::Reset {
            address,
            reason: format!(
                "its connection closed before the request went out, {MAX_UNSENT_TRIES} times"
            ),
        })
    }

    async fn connect_http1(
        &self,
        address: SocketAddr,
        mtls: bool,
    ) -> Result<Http1Sender, UpstreamError> {
        let connected = self.open(address, mtls, Carries::Http1).await?;
        handshake_http1(connected)
            .await
            .map_err(|err| UpstreamError::Connect {
                address,
                reason: ErrorChain(&err).to_string(),
            })
    }

    async fn connect_http2(
        &self,
        address: SocketAddr,
        mtls: bool,
    ) -> Result<Http2Sender, UpstreamError> {
        let connected = self.open(address, mtls, Carries::Http2).await?;
        handshake_http2(connected)
            .await
            .map_err(|err| UpstreamError::Connect {
                address,
                reason: ErrorChain(&err).to_string(),
            })
    }

    /// TCP, and for a meshed endpoint the mTLS handshake with the identity the control plane
    /// gives it now.
    async fn open(
        &self,
        address: SocketAddr,
        mtls: bool,
        carries: Carries,
    ) -> Result<tcp::Connected, UpstreamError> {
        let config = self.config.current();
        let identity = if mtls {
            let identity = self.mtls.identity_for(&config, address);
            if identity.is_none() {
                return Err(UpstreamError::Connect {
                    address,
                    reason: "it is no longer a meshed endpoint".to_owned(),
                });
            }
            identity
        } else {
            None
        };
        let upstream = tcp::Upstream { address, identity };
        tcp::open(upstream, carries, &self.mtls, self.connect_timeout)
            .await
            .map_err(|err| UpstreamError::Connect {
                address,
                reason: connect_reason(&err),
            })
    }
}

/// An HTTP/1.1 connection over `io`, its task running, ready for a request.
async fn handshake_http1<T>(io: T) -> hyper::Result<Http1Sender>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %ErrorChain(&err), "upstream HTTP/1 connection ended with an error");
        }
    });
    sender.ready().await?;
    Ok(sender)
}

/// An HTTP/2 connection over `io`, its task running.
async fn handshake_http2<T>(io: T) -> hyper::Result<Http2Sender>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(crate::limits::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::limits::HTTP2_CONNECTION_WINDOW)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %ErrorChain(&err), "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// What went wrong connecting, without repeating "cannot connect to ADDRESS".
fn connect_reason(err: &ConnectError) -> String {
    match err {
        ConnectError::Io { source, .. } => source.to_string(),
        ConnectError::Timeout { timeout, .. } => format!("no answer within {timeout:?}"),
        ConnectError::Handshake { .. } => ErrorChain(err).to_string(),
    }
}

/// The request as an HTTP/2 upstream gets it: the same method, headers and path, aimed at the
/// endpoint (`:authority` is its address, as the `Host` the client sent stays a header).
fn http2_request(
    endpoint: &Endpoint,
    mtls: bool,
    parts: Parts,
    body: ProxyBody,
) -> Request<ProxyBody> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if mtls { Scheme::HTTPS } else { Scheme::HTTP });
    uri.authority = Some(endpoint.authority.clone());
    uri.path_and_query = Some(path_and_query(parts.uri));
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
    *request.headers_mut() = parts.headers;
    *request.version_mut() = Version::HTTP_2;
    request
}

/// The request as an HTTP/1.1 upstream gets it: origin form, with the endpoint's address as
/// `Host` if the client sent none (HTTP/1.0).
fn http1_request(endpoint: &Endpoint, parts: Parts, body: ProxyBody) -> Request<ProxyBody> {
    let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        parts.uri
    } else {
        Uri::from(path_and_query(parts.uri))
    };
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers;
    *request.version_mut() = Version::HTTP_11;
    if !request.headers().contains_key(HOST) {
        let host = HeaderValue::from_str(endpoint.authority.as_str())
            .expect("a socket address is a valid header value");
        request.headers_mut().insert(HOST, host);
    }
    request
}

fn path_and_query(uri: Uri) -> PathAndQuery {
    uri.into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// A response body from an upstream; an HTTP/1 connection goes back to its pool when the body
/// is dropped, that is when hyper is done with it (the body is dropped before the connection is
/// given back, so hyper knows first).
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    _checkin: Option<Checkin>,
}

impl UpstreamBody {
    fn new(body: Incoming, checkin: Option<Checkin>) -> Self {
        Self {
            body,
            _checkin: checkin,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A failed exchange: a stream the upstream refused (it did not process the request), or a reset.
fn classify(address: SocketAddr, err: &hyper::Error) -> UpstreamError {
    let reason = ErrorChain(err).to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = source {
        if let Some(h2) = current.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return UpstreamError::RefusedStream { address };
        }
        source = current.source();
    }
    UpstreamError::Reset { address, reason }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::http::body;

    /// A real HTTP server on loopback that answers each request with its `Host` header and
    /// counts the connections it accepted.
    struct App {
        address: SocketAddr,
        /// Connections accepted so far.
        connections: Arc<AtomicUsize>,
        /// Connections open now.
        open: Arc<AtomicUsize>,
    }

    async fn app(http2: bool) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (accepted, now_open) = (connections.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                now_open.fetch_add(1, Ordering::SeqCst);
                let still_open = now_open.clone();
                let service = service_fn(|request: Request<Incoming>| async move {
                    let host = request
                        .headers()
                        .get(HOST)
                        .map(|host| host.as_bytes().to_vec())
                        .unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(Response::new(body::full(host)))
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                    still_open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        App {
            address,
            connections,
            open,
        }
    }

    fn upstreams(pool_idle: Duration) -> Upstreams {
        Upstreams::new(
            Duration::from_secs(2),
            pool_idle,
            Arc::new(Mtls::new(Arc::default(), None)),
            Arc::new(ConfigStore::new(crate::config::Compiled::passthrough())),
        )
    }

    fn head(version: Version, host: Option<&'static str>) -> Parts {
        let mut request = Request::new(());
        *request.method_mut() = Method::GET;
        *request.version_mut() = version;
        *request.uri_mut() = Uri::from_static("/orders?id=7");
        if let Some(host) = host {
            request
                .headers_mut()
                .insert(HOST, HeaderValue::from_static(host));
        }
        request.into_parts().0
    }

    /// Sends a request and reads the whole response, as the proxy's client side does.
    async fn get(upstreams: &Upstreams, address: SocketAddr, version: Version) -> String {
        let response = upstreams
            .send(address, head(version, Some("orders")), body::empty())
            .await
            .expect("a response");
        let bytes = response.into_body().collect().await.expect("a body");
        String::from_utf8_lossy(&bytes.to_bytes()).into_owned()
    }

    #[tokio::test]
    async fn sequential_http1_requests_share_one_connection() {
        let app = app(false).await;
        let upstreams = upstreams(Duration::from_secs(30));
        for _ in 0..3 {
            assert_eq!(
                get(&upstreams, app.address, Version::HTTP_11).await,
                "orders"
            );
        }
        assert_eq!(app.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_http1_connection_is_lent_to_one_response_at_a_time_then_reused() {
        let app = app(false).await;
        let upstreams = upstreams(Duration::from_secs(30));
        let send = || upstreams.send(app.address, head(Version::HTTP_11, None), body::empty());
        // Two responses whose bodies are not read yet hold two connections.
        let (first, second) = tokio::join!(send(), send());
        let (first, second) = (first.expect("first"), second.expect("second"));
        assert_eq!(app.connections.load(Ordering::SeqCst), 2);
        for response in [first, second] {
            // No Host from the client (HTTP/1.0): the endpoint's address is sent.
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(bytes, app.address.to_string());
        }
        assert_eq!(
            get(&upstreams, app.address, Version::HTTP_11).await,
            "orders"
        );
        assert_eq!(
            get(&upstreams, app.address, Version::HTTP_11).await,
            "orders"
        );
        assert_eq!(app.connections.load(Ordering::SeqCst), 2, "both came back");
    }

    #[tokio::test]
    async fn an_http1_connection_idle_past_the_limit_is_not_reused() {
        let app = app(false).await;
        let upstreams = upstreams(Duration::from_millis(50));
        get(&upstreams, app.address, Version::HTTP_11).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        get(&upstreams, app.address, Version::HTTP_11).await;
        assert_eq!(app.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_limit_even_without_traffic() {
        let app = app(false).await;
        let upstreams = upstreams(Duration::from_millis(100));
        let sends = (0..3).map(|_| get(&upstreams, app.address, Version::HTTP_11));
        futures::future::join_all(sends).await;
        assert!(app.connections.load(Ordering::SeqCst) >= 1);
        // The app keeps its side open: the proxy must close its idle connections itself.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while app.open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{} connections still open",
            app.open.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn overlapping_http2_requests_share_one_connection() {
        let app = app(true).await;
        let upstreams = upstreams(Duration::from_secs(30));
        let sends = (0..4).map(|_| get(&upstreams, app.address, Version::HTTP_2));
        let bodies = futures::future::join_all(sends).await;
        assert!(bodies.iter().all(|body| body == "orders"), "{bodies:?}");
        get(&upstreams, app.address, Version::HTTP_2).await;
        assert_eq!(app.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure_for_both_versions() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let upstreams = upstreams(Duration::from_secs(30));
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let err = upstreams
                .send(address, head(version, None), body::empty())
                .await
                .expect_err("nothing listens");
            assert_eq!(err.outcome(), AttemptOutcome::ConnectFailure, "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("cannot connect to {address}: ")),
                "{err}"
            );
        }
    }
}
