//! The part of the kubelet's HTTPS API the apiserver calls on a node, so the ordinary
//! `kubectl logs` works on the dev node. It listens on the node's address inside the node's
//! network namespace (the apiserver gets there through `egress`), and serves only clients with
//! a certificate of the cluster's CA: the apiserver's `--kubelet-client-certificate`, as a
//! kubelet authenticates it.
//!
//! Served: `/healthz`, `/containerLogs/{namespace}/{pod}/{container}` (with `follow`,
//! `tailLines`, `limitBytes`), and the streaming endpoints `/exec`, `/attach` and `/portForward`
//! (`kubectl exec`, `attach`, `port-forward`). Their protocols (SPDY, WebSocket) are spoken by
//! the upstream kubelet streaming code in `skein-kubelet-streams` (tests/cluster/kubelet-streams),
//! which the node runs as a daemon: this checks the client and the pod, then hands the request
//! and its upgraded connection over to it on its Unix socket.

use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::netns::Netns;
use crate::pki::Ca;

/// The kubelet's port; every node has its own namespace, so all use the usual one.
pub const PORT: u16 = 10250;
/// `skein-kubelet-streams`'s socket, in the node's state directory.
pub const STREAMS_SOCKET: &str = "kubelet-streams.sock";
/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

struct Shared {
    client: kube::Client,
    cluster: String,
    node: String,
    /// Where `skein-kubelet-streams` serves exec, attach and port-forward.
    streams_socket: PathBuf,
}

/// Starts the API on `node_ip:PORT` inside `netns`, with a serving certificate from the
/// cluster's CA in `pki_dir` (`ca.crt`, `ca.key`, written by up.sh); streaming requests go on to
/// `skein-kubelet-streams` on `streams_socket`.
pub async fn start(
    netns: &Netns,
    node_ip: IpAddr,
    pki_dir: &Path,
    client: kube::Client,
    cluster: &str,
    node: &str,
    streams_socket: PathBuf,
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
        streams_socket,
    });
    let app = router(shared);
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )?;
    tracing::info!(%addr, "serving the kubelet API (logs, exec, attach, port-forward)");
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
        .route("/exec/{*rest}", any(stream))
        .route("/attach/{*rest}", any(stream))
        .route("/portForward/{*rest}", any(stream))
        .fallback(|| async {
            (
                StatusCode::NOT_IMPLEMENTED,
                "the Skein dev node serves only the kubelet's log, exec, attach and port-forward APIs\n",
            )
        })
        .with_state(shared)
}

/// The pod `namespace/name` if it is bound to this node, else the response that says why not.
async fn pod_on_node(shared: &Shared, namespace: &str, name: &str) -> Result<Pod, Response> {
    let pod = match Api::<Pod>::namespaced(shared.client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Ok(Some(pod)) => pod,
        Ok(None) => return Err(not_found(format!("pod {namespace}/{name} not found\n"))),
        Err(err) => {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("getting pod {namespace}/{name}: {err}\n"),
            )
                .into_response());
        }
    };
    if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(shared.node.as_str()) {
        return Err(not_found(format!(
            "pod {namespace}/{name} does not run on node {}\n",
            shared.node
        )));
    }
    Ok(pod)
}

fn not_found(message: String) -> Response {
    (StatusCode::NOT_FOUND, message).into_response()
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
    let pod = match pod_on_node(&shared, &namespace, &pod_name).await {
        Ok(pod) => pod,
        Err(response) => return response,
    };
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

/// Which streaming endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamKind {
    Exec,
    Attach,
    PortForward,
}

/// A streaming request's target, from the kubelet's paths: `/exec/NS/POD[/UID]/CONTAINER`,
/// the same for `/attach`, and `/portForward/NS/POD[/UID]`.
#[derive(Debug, PartialEq, Eq)]
struct StreamTarget<'a> {
    kind: StreamKind,
    namespace: &'a str,
    pod: &'a str,
    uid: Option<&'a str>,
    container: Option<&'a str>,
}

fn parse_stream_path(path: &str) -> Option<StreamTarget<'_>> {
    let mut parts = path.strip_prefix('/')?.split('/');
    let kind = match parts.next()? {
        "exec" => StreamKind::Exec,
        "attach" => StreamKind::Attach,
        "portForward" => StreamKind::PortForward,
        _ => return None,
    };
    let rest: Vec<&str> = parts.collect();
    // Object names and UIDs: lower-case letters, digits, '-' and '.'; nothing to escape when
    // the path is passed on.
    let plain = |p: &&str| {
        !matches!(*p, "" | "." | "..")
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !rest.iter().all(plain) {
        return None;
    }
    let (namespace, pod, uid, container) = match (kind, rest.as_slice()) {
        (StreamKind::PortForward, [ns, pod]) => (ns, pod, None, None),
        (StreamKind::PortForward, [ns, pod, uid]) => (ns, pod, Some(*uid), None),
        (StreamKind::Exec | StreamKind::Attach, [ns, pod, container]) => {
            (ns, pod, None, Some(*container))
        }
        (StreamKind::Exec | StreamKind::Attach, [ns, pod, uid, container]) => {
            (ns, pod, Some(*uid), Some(*container))
        }
        _ => return None,
    };
    Some(StreamTarget {
        kind,
        namespace,
        pod,
        uid,
        container,
    })
}

impl StreamTarget<'_> {
    /// The path `skein-kubelet-streams` serves this at (no UID: checked here).
    fn streams_path(&self, query: Option<&str>) -> String {
        let kind = match self.kind {
            StreamKind::Exec => "exec",
            StreamKind::Attach => "attach",
            StreamKind::PortForward => "portForward",
        };
        let mut path = format!("/{kind}/{}/{}", self.namespace, self.pod);
        if let Some(container) = self.container {
            path = format!("{path}/{container}");
        }
        match query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        }
    }
}

/// `kubectl exec`, `attach` and `port-forward`: the pod (and container) must be here and
/// running; then the request goes on to `skein-kubelet-streams`.
async fn stream(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let Some(target) = parse_stream_path(request.uri().path()) else {
        return not_found(format!(
            "no such streaming endpoint: {}\n",
            request.uri().path()
        ));
    };
    let pod = match pod_on_node(&shared, target.namespace, target.pod).await {
        Ok(pod) => pod,
        Err(response) => return response,
    };
    let label = format!("{}/{}", target.namespace, target.pod);
    if let Some(uid) = target.uid
        && pod.uid().as_deref() != Some(uid)
    {
        return not_found(format!("pod {label} with UID {uid} not found\n"));
    }
    if let Some(container) = target.container
        && super::inspect::running_pid(&shared.cluster, &pod, container).is_none()
    {
        return not_found(format!(
            "container {container:?} of pod {label} is not running\n"
        ));
    }
    let path = target.streams_path(request.uri().query());
    match forward(&shared.streams_socket, request, &path).await {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(error = %err, pod = %label, "a streaming request failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")).into_response()
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(
        "the node's streaming server is not reachable on {path} (its log is the node's logs/kubelet-streams.log): {source}"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the node's streaming server: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad path {0:?}")]
    Path(String),
}

/// Sends `request` to the streaming server at `path`, and when it switches protocols, joins the
/// two upgraded connections (the apiserver's and the server's) until both ends close.
async fn forward(socket: &Path, mut request: Request, path: &str) -> Result<Response, StreamError> {
    let io = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| StreamError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "streaming server connection ended");
        }
    });
    let downstream = hyper::upgrade::on(&mut request);
    let (mut parts, body) = request.into_parts();
    parts.uri = path
        .parse()
        .map_err(|_| StreamError::Path(path.to_owned()))?;
    // Upgrades exist in HTTP/1.1 only (the apiserver asks for it when it upgrades).
    parts.version = Version::HTTP_11;
    let mut response = sender
        .send_request(axum::http::Request::from_parts(parts, body))
        .await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    if let Err(err) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(error = %err, "streaming connection ended");
                    }
                }
                Err(err) => tracing::debug!(error = %err, "a streaming upgrade failed"),
            }
        });
    }
    Ok(response.map(Body::new))
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

    #[test]
    fn streaming_paths_name_the_pod_and_container() {
        let exec = parse_stream_path("/exec/demo/web-1/app").unwrap();
        assert_eq!(
            exec,
            StreamTarget {
                kind: StreamKind::Exec,
                namespace: "demo",
                pod: "web-1",
                uid: None,
                container: Some("app"),
            }
        );
        assert_eq!(
            exec.streams_path(Some("command=sh&input=1")),
            "/exec/demo/web-1/app?command=sh&input=1"
        );
        let attach = parse_stream_path("/attach/demo/web-1/0c9e-11/app").unwrap();
        assert_eq!(attach.uid, Some("0c9e-11"));
        assert_eq!(attach.streams_path(None), "/attach/demo/web-1/app");
        let forward = parse_stream_path("/portForward/demo/web-1").unwrap();
        assert_eq!(
            (forward.kind, forward.container),
            (StreamKind::PortForward, None)
        );
        assert_eq!(forward.streams_path(None), "/portForward/demo/web-1");
        let forward = parse_stream_path("/portForward/demo/web-1/0c9e-11").unwrap();
        assert_eq!(forward.uid, Some("0c9e-11"));
        assert_eq!(forward.streams_path(None), "/portForward/demo/web-1");
    }

    #[test]
    fn other_streaming_paths_are_refused() {
        for path in [
            "/exec/demo/web-1",
            "/exec/demo/web-1/a/b/c",
            "/exec/demo//app",
            "/exec/demo/web-1/../x",
            "/exec/demo/web%2F1/app",
            "/portForward/demo",
            "/portForward/demo/web-1/uid/extra",
            "/run/demo/web-1/app",
            "exec/demo/web-1/app",
        ] {
            assert_eq!(parse_stream_path(path), None, "{path}");
        }
    }
}
