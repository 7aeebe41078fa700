//! The collector's I/O: every interval, scrape each connected proxy's `/metrics` (all at once,
//! at most [`CONCURRENCY`] in flight, each bounded by [`SCRAPE_TIMEOUT`] and
//! [`MAX_SCRAPE_BYTES`], so one slow proxy never holds up the others) and record it; then,
//! only for a proxy that counted failing requests since its previous scrape, read its recent
//! errors (`/debug/recent-errors`, as bounded) for the sample request ([`super::sample`]).

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;

use super::StatsStore;
use super::parse;
use super::window::{self, Snapshot};
use crate::controlplane::push::PushServer;
use crate::plain_http;
use crate::proxy::admin::RECENT_ERRORS_PATH;
use crate::proxy::recent::{MAX_SNAPSHOT_BYTES, RecentErrors};

/// A proxy's `/metrics` is a few hundred KiB at most; more is not a proxy's.
pub const MAX_SCRAPE_BYTES: usize = 4 << 20;
/// One scrape's bound (connect, request and body), below the interval.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest interval: the window keeps 5 minutes of increments at this pace.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Scrapes in flight at once.
pub const CONCURRENCY: usize = 32;

/// How the control plane reaches the proxies' admin port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ScrapeVia {
    /// The pod's IP, pod to pod.
    #[default]
    Direct,
    /// The apiserver's pod proxy (the control plane needs `get` on `pods/proxy`).
    Apiserver,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("the proxy's stream gave no pod IP")]
    NoIp,
    #[error("connecting to {0}: {1}")]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error(transparent)]
    Get(#[from] plain_http::GetError),
    #[error("through the apiserver: {0}")]
    Apiserver(String),
    #[error("no answer within {SCRAPE_TIMEOUT:?}")]
    Timeout,
    #[error("the answer is not UTF-8")]
    NotText,
    #[error("the metrics do not parse: {0}")]
    Parse(#[from] parse::ParseError),
    #[error("the recent errors do not parse: {0}")]
    RecentErrors(#[from] serde_json::Error),
}

/// One proxy to scrape.
#[derive(Debug, Clone)]
struct Target {
    namespace: String,
    pod: String,
    ip: Option<IpAddr>,
}

/// Scrapes forever, every `interval`. `admin_port` is read at each round (the MeshConfig's
/// `proxy.ports.admin`, which it may change).
pub async fn run(
    store: StatsStore,
    push: PushServer,
    via: ScrapeVia,
    client: kube::Client,
    interval: Duration,
    admin_port: impl Fn() -> u16,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let targets = targets(&push);
        let keys: Vec<(String, String)> = targets
            .iter()
            .map(|t| (t.namespace.clone(), t.pod.clone()))
            .collect();
        store.retain(&keys);
        let port = admin_port();
        let client = &client;
        let store = &store;
        futures::stream::iter(targets)
            .map(|target| async move {
                let scraped = bounded(scrape(&target, via, client, port)).await;
                if let Err(error) = &scraped {
                    tracing::debug!(namespace = %target.namespace, pod = %target.pod, %error, "scraping a proxy's metrics");
                }
                let key = (target.namespace.clone(), target.pod.clone());
                store.record(key.clone(), store.now(), scraped.map_err(|e| e.to_string()));
                if !store.newly_failing(&key) {
                    return;
                }
                match bounded(recent_errors(&target, via, client, port)).await {
                    Ok(errors) => store.record_errors(&key, &errors),
                    Err(error) => {
                        tracing::debug!(namespace = %target.namespace, pod = %target.pod, %error, "reading a proxy's recent errors");
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .for_each(|()| async {})
            .await;
    }
}

/// The connected proxies, one per pod (its latest stream).
fn targets(push: &PushServer) -> Vec<Target> {
    let mut proxies = push.proxies();
    proxies.sort_by(|a, b| {
        (&a.namespace, &a.pod, &b.connected_since).cmp(&(&b.namespace, &b.pod, &a.connected_since))
    });
    proxies.dedup_by(|a, b| a.namespace == b.namespace && a.pod == b.pod);
    proxies
        .into_iter()
        .map(|p| Target {
            namespace: p.namespace,
            pod: p.pod,
            ip: p.ip,
        })
        .collect()
}

/// GETs `path` from a pod's `port` through the apiserver's pod proxy (`get` on `pods/proxy`):
/// the body of a successful answer, at most `limit` bytes. `pod`: namespace and name.
pub async fn get_through_apiserver(
    client: &kube::Client,
    (namespace, pod): (&str, &str),
    port: u16,
    path: &str,
    limit: usize,
) -> Result<bytes::Bytes, ScrapeError> {
    let url = format!(
        "{}/{pod}:{port}/proxy{path}",
        Pod::url_path(&(), Some(namespace))
    );
    let request = http::Request::get(url)
        .body(Vec::new())
        .map_err(|e| ScrapeError::Apiserver(e.to_string()))?;
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .map_err(|e| ScrapeError::Apiserver(e.to_string()))?;
    let status = response.status();
    let body = plain_http::read_limited(response.into_body(), limit).await?;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        return Err(plain_http::GetError::Status { status, body }.into());
    }
    Ok(body)
}

/// `work` within [`SCRAPE_TIMEOUT`].
async fn bounded<T>(work: impl Future<Output = Result<T, ScrapeError>>) -> Result<T, ScrapeError> {
    tokio::time::timeout(SCRAPE_TIMEOUT, work)
        .await
        .unwrap_or(Err(ScrapeError::Timeout))
}

/// The body of `GET path` on the proxy's admin port, at most `limit` bytes.
async fn get(
    target: &Target,
    (via, client): (ScrapeVia, &kube::Client),
    port: u16,
    path: &str,
    limit: usize,
) -> Result<bytes::Bytes, ScrapeError> {
    match via {
        ScrapeVia::Direct => {
            let addr = std::net::SocketAddr::new(target.ip.ok_or(ScrapeError::NoIp)?, port);
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| ScrapeError::Connect(addr, e))?;
            Ok(plain_http::get(stream, &addr.to_string(), path, limit).await?)
        }
        ScrapeVia::Apiserver => {
            let pod = (target.namespace.as_str(), target.pod.as_str());
            get_through_apiserver(client, pod, port, path, limit).await
        }
    }
}

async fn scrape(
    target: &Target,
    via: ScrapeVia,
    client: &kube::Client,
    port: u16,
) -> Result<Snapshot, ScrapeError> {
    let body = get(target, (via, client), port, "/metrics", MAX_SCRAPE_BYTES).await?;
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::NotText)?;
    Ok(Snapshot::from_samples(&parse::parse(text, window::wanted)?))
}

async fn recent_errors(
    target: &Target,
    via: ScrapeVia,
    client: &kube::Client,
    port: u16,
) -> Result<RecentErrors, ScrapeError> {
    let body = get(
        target,
        (via, client),
        port,
        RECENT_ERRORS_PATH,
        MAX_SNAPSHOT_BYTES,
    )
    .await?;
    Ok(serde_json::from_slice(&body)?)
}
