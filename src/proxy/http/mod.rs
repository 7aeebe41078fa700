//! HTTP/1.1, HTTP/2 and gRPC through the proxy.
//!
//! A connection that protocol detection found to be HTTP is served here by hyper; each request
//! then goes through:
//!
//! - [`outbound`]: from the app — find the mesh service (by the original destination's VIP or
//!   the `Host`), or apply the egress policy to an unknown one; pick a route; inject faults;
//! - [`inbound`]: to the app — forward to it at the pod IP;
//! - [`forward`]: both — tries, retries with back-off and budget, timeouts, load balancing,
//!   mirroring, and the request metrics;
//! - [`upstream`]: requests to upstreams, on connections kept by [`pool`]; [`body`]: replayable
//!   and metered bodies.
//!
//! Upstream requests use the HTTP version the client spoke (gRPC stays HTTP/2 end to end),
//! except between two proxies, where HTTP/1 may travel over HTTP/2 ([`multiplex`]).
//! WebSocket upgrades are passed through: after the upstream's `101`, bytes are copied both
//! ways. Other upgrades (`h2c`, ...) are not: the request is forwarded as plain HTTP/1.1
//! ([`requested_upgrade`]), and an upstream's `101` to a request not upgraded is answered `502`.

pub mod body;
pub(crate) mod forward;
pub(crate) mod inbound;
pub mod multiplex;
pub(crate) mod outbound;
pub mod pool;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use self::body::ProxyBody;
use super::reasons::Reason;
use super::{Direction, Shared, headers};
use skein_core::identity::SpiffeId;

/// Header on every response the proxy makes itself, saying why (`egress-blocked`,
/// `no-endpoints`, `connect-failure`, `timeout`, `overloaded`, ...: the names of
/// [`crate::reasons::Reason`]).
pub const ERROR_HEADER: &str = "x-skein-error";

/// Where an HTTP connection came from and was going.
#[derive(Clone, Debug)]
pub struct Connection {
    pub direction: Direction,
    pub peer: SocketAddr,
    /// Outbound: the address the app connected to (before the capture redirected it);
    /// inbound: the app's address (the pod IP the client connected to).
    pub target: SocketAddr,
    /// Inbound: the client's verified workload identity (from its mTLS certificate); `None`
    /// for a client without one (plaintext) and for outbound connections. AccessPolicies
    /// match on it.
    pub peer_id: Option<SpiffeId>,
}

/// Runs a hyper server connection with the drain: graceful shutdown (idle HTTP/1 connections
/// close, HTTP/2 ones get a GOAWAY) once `$shut_down` resolves, dropped when the drain runs out
/// of time.
macro_rules! drive {
    ($connection:expr, $shut_down:expr, $shared:expr) => {{
        let mut connection = std::pin::pin!($connection);
        tokio::select! {
            result = connection.as_mut() => result,
            () = $shut_down => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => result,
                    () = $shared.drain.aborted() => Ok(()),
                }
            }
        }
    }};
}

/// Serves one detected HTTP connection until it ends or the drain closes it.
///
/// Inbound, once the proxy goes away (its pod is terminating) and while it still accepts:
/// HTTP/2 connections get a GOAWAY at once (requests already sent are still served; the client
/// opens a new connection, to another endpoint once it knows) and HTTP/1 responses carry
/// `Connection: close`. Idle HTTP/1 connections are left open until the listeners close: closing
/// them early would race with a request already on its way. When the listeners close, idle
/// HTTP/1 connections close and HTTP/2 connections get a GOAWAY, so clients move on without
/// failed requests; whatever is left when the drain times out is dropped.
pub(crate) async fn serve<I>(io: I, http2: bool, connection: Connection, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inbound = connection.direction == Direction::Inbound;
    let context = Arc::new(RequestContext {
        connection: connection.clone(),
        shared: shared.clone(),
    });
    let service = service_fn(move |request: Request<Incoming>| {
        let context = context.clone();
        // Read as the request arrives (no clone of the context for after it): a request that
        // starts just before the proxy goes away closes its connection on the next one.
        let close = inbound && !http2 && context.shared.drain.going_away_since().is_some();
        async move {
            let mut response = handle(request, context).await;
            if close {
                close_connection(&mut response);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(io);
    let drain = &shared.drain;
    let limits = &shared.limits;
    let result = if http2 {
        let served = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(super::limits::HTTP2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(super::limits::HTTP2_MAX_LOCAL_ERROR_RESETS)
            .initial_stream_window_size(super::limits::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(super::limits::HTTP2_CONNECTION_WINDOW)
            .serve_connection(io, service);
        let shut_down = async {
            if inbound {
                tokio::select! {
                    () = drain.went_away() => {}
                    () = drain.stopped_accepting() => {}
                }
            } else {
                drain.stopped_accepting().await;
            }
        };
        drive!(served, shut_down, shared)
    } else {
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes)
            .serve_connection(io, service)
            .with_upgrades();
        drive!(served, drain.stopped_accepting(), shared)
    };
    if let Err(err) = result {
        let cut = if err.is_timeout() {
            Some(super::metrics::CutReason::HeaderTimeout)
        } else if err.is_parse_too_large() {
            Some(super::metrics::CutReason::HeaderTooLarge)
        } else {
            None
        };
        if let Some(reason) = cut {
            shared.metrics.tcp(connection.direction).cut(reason).inc();
            // Debug only: an idle keep-alive connection ends this way too, as usual.
            tracing::debug!(
                direction = %connection.direction,
                peer = %connection.peer,
                reason = reason.as_str(),
                "closed an HTTP/1 connection: no whole request head in time, or too big a one"
            );
            return;
        }
        tracing::debug!(
            direction = %connection.direction,
            peer = %connection.peer,
            error = %super::tcp::ErrorChain(&err),
            "HTTP connection ended with an error"
        );
    }
}

/// While the proxy goes away, an inbound HTTP/1 response closes its connection, so the client
/// connects afresh (to another endpoint, once it has learned this one is leaving). Switching
/// protocols is left alone: the connection becomes a tunnel.
fn close_connection(response: &mut Response<ProxyBody>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// What every request on a connection shares.
pub(crate) struct RequestContext {
    pub connection: Connection,
    pub shared: Arc<Shared>,
}

async fn handle(request: Request<Incoming>, context: Arc<RequestContext>) -> Response<ProxyBody> {
    let started = Instant::now();
    match context.connection.direction {
        Direction::Outbound => outbound::handle(request, &context, started).await,
        Direction::Inbound => inbound::handle(request, &context, started).await,
    }
}

/// A request taken apart for forwarding, as both directions need it.
pub(crate) struct Prepared {
    /// The head, without hop-by-hop headers, with `x-request-id` and this hop's trace span.
    pub parts: http::request::Parts,
    pub body: Incoming,
    /// The protocol the client asked to switch to, and its side of the switch.
    pub upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    pub grpc: bool,
    /// This hop's span, when the request is sampled ([`super::trace`]).
    pub span: Option<Box<super::trace::Span>>,
    /// What a running tap needs of the request; `None` (and no work) when nobody taps.
    pub tap: Option<Box<super::tap::TapRequest>>,
}

pub(crate) fn prepare(
    mut request: Request<Incoming>,
    context: &RequestContext,
    rng: &mut fastrand::Rng,
) -> Prepared {
    let upgrade = requested_upgrade(request.headers())
        .map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
    let (mut parts, body) = request.into_parts();
    let grpc = is_grpc(&parts.headers);
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::ensure_request_id(&mut parts.headers, rng);
    let span = start_span(&mut parts, grpc, context, rng);
    let tap = context
        .shared
        .tap
        .is_tapping()
        .then(|| super::tap::TapRequest::new(&parts));
    Prepared {
        parts,
        body,
        upgrade,
        grpc,
        span,
        tap,
    }
}

/// The request's span if it is sampled; without an exporter nothing is sampled and the trace
/// headers pass as they came (see [`super::trace`]).
fn start_span(
    parts: &mut http::request::Parts,
    grpc: bool,
    context: &RequestContext,
    rng: &mut fastrand::Rng,
) -> Option<Box<super::trace::Span>> {
    let tracer = context.shared.tracer.as_ref()?;
    let sampler = tracer.sampler;
    let trace = headers::propagate_trace(&mut parts.headers, |rng| sampler.sample(rng), rng)?;
    let connection = &context.connection;
    let mut span = super::trace::Span::start(trace, connection.direction, parts, grpc);
    let workload = &context.shared.config.current().source.workload;
    span.service.clone_from(&workload.name);
    span.namespace.clone_from(&workload.namespace);
    if connection.direction == Direction::Inbound {
        span.peer = Some(connection.peer);
    }
    Some(Box::new(span))
}

/// A response the proxy makes itself: plain text saying what happened (`REASON: message`, the
/// message naming the Service, policy, endpoint, timeout, ...), and [`ERROR_HEADER`]. The
/// reasons and what they mean: [`crate::reasons`].
pub fn local_response(status: StatusCode, reason: Reason, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(format!("{}\n", local_text(reason, message))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static(reason.name()));
    response
}

/// `no-endpoints: Service demo/backend port 8080 has ...`: the body of a local response.
pub fn local_text(reason: Reason, message: &str) -> String {
    format!("{reason}: {message}")
}

/// The host a request is for: the `Host` header (HTTP/1) or the URI's authority (HTTP/2).
pub fn request_host(parts: &http::request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok())
}

/// Whether the request is gRPC (for the `protocol` label and gRPC-aware retries).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`) that
/// the proxy tunnels: WebSocket only. Any other upgrade (`h2c` in particular, which would turn
/// the connection into HTTP/2 straight to the app, every later request bypassing routing and
/// AccessPolicies) is not honoured: the request goes on as a plain HTTP/1.1 request, its
/// `Upgrade`, `HTTP2-Settings` and `Connection` headers removed as hop-by-hop
/// ([`headers::remove_hop_by_hop`]), as RFC 9110 §7.8 lets a server ignore an upgrade.
pub fn requested_upgrade(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        // A protocol may carry a version (`websocket/13`); WebSocket's has none.
        .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"));
    (asks && websocket).then(|| HeaderValue::from_static("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    HeaderValue::from_str(value).expect("value"),
                )
            })
            .collect()
    }

    #[test]
    fn only_websocket_upgrades_are_tunnelled() {
        let websocket = HeaderValue::from_static("websocket");
        for upgrade in ["websocket", "WebSocket", "foo, websocket"] {
            let asked = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", upgrade)]);
            assert_eq!(
                requested_upgrade(&asked),
                Some(websocket.clone()),
                "{upgrade}"
            );
        }
        for upgrade in ["h2c", "H2C", "tls/1.2", "websocketx", ""] {
            let asked = headers(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", upgrade),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ]);
            assert_eq!(requested_upgrade(&asked), None, "{upgrade}");
        }
        // Without `Connection: upgrade` there is no upgrade at all.
        assert_eq!(
            requested_upgrade(&headers(&[("upgrade", "websocket")])),
            None
        );
    }
}
