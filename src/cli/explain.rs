//! `skein explain pod/NAME -n NS` (or `deploy/NAME`: each of its pods): what the mesh does to
//! a pod's traffic, in plain words: its identity and inbound mTLS mode, the AccessPolicies that
//! select it, per destination the routes (RouteRules), traffic policies (retries, timeouts,
//! weights, limits) and endpoints (ready and not, with identities), the egress allow-list, the
//! proxy's sync state, and the proxy's recent local errors with what each reason means and
//! what to do.
//!
//! The configuration and sync state come from the control plane's debug server
//! (`/debug/proxies`, `/debug/config`: [`crate::cli::debug_server`]); the recent errors from
//! the proxy's admin server (`/debug/recent-errors`), through the apiserver's pod proxy, or
//! `--admin-url` for a proxy on this machine. A pod that is not meshed or not connected is
//! said so plainly.

use std::fmt::Write as _;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::core::{Selector, SelectorExt};
use serde::Serialize;

use crate::api::MeshConfig;
use crate::api::meshconfig::MtlsSpec;
use crate::api::names;
use crate::cli::debug_server::{self, DebugServerArgs, DebugUrl};
use crate::cli::output::{self, OutputArgs};
use crate::controlplane::push::ProxyStatus;
use crate::controlplane::stats::collect::get_through_apiserver;
use crate::identity::SpiffeId;
use crate::inject::patch::ADMIN_PORT_NAME;
use crate::plain_http;
use crate::proxy::admin::RECENT_ERRORS_PATH;
use crate::proxy::config::types::{
    AccessPolicy, Destination, MtlsMode, ProxyConfig, Route, StringMatch,
};
use crate::proxy::reasons::{Reason, service_ref};
use crate::proxy::recent::{MAX_SNAPSHOT_BYTES, RecentErrors};

/// Bound of each question (port-forwards and the apiserver included).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// `pod/NAME`, `deploy/NAME` (each of its pods) or a pod's `NAME`.
    pub target: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Read the recent errors from this proxy admin server (e.g. `http://127.0.0.1:16000`, a
    /// proxy on this machine) instead of through the apiserver's pod proxy.
    #[arg(long)]
    pub admin_url: Option<String>,
    #[command(flatten)]
    pub server: DebugServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    Deployment(String),
}

/// `pod/NAME`, `po/NAME`, `NAME`, `deploy/NAME`, checked to be Kubernetes names.
pub fn parse_target(text: &str) -> anyhow::Result<Target> {
    let (kind, name) = text.split_once('/').unwrap_or(("pod", text));
    let target = match kind {
        "pod" | "pods" | "po" => Target::Pod(name.to_owned()),
        "deploy" | "deployment" | "deployments" => Target::Deployment(name.to_owned()),
        other => anyhow::bail!("{text:?}: give pod/NAME or deploy/NAME, not {other}/"),
    };
    anyhow::ensure!(
        is_name(name),
        "{text:?}: {name:?} is not a name (lower-case letters, digits, '-' and '.')"
    );
    Ok(target)
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// What `skein explain -o json` prints for each pod.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodExplanation {
    pub namespace: String,
    pub pod: String,
    /// Whether the pod has the proxy container; `None` when the pod could not be read.
    pub meshed: Option<bool>,
    /// The workload identity its certificate carries (from its service account).
    pub identity: Option<String>,
    /// Its proxy's streams to the control plane (sync state); empty when not connected.
    pub proxies: Vec<ProxyStatus>,
    /// The configuration the control plane computes for it now (trust bundle left out).
    pub config: Option<ProxyConfig>,
    pub recent_errors: Option<RecentErrors>,
    /// What each reason among the recent errors means, and what to do.
    pub reasons: Vec<ReasonExplained>,
    /// What could not be learned, or is wrong, in plain words.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReasonExplained {
    pub reason: Reason,
    pub meaning: &'static str,
    pub hint: &'static str,
}

/// The catalogue's entries for the reasons the errors name, in first-seen order.
pub fn reasons_of(errors: &RecentErrors) -> Vec<ReasonExplained> {
    let mut seen = Vec::new();
    for error in &errors.errors {
        if let Some(reason) = error.reason.as_deref().and_then(Reason::from_name)
            && !seen.contains(&reason)
        {
            seen.push(reason);
        }
    }
    seen.into_iter()
        .map(|reason| ReasonExplained {
            reason,
            meaning: reason.meaning(),
            hint: reason.hint(),
        })
        .collect()
}

pub async fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let target = parse_target(&args.target)?;
    anyhow::ensure!(
        is_name(&args.namespace),
        "{:?} is not a namespace name",
        args.namespace
    );
    if let Some(url) = &args.admin_url {
        DebugUrl::parse(url).context("--admin-url")?;
    }
    let client = match args.server.kube.client().await {
        Ok(client) => Some(client),
        Err(err) if args.server.url.is_some() => {
            eprintln!("warning: no cluster to read pods from: {err:#}");
            None
        }
        Err(err) => return Err(err.into()),
    };
    let namespace = &args.namespace;
    let pods: Vec<(String, Option<Pod>)> = match (&target, &client) {
        (Target::Pod(name), Some(client)) => {
            let pod = Api::<Pod>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .with_context(|| format!("reading pod {namespace}/{name}"))?;
            anyhow::ensure!(pod.is_some(), "no pod {name} in namespace {namespace}");
            vec![(name.clone(), pod)]
        }
        (Target::Pod(name), None) => vec![(name.clone(), None)],
        (Target::Deployment(name), Some(client)) => deployment_pods(client, namespace, name)
            .await?
            .into_iter()
            .map(|pod| (pod.name_any(), Some(pod)))
            .collect(),
        (Target::Deployment(_), None) => {
            anyhow::bail!("deploy/NAME needs the cluster, to find its pods")
        }
    };
    anyhow::ensure!(
        args.admin_url.is_none() || pods.len() == 1,
        "--admin-url is one proxy: explain one pod with it"
    );
    let trust_domain = match &client {
        Some(client) => trust_domain(client).await,
        None => MtlsSpec::default().trust_domain,
    };
    let statuses = ask::<Vec<ProxyStatus>>(args, "/debug/proxies").await;
    let mut explained = Vec::new();
    for (name, pod) in pods {
        let mut explanation = PodExplanation {
            namespace: namespace.clone(),
            pod: name.clone(),
            ..PodExplanation::default()
        };
        if let Some(pod) = &pod {
            explanation.meshed = Some(has_proxy(pod));
            let account = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default");
            explanation.identity =
                Some(SpiffeId::new(&trust_domain, namespace, account).to_string());
        }
        match &statuses {
            Ok(all) => {
                explanation.proxies = all
                    .iter()
                    .filter(|s| &s.namespace == namespace && s.pod == name)
                    .cloned()
                    .collect();
            }
            Err(err) => explanation
                .problems
                .push(format!("the control plane's proxy list: {err:#}")),
        }
        if explanation.meshed == Some(false) {
            explanation.problems.push(format!(
                "pod {namespace}/{name} is not meshed: it has no {} container (is its namespace labelled {}={}? pods created before the label need a restart)",
                names::PROXY_CONTAINER,
                names::INJECTION_LABEL_KEY,
                names::INJECTION_LABEL_VALUE,
            ));
        } else if statuses.is_ok() && explanation.proxies.is_empty() {
            explanation.problems.push(format!(
                "pod {namespace}/{name}'s proxy is not connected to the control plane (not started, or it cannot reach the control plane): it has no configuration"
            ));
        }
        if !explanation.proxies.is_empty() {
            let path = format!("/debug/config?pod={namespace}/{name}");
            match ask::<ProxyConfig>(args, &path).await {
                Ok(mut config) => {
                    config.trust_bundle_pem.clear();
                    explanation.config = Some(config);
                }
                Err(err) => explanation
                    .problems
                    .push(format!("its configuration: {err:#}")),
            }
        }
        if explanation.meshed != Some(false) {
            match recent_errors(args, client.as_ref(), namespace, &name, pod.as_ref()).await {
                Ok(recent) => {
                    explanation.reasons = reasons_of(&recent);
                    explanation.recent_errors = Some(recent);
                }
                Err(err) => explanation
                    .problems
                    .push(format!("its proxy's recent errors: {err:#}")),
            }
        }
        explained.push(explanation);
    }
    print!(
        "{}",
        output::render(args.output.format, &explained, |all| {
            all.iter().map(describe).collect::<Vec<_>>().join("\n")
        })?
    );
    Ok(())
}

/// Every control plane's answer to `path`, the first that parses (a pod's proxy is connected
/// to one replica; the proxy list is merged).
async fn ask<T: serde::de::DeserializeOwned + Merge>(
    args: &ExplainArgs,
    path: &str,
) -> anyhow::Result<T> {
    let answers = tokio::time::timeout(TIMEOUT, debug_server::ask_all(args.server.target(), path))
        .await
        .with_context(|| format!("no answer from the control plane within {TIMEOUT:?}"))??;
    let mut merged: Option<T> = None;
    for (asked, body) in answers {
        let answer: T = serde_json::from_slice(&body)
            .with_context(|| format!("{asked}: the answer does not parse"))?;
        merged = Some(match merged {
            Some(so_far) => so_far.merge(answer),
            None => answer,
        });
    }
    merged.context("no control plane answered")
}

/// How answers of several control-plane replicas combine.
trait Merge {
    fn merge(self, other: Self) -> Self;
}

impl Merge for Vec<ProxyStatus> {
    fn merge(mut self, other: Self) -> Self {
        self.extend(other);
        self
    }
}

impl Merge for ProxyConfig {
    fn merge(self, _other: Self) -> Self {
        self
    }
}

async fn recent_errors(
    args: &ExplainArgs,
    client: Option<&kube::Client>,
    namespace: &str,
    name: &str,
    pod: Option<&Pod>,
) -> anyhow::Result<RecentErrors> {
    let body = if let Some(url) = &args.admin_url {
        let url = DebugUrl::parse(url)?;
        let stream = tokio::net::TcpStream::connect(&url.authority)
            .await
            .with_context(|| {
                format!(
                    "connecting to the proxy's admin server at {}",
                    url.authority
                )
            })?;
        let path = url.path(RECENT_ERRORS_PATH);
        let got = plain_http::get(stream, &url.authority, &path, MAX_SNAPSHOT_BYTES);
        tokio::time::timeout(TIMEOUT, got)
            .await
            .context("the admin server did not answer in time")??
    } else {
        let client = client.context("no cluster to reach the proxy through")?;
        let port = pod.map_or(names::DEFAULT_ADMIN_PORT, admin_port);
        let port = u16::try_from(port).context("the admin port is not a port")?;
        let got = get_through_apiserver(
            client,
            (namespace, name),
            port,
            RECENT_ERRORS_PATH,
            MAX_SNAPSHOT_BYTES,
        );
        tokio::time::timeout(TIMEOUT, got)
            .await
            .context("the apiserver did not answer in time")?
            .with_context(|| {
                format!("asking {namespace}/{name}'s proxy (port {port}) through the apiserver")
            })?
    };
    serde_json::from_slice(&body)
        .context("the recent errors do not parse (a proxy older than this skein?)")
}

/// The Deployment's pods, not being deleted, by name.
async fn deployment_pods(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<Pod>> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .with_context(|| format!("reading deploy/{name}"))?
        .with_context(|| format!("no deploy/{name} in namespace {namespace}"))?;
    let selector = Selector::try_from(deployment.spec.selector)
        .with_context(|| format!("deploy/{name}'s selector"))?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .context("listing pods")?;
    let mut pods: Vec<Pod> = pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && selector.matches(p.labels()))
        .collect();
    pods.sort_by_key(ResourceExt::name_any);
    anyhow::ensure!(!pods.is_empty(), "deploy/{name} has no pods");
    Ok(pods)
}

/// The MeshConfig's trust domain, or the default one.
async fn trust_domain(client: &kube::Client) -> String {
    let found = Api::<MeshConfig>::all(client.clone())
        .get_opt(names::ACTIVE_MESHCONFIG)
        .await
        .ok()
        .flatten();
    found.map_or_else(
        || MtlsSpec::default().trust_domain,
        |mesh| mesh.spec.mtls.trust_domain,
    )
}

fn has_proxy(pod: &Pod) -> bool {
    proxy_container(pod).is_some()
}

fn proxy_container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == names::PROXY_CONTAINER)
}

/// The proxy container's admin port (injection names it), else the default.
fn admin_port(pod: &Pod) -> i32 {
    proxy_container(pod)
        .and_then(|c| c.ports.as_ref())
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        })
        .map_or(names::DEFAULT_ADMIN_PORT, |p| p.container_port)
}

/// A small serde value as words: `Strict`, `5xx`, `{"prefix":"/api"}`.
fn words<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// The explanation for people.
pub fn describe(e: &PodExplanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pod {}/{}", e.namespace, e.pod);
    match e.meshed {
        Some(true) => {
            let _ = writeln!(out, "  meshed: yes");
        }
        Some(false) => {
            let _ = writeln!(out, "  meshed: NO");
        }
        None => {}
    }
    if let Some(identity) = &e.identity {
        let _ = writeln!(out, "  identity: {identity}");
    }
    for proxy in &e.proxies {
        let _ = writeln!(out, "  proxy: {}", sync_words(proxy));
    }
    if let Some(config) = &e.config {
        describe_config(&mut out, config);
    }
    if let Some(recent) = &e.recent_errors {
        describe_recent(&mut out, recent, &e.reasons);
    }
    for problem in &e.problems {
        let _ = writeln!(out, "  PROBLEM: {problem}");
    }
    out
}

fn sync_words(proxy: &ProxyStatus) -> String {
    let mut text = format!("connected since {}", proxy.connected_since);
    if proxy.sent_version == proxy.acked_version {
        let _ = write!(text, "; in sync (configuration {})", proxy.acked_version);
    } else {
        let _ = write!(
            text,
            "; NOT in sync: sent {}, acknowledged {}",
            proxy.sent_version,
            if proxy.acked_version.is_empty() {
                "nothing yet"
            } else {
                &proxy.acked_version
            }
        );
    }
    if let Some(nack) = &proxy.last_nack {
        let _ = write!(text, "; last rejection: {nack}");
    }
    match (&proxy.cert_expires, proxy.cert_expires_in_seconds) {
        (Some(at), Some(seconds)) if seconds > 0 => {
            let _ = write!(text, "; certificate valid until {at}");
        }
        (Some(at), _) => {
            let _ = write!(text, "; certificate EXPIRED at {at}");
        }
        _ => {}
    }
    text
}

fn describe_config(out: &mut String, config: &ProxyConfig) {
    let mtls = &config.inbound_mtls;
    let mut modes = words(&mtls.mode);
    if !mtls.port_modes.is_empty() {
        let ports: Vec<String> = mtls
            .port_modes
            .iter()
            .map(|(port, mode)| format!("port {port}: {}", words(mode)))
            .collect();
        let _ = write!(modes, " ({})", ports.join(", "));
    }
    let meaning = match mtls.mode {
        MtlsMode::Strict => "mutual TLS only; plaintext only for the kubelet's probes",
        MtlsMode::Permissive => "mutual TLS and plaintext accepted",
        MtlsMode::Disabled => "plaintext; callers are not told to use mutual TLS",
    };
    let _ = writeln!(out, "  inbound mTLS: {modes}: {meaning}");
    if config.access_policies.is_empty() {
        let _ = writeln!(
            out,
            "  access policies: none select this pod (every caller allowed)"
        );
    } else {
        let _ = writeln!(out, "  access policies:");
        for policy in &config.access_policies {
            let _ = writeln!(out, "    {}", policy_words(policy));
        }
    }
    let mut egress = format!(
        "  outbound to destinations outside the mesh: {}",
        words(&config.outbound_traffic_policy)
    );
    if config.egress.is_empty() {
        egress.push_str("; no EgressRule allows any");
    } else {
        let allowed: Vec<String> = config
            .egress
            .iter()
            .map(|e| {
                let ports: Vec<String> = e.ports.iter().map(ToString::to_string).collect();
                format!("{}:{} ({})", e.host, ports.join(","), words(&e.protocol))
            })
            .collect();
        let _ = write!(egress, "; allowed: {}", allowed.join(", "));
    }
    let _ = writeln!(out, "{egress}");
    let _ = writeln!(out, "  destinations ({}):", config.destinations.len());
    for destination in &config.destinations {
        describe_destination(out, destination);
    }
}

fn policy_words(policy: &AccessPolicy) -> String {
    let rules: Vec<String> = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let from: Vec<String> = rule
                .from
                .iter()
                .map(|s| {
                    let mut who: Vec<String> = s.identities.clone();
                    who.extend(s.namespaces.iter().map(|n| format!("namespace {n}")));
                    if s.unauthenticated {
                        who.push("unauthenticated".to_owned());
                    }
                    who.join(" or ")
                })
                .collect();
            let to: Vec<String> = rule
                .to
                .iter()
                .map(|o| {
                    let mut what = Vec::new();
                    if !o.methods.is_empty() {
                        what.push(o.methods.join(","));
                    }
                    if !o.paths.is_empty() {
                        what.push(o.paths.iter().map(words).collect::<Vec<_>>().join(","));
                    }
                    if !o.ports.is_empty() {
                        let ports: Vec<String> = o.ports.iter().map(ToString::to_string).collect();
                        what.push(format!("port {}", ports.join(",")));
                    }
                    what.join(" ")
                })
                .collect();
            let from = if from.is_empty() {
                "anyone".to_owned()
            } else {
                from.join(" | ")
            };
            let to = if to.is_empty() {
                "anything".to_owned()
            } else {
                to.join(" | ")
            };
            format!("rules[{i}]: from {from} to {to}")
        })
        .collect();
    format!(
        "{} ({}): {}",
        policy.name,
        words(&policy.action),
        if rules.is_empty() {
            "no rules".to_owned()
        } else {
            rules.join("; ")
        }
    )
}

fn describe_destination(out: &mut String, destination: &Destination) {
    let name = service_ref(&destination.name);
    for port in &destination.ports {
        let ready = port.endpoints.iter().filter(|e| !e.terminating).count();
        let terminating = port.endpoints.len() - ready;
        let mut counts = format!("{ready} ready");
        if terminating > 0 {
            let _ = write!(counts, ", {terminating} terminating");
        }
        if port.not_ready_endpoints > 0 {
            let _ = write!(counts, ", {} not ready", port.not_ready_endpoints);
        }
        let _ = writeln!(
            out,
            "    {name} port {} ({}): {counts}",
            port.port,
            words(&port.protocol)
        );
        for endpoint in &port.endpoints {
            let workload = endpoint
                .workload
                .as_ref()
                .map(|w| format!(" {}/{}", w.namespace, w.name))
                .unwrap_or_default();
            let identity = endpoint
                .identity
                .as_deref()
                .map_or_else(|| " plaintext".to_owned(), |id| format!(" mTLS as {id}"));
            let terminating = if endpoint.terminating {
                " (terminating)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "      endpoint {}{workload}{identity}{terminating}",
                endpoint.address
            );
        }
    }
    let mut policy = vec![format!(
        "load balancing {}",
        words(&destination.load_balancer)
    )];
    if let Some(outlier) = &destination.outlier_detection {
        policy.push(format!(
            "outlier detection after {} failures, ejected {} (at most {}%)",
            outlier.consecutive_failures, outlier.base_ejection_time, outlier.max_ejection_percent
        ));
    }
    if let Some(n) = destination.limits.max_connections {
        policy.push(format!("maxConnections {n}"));
    }
    if let Some(n) = destination.limits.max_pending_requests {
        policy.push(format!("maxPendingRequests {n}"));
    }
    let _ = writeln!(out, "      traffic policy: {}", policy.join("; "));
    for route in &destination.routes {
        let _ = writeln!(out, "      route {}", route_words(route));
    }
}

/// `"canary": GET /api* -> version=v2 10%, version=v1 90%; timeout 2s; retries 3 on 5xx`.
pub fn route_words(route: &Route) -> String {
    let matches: Vec<String> = route
        .matches
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            if let Some(method) = &m.method {
                parts.push(method.clone());
            }
            match &m.path {
                Some(StringMatch::Exact(path)) => parts.push(path.clone()),
                Some(StringMatch::Prefix(prefix)) => parts.push(format!("{prefix}*")),
                Some(other) => parts.push(format!("path {}", words(other))),
                None => {}
            }
            for header in &m.headers {
                parts.push(format!("header {} {}", header.name, words(&header.value)));
            }
            for query in &m.query {
                parts.push(format!("query {} {}", query.name, words(&query.value)));
            }
            parts.join(" ")
        })
        .collect();
    let mut text = format!(
        "{:?}: {}",
        route.name,
        if matches.is_empty() {
            "every request".to_owned()
        } else {
            matches.join(" | ")
        }
    );
    if !route.backends.is_empty() {
        let total: u32 = route.backends.iter().map(|b| b.weight).sum();
        let backends: Vec<String> = route
            .backends
            .iter()
            .map(|b| {
                let subset: Vec<String> =
                    b.subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let share = (b.weight * 100).checked_div(total).unwrap_or(0);
                let subset = if subset.is_empty() {
                    "all endpoints".to_owned()
                } else {
                    subset.join(",")
                };
                format!("{subset} {share}%")
            })
            .collect();
        let _ = write!(text, " -> {}", backends.join(", "));
    }
    if let Some(timeout) = route.timeout {
        let _ = write!(text, "; timeout {timeout}");
    }
    if let Some(retry) = &route.retry {
        let on: Vec<String> = retry.retry_on.iter().map(words).collect();
        let _ = write!(text, "; retries {} on {}", retry.attempts, on.join(","));
        if let Some(per_try) = retry.per_try_timeout {
            let _ = write!(text, " (per try {per_try})");
        }
    }
    if let Some(fault) = &route.fault {
        if let Some(abort) = &fault.abort {
            let _ = write!(
                text,
                "; FAULT: abort {}% with {}",
                abort.percent, abort.status
            );
        }
        if let Some(delay) = &fault.delay {
            let _ = write!(
                text,
                "; FAULT: delay {}% by {}",
                delay.percent, delay.duration
            );
        }
    }
    if let Some(mirror) = &route.mirror {
        let _ = write!(text, "; mirrors {}%", mirror.percent);
    }
    text
}

fn describe_recent(out: &mut String, recent: &RecentErrors, reasons: &[ReasonExplained]) {
    if recent.errors.is_empty() {
        let _ = writeln!(out, "  recent errors: none");
        return;
    }
    let _ = writeln!(
        out,
        "  recent errors ({} since the proxy started; the last {} kept):",
        recent.total, recent.capacity
    );
    for error in &recent.errors {
        let upstream = error
            .upstream
            .map(|u| format!(" via {u}"))
            .unwrap_or_default();
        let what = error
            .message
            .clone()
            .unwrap_or_else(|| match &error.reason {
                Some(reason) => format!("{reason} (from the upstream's proxy)"),
                None => "the upstream's own error".to_owned(),
            });
        let _ = writeln!(
            out,
            "    {} {} {} {}{} -> {}{upstream}: {what}",
            error.at, error.direction, error.method, error.authority, error.path, error.status
        );
    }
    if !reasons.is_empty() {
        let _ = writeln!(out, "  what they mean:");
        for reason in reasons {
            let _ = writeln!(out, "    {}: {}", reason.reason, reason.meaning);
            let _ = writeln!(out, "      what to do: {}", reason.hint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::config::types::{DestinationPort, Endpoint, RetryPolicy, WeightedSubset};
    use crate::proxy::recent::RecentError;

    #[test]
    fn targets_are_pods_or_deployments() {
        assert_eq!(
            parse_target("pod/web-1").unwrap(),
            Target::Pod("web-1".into())
        );
        assert_eq!(parse_target("web-1").unwrap(), Target::Pod("web-1".into()));
        assert_eq!(
            parse_target("deploy/web").unwrap(),
            Target::Deployment("web".into())
        );
        assert!(parse_target("svc/web").is_err());
        assert!(parse_target("pod/").is_err());
        assert!(parse_target("pod/Web").is_err());
    }

    fn error(reason: Option<&str>) -> RecentError {
        RecentError {
            at: "2026-12-07T08:00:00Z".into(),
            direction: "outbound".into(),
            method: "GET".into(),
            authority: "nowhere".into(),
            path: "/".into(),
            status: 503,
            reason: reason.map(str::to_owned),
            message: reason.map(|r| {
                format!(
                    "{r}: Service demo/nowhere port 80 has no ready endpoints (1 pods, 0 ready)"
                )
            }),
            upstream: None,
            attempts: 0,
            trace_id: None,
        }
    }

    #[test]
    fn each_reason_among_the_errors_is_explained_once() {
        let recent = RecentErrors {
            total: 3,
            capacity: 32,
            errors: vec![
                error(Some("no-endpoints")),
                error(None),
                error(Some("no-endpoints")),
            ],
        };
        let reasons = reasons_of(&recent);
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].reason, Reason::NoEndpoints);
        assert_eq!(reasons[0].meaning, Reason::NoEndpoints.meaning());
    }

    #[test]
    fn the_explanation_says_what_applies_in_plain_words() {
        let config = ProxyConfig {
            destinations: vec![Destination {
                name: "backend.demo.svc.cluster.local".into(),
                addresses: Vec::new(),
                hosts: Vec::new(),
                ports: vec![DestinationPort {
                    port: 8080,
                    protocol: crate::proxy::config::types::Protocol::Http1,
                    endpoints: vec![Endpoint {
                        address: "10.0.0.5:8080".parse().unwrap(),
                        labels: std::collections::BTreeMap::new(),
                        workload: None,
                        terminating: false,
                        identity: Some("spiffe://cluster.local/ns/demo/sa/backend".into()),
                        http2_upgrade: false,
                    }],
                    not_ready_endpoints: 2,
                }],
                load_balancer: crate::proxy::config::types::LoadBalancer::default(),
                outlier_detection: None,
                limits: crate::proxy::config::types::Limits::default(),
                routes: vec![Route {
                    name: "slow".into(),
                    backends: vec![WeightedSubset {
                        subset: [("version".to_owned(), "v2".to_owned())].into(),
                        weight: 10,
                    }],
                    timeout: Some(crate::api::Duration::from_millis(2000)),
                    retry: Some(RetryPolicy {
                        attempts: 3,
                        ..serde_json::from_value(serde_json::json!({"attempts": 3})).unwrap()
                    }),
                    ..Route::default()
                }],
            }],
            ..ProxyConfig::default()
        };
        let explanation = PodExplanation {
            namespace: "demo".into(),
            pod: "web-1".into(),
            meshed: Some(true),
            identity: Some("spiffe://cluster.local/ns/demo/sa/default".into()),
            config: Some(config),
            recent_errors: Some(RecentErrors {
                total: 1,
                capacity: 32,
                errors: vec![error(Some("no-endpoints"))],
            }),
            reasons: reasons_of(&RecentErrors {
                total: 1,
                capacity: 32,
                errors: vec![error(Some("no-endpoints"))],
            }),
            ..PodExplanation::default()
        };
        let text = describe(&explanation);
        for expected in [
            "pod demo/web-1",
            "identity: spiffe://cluster.local/ns/demo/sa/default",
            "inbound mTLS: Permissive",
            "access policies: none select this pod",
            "demo/backend port 8080 (http1): 1 ready, 2 not ready",
            "endpoint 10.0.0.5:8080 mTLS as spiffe://cluster.local/ns/demo/sa/backend",
            "route \"slow\": every request -> version=v2 100%; timeout 2s; retries 3 on",
            "no-endpoints: Service demo/nowhere port 80 has no ready endpoints",
            "what to do: ",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        let not_meshed = PodExplanation {
            namespace: "demo".into(),
            pod: "plain".into(),
            meshed: Some(false),
            problems: vec!["pod demo/plain is not meshed".into()],
            ..PodExplanation::default()
        };
        assert!(describe(&not_meshed).contains("meshed: NO"));
        assert!(describe(&not_meshed).contains("PROBLEM: pod demo/plain is not meshed"));
    }
}
