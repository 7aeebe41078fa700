//! `skein tap deploy/NAME -n NS [--to svc/NAME [--to-namespace NS]] [--method GET] [--path /x] [-o wide|json]`:
//! live requests and responses through the target's proxies, as the control plane streams them
//! ([`crate::controlplane::tap`]). Pods that cannot be tapped are named on stderr with the
//! reason, and so are events dropped because the tap could not keep up.
//!
//! By default the stream comes through the Kubernetes apiserver: the tap API
//! ([`crate::controlplane::tap::api`]), so the caller needs RBAC `watch` on `deployments/tap`,
//! `pods/tap` or `tap` in API group `tap.skein.dev` (the `skein-tap` ClusterRole) and nothing
//! else, and a refusal names the binding that would allow it. The apiserver hands the request to
//! one control-plane replica, which taps the proxies connected to it. `--port-forward`, `--url`
//! and `--cluster` reach the control planes' debug servers instead, as the other debug commands
//! do (every replica, merged; a port-forward needs `pods/portforward` in the mesh namespace).
//! Header values are never shown.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::cli::debug_server::{self, DebugServerArgs};
use crate::controlplane::tap::api;
use crate::controlplane::tap::target::{self, Resource};
use crate::controlplane::tap::{Event, TapLine};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TapFormat {
    /// One line per request: direction, source → destination, method, authority and path,
    /// status, latency.
    #[default]
    Table,
    /// The same with identities, TLS, gRPC status, bytes, retries, the proxy's error and pod.
    Wide,
    /// Each line of the stream as the control plane sends it (one JSON object per line).
    Json,
}

/// What to tap and which requests; shared by `skein tap` and `skein top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TapTarget {
    /// What to tap: `deploy/NAME`, `pod/NAME`, or `ns` (every pod of the namespace).
    pub resource: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only requests to this destination: `svc/NAME` or `deploy/NAME`.
    #[arg(long)]
    pub to: Option<String>,
    /// The namespace of the `--to` destination (default: the tapped namespace, `-n`).
    #[arg(long, requires = "to")]
    pub to_namespace: Option<String>,
    /// Only requests with this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Reach every control-plane replica through port-forwards to their debug servers, instead
    /// of one through the apiserver's tap API (RBAC: `pods/portforward` in the mesh namespace
    /// instead of `skein-tap`).
    #[arg(long, conflicts_with_all = ["url", "cluster"])]
    pub port_forward: bool,
    #[command(flatten)]
    pub server: DebugServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct TapArgs {
    #[command(flatten)]
    pub target: TapTarget,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<u64>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TapFormat,
}

impl TapTarget {
    /// The `/debug/tap` request, checked here first so a mistake is said before connecting.
    pub fn path_and_query(&self, max: Option<u64>) -> anyhow::Result<String> {
        let resource: Resource = self.resource.parse().map_err(anyhow::Error::msg)?;
        let mut query = format!(
            "/debug/tap?namespace={}&resource={}",
            encode(&self.namespace),
            encode(&resource.to_string())
        );
        for parameter in self.filter_parameters(max)? {
            query.push('&');
            query.push_str(&parameter);
        }
        Ok(query)
    }

    /// The tap API's path for this tap (see [`crate::controlplane::tap::api`]).
    pub fn api_path(&self, max: Option<u64>) -> anyhow::Result<String> {
        let resource: Resource = self.resource.parse().map_err(anyhow::Error::msg)?;
        let base = format!(
            "/apis/{}/{}/watch/namespaces/{}",
            api::GROUP,
            api::VERSION,
            encode(&self.namespace)
        );
        let mut path = match &resource {
            Resource::Deployment(name) => format!("{base}/deployments/{}/tap", encode(name)),
            Resource::Pod(name) => format!("{base}/pods/{}/tap", encode(name)),
            Resource::Namespace => format!("{base}/tap"),
        };
        let parameters = self.filter_parameters(max)?;
        if !parameters.is_empty() {
            path.push('?');
            path.push_str(&parameters.join("&"));
        }
        Ok(path)
    }

    /// `key=value` of the filter's given parameters and `max`, checked and encoded.
    fn filter_parameters(&self, max: Option<u64>) -> anyhow::Result<Vec<String>> {
        target::filter(
            &self.namespace,
            (self.to.as_deref(), self.to_namespace.as_deref()),
            self.method.as_deref(),
            self.path.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        let mut parameters: Vec<String> = [
            ("to", self.to.as_deref()),
            ("to_namespace", self.to_namespace.as_deref()),
            ("method", self.method.as_deref()),
            ("path", self.path.as_deref()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", encode(value?))))
        .collect();
        parameters.extend(max.map(|max| format!("max={max}")));
        Ok(parameters)
    }

    /// The tap's lines: from the tap API, or merged from every control plane's debug server;
    /// ends when all have ended.
    pub async fn open(
        &self,
        max: Option<u64>,
    ) -> anyhow::Result<mpsc::Receiver<anyhow::Result<Bytes>>> {
        let (lines, merged) = mpsc::channel(256);
        let direct =
            self.port_forward || self.server.url.is_some() || self.server.cluster.is_some();
        let opened = if direct {
            let path = self.path_and_query(max)?;
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                debug_server::stream_all(self.server.target(), &path, lines),
            )
            .await
        } else {
            let path = self.api_path(max)?;
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                stream_from_api(&self.server.kube, &path, lines),
            )
            .await
        };
        opened.with_context(|| {
            format!("no answer from the control plane within {CONNECT_TIMEOUT:?}")
        })??;
        Ok(merged)
    }
}

/// Opens the tap API's stream at `path` through the apiserver and sends its lines on.
async fn stream_from_api(
    kube: &crate::cli::connect::KubeArgs,
    path: &str,
    lines: mpsc::Sender<anyhow::Result<Bytes>>,
) -> anyhow::Result<()> {
    let client = kube.client().await?;
    let request = axum::http::Request::get(path)
        .body(Vec::new())
        .context("building the tap request")?;
    let answer = client
        .request_stream(request)
        .await
        .map_err(|err| anyhow::anyhow!(refused(&err)))?;
    tokio::spawn(async move {
        use futures::{AsyncBufReadExt, StreamExt};
        let mut answer = std::pin::pin!(answer.lines());
        while let Some(line) = answer.next().await {
            let line = line
                .map(Bytes::from)
                .context("reading the tap stream from the apiserver");
            let failed = line.is_err();
            if lines.send(line).await.is_err() || failed {
                break;
            }
        }
    });
    Ok(())
}

/// Why the apiserver refused a tap, with what to do about it.
fn refused(err: &kube::Error) -> String {
    let kube::Error::Api(status) = err else {
        return format!("asking the apiserver's tap API: {err}");
    };
    let hint = match status.code {
        403 => format!(
            " (tapping needs RBAC watch on deployments/tap, pods/tap or tap in API group {}: \
             the {} ClusterRole grants it)",
            api::GROUP,
            api::TAP_CLUSTER_ROLE
        ),
        404 | 503 => format!(
            " (the tap API is not registered or not available: see `kubectl get apiservice \
             {}` and `skein check`; `--port-forward` reaches the control plane directly)",
            api::API_SERVICE
        ),
        _ => String::new(),
    };
    format!("the tap was refused: {}{hint}", status.message)
}

/// Bound of opening the streams, port-forwards included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A query value, percent-encoded (everything but unreserved characters and `/`).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What a followed stream tapped.
#[derive(Debug, Default)]
pub struct Progress {
    pub tapped: usize,
    pub untappable: usize,
}

/// Pure: the stderr line for a line that is not an event (`None` for events).
pub fn notice(line: &TapLine) -> Option<String> {
    match line {
        TapLine::Tapping { pods } if pods.is_empty() => None,
        TapLine::Tapping { pods } => Some(format!(
            "tapping {} pod(s): {}",
            pods.len(),
            pods.join(", ")
        )),
        TapLine::Untappable { pod, reason } => Some(format!("{pod}: cannot tap: {reason}")),
        TapLine::Dropped { pod, count } => Some(format!(
            "{pod}: dropped {count} events (the tap could not keep up)"
        )),
        TapLine::Event(_) => None,
    }
}

/// Reads the merged stream and hands each event to `each`; notices go to stderr. Fails when
/// nothing could be tapped.
pub async fn follow(
    mut lines: mpsc::Receiver<anyhow::Result<Bytes>>,
    mut each: impl FnMut(&Bytes, Event),
) -> anyhow::Result<Progress> {
    let mut progress = Progress::default();
    let mut reasons = Vec::new();
    while let Some(line) = lines.recv().await {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: TapLine = serde_json::from_slice(&line).with_context(|| {
            format!(
                "the control plane sent a line that is not a tap line: {}",
                String::from_utf8_lossy(&line)
            )
        })?;
        if let Some(notice) = notice(&parsed) {
            eprintln!("{notice}");
        }
        match parsed {
            TapLine::Tapping { pods } => progress.tapped += pods.len(),
            TapLine::Untappable { pod, reason } => {
                progress.untappable += 1;
                reasons.push(format!("{pod}: {reason}"));
            }
            TapLine::Event(event) => each(&line, *event),
            TapLine::Dropped { .. } => {}
        }
    }
    anyhow::ensure!(
        progress.tapped > 0,
        "nothing to tap: {}",
        if reasons.is_empty() {
            "no control plane has a tappable pod of the target".to_owned()
        } else {
            reasons.join("; ")
        }
    );
    Ok(progress)
}

pub async fn tap(args: &TapArgs) -> anyhow::Result<()> {
    let lines = args.target.open(args.max).await?;
    let format = args.output;
    follow(lines, |raw, event| match format {
        TapFormat::Json => println!("{}", String::from_utf8_lossy(raw)),
        TapFormat::Table => println!("{}", event_line(&event, false)),
        TapFormat::Wide => println!("{}", event_line(&event, true)),
    })
    .await?;
    Ok(())
}

/// Pure: one event as a line for people.
pub fn event_line(event: &Event, wide: bool) -> String {
    let arrow = format!(
        "{} -> {}",
        peer_name(&event.source),
        if event.destination.workload.is_empty() {
            event.service.clone()
        } else {
            peer_name(&event.destination)
        }
    );
    let status = match (event.status, event.grpc_status) {
        (0, _) => "-".to_owned(),
        (status, Some(grpc)) if wide || grpc != 0 => format!("{status} grpc={grpc}"),
        (status, _) => status.to_string(),
    };
    let mut line = format!(
        "{:<3} {arrow}  {} {}{}  {status}  {:.1}ms",
        if event.direction == "inbound" {
            "in"
        } else {
            "out"
        },
        event.method,
        event.authority,
        event.path,
        event.latency_ms,
    );
    if let Some(error) = &event.error {
        line.push_str(&format!("  error={error}"));
    }
    if !event.completed {
        line.push_str("  (cut off)");
    }
    if wide {
        let bytes = |b: Option<u64>| b.map_or_else(|| "unknown".to_owned(), |b| b.to_string());
        line.push_str(&format!(
            "  tls={} src_id={} dst_id={} req_bytes={} resp_bytes={} retries={} pod={}",
            event.tls,
            event.source.identity.as_deref().unwrap_or("-"),
            event.destination.identity.as_deref().unwrap_or("-"),
            bytes(event.request_bytes),
            bytes(event.response_bytes),
            event.retries,
            event.pod,
        ));
    }
    line
}

fn peer_name(peer: &crate::controlplane::tap::EventPeer) -> String {
    match (peer.workload.as_str(), peer.namespace.as_str()) {
        ("", "") => "?".to_owned(),
        ("", namespace) => format!("?.{namespace}"),
        (workload, _) => workload.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::tap::EventPeer;

    fn target(resource: &str) -> TapTarget {
        TapTarget {
            resource: resource.into(),
            namespace: "demo".into(),
            to: Some("svc/backend".into()),
            to_namespace: None,
            method: None,
            path: Some("/a b&c".into()),
            port_forward: false,
            server: DebugServerArgs::default(),
        }
    }

    #[test]
    fn the_request_is_checked_and_encoded() {
        assert_eq!(
            target("deploy/frontend").path_and_query(Some(5)).unwrap(),
            "/debug/tap?namespace=demo&resource=deploy/frontend&to=svc/backend&path=/a%20b%26c&max=5"
        );
        assert!(target("svc/frontend").path_and_query(None).is_err());
        let mut elsewhere = target("deploy/frontend");
        elsewhere.to_namespace = Some("other".into());
        assert_eq!(
            elsewhere.path_and_query(None).unwrap(),
            "/debug/tap?namespace=demo&resource=deploy/frontend&to=svc/backend&to_namespace=other&path=/a%20b%26c"
        );
        let mut bad = target("deploy/frontend");
        bad.path = Some("nope".into());
        assert!(bad.path_and_query(None).is_err());
    }

    #[test]
    fn the_tap_api_path_names_the_resource_as_rbac_sees_it() {
        assert_eq!(
            target("deploy/frontend").api_path(Some(5)).unwrap(),
            "/apis/tap.skein.dev/v1alpha1/watch/namespaces/demo/deployments/frontend/tap\
             ?to=svc/backend&path=/a%20b%26c&max=5"
        );
        let mut pod = target("pod/web-1");
        (pod.to, pod.path) = (None, None);
        assert_eq!(
            pod.api_path(None).unwrap(),
            "/apis/tap.skein.dev/v1alpha1/watch/namespaces/demo/pods/web-1/tap"
        );
        let mut ns = target("ns");
        (ns.to, ns.path) = (None, None);
        assert_eq!(
            ns.api_path(None).unwrap(),
            "/apis/tap.skein.dev/v1alpha1/watch/namespaces/demo/tap"
        );
    }

    #[test]
    fn events_read_as_one_line() {
        let event = Event {
            direction: "outbound".into(),
            source: EventPeer {
                workload: "frontend".into(),
                namespace: "demo".into(),
                identity: Some("spiffe://cluster.local/ns/demo/sa/frontend".into()),
            },
            destination: EventPeer {
                workload: "backend".into(),
                ..EventPeer::default()
            },
            method: "GET".into(),
            authority: "backend:8080".into(),
            path: "/work".into(),
            status: 503,
            latency_ms: 1.25,
            error: Some("no-endpoints".into()),
            completed: true,
            ..Event::default()
        };
        assert_eq!(
            event_line(&event, false),
            "out frontend -> backend  GET backend:8080/work  503  1.2ms  error=no-endpoints"
        );
        assert!(event_line(&event, true).contains(
            "src_id=spiffe://cluster.local/ns/demo/sa/frontend dst_id=- req_bytes=unknown"
        ));
        assert_eq!(
            notice(&TapLine::Dropped {
                pod: "demo/a".into(),
                count: 4
            })
            .as_deref(),
            Some("demo/a: dropped 4 events (the tap could not keep up)")
        );
    }
}
