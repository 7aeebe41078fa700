//! `skein stat deploy` and `skein edges deploy`: golden signals per workload and per edge, with
//! each workload's PASS / FAIL verdict and why, from the control plane's `/debug/stats`
//! ([`crate::controlplane::stats`]). Each control-plane replica knows only its own proxies, so
//! every replica is asked and their raw counts merged before rates and verdicts are derived.
//! MESHED counts the Deployment's pods (from the apiserver) against those with a proxy.
//! With `--prometheus URL` (or `SKEIN_PROMETHEUS_URL`) the same rows come from PromQL instead
//! ([`prometheus`]); the table, verdicts and reasons are this file's either way. Under a FAIL
//! row, one recent failing request of the workload (`sample:`, from its proxies' recent
//! errors; see [`crate::controlplane::stats::sample`]); Prometheus has none, so with
//! `--prometheus` that line is left out.

mod prometheus;

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::core::{Selector, SelectorExt};
use serde::Serialize;

use crate::api::names;
use crate::cli::debug_server::{self, DebugServerArgs};
use crate::cli::output::{self, OutputArgs};
use crate::controlplane::debug::{DEFAULT_THRESHOLD, DEFAULT_WINDOW, parse_window};
use crate::controlplane::stats::query::{EdgeStats, Filter, Report, Verdict, WorkloadStats};
use prometheus::PrometheusArgs;

/// Bound of the whole query, port-forwards included.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// The kind of resource: `deploy` (also `deployment`, `deployments`).
    #[arg(value_parser = kind)]
    pub kind: String,
    /// Only this workload: `deploy/NAME` or `NAME`.
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only requests from this workload (`deploy/NAME`); latency is not kept per caller.
    #[arg(long)]
    pub from: Option<String>,
    /// Only requests to this workload (`deploy/NAME`), as the callers' proxies saw them.
    #[arg(long)]
    pub to: Option<String>,
    /// The window the numbers cover: 10s to 5m.
    #[arg(long, default_value = DEFAULT_WINDOW)]
    pub window: String,
    /// The success rate (percent) a workload needs to PASS.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    #[command(flatten)]
    pub server: DebugServerArgs,
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct EdgesArgs {
    /// The kind of resource: `deploy` (also `deployment`, `deployments`).
    #[arg(value_parser = kind)]
    pub kind: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The window the numbers cover: 10s to 5m.
    #[arg(long, default_value = DEFAULT_WINDOW)]
    pub window: String,
    #[command(flatten)]
    pub server: DebugServerArgs,
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn kind(text: &str) -> Result<String, String> {
    match text {
        "deploy" | "deployment" | "deployments" => Ok("deploy".to_owned()),
        _ => Err(format!(
            "{text:?}: only Deployments have stats so far (give `deploy`)"
        )),
    }
}

/// `deploy/NAME` or `NAME` → `NAME`, checked to be a Kubernetes name.
fn workload_name(text: &str) -> anyhow::Result<String> {
    let name = match text.split_once('/') {
        Some(("deploy" | "deployment" | "deployments", name)) => name,
        Some((kind, _)) => anyhow::bail!("{text:?}: only deploy/NAME is supported, not {kind}/"),
        None => text,
    };
    anyhow::ensure!(
        is_name(name),
        "{text:?} is not a workload name (lower-case letters, digits, '-' and '.')"
    );
    Ok(name.to_owned())
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Which source a report comes from, and the query.
struct ReportQuery<'a> {
    server: &'a DebugServerArgs,
    prometheus: &'a PrometheusArgs,
    namespace: &'a str,
    window: &'a str,
    threshold: f64,
    from: Option<&'a str>,
    to: Option<&'a str>,
}

/// The report for this query, finished: from every control-plane replica (merged), or from
/// Prometheus.
async fn report(query: &ReportQuery<'_>) -> anyhow::Result<Report> {
    let ReportQuery {
        server,
        prometheus: source,
        namespace,
        window,
        threshold,
        from,
        to,
    } = *query;
    let window_seconds = parse_window(window).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (0.0..=100.0).contains(&threshold),
        "--threshold {threshold} is not a percentage (0-100)"
    );
    anyhow::ensure!(is_name(namespace), "{namespace:?} is not a namespace name");
    let merged = match &source.prometheus {
        Some(base) => {
            let filter = Filter {
                namespace: Some(namespace.to_owned()),
                from: from.map(str::to_owned),
                to: to.map(str::to_owned),
            };
            tokio::time::timeout(
                TIMEOUT,
                prometheus::fetch_report(base, &filter, namespace, window_seconds),
            )
            .await
            .with_context(|| format!("no answer from Prometheus at {base} within {TIMEOUT:?}"))??
        }
        None => from_control_plane(server, namespace, window, threshold, from, to).await?,
    };
    for proxy in &merged.unreachable {
        eprintln!("warning: no metrics from {proxy}");
    }
    Ok(merged.finish(threshold))
}

/// Every replica's report for this query, merged.
async fn from_control_plane(
    server: &DebugServerArgs,
    namespace: &str,
    window: &str,
    threshold: f64,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<Report> {
    let mut path =
        format!("/debug/stats?namespace={namespace}&window={window}&threshold={threshold}");
    for (key, value) in [("from", from), ("to", to)] {
        if let Some(value) = value {
            path.push_str(&format!("&{key}={value}"));
        }
    }
    let answers = tokio::time::timeout(TIMEOUT, debug_server::ask_all(server.target(), &path))
        .await
        .with_context(|| format!("no answer from the control plane within {TIMEOUT:?}"))??;
    let mut merged = Report::default();
    for (asked, body) in answers {
        let report: Report = serde_json::from_slice(&body)
            .with_context(|| format!("{asked}: the answer is not a stats report"))?;
        merged.merge(report);
    }
    Ok(merged)
}

/// What `skein stat -o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatOutput {
    window_seconds: f64,
    threshold: f64,
    workloads: Vec<WorkloadStats>,
    unreachable: Vec<String>,
}

pub async fn stat(args: &StatArgs) -> anyhow::Result<()> {
    let only = args.name.as_deref().map(workload_name).transpose()?;
    let from = args.from.as_deref().map(workload_name).transpose()?;
    let to = args.to.as_deref().map(workload_name).transpose()?;
    let report = report(&ReportQuery {
        server: &args.server,
        prometheus: &args.prometheus,
        namespace: &args.namespace,
        window: &args.window,
        threshold: args.threshold,
        from: from.as_deref(),
        to: to.as_deref(),
    })
    .await?;
    let mut workloads = report.workloads;
    // Deployments without traffic are rows too, and every row gets its pod count.
    match deployments(&args.server, &args.namespace).await {
        Ok(found) => {
            for (name, pods) in found {
                match workloads.iter_mut().find(|w| w.name == name) {
                    Some(row) => row.pods = Some(pods.total),
                    None if from.is_none() && to.is_none() => workloads.push(WorkloadStats {
                        namespace: args.namespace.clone(),
                        name,
                        proxies: pods.meshed,
                        pods: Some(pods.total),
                        ..WorkloadStats::default()
                    }),
                    None => {}
                }
            }
        }
        Err(error) => eprintln!("warning: not counting pods: {error:#}"),
    }
    if let Some(only) = &only {
        workloads.retain(|w| &w.name == only);
        anyhow::ensure!(
            !workloads.is_empty(),
            "no deploy/{only} in namespace {} (and no traffic of it)",
            args.namespace
        );
    }
    workloads.sort_by(|a, b| a.name.cmp(&b.name));
    let out = StatOutput {
        window_seconds: report.window_seconds,
        threshold: report.threshold,
        workloads,
        unreachable: report.unreachable,
    };
    print!(
        "{}",
        output::render(args.output.format, &out, |o| stat_table(&o.workloads))?
    );
    Ok(())
}

#[derive(Debug, Default, PartialEq)]
struct PodCount {
    total: u32,
    meshed: u32,
}

/// Each Deployment's pods and, of them, those with the proxy container.
async fn deployments(
    server: &DebugServerArgs,
    namespace: &str,
) -> anyhow::Result<BTreeMap<String, PodCount>> {
    let client = server.kube.client().await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .context("listing Deployments")?;
    let pods = Api::<Pod>::namespaced(client, namespace)
        .list(&ListParams::default())
        .await
        .context("listing pods")?;
    Ok(count_pods(&deployments.items, &pods.items))
}

fn count_pods(deployments: &[Deployment], pods: &[Pod]) -> BTreeMap<String, PodCount> {
    let mut counts = BTreeMap::new();
    for deployment in deployments {
        let Ok(selector) = Selector::try_from(deployment.spec.selector.clone()) else {
            continue;
        };
        let mut count = PodCount::default();
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() || !selector.matches(pod.labels()) {
                continue;
            }
            count.total += 1;
            let meshed = pod.spec.as_ref().is_some_and(|spec| {
                spec.containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .any(|c| c.name == names::PROXY_CONTAINER)
            });
            count.meshed += u32::from(meshed);
        }
        counts.insert(deployment.name_any(), count);
    }
    counts
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0))
}

fn millis(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(ms) if ms >= 10.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{ms:.1}ms"),
    }
}

/// The `stat` table; under each FAIL row, its top reasons and its sample request, if any.
fn stat_table(workloads: &[WorkloadStats]) -> String {
    let header = [
        "NAME", "MESHED", "SUCCESS", "RPS", "P50", "P95", "P99", "TCP_CONN", "VERDICT",
    ]
    .map(str::to_owned);
    let mut rows = vec![header];
    for w in workloads {
        let meshed = match w.pods {
            Some(pods) => format!("{}/{pods}", w.proxies),
            None => format!("{}/?", w.proxies),
        };
        rows.push([
            w.name.clone(),
            meshed,
            percent(w.success_rate),
            format!("{:.1}", w.rps),
            millis(w.p50_ms),
            millis(w.p95_ms),
            millis(w.p99_ms),
            w.tcp_open.to_string(),
            w.verdict.as_str().to_owned(),
        ]);
    }
    let table = output::columns(&rows);
    let mut out = String::new();
    for (line, row) in table
        .lines()
        .zip(std::iter::once(None).chain(workloads.iter().map(Some)))
    {
        out.push_str(line);
        out.push('\n');
        if let Some(w) = row.filter(|w| w.verdict == Verdict::Fail) {
            out.push_str(&format!("  {}\n", failing_line(w)));
            if let Some(sample) = &w.sample {
                out.push_str(&format!("        sample: {}\n", sample.line()));
            }
        }
    }
    out
}

/// `FAIL  backend: 30.1% failing — 503 x62, 500 x31`
fn failing_line(w: &WorkloadStats) -> String {
    let failing = 100.0 - w.success_rate.unwrap_or(0.0) * 100.0;
    let reasons: Vec<String> = w.top_reasons.iter().map(ToString::to_string).collect();
    format!(
        "FAIL  {}: {failing:.1}% failing — {}",
        w.name,
        reasons.join(", ")
    )
}

/// What `skein edges -o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EdgesOutput {
    window_seconds: f64,
    edges: Vec<EdgeStats>,
    unreachable: Vec<String>,
}

pub async fn edges(args: &EdgesArgs) -> anyhow::Result<()> {
    let report = report(&ReportQuery {
        server: &args.server,
        prometheus: &args.prometheus,
        namespace: &args.namespace,
        window: &args.window,
        threshold: DEFAULT_THRESHOLD,
        from: None,
        to: None,
    })
    .await?;
    let out = EdgesOutput {
        window_seconds: report.window_seconds,
        edges: report.edges,
        unreachable: report.unreachable,
    };
    print!(
        "{}",
        output::render(args.output.format, &out, |o| edges_table(&o.edges))?
    );
    Ok(())
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn edges_table(edges: &[EdgeStats]) -> String {
    let header = [
        "SRC",
        "DST",
        "SRC_IDENTITY",
        "DST_IDENTITY",
        "SECURED",
        "SUCCESS",
        "RPS",
    ]
    .map(str::to_owned);
    let mut rows = vec![header];
    for e in edges {
        // A caller that proved an identity is meshed, named or not (SRC_IDENTITY says who).
        let source = match (e.source.as_str(), e.source_identity.as_str()) {
            ("", "") => "(outside the mesh)".to_owned(),
            ("", _) => format!("{}/(unnamed)", e.source_namespace),
            (name, _) => format!("{}/{name}", e.source_namespace),
        };
        rows.push([
            source,
            format!("{}/{}", e.destination_namespace, e.destination),
            or_dash(&e.source_identity),
            or_dash(&e.destination_identity),
            e.secured.clone(),
            percent(e.success_rate),
            format!("{:.1}", e.rps),
        ]);
    }
    output::columns(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::stats::query::{Reason, ReasonKind};
    use crate::controlplane::stats::sample::SampleRequest;

    #[test]
    fn workloads_are_named_like_kubectl_names_them() {
        assert_eq!(workload_name("deploy/backend").unwrap(), "backend");
        assert_eq!(workload_name("backend").unwrap(), "backend");
        assert!(workload_name("svc/backend").is_err());
        assert!(workload_name("deploy/Back end").is_err());
        assert!(
            workload_name("a&b=c").is_err(),
            "never reaches the query string"
        );
        assert!(kind("pods").is_err());
    }

    #[test]
    fn failing_rows_carry_their_reasons() {
        let failing = WorkloadStats {
            name: "backend".into(),
            proxies: 1,
            pods: Some(2),
            requests: 100,
            failures: 30,
            success_rate: Some(0.7),
            rps: 1.66,
            p50_ms: Some(1.23),
            p95_ms: Some(45.0),
            verdict: Verdict::Fail,
            top_reasons: vec![Reason {
                kind: ReasonKind::Status,
                detail: "503".into(),
                count: 30,
            }],
            sample: Some(SampleRequest {
                pod: "backend-7f9c-x2x".into(),
                direction: "inbound".into(),
                method: "GET".into(),
                authority: "backend".into(),
                path: "/api".into(),
                status: 503,
                age_seconds: 4.2,
                ..SampleRequest::default()
            }),
            ..WorkloadStats::default()
        };
        let quiet = WorkloadStats {
            name: "web".into(),
            ..WorkloadStats::default()
        };
        let table = stat_table(&[failing, quiet]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("NAME     MESHED  SUCCESS"), "{table}");
        assert!(
            lines[1].starts_with("backend  1/2     70.00%   1.7  1.2ms  45ms"),
            "{table}"
        );
        assert!(lines[1].ends_with("FAIL"), "{table}");
        assert_eq!(lines[2], "  FAIL  backend: 30.0% failing — 503 x30");
        assert_eq!(
            lines[3],
            "        sample: GET backend/api 503 (backend-7f9c-x2x, inbound, 4s ago)"
        );
        assert!(
            lines[4].starts_with("web      0/?     -") && lines[4].ends_with("NO TRAFFIC"),
            "{table}"
        );
    }

    #[test]
    fn pods_are_counted_per_deployment() {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}},
        }))
        .unwrap();
        let pod = |name: &str, app: &str, proxy: bool| -> Pod {
            let mut containers = vec![serde_json::json!({"name": "app"})];
            if proxy {
                containers.push(serde_json::json!({"name": names::PROXY_CONTAINER}));
            }
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": app}},
                "spec": {"containers": containers},
            }))
            .unwrap()
        };
        let pods = [
            pod("web-1", "web", true),
            pod("web-2", "web", false),
            pod("db-1", "db", true),
        ];
        let counts = count_pods(&[deployment], &pods);
        assert_eq!(
            counts.get("web"),
            Some(&PodCount {
                total: 2,
                meshed: 1
            })
        );
    }
}
