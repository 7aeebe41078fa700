//! The admin server on the admin port (plain HTTP; the capture rules never redirect it):
//!
//! | request | answer |
//! |---|---|
//! | `GET /live` | 200 while the process serves HTTP at all |
//! | `GET /ready` | 200 while the listeners accept connections; 503 once draining, once the workload certificate has expired (see [`super::identity`]), and for up to 10 s at start while the first certificate is requested (callers of a Ready pod use mTLS at once) and while the control plane's first configuration is awaited |
//! | `GET /metrics` | the [`metrics`](super::metrics), OpenMetrics text |
//! | `GET /config` | the active configuration as JSON: `version`, `passthrough` (no `--config`), `config` (as loaded), `ejected` (endpoints outlier detection has ejected now, per service) and `identity` (the workload certificate: `id`, `notBefore`, `notAfter`, `expiresInSeconds`; null before the first) |
//! | `GET /debug/recent-errors` | the last requests this proxy answered itself or that failed upstream, oldest first ([`super::recent::RecentErrors`] as JSON: `total`, `capacity`, `errors`: time, direction, method, authority, path without its query, status, `x-skein-error` reason, message, upstream, attempts), what `skein explain` shows |
//! | `POST /drain` | stop accepting (new connections are refused, `/ready` 503); in-flight connections continue and the process keeps running. Answers once the listeners are closed |
//! | `POST /shutdown` | drain, then exit once in-flight connections are done or the drain timeout has passed (what a Job's app calls when it is done, if the proxy is not a native sidecar) |
//!
//! The server listens on `0.0.0.0` and, with IPv6, `[::]`, so kubelet probes reach it on
//! single- and dual-stack clusters alike, and the capture rules leave its port alone. So any
//! pod could reach it: only `/live`, `/ready`, `/metrics` (the kubelet's probes from the
//! node, Prometheus through the injected `prometheus.io/port`) and `/debug/recent-errors`
//! (`skein explain` reads it through the apiserver's pod proxy, which connects from outside
//! the pod; it holds what failing requests' metrics and logs already say, and paths without
//! their queries, never headers or bodies) answer other addresses.
//! Everything else, which changes the proxy's state or reveals its configuration, answers only
//! connections from loopback, that is from inside the pod (the app, `kubectl exec`); others get
//! `403` ([`allowed`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;

/// What the admin server asks of [`run`](super::run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminCommand {
    Drain,
    Shutdown,
}

#[derive(Debug)]
pub(crate) struct AdminRequest {
    pub command: AdminCommand,
    /// Answered once the listeners are closed.
    pub done: oneshot::Sender<()>,
}

#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    /// True from the moment every listener accepts until the drain has closed them.
    pub ready: Arc<AtomicBool>,
    /// With a certificate to come from the control plane: `/ready` waits for it until then.
    pub first_certificate_by: Option<std::time::Instant>,
    pub shared: Arc<Shared>,
    pub commands: mpsc::Sender<AdminRequest>,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route(RECENT_ERRORS_PATH, get(recent_errors))
        .route("/drain", post(drain))
        .route("/shutdown", post(shutdown))
        .layer(axum::middleware::from_fn(loopback_unless_public))
        .with_state(state)
}

/// Paths any address may ask for: the kubelet's probes, Prometheus's scrapes and `skein
/// explain` (through the apiserver) come from outside the pod. They reveal nothing but health,
/// counters and failed requests' lines, and change nothing.
const PUBLIC_PATHS: [&str; 4] = ["/live", "/ready", "/metrics", RECENT_ERRORS_PATH];

/// Where the recent errors are served.
pub const RECENT_ERRORS_PATH: &str = "/debug/recent-errors";

/// Pure: whether `peer` may ask for `path`. Anything but [`PUBLIC_PATHS`] (with any method,
/// and unknown paths too, so nothing added later is exposed by mistake) only from loopback.
pub fn allowed(path: &str, peer: std::net::IpAddr) -> bool {
    PUBLIC_PATHS.contains(&path) || peer.to_canonical().is_loopback()
}

async fn loopback_unless_public(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if allowed(path, peer.ip()) {
        return next.run(request).await;
    }
    tracing::info!(%peer, method = %request.method(), path, "admin request refused: not from inside the pod");
    (
        StatusCode::FORBIDDEN,
        format!(
            "{path} answers only from inside the pod (loopback); from other addresses only {} do\n",
            PUBLIC_PATHS.join(", ")
        ),
    )
        .into_response()
}

/// Serves the admin API on `listeners` until `stop` becomes true, then finishes the requests in
/// progress.
pub(crate) async fn serve(
    listeners: Vec<TcpListener>,
    state: AdminState,
    stop: watch::Receiver<bool>,
) {
    let app = router(state);
    let servers = listeners.into_iter().map(|listener| {
        let local = listener.local_addr().ok();
        let mut stop = stop.clone();
        let app = app
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        });
        async move {
            if let Err(err) = server.await {
                tracing::warn!(listener = ?local, error = %err, "the admin server stopped");
            }
        }
    });
    futures::future::join_all(servers).await;
}

async fn ready(State(state): State<AdminState>) -> Response {
    let expired = super::identity::expired_at(&state.shared.credentials, SystemTime::now());
    if let Some(at) = expired {
        let at = skein_core::timestamp::rfc3339(at);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("workload certificate expired at {at}, and renewing it keeps failing\n"),
        )
            .into_response()
    } else if state.shared.credentials.current().is_none()
        && state
            .first_certificate_by
            .is_some_and(|by| std::time::Instant::now() < by)
    {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the workload certificate\n",
        )
            .into_response()
    } else if state.shared.config.waiting_for_first() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first configuration from the control plane\n",
        )
            .into_response()
    } else if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else if state.shared.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    skein_core::telemetry::metrics_response(state.shared.metrics.registry())
}

async fn recent_errors(State(state): State<AdminState>) -> Response {
    axum::Json(state.shared.recent_errors.snapshot()).into_response()
}

async fn config(State(state): State<AdminState>) -> Response {
    let config = state.shared.config.current();
    let now = std::time::Instant::now();
    let ejected: serde_json::Map<String, serde_json::Value> = config
        .services()
        .filter_map(|service| {
            let ejected = service.balancer.ejected(now);
            (!ejected.is_empty()).then(|| {
                (
                    format!("{}:{}", service.name, service.port),
                    serde_json::json!(ejected),
                )
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "version": config.source.version,
        "passthrough": config.passthrough,
        "config": config.source,
        "ejected": ejected,
        "identity": super::identity::describe(&state.shared.credentials, std::time::SystemTime::now()),
    }))
    .into_response()
}

async fn drain(State(state): State<AdminState>) -> Response {
    request(&state, AdminCommand::Drain).await;
    let in_flight = state.shared.drain.active();
    tracing::info!(in_flight, "draining on POST /drain");
    format!("draining: new connections are refused; {in_flight} in flight\n").into_response()
}

async fn shutdown(State(state): State<AdminState>) -> Response {
    request(&state, AdminCommand::Shutdown).await;
    let in_flight = state.shared.drain.active();
    tracing::info!(in_flight, "shutting down on POST /shutdown");
    format!("shutting down: exiting once {in_flight} in-flight connections are done\n")
        .into_response()
}

/// Asks [`run`](super::run) to act and waits until the listeners are closed. If `run` no longer
/// takes requests it is already shutting down, which is what was asked for.
async fn request(state: &AdminState, command: AdminCommand) {
    let (done, acknowledged) = oneshot::channel();
    if state
        .commands
        .send(AdminRequest { command, done })
        .await
        .is_ok()
    {
        let _ = acknowledged.await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::metrics::Metrics;

    struct Server {
        addr: SocketAddr,
        state: AdminState,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start() -> (Server, mpsc::Receiver<AdminRequest>) {
        let (commands, requests) = mpsc::channel(1);
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(true)),
            first_certificate_by: None,
            shared: Arc::new(Shared::new(
                Metrics::new(),
                Arc::new(crate::config::ConfigStore::new(
                    crate::config::Compiled::passthrough(),
                )),
                Arc::default(),
                None,
                Duration::from_secs(1),
                [16001, 16006, 16000],
                crate::limits::Limits::default(),
            )),
            commands,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(vec![listener], state.clone(), stopped));
        let server = Server {
            addr,
            state,
            stop,
            task,
        };
        (server, requests)
    }

    /// One HTTP/1.1 request; the status code and the body.
    async fn call(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        let response = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("admin answered in time");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn only_probes_and_metrics_answer_other_addresses() {
        let pod: std::net::IpAddr = "10.1.0.9".parse().expect("ip");
        for path in ["/live", "/ready", "/metrics", RECENT_ERRORS_PATH] {
            assert!(allowed(path, pod), "{path}");
        }
        for path in [
            "/config",
            "/drain",
            "/shutdown",
            "/",
            "/anything",
            "/metrics/",
        ] {
            assert!(!allowed(path, pod), "{path}");
        }
        for local in ["127.0.0.1", "127.0.0.5", "::1", "::ffff:127.0.0.1"] {
            let local = local.parse().expect("ip");
            assert!(allowed("/shutdown", local), "{local}");
            assert!(allowed("/config", local), "{local}");
        }
    }

    #[tokio::test]
    async fn recent_errors_are_served_as_json() {
        let (server, _requests) = start().await;
        let (status, body) = call(server.addr, "GET", RECENT_ERRORS_PATH).await;
        assert_eq!(status, 200, "{body}");
        let empty: crate::recent::RecentErrors = serde_json::from_str(&body).expect("json");
        assert_eq!((empty.total, empty.errors.len()), (0, 0));

        let (parts, ()) = http::Request::get("http://backend/x")
            .body(())
            .expect("request")
            .into_parts();
        let error = crate::recent::RequestLine::of(&parts).error(
            crate::Direction::Outbound,
            503,
            Some("no-endpoints".to_owned()),
            Some("no-endpoints: Service demo/backend ...".to_owned()),
            None,
        );
        server.state.shared.recent_errors.record(error.clone());
        let (_, body) = call(server.addr, "GET", RECENT_ERRORS_PATH).await;
        let recent: crate::recent::RecentErrors = serde_json::from_str(&body).expect("json");
        assert_eq!(recent.total, 1);
        assert_eq!(recent.errors, [error]);
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let (server, _requests) = start().await;
        let addr = server.addr;
        assert_eq!(call(addr, "GET", "/live").await.0, 200);
        assert_eq!(call(addr, "GET", "/ready").await.0, 200);
        let (status, text) = call(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains("skein_proxy_tcp_connections_opened_total"),
            "{text}"
        );

        server.state.shared.drain.stop_accepting();
        server.state.ready.store(false, Ordering::SeqCst);
        assert_eq!(
            call(addr, "GET", "/ready").await,
            (503, "draining\n".to_owned())
        );
        assert_eq!(call(addr, "GET", "/drain").await.0, 405);

        let _ = server.stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("the server stops when told")
            .expect("server task");
    }

    #[tokio::test]
    async fn drain_and_shutdown_answer_once_run_acknowledges() {
        let (server, mut requests) = start().await;
        let run = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(AdminRequest { command, done }) = requests.recv().await {
                seen.push(command);
                let _ = done.send(());
                if command == AdminCommand::Shutdown {
                    break;
                }
            }
            seen
        });
        assert_eq!(call(server.addr, "POST", "/drain").await.0, 200);
        assert_eq!(call(server.addr, "POST", "/shutdown").await.0, 200);
        // `run` has stopped taking requests: still answered.
        assert_eq!(call(server.addr, "POST", "/shutdown").await.0, 200);
        assert_eq!(
            run.await.expect("run"),
            [AdminCommand::Drain, AdminCommand::Shutdown]
        );
    }
}
