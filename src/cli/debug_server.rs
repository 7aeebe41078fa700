//! Reaching the control plane's debug server (`skein proxy-status`, `skein stat`,
//! `skein edges`): `--url`; else, with `--cluster`, the control plane `skein dev up` runs on
//! this machine; else every Running control-plane pod of the kubeconfig's cluster, through a
//! port-forward to its loopback debug port (as istioctl reaches istiod). Each replica knows only
//! the proxies connected to it, so callers merge the answers. `skein dashboard` forwards a local
//! port through the same [`DebugForward`].

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Portforwarder};
use kube::core::Selector;
use tokio::io::DuplexStream;

use crate::api::names;
use crate::cli::connect::KubeArgs;
use crate::operator::desired::{DEBUG_PORT, control_plane_selector};
use crate::operator::federation::describe;
use crate::plain_http;

use anyhow::Context;

/// The largest debug answer read (a proxy list or stats of a large mesh stay far below).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// `--url`, `--cluster` and the kubeconfig flags of the commands that ask the debug server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DebugServerArgs {
    /// The control plane's debug server (`skein control-plane --debug-addr`), e.g.
    /// `http://127.0.0.1:9091`.
    #[arg(long, conflicts_with = "cluster")]
    pub url: Option<String>,
    /// Ask the control plane that `skein dev up --cluster NAME` runs on this machine.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Without --url or --cluster: the cluster whose control-plane pods to ask, through
    /// port-forwards (and, for `skein stat`, whose pods to count).
    #[command(flatten)]
    pub kube: KubeArgs,
}

impl DebugServerArgs {
    pub fn target(&self) -> DebugTarget<'_> {
        DebugTarget {
            url: self.url.as_deref(),
            cluster: self.cluster.as_deref(),
            kube: &self.kube,
        }
    }
}

/// Where the debug server is, as the commands' flags say.
#[derive(Debug, Clone, Copy)]
pub struct DebugTarget<'a> {
    pub url: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub kube: &'a KubeArgs,
}

/// GETs `path_and_query` from every control plane the target names; each answer's body with
/// who answered it (for error messages).
pub async fn ask_all(
    target: DebugTarget<'_>,
    path_and_query: &str,
) -> anyhow::Result<Vec<(String, Bytes)>> {
    let Some(base) = direct_base(target)? else {
        return from_cluster_pods(target.kube, path_and_query).await;
    };
    let (url, stream) = connect_direct(&base).await?;
    let path = url.path(path_and_query);
    let body = plain_http::get(stream, &url.authority, &path, MAX_ANSWER_BYTES)
        .await
        .with_context(|| format!("asking the control plane at {base}"))?;
    Ok(vec![(format!("{base}{path_and_query}"), body)])
}

/// The debug server's base URL when the target names one (`--url`, or `--cluster`'s control
/// plane on this machine); `None` means the cluster's control-plane pods.
fn direct_base(target: DebugTarget<'_>) -> anyhow::Result<Option<String>> {
    Ok(match (target.url, target.cluster) {
        (Some(url), _) => Some(url.to_owned()),
        (None, Some(cluster)) => Some(crate::dev::up::control_plane_debug_url(cluster)?),
        (None, None) => None,
    })
}

/// A connection to the debug server at `base`.
async fn connect_direct(base: &str) -> anyhow::Result<(DebugUrl, tokio::net::TcpStream)> {
    let url = DebugUrl::parse(base)?;
    let stream = tokio::net::TcpStream::connect(&url.authority)
        .await
        .with_context(|| format!("connecting to the control plane at {base}"))?;
    Ok((url, stream))
}

/// The longest line of a streamed answer.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// GETs `path_and_query` from every control plane the target names and streams their answers'
/// lines, merged, into `lines` (each with who sent it) until every answer has ended; a
/// control plane that refuses (400, 404, ...) is an error before anything is streamed.
pub async fn stream_all(
    target: DebugTarget<'_>,
    path_and_query: &str,
    lines: tokio::sync::mpsc::Sender<anyhow::Result<Bytes>>,
) -> anyhow::Result<()> {
    let Some(base) = direct_base(target)? else {
        return stream_cluster_pods(target.kube, path_and_query, lines).await;
    };
    let (url, stream) = connect_direct(&base).await?;
    let path = url.path(path_and_query);
    let answer = plain_http::get_lines(stream, &url.authority, &path, MAX_LINE_BYTES)
        .await
        .with_context(|| format!("asking the control plane at {base}"))?;
    tokio::spawn(forward_lines(
        answer,
        format!("{base}{path_and_query}"),
        lines,
        None,
    ));
    Ok(())
}

/// Sends each line of `answer` on; the port-forward (if any) lives as long as the answer.
async fn forward_lines(
    mut answer: plain_http::Lines,
    asked: String,
    lines: tokio::sync::mpsc::Sender<anyhow::Result<Bytes>>,
    forwarder: Option<Portforwarder>,
) {
    loop {
        let line = answer
            .next_line(MAX_LINE_BYTES)
            .await
            .with_context(|| format!("reading {asked}"));
        let line = match line {
            Ok(Some(line)) => Ok(line),
            Ok(None) => break,
            Err(err) => Err(err),
        };
        let failed = line.is_err();
        if lines.send(line).await.is_err() || failed {
            break;
        }
    }
    if let Some(forwarder) = forwarder {
        forwarder.abort();
    }
}

/// Asks every Running control-plane pod in the mesh namespace, through port-forwards.
async fn from_cluster_pods(
    kube: &KubeArgs,
    path_and_query: &str,
) -> anyhow::Result<Vec<(String, Bytes)>> {
    let (pods, targets) = running_control_plane_pods(kube).await?;
    let mut answers = Vec::new();
    for pod in targets {
        let asked = format!("pod {}/{pod} port {DEBUG_PORT}", names::MESH_NAMESPACE);
        let forward = DebugForward::open(&pods, &pod).await?;
        let body = forward
            .run(|stream| async move {
                plain_http::get(stream, "localhost", path_and_query, MAX_ANSWER_BYTES)
                    .await
                    .map_err(anyhow::Error::from)
            })
            .await
            .with_context(|| format!("asking {asked}"))?;
        answers.push((format!("{asked}{path_and_query}"), body));
    }
    Ok(answers)
}

/// [`stream_all`] through port-forwards to every Running control-plane pod.
async fn stream_cluster_pods(
    kube: &KubeArgs,
    path_and_query: &str,
    lines: tokio::sync::mpsc::Sender<anyhow::Result<Bytes>>,
) -> anyhow::Result<()> {
    let (pods, targets) = running_control_plane_pods(kube).await?;
    for pod in targets {
        let asked = format!("pod {}/{pod} port {DEBUG_PORT}", names::MESH_NAMESPACE);
        let (answer, forwarder) = DebugForward::open(&pods, &pod)
            .await?
            .get_lines(path_and_query)
            .await
            .with_context(|| format!("asking {asked}"))?;
        tokio::spawn(forward_lines(
            answer,
            format!("{asked}{path_and_query}"),
            lines.clone(),
            Some(forwarder),
        ));
    }
    Ok(())
}

/// The names of the Running control-plane pods in the mesh namespace (at least one), with the
/// API to port-forward to them.
pub async fn running_control_plane_pods(
    kube: &KubeArgs,
) -> anyhow::Result<(Api<Pod>, Vec<String>)> {
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
    Ok((pods, targets))
}

/// One port-forward to a control-plane pod's loopback debug port.
pub struct DebugForward {
    asked: String,
    stream: DuplexStream,
    forwarder: Portforwarder,
    failed: Option<BoxFuture<'static, Option<String>>>,
}

impl DebugForward {
    pub async fn open(pods: &Api<Pod>, pod: &str) -> anyhow::Result<Self> {
        let asked = format!("pod {}/{pod} port {DEBUG_PORT}", names::MESH_NAMESPACE);
        let mut forwarder = pods
            .portforward(pod, &[DEBUG_PORT])
            .await
            .map_err(|err| anyhow::anyhow!(describe(&err)))
            .with_context(|| format!("port-forwarding to {asked}"))?;
        let stream = forwarder
            .take_stream(DEBUG_PORT)
            .with_context(|| format!("port-forwarding to {asked}: no stream"))?;
        let failed = forwarder.take_error(DEBUG_PORT).map(FutureExt::boxed);
        Ok(Self {
            asked,
            stream,
            forwarder,
            failed,
        })
    }

    /// Runs `work` over the forwarded stream, then closes the forward. If the forward fails
    /// meanwhile, the kubelet's reason is the error.
    pub async fn run<T, F>(self, work: impl FnOnce(DuplexStream) -> F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<T>>,
    {
        let Self {
            asked,
            stream,
            forwarder,
            failed,
        } = self;
        // The kubelet says why a forward failed (nothing listening, ...) on the port's error
        // channel, while the stream just closes; an error channel closed without one is no news.
        let result = tokio::select! {
            result = work(stream) => result,
            Some(reason) = async { failed?.await } => {
                Err(anyhow::anyhow!(reason).context(format!("port-forwarding to {asked}")))
            }
        };
        forwarder.abort();
        result
    }

    /// Starts a streamed GET of `path_and_query` over the forward: the answer's lines, and the
    /// forward to keep open while they are read (or the kubelet's reason the forward failed).
    pub async fn get_lines(
        self,
        path_and_query: &str,
    ) -> anyhow::Result<(plain_http::Lines, Portforwarder)> {
        let Self {
            asked,
            stream,
            forwarder,
            failed,
        } = self;
        let answer = tokio::select! {
            answer = plain_http::get_lines(stream, "localhost", path_and_query, MAX_LINE_BYTES) => {
                answer.map_err(anyhow::Error::from)
            }
            Some(reason) = async { failed?.await } => {
                Err(anyhow::anyhow!(reason).context(format!("port-forwarding to {asked}")))
            }
        };
        match answer {
            Ok(lines) => Ok((lines, forwarder)),
            Err(err) => {
                forwarder.abort();
                Err(err)
            }
        }
    }
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

/// A `--url`: where to connect and the path prefix to put before the debug routes.
#[derive(Debug, PartialEq)]
pub struct DebugUrl {
    pub authority: String,
    pub prefix: String,
}

impl DebugUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
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

    pub fn path(&self, route: &str) -> String {
        format!("{}{route}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, deleting: bool) -> Pod {
        let deleted = deleting.then_some("2026-01-01T00:00:00Z");
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "deletionTimestamp": deleted},
            "status": {"phase": phase},
        }))
        .expect("a pod")
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
        assert_eq!(behind.path("/debug/proxies"), "/skein/debug/proxies");
        assert!(DebugUrl::parse("https://127.0.0.1:9091").is_err());
        assert!(DebugUrl::parse("127.0.0.1:9091").is_err());
        assert!(DebugUrl::parse("not a url").is_err());
    }
}
