//! `skein proxy-status`: the proxies connected to the control plane — like
//! `istioctl proxy-status` — read from the control plane's `/debug/proxies`.
//!
//! Where the debug server is: `--url`; else, with `--cluster`, the control plane `skein dev up`
//! runs on this machine; else the control-plane pods of the kubeconfig's cluster, reached by
//! port-forwarding through the apiserver to their loopback debug port (as istioctl reaches
//! istiod). Each replica knows only the proxies connected to it, so every Running replica is
//! asked and the lists are merged.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::Selector;
use tokio::io::{AsyncRead, AsyncWrite};

use super::push::ProxyStatus;
use crate::api::names;
use crate::cli::ProxyStatusArgs;
use crate::cli::connect::KubeArgs;
use crate::cli::output;
use crate::operator::desired::{DEBUG_PORT, control_plane_selector};
use crate::operator::federation::describe;

const PROXIES_PATH: &str = "/debug/proxies";
/// Bound of the whole query, port-forward included.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: &ProxyStatusArgs) -> anyhow::Result<()> {
    let mut proxies = tokio::time::timeout(TIMEOUT, connected_proxies(args))
        .await
        .with_context(|| format!("no answer from the control plane within {TIMEOUT:?}"))??;
    if let Some(namespace) = &args.namespace {
        proxies.retain(|proxy| &proxy.namespace == namespace);
    }
    print!(
        "{}",
        output::render(args.output.format, &proxies, |p| table(p))?
    );
    Ok(())
}

async fn connected_proxies(args: &ProxyStatusArgs) -> anyhow::Result<Vec<ProxyStatus>> {
    query(args.url.as_deref(), args.cluster.as_deref(), &args.kube).await
}

/// Every proxy connected to the control plane whose debug server is at `url`, else the one
/// `skein dev up --cluster` runs, else the control-plane pods of `kube`'s cluster (shared with
/// `skein check`). Not bounded in time: callers wrap it in their own timeout.
pub async fn query(
    url: Option<&str>,
    cluster: Option<&str>,
    kube: &KubeArgs,
) -> anyhow::Result<Vec<ProxyStatus>> {
    let base = match (url, cluster) {
        (Some(url), _) => url.to_owned(),
        (None, Some(cluster)) => crate::dev::up::control_plane_debug_url(cluster)?,
        (None, None) => return from_cluster_pods(kube).await,
    };
    let target = DebugUrl::parse(&base)?;
    let path = target.path(PROXIES_PATH);
    let stream = tokio::net::TcpStream::connect(&target.authority)
        .await
        .with_context(|| format!("connecting to the control plane at {base}"))?;
    let body = get(stream, &target.authority, &path)
        .await
        .with_context(|| format!("asking the control plane at {base}"))?;
    parse_proxies(&body).with_context(|| format!("{base}{PROXIES_PATH}"))
}

/// Asks every Running control-plane pod in the mesh namespace, through port-forwards.
async fn from_cluster_pods(kube: &KubeArgs) -> anyhow::Result<Vec<ProxyStatus>> {
    let client = kube.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, names::MESH_NAMESPACE);
    let selector = Selector::try_from(control_plane_selector())
        .context("the control plane's label selector")?;
    let list = pods
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(|err| anyhow::anyhow!(describe(&err)))
        .with_context(|| {
            format!(
                "listing the control-plane pods in {}",
                names::MESH_NAMESPACE
            )
        })?;
    let targets = control_plane_pods(&list.items);
    anyhow::ensure!(
        !targets.is_empty(),
        "no Running control-plane pod ({selector}) in namespace {}; for a `skein dev up` \
         cluster give --cluster NAME, or give the debug server's --url",
        names::MESH_NAMESPACE
    );
    let mut proxies = Vec::new();
    for pod in targets {
        let asked = format!("pod {}/{pod} port {DEBUG_PORT}", names::MESH_NAMESPACE);
        let mut forwarder = pods
            .portforward(&pod, &[DEBUG_PORT])
            .await
            .map_err(|err| anyhow::anyhow!(describe(&err)))
            .with_context(|| format!("port-forwarding to {asked}"))?;
        let stream = forwarder
            .take_stream(DEBUG_PORT)
            .with_context(|| format!("port-forwarding to {asked}: no stream"))?;
        let failed = forwarder.take_error(DEBUG_PORT);
        // The kubelet says why a forward failed (nothing listening, ...) on the port's error
        // channel, while the stream just closes; an error channel closed without one is no news.
        let body = tokio::select! {
            body = get(stream, "localhost", PROXIES_PATH) => body.map_err(anyhow::Error::from),
            Some(reason) = async { failed?.await } => Err(anyhow::anyhow!(reason)),
        };
        forwarder.abort();
        let body = body.with_context(|| format!("asking {asked}"))?;
        proxies.extend(parse_proxies(&body).with_context(|| format!("{asked}{PROXIES_PATH}"))?);
    }
    Ok(super::debug::sorted(proxies))
}

/// The control-plane pods to ask: Running and not being deleted, by name.
pub fn control_plane_pods(pods: &[Pod]) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    names.sort();
    names
}

fn parse_proxies(body: &[u8]) -> anyhow::Result<Vec<ProxyStatus>> {
    serde_json::from_slice(body).context("the answer is not a list of proxies")
}

/// A `--url`: where to connect and the path prefix to put before the debug routes.
#[derive(Debug, PartialEq)]
struct DebugUrl {
    authority: String,
    prefix: String,
}

impl DebugUrl {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "{url:?}: the debug server speaks plain http://"
        );
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} has no host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn path(&self, route: &str) -> String {
        format!("{}{route}", self.prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
}

/// One HTTP/1.1 GET of `path` over `stream` (a TCP connection or a port-forward); the body of
/// a successful answer.
pub async fn get<S>(stream: S, host: &str, path: &str) -> Result<Bytes, GetError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven beside the request; it ends when the answer is read.
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let answer = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body).trim().to_owned();
            return Err(GetError::Status { status, body });
        }
        Ok(body)
    }
    .await;
    driver.abort();
    answer
}

/// The table `run` prints: one row per proxy, the columns aligned.
pub fn table(proxies: &[ProxyStatus]) -> String {
    let header = [
        "NAMESPACE",
        "POD",
        "IP",
        "SENT",
        "ACKED",
        "STATUS",
        "RESOURCES",
        "CERT EXPIRES",
        "CONNECTED",
    ]
    .map(str::to_owned);
    let mut rows = vec![header];
    for p in proxies {
        let status = match &p.last_nack {
            Some(error) => format!("NACK: {error}"),
            None if p.acked_version == p.sent_version => "SYNCED".to_owned(),
            None => "STALE".to_owned(),
        };
        rows.push([
            p.namespace.clone(),
            p.pod.clone(),
            p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            p.sent_version.clone(),
            p.acked_version.clone(),
            status,
            p.resources.to_string(),
            p.cert_expires_in_seconds
                .map_or_else(|| "-".to_owned(), time_left),
            p.connected_since.clone(),
        ]);
    }
    output::columns(&rows)
}

/// `23h59m`, `4m10s`, `9s`, or `expired`: a certificate's time left, at a glance.
fn time_left(seconds: i64) -> String {
    if seconds <= 0 {
        return "expired".to_owned();
    }
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::*;
    use crate::controlplane::identity::authn::FixedTokens;
    use crate::controlplane::identity::{IdentityService, IssuedCerts};
    use crate::controlplane::push::{ConfigSource, ProxyIdentity, PushServer};
    use crate::proxy::client::{self, ClientSettings};
    use crate::proxy::config::types::ProxyConfig;
    use crate::proxy::config::{Compiled, ConfigStore};

    /// The same (empty) configuration for every proxy.
    struct Unchanging(watch::Sender<u64>);

    impl ConfigSource for Unchanging {
        fn config_for(&self, _: &ProxyIdentity) -> ProxyConfig {
            ProxyConfig::default()
        }

        fn changes(&self) -> watch::Receiver<u64> {
            self.0.subscribe()
        }
    }

    async fn listener() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        (listener, addr)
    }

    /// A real configuration stream and debug server with one real proxy client connected,
    /// queried with `get` over a plain TCP stream (what a port-forward's stream stands in for).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_debug_server_answers_over_a_stream() {
        let source: Arc<dyn ConfigSource> = Arc::new(Unchanging(watch::channel(0).0));
        let authn = Arc::new(FixedTokens::pod("web-1-token", "demo", "web-1"));
        let issued = Arc::new(IssuedCerts::default());
        let expiry = std::time::SystemTime::now() + Duration::from_secs(7230);
        issued.record("demo", "web-1", expiry);
        let push = PushServer::new(source.clone(), authn.clone(), &mut Default::default())
            .with_identity(IdentityService {
                ca: Arc::default(),
                authn,
                mtls: Arc::new(crate::api::meshconfig::MtlsSpec::default),
                issued,
            });
        let token = FixedTokens::file("web-1-token");
        let (xds, xds_addr) = listener().await;
        tokio::spawn(
            push.clone()
                .serve_with_listener(xds, std::future::pending()),
        );
        let (debug, debug_addr) = listener().await;
        let router = crate::controlplane::debug::router(push.clone(), source);
        tokio::spawn(async move { axum::serve(debug, router).await });
        let identity = ProxyIdentity {
            pod: "web-1".to_owned(),
            namespace: "demo".to_owned(),
            ip: "198.18.0.7".parse().ok(),
        };
        let store = Arc::new(ConfigStore::new(Compiled::passthrough()));
        // The proxy is listed from the moment its stream opens, before its first push.
        let pushed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(client::run(
            ClientSettings {
                address: xds_addr,
                identity,
                token_path: Some(token.path().to_owned()),
                trust: Default::default(),
            },
            store,
            {
                let pushed = pushed.clone();
                move |_| pushed.notify_one()
            },
        ));
        pushed.notified().await;

        let stream = tokio::net::TcpStream::connect(&debug_addr)
            .await
            .expect("connect");
        let body = get(stream, &debug_addr, PROXIES_PATH).await.expect("GET");
        let proxies = parse_proxies(&body).expect("a list of proxies");
        let text = table(&proxies);
        assert!(text.starts_with("NAMESPACE  POD"), "{text}");
        assert!(text.contains("demo       web-1  198.18.0.7"), "{text}");
        assert!(
            text.contains("CERT EXPIRES") && text.contains(" 2h0m "),
            "{text}"
        );

        let stream = tokio::net::TcpStream::connect(&debug_addr)
            .await
            .expect("connect");
        let error = get(stream, &debug_addr, "/debug/config")
            .await
            .expect_err("a 400");
        assert!(
            matches!(&error, GetError::Status { status, .. } if status.as_u16() == 400),
            "{error}"
        );
    }

    fn pod(name: &str, phase: &str, deleting: bool) -> Pod {
        let deleted = deleting.then_some("2026-01-01T00:00:00Z");
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "deletionTimestamp": deleted},
            "status": {"phase": phase},
        }))
        .expect("a pod")
    }

    #[test]
    fn certificate_lifetimes_read_at_a_glance() {
        assert_eq!(time_left(86_399), "23h59m");
        assert_eq!(time_left(250), "4m10s");
        assert_eq!(time_left(9), "9s");
        assert_eq!(time_left(0), "expired");
        assert_eq!(time_left(-5), "expired");
    }

    #[test]
    fn every_running_replica_is_asked() {
        let pods = [
            pod("cp-b", "Running", false),
            pod("cp-pending", "Pending", false),
            pod("cp-old", "Running", true),
            pod("cp-a", "Running", false),
            pod("cp-failed", "Failed", false),
        ];
        assert_eq!(control_plane_pods(&pods), ["cp-a", "cp-b"]);
        assert!(control_plane_pods(&[]).is_empty());
    }

    #[test]
    fn urls_name_a_plain_http_server() {
        assert_eq!(
            DebugUrl::parse("http://127.0.0.1:9091/").unwrap(),
            DebugUrl {
                authority: "127.0.0.1:9091".to_owned(),
                prefix: String::new(),
            }
        );
        let behind = DebugUrl::parse("http://debug.example/skein").unwrap();
        assert_eq!(behind.authority, "debug.example:80");
        assert_eq!(behind.path(PROXIES_PATH), "/skein/debug/proxies");
        assert!(DebugUrl::parse("https://127.0.0.1:9091").is_err());
        assert!(DebugUrl::parse("127.0.0.1:9091").is_err());
        assert!(DebugUrl::parse("not a url").is_err());
    }
}
