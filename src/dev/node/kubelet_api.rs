//! The part of the kubelet's HTTPS API the apiserver calls on a node, so the ordinary
//! `kubectl logs` works on the dev node. It listens on the node's address inside the node's
//! network namespace (the apiserver gets there through `egress`), and serves only clients with
//! a certificate of the cluster's CA: the apiserver's `--kubelet-client-certificate`, as a
//! kubelet authenticates it.
//!
//! Served: `/healthz`, `/containerLogs/{namespace}/{pod}/{container}` (with `follow`,
//! `tailLines`, `limitBytes`). Not yet: exec, attach and port-forward (their streaming protocol);
//! those answer 501 naming `skein dev exec` instead.

use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::netns::Netns;
use crate::pki::Ca;

/// The kubelet's port; every node has its own namespace, so all use the usual one.
pub const PORT: u16 = 10250;
/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

struct Shared {
    client: kube::Client,
    cluster: String,
    node: String,
}

/// Starts the API on `node_ip:PORT` inside `netns`, with a serving certificate from the
/// cluster's CA in `pki_dir` (`ca.crt`, `ca.key`, written by up.sh).
pub async fn start(
    netns: &Netns,
    node_ip: IpAddr,
    pki_dir: &Path,
    client: kube::Client,
    cluster: &str,
    node: &str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = server_config(pki_dir, node_ip, node)?;
    let addr = SocketAddr::new(node_ip, PORT);
    let listener = netns
        .run_async(move || {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })
        .await?
        .with_context(|| format!("listening on {addr} in the node's network namespace"))?;
    let shared = Arc::new(Shared {
        client,
        cluster: cluster.to_owned(),
        node: node.to_owned(),
    });
    let app = router(shared);
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )?;
    tracing::info!(%addr, "serving the kubelet API (logs)");
    Ok(tokio::spawn(async move {
        if let Err(err) = server.serve(app.into_make_service()).await {
            tracing::warn!(error = %err, "the kubelet API stopped");
        }
    }))
}

fn server_config(
    pki_dir: &Path,
    node_ip: IpAddr,
    node: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let read = |name: &str| {
        let path = pki_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let ca_cert = read("ca.crt")?;
    let ca = Ca::from_pem(&ca_cert, &read("ca.key")?).context("loading the cluster's CA")?;
    let ip = node_ip.to_string();
    let serving = ca
        .issue_serving(&[node, &ip], Duration::from_secs(365 * 24 * 3600))
        .context("issuing the kubelet API's serving certificate")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_cert.as_bytes()) {
        roots.add(cert.context("the cluster's CA certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("the client certificate verifier")?;
    let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the serving certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).context("the serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_IMPLEMENTED,
                "the Skein dev node serves only the kubelet's log API yet; for exec use `skein dev exec`\n",
            )
        })
        .with_state(shared)
}

/// The query `kubectl logs` sends, as far as it is served.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogOptions {
    #[serde(default)]
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

async fn container_logs(
    State(shared): State<Arc<Shared>>,
    UrlPath((namespace, pod_name, container)): UrlPath<(String, String, String)>,
    Query(options): Query<LogOptions>,
) -> Response {
    let not_found = |message: String| (StatusCode::NOT_FOUND, message).into_response();
    let pod = match Api::<Pod>::namespaced(shared.client.clone(), &namespace)
        .get_opt(&pod_name)
        .await
    {
        Ok(Some(pod)) => pod,
        Ok(None) => return not_found(format!("pod {namespace}/{pod_name} not found\n")),
        Err(err) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("getting pod {namespace}/{pod_name}: {err}\n"),
            )
                .into_response();
        }
    };
    if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(shared.node.as_str()) {
        return not_found(format!(
            "pod {namespace}/{pod_name} does not run on node {}\n",
            shared.node
        ));
    }
    let Some(path) = super::inspect::log_path(&shared.cluster, &pod, &container) else {
        return not_found(format!(
            "container {container:?} of pod {namespace}/{pod_name} has not started\n"
        ));
    };
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(err) => {
            return not_found(format!(
                "container {container:?} of pod {namespace}/{pod_name} has no log yet ({err})\n"
            ));
        }
    };
    let start = select(&text, &options);
    let first = text[start..].to_vec();
    if !options.follow {
        return first.into_response();
    }
    let follow = futures::stream::unfold(
        (path, text.len() as u64, Some(first)),
        |(path, position, first)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (path, position, None)));
            }
            loop {
                tokio::time::sleep(FOLLOW_POLL).await;
                match read_from(&path, position) {
                    // The pod is gone, or its log was replaced: the stream ends as kubectl's does.
                    None => return None,
                    Some(more) if more.is_empty() => continue,
                    Some(more) => {
                        let next = position + more.len() as u64;
                        return Some((Ok::<_, std::io::Error>(more), (path, next, None)));
                    }
                }
            }
        },
    );
    Body::from_stream(follow).into_response()
}

/// Where the served part of a log starts: the last `tailLines` lines, at most `limitBytes`.
fn select(text: &[u8], options: &LogOptions) -> usize {
    let mut start = 0;
    if let Some(lines) = options.tail_lines {
        // Count line ends back from the end; a final line without one counts too.
        let body = text.strip_suffix(b"\n").unwrap_or(text);
        start = if lines == 0 {
            text.len()
        } else {
            body.iter()
                .enumerate()
                .rev()
                .filter(|(_, b)| **b == b'\n')
                .nth(lines - 1)
                .map_or(0, |(i, _)| i + 1)
        };
    }
    if let Some(limit) = options.limit_bytes {
        start = start.max(text.len().saturating_sub(limit));
    }
    start
}

/// What was appended to `path` after `position`; None when it shrank or vanished.
fn read_from(path: &Path, position: u64) -> Option<Vec<u8>> {
    let mut file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() < position {
        return None;
    }
    file.seek(SeekFrom::Start(position)).ok()?;
    let mut more = Vec::new();
    file.read_to_end(&mut more).ok()?;
    Some(more)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(text: &str, tail_lines: Option<usize>, limit_bytes: Option<usize>) -> &str {
        let options = LogOptions {
            follow: false,
            tail_lines,
            limit_bytes,
        };
        &text[select(text.as_bytes(), &options)..]
    }

    #[test]
    fn tail_lines_and_limit_bytes_select_the_end_of_the_log() {
        let log = "one\ntwo\nthree\n";
        assert_eq!(tail(log, None, None), log);
        assert_eq!(tail(log, Some(1), None), "three\n");
        assert_eq!(tail(log, Some(2), None), "two\nthree\n");
        assert_eq!(tail(log, Some(9), None), log);
        assert_eq!(tail(log, Some(0), None), "");
        assert_eq!(tail("one\ntwo", Some(1), None), "two");
        assert_eq!(tail(log, None, Some(6)), "three\n");
        assert_eq!(tail(log, Some(2), Some(3)), "ee\n");
    }
}
