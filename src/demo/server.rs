//! Accepting connections (HTTP/1.1 and h2c on one port) and draining them on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::handler::{self, App};

/// How long in-flight requests get to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets open
/// connections finish their requests (idle ones close at once) and gives up after
/// [`DRAIN_TIMEOUT`]. Returns whether every connection finished in time.
pub async fn serve(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) -> bool {
    let app = Arc::new(app);
    // One builder for every connection; auto detects HTTP/1.1 or the HTTP/2 preface (h2c).
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(connection(
                        stream,
                        Arc::clone(&app),
                        Arc::clone(&builder),
                        stopped.clone(),
                    ));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    drop(listener);
    let open = connections.len();
    tracing::info!(open, "shutting down: draining connections");
    // Ignored error: every receiver is already gone, so nothing is left to tell.
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            left = connections.len(),
            "connections still open after the drain timeout; closing them"
        );
        connections.abort_all();
    }
    drained
}

async fn connection(
    stream: TcpStream,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stopped: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| handler::handle(Arc::clone(&app), request));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // `.is_ok()` drops the watch guard at once: it must not be held across the await.
        _ = async { stopped.wait_for(|stop| *stop).await.is_ok() } => {
            // Finish in-flight requests, refuse new ones (GOAWAY / Connection: close).
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        // Injected drops and clients hanging up end here; neither is this server's fault.
        tracing::debug!(error = %err, "connection ended with an error");
    }
}
