//! From each proxy's window totals to what `skein stat` and `skein edges` show, pure:
//! per-workload golden signals (the inbound view: what the workload's own proxies answered),
//! per-edge counts and mTLS state, failure reasons, and the per-tier verdict, with one recent
//! failing request under a FAIL row ([`super::sample`]).
//!
//! A [`Report`] keeps the raw sums (counts, histogram buckets) beside the derived values, so
//! reports of several control-plane replicas (each knows only its own proxies) merge exactly
//! ([`Report::merge`]) before [`Report::finish`] derives rates, percentiles and verdicts again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::sample::{self, SampleRequest};
use super::window::{RequestKey, Series, Totals};

/// Reasons shown per failing workload.
pub const TOP_REASONS: usize = 3;

/// One proxy's contribution to a report.
#[derive(Debug, Clone)]
pub struct ProxyView {
    /// The workload the proxy serves (namespace, name), if its series named it yet.
    pub workload: Option<(String, String)>,
    pub totals: Totals,
    pub tcp_open: f64,
    /// Its latest failing request within the window, if the collector read one.
    pub sample: Option<SampleRequest>,
}

/// What to count. `from`/`to` are workload names in the report's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Filter {
    pub namespace: Option<String>,
    /// Only requests from this workload (each row's inbound view, narrowed).
    pub from: Option<String>,
    /// Only requests to this workload (each row's outbound view: what its proxies saw).
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Pass,
    Fail,
    #[default]
    NoTraffic,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NoTraffic => "NO TRAFFIC",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReasonKind {
    /// A failing status the workload's proxies answered with (`503`, `grpc 14`).
    Status,
    /// A response a proxy of the workload made itself: its `x-skein-error` reason.
    Local,
    /// Failing calls from the workload to another one (where its failures may come from).
    Upstream,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    pub kind: ReasonKind,
    pub detail: String,
    pub count: u64,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ReasonKind::Status => write!(f, "{} x{}", self.detail, self.count),
            ReasonKind::Local => write!(f, "x-skein-error {} x{}", self.detail, self.count),
            ReasonKind::Upstream => write!(f, "calls to {} failing x{}", self.detail, self.count),
        }
    }
}

/// A cumulative latency bucket: requests that took at most `le` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// `"+Inf"` in JSON for the last bucket (JSON has no infinity).
    #[serde(with = "bound")]
    pub le: f64,
    pub count: u64,
}

/// A bucket bound as JSON can carry it: a number, or the string `"+Inf"`.
mod bound {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(le: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if le.is_finite() {
            serializer.serialize_f64(*le)
        } else {
            serializer.serialize_str("+Inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        match Bound::deserialize(deserializer)? {
            Bound::Number(le) => Ok(le),
            Bound::Text(text) if text == "+Inf" => Ok(f64::INFINITY),
            Bound::Text(text) => Err(serde::de::Error::custom(format!(
                "bucket bound {text:?} is neither a number nor \"+Inf\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStats {
    pub namespace: String,
    pub name: String,
    /// Proxies of the workload that reported (its meshed pods this control plane knows).
    pub proxies: u32,
    /// Pods of the workload, when the caller counted them (the CLI does, from the apiserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
    pub requests: u64,
    pub failures: u64,
    /// The time the counts cover (at most the window).
    pub seconds: f64,
    /// The inbound latency histogram (cumulative, `le` in seconds); empty when filtered.
    pub latency: Vec<Bucket>,
    pub tcp_open: u64,
    /// Every failure reason counted, most frequent first.
    pub reasons: Vec<Reason>,
    // Derived by `finish`:
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub verdict: Verdict,
    pub top_reasons: Vec<Reason>,
    /// One recent failing request of a FAIL row (the newest its proxies saw); none from
    /// Prometheus, nor when the row is narrowed by `from` or `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleRequest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeStats {
    pub source_namespace: String,
    /// The calling workload; empty when the destination's proxy could not name it.
    pub source: String,
    pub destination_namespace: String,
    pub destination: String,
    /// The identity the client proved (mTLS); empty over plaintext.
    pub source_identity: String,
    /// The destination workload's identity, as it proved it when calling others; empty if it
    /// made no mTLS call in the window (the request metrics do not carry the server's).
    pub destination_identity: String,
    pub requests: u64,
    pub failures: u64,
    /// Of `requests`, those over mutual TLS.
    pub secured_requests: u64,
    pub seconds: f64,
    // Derived by `finish`:
    pub secured: String,
    pub success_rate: Option<f64>,
    pub rps: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub window_seconds: f64,
    /// The success rate (percent) below which a workload FAILs.
    pub threshold: f64,
    pub workloads: Vec<WorkloadStats>,
    pub edges: Vec<EdgeStats>,
    /// Proxies whose last scrape failed, with why: their numbers are missing or old.
    pub unreachable: Vec<String>,
    /// The identity each workload (`namespace/name`) proved as a client, to name edges'
    /// destinations (filled in by `finish`, so that it works across replicas).
    #[serde(default)]
    pub identities: BTreeMap<String, String>,
    /// Who reported calling whom: per destination workload (`namespace/name`), the workloads
    /// whose own proxies' outbound requests reached it. Names the caller of an edge the
    /// destination's proxies could not name (see [`name_callers`]); merged across replicas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub callers: BTreeMap<String, BTreeSet<String>>,
}

fn status_text(key: &RequestKey) -> String {
    match (key.grpc_status.as_str(), key.status_code) {
        ("", 0) => "no response".to_owned(),
        ("", code) => code.to_string(),
        (grpc, _) => format!("grpc {grpc}"),
    }
}

fn add_reason(
    reasons: &mut BTreeMap<(ReasonKind, String), u64>,
    kind: ReasonKind,
    detail: String,
    count: u64,
) {
    *reasons.entry((kind, detail)).or_default() += count;
}

#[derive(Default)]
struct Row {
    stats: WorkloadStats,
    latency: BTreeMap<String, u64>,
    reasons: BTreeMap<(ReasonKind, String), u64>,
}

type EdgeKey = (String, String, String, String, String);

/// Sums the proxies' windows into workloads and edges (not yet [`Report::finish`]ed).
pub fn aggregate(proxies: &[ProxyView], filter: &Filter, window_seconds: f64) -> Report {
    let filtered = filter.from.is_some() || filter.to.is_some();
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut edges: BTreeMap<EdgeKey, EdgeStats> = BTreeMap::new();
    // Identities workloads proved as clients, to name destinations' identities.
    let mut identities: BTreeMap<String, String> = BTreeMap::new();
    let mut callers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for proxy in proxies {
        let Some((namespace, name)) = &proxy.workload else {
            continue;
        };
        let row = rows.entry((namespace.clone(), name.clone())).or_default();
        row.stats.proxies += 1;
        row.stats.seconds = row.stats.seconds.max(proxy.totals.seconds);
        if !filtered {
            row.stats.tcp_open += proxy.tcp_open.max(0.0) as u64;
            // The ring does not say who called: a narrowed row gets no sample.
            row.stats.sample = sample::newest(row.stats.sample.take(), proxy.sample.clone());
        }
        for (series, &value) in &proxy.totals.counters {
            let count = value.round() as u64;
            match series {
                Series::Request(key) if key.inbound => {
                    if !key.source_principal.is_empty() && !key.source_workload.is_empty() {
                        identities.insert(
                            format!("{}/{}", key.source_namespace, key.source_workload),
                            key.source_principal.clone(),
                        );
                    }
                    let edge = edges
                        .entry((
                            key.source_namespace.clone(),
                            key.source_workload.clone(),
                            namespace.clone(),
                            name.clone(),
                            key.source_principal.clone(),
                        ))
                        .or_insert_with(|| EdgeStats {
                            source_namespace: key.source_namespace.clone(),
                            source: key.source_workload.clone(),
                            destination_namespace: namespace.clone(),
                            destination: name.clone(),
                            source_identity: key.source_principal.clone(),
                            ..EdgeStats::default()
                        });
                    edge.requests += count;
                    edge.seconds = edge.seconds.max(proxy.totals.seconds);
                    if key.failure {
                        edge.failures += count;
                    }
                    if key.tls {
                        edge.secured_requests += count;
                    }
                    let from_matches = filter.from.as_ref().is_none_or(|from| {
                        &key.source_workload == from && &key.source_namespace == namespace
                    });
                    if filter.to.is_none() && from_matches {
                        count_request(row, key, count);
                    }
                }
                Series::Request(key) => {
                    if count > 0 && !key.destination_workload.is_empty() {
                        let destination =
                            format!("{}/{}", key.destination_namespace, key.destination_workload);
                        callers
                            .entry(destination)
                            .or_default()
                            .insert(format!("{namespace}/{name}"));
                    }
                    match &filter.to {
                        Some(to)
                            if &key.destination_workload == to
                                && &key.destination_namespace == namespace =>
                        {
                            count_request(row, key, count);
                        }
                        Some(_) => {}
                        None if key.failure && filter.from.is_none() => {
                            let target = if key.destination_workload.is_empty() {
                                format!("svc/{}", key.destination_service)
                            } else {
                                format!(
                                    "{}/{}",
                                    key.destination_namespace, key.destination_workload
                                )
                            };
                            add_reason(&mut row.reasons, ReasonKind::Upstream, target, count);
                        }
                        None => {}
                    }
                }
                Series::Local { inbound, reason } if !filtered => {
                    let side = if *inbound { "inbound" } else { "outbound" };
                    add_reason(
                        &mut row.reasons,
                        ReasonKind::Local,
                        format!("{reason} ({side})"),
                        count,
                    );
                }
                Series::InboundLatency { le } if !filtered => {
                    *row.latency.entry(le.clone()).or_default() += count;
                }
                _ => {}
            }
        }
    }
    let keep = |namespace: &str| filter.namespace.as_deref().is_none_or(|n| n == namespace);
    let workloads = rows
        .into_iter()
        .filter(|((namespace, _), row)| keep(namespace) && (!filtered || row.stats.requests > 0))
        .map(|((namespace, name), row)| {
            let mut latency: Vec<Bucket> = row
                .latency
                .iter()
                .filter_map(|(le, &count)| {
                    Some(Bucket {
                        le: parse_le(le)?,
                        count,
                    })
                })
                .collect();
            latency.sort_by(|a, b| a.le.total_cmp(&b.le));
            WorkloadStats {
                namespace,
                name,
                latency,
                reasons: row
                    .reasons
                    .into_iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|((kind, detail), count)| Reason {
                        kind,
                        detail,
                        count,
                    })
                    .collect(),
                ..row.stats
            }
        })
        .collect();
    let edges = edges
        .into_values()
        .filter(|edge| {
            keep(&edge.destination_namespace)
                || (!edge.source.is_empty() && keep(&edge.source_namespace))
        })
        .filter(|edge| edge.requests > 0)
        .collect();
    Report {
        window_seconds,
        threshold: 0.0,
        workloads,
        edges,
        unreachable: Vec::new(),
        identities,
        callers,
    }
}

fn count_request(row: &mut Row, key: &RequestKey, count: u64) {
    row.stats.requests += count;
    if key.failure {
        row.stats.failures += count;
        add_reason(
            &mut row.reasons,
            ReasonKind::Status,
            status_text(key),
            count,
        );
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

/// The `q` quantile (0–1) of a cumulative histogram, interpolated within its bucket as
/// Prometheus' `histogram_quantile` does; `None` without observations. Past the last finite
/// bound, that bound.
pub fn quantile(buckets: &[Bucket], q: f64) -> Option<f64> {
    let total = buckets.last()?.count;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for bucket in buckets {
        if bucket.count as f64 >= rank && bucket.count > below {
            if bucket.le.is_infinite() {
                return Some(lower);
            }
            let share = (rank - below as f64) / (bucket.count - below) as f64;
            return Some(lower + (bucket.le - lower) * share.clamp(0.0, 1.0));
        }
        if bucket.le.is_finite() {
            lower = bucket.le;
        }
        below = bucket.count;
    }
    Some(lower)
}

/// The edges with each caller named that its destination's proxies could not name although
/// it proved its namespace over mTLS: a meshed client that backs no Service, or one the
/// destination's proxies have not heard of yet (they name callers from the endpoints they
/// know). Its name is the one workload of that namespace whose own proxies reported calling
/// the destination (`callers`) and that did not prove another identity as a client
/// (`identities`); with none or several the edge stays unnamed. Edges that become the same
/// are added up.
pub fn name_callers(
    edges: Vec<EdgeStats>,
    callers: &BTreeMap<String, BTreeSet<String>>,
    identities: &BTreeMap<String, String>,
) -> Vec<EdgeStats> {
    let mut out: Vec<EdgeStats> = Vec::with_capacity(edges.len());
    for mut edge in edges {
        if edge.source.is_empty() && !edge.source_namespace.is_empty() {
            let destination = format!("{}/{}", edge.destination_namespace, edge.destination);
            let prefix = format!("{}/", edge.source_namespace);
            let candidates: Vec<&String> = callers
                .get(&destination)
                .into_iter()
                .flatten()
                .filter(|caller| caller.starts_with(&prefix))
                .filter(|caller| {
                    identities
                        .get(*caller)
                        .is_none_or(|proved| *proved == edge.source_identity)
                })
                .collect();
            if let [only] = candidates.as_slice() {
                only[prefix.len()..].clone_into(&mut edge.source);
            }
        }
        add_edge(&mut out, edge);
    }
    out
}

/// Adds `edge` to `edges`: to the same edge's counts (same ends and client identity) if there.
fn add_edge(edges: &mut Vec<EdgeStats>, edge: EdgeStats) {
    fn key(e: &EdgeStats) -> (&str, &str, &str, &str, &str) {
        (
            &e.source_namespace,
            &e.source,
            &e.destination_namespace,
            &e.destination,
            &e.source_identity,
        )
    }
    let wanted = key(&edge);
    match edges.iter_mut().find(|e| key(e) == wanted) {
        Some(ours) => {
            ours.requests += edge.requests;
            ours.failures += edge.failures;
            ours.secured_requests += edge.secured_requests;
            ours.seconds = ours.seconds.max(edge.seconds);
        }
        None => edges.push(edge),
    }
}

/// PASS when the success rate is at least `threshold` percent; NO TRAFFIC without requests.
pub fn verdict(requests: u64, failures: u64, threshold: f64) -> Verdict {
    if requests == 0 {
        return Verdict::NoTraffic;
    }
    let rate = 100.0 * (requests - failures.min(requests)) as f64 / requests as f64;
    if rate >= threshold {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

fn success_rate(requests: u64, failures: u64) -> Option<f64> {
    (requests > 0).then(|| (requests - failures.min(requests)) as f64 / requests as f64)
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

impl Report {
    /// Adds another replica's report (different proxies): counts add up.
    pub fn merge(&mut self, other: Report) {
        self.window_seconds = self.window_seconds.max(other.window_seconds);
        self.unreachable.extend(other.unreachable);
        self.identities.extend(other.identities);
        for (destination, theirs) in other.callers {
            self.callers.entry(destination).or_default().extend(theirs);
        }
        for theirs in other.workloads {
            match self
                .workloads
                .iter_mut()
                .find(|w| w.namespace == theirs.namespace && w.name == theirs.name)
            {
                None => self.workloads.push(theirs),
                Some(ours) => {
                    ours.proxies += theirs.proxies;
                    ours.requests += theirs.requests;
                    ours.failures += theirs.failures;
                    ours.seconds = ours.seconds.max(theirs.seconds);
                    ours.tcp_open += theirs.tcp_open;
                    ours.sample = sample::newest(ours.sample.take(), theirs.sample);
                    for bucket in theirs.latency {
                        match ours.latency.iter_mut().find(|b| b.le == bucket.le) {
                            Some(b) => b.count += bucket.count,
                            None => ours.latency.push(bucket),
                        }
                    }
                    ours.latency.sort_by(|a, b| a.le.total_cmp(&b.le));
                    for reason in theirs.reasons {
                        match ours
                            .reasons
                            .iter_mut()
                            .find(|r| r.kind == reason.kind && r.detail == reason.detail)
                        {
                            Some(r) => r.count += reason.count,
                            None => ours.reasons.push(reason),
                        }
                    }
                }
            }
        }
        for theirs in other.edges {
            add_edge(&mut self.edges, theirs);
        }
    }

    /// Derives rates, percentiles, verdicts (against `threshold` percent) and top reasons.
    pub fn finish(mut self, threshold: f64) -> Self {
        let edges = std::mem::take(&mut self.edges);
        self.edges = name_callers(edges, &self.callers, &self.identities);
        self.threshold = threshold;
        self.workloads
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for w in &mut self.workloads {
            w.success_rate = success_rate(w.requests, w.failures);
            w.rps = rate(w.requests, w.seconds);
            w.p50_ms = quantile(&w.latency, 0.5).map(|s| s * 1000.0);
            w.p95_ms = quantile(&w.latency, 0.95).map(|s| s * 1000.0);
            w.p99_ms = quantile(&w.latency, 0.99).map(|s| s * 1000.0);
            w.verdict = verdict(w.requests, w.failures, threshold);
            w.reasons
                .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.kind.cmp(&b.kind)));
            w.top_reasons = match w.verdict {
                Verdict::Fail => w.reasons.iter().take(TOP_REASONS).cloned().collect(),
                _ => Vec::new(),
            };
            // A replica whose own share of a merged FAIL row fails keeps its sample: the
            // merged rate is an average of the replicas', so one of them is below it.
            if w.verdict != Verdict::Fail {
                w.sample = None;
            }
        }
        self.edges.sort_by(|a, b| {
            (
                &a.source_namespace,
                &a.source,
                &a.destination_namespace,
                &a.destination,
            )
                .cmp(&(
                    &b.source_namespace,
                    &b.source,
                    &b.destination_namespace,
                    &b.destination,
                ))
        });
        for e in &mut self.edges {
            let destination = format!("{}/{}", e.destination_namespace, e.destination);
            e.destination_identity = self
                .identities
                .get(&destination)
                .cloned()
                .unwrap_or_default();
            e.success_rate = success_rate(e.requests, e.failures);
            e.rps = rate(e.requests, e.seconds);
            e.secured = match e.secured_requests {
                0 => "no",
                n if n >= e.requests => "yes",
                _ => "partly",
            }
            .to_owned();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(inbound: bool, source: &str, destination: &str, status: u16) -> RequestKey {
        RequestKey {
            inbound,
            source_workload: source.into(),
            source_namespace: if source.is_empty() { "" } else { "demo" }.into(),
            source_principal: if inbound && !source.is_empty() {
                format!("spiffe://cluster.local/ns/demo/sa/{source}")
            } else {
                String::new()
            },
            tls: inbound && !source.is_empty(),
            destination_service: destination.into(),
            destination_workload: destination.into(),
            destination_namespace: "demo".into(),
            status_code: status,
            grpc_status: String::new(),
            failure: status >= 500,
        }
    }

    fn proxy(workload: &str, series: &[(Series, f64)]) -> ProxyView {
        ProxyView {
            workload: Some(("demo".into(), workload.into())),
            totals: Totals {
                counters: series.iter().cloned().collect(),
                seconds: 60.0,
            },
            tcp_open: 2.0,
            sample: None,
        }
    }

    fn req(inbound: bool, source: &str, destination: &str, status: u16) -> Series {
        Series::Request(key(inbound, source, destination, status))
    }

    fn demo() -> Vec<ProxyView> {
        vec![
            proxy(
                "backend",
                &[
                    (req(true, "middleware", "backend", 200), 70.0),
                    (req(true, "middleware", "backend", 503), 30.0),
                    (Series::InboundLatency { le: "0.01".into() }, 90.0),
                    (Series::InboundLatency { le: "0.1".into() }, 100.0),
                    (Series::InboundLatency { le: "+Inf".into() }, 100.0),
                ],
            ),
            proxy(
                "middleware",
                &[
                    (req(true, "frontend", "middleware", 200), 70.0),
                    (req(true, "frontend", "middleware", 502), 30.0),
                    (req(false, "middleware", "backend", 503), 30.0),
                    (req(false, "middleware", "backend", 200), 70.0),
                ],
            ),
            proxy(
                "frontend",
                &[
                    (req(true, "", "frontend", 200), 100.0),
                    (
                        Series::Local {
                            inbound: false,
                            reason: "no-endpoints".into(),
                        },
                        4.0,
                    ),
                ],
            ),
            ProxyView {
                workload: Some(("other".into(), "x".into())),
                ..proxy("x", &[(req(true, "", "x", 200), 1.0)])
            },
        ]
    }

    fn filter(from: Option<&str>, to: Option<&str>) -> Filter {
        Filter {
            namespace: Some("demo".into()),
            from: from.map(Into::into),
            to: to.map(Into::into),
        }
    }

    #[test]
    fn each_tier_gets_its_verdict_and_reasons() {
        let report = aggregate(&demo(), &filter(None, None), 60.0).finish(95.0);
        let names: Vec<_> = report.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["backend", "frontend", "middleware"]);
        let backend = &report.workloads[0];
        assert_eq!((backend.requests, backend.failures), (100, 30));
        assert_eq!(backend.success_rate, Some(0.7));
        assert_eq!(backend.verdict, Verdict::Fail);
        assert_eq!(backend.top_reasons[0].to_string(), "503 x30");
        assert!((backend.rps - 100.0 / 60.0).abs() < 1e-9);
        assert_eq!(backend.tcp_open, 2);
        let middleware = &report.workloads[2];
        assert_eq!(middleware.verdict, Verdict::Fail);
        let shown: Vec<String> = middleware
            .top_reasons
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["502 x30", "calls to demo/backend failing x30"]);
        let frontend = &report.workloads[1];
        assert_eq!(frontend.verdict, Verdict::Pass);
        assert!(
            frontend.top_reasons.is_empty(),
            "reasons only for failing tiers"
        );
        assert_eq!(
            frontend.reasons[0].to_string(),
            "x-skein-error no-endpoints (outbound) x4"
        );
    }

    fn sample(pod: &str, status: u16, age_seconds: f64) -> Option<SampleRequest> {
        Some(SampleRequest {
            pod: pod.into(),
            direction: "inbound".into(),
            method: "GET".into(),
            authority: "backend".into(),
            path: "/".into(),
            status,
            age_seconds,
            ..SampleRequest::default()
        })
    }

    #[test]
    fn a_failing_row_shows_its_newest_sample_request() {
        let mut proxies = demo();
        proxies[0].sample = sample("backend-1", 503, 9.0);
        // A second backend pod, with a newer failure.
        proxies.push(ProxyView {
            sample: sample("backend-2", 500, 2.0),
            ..proxy("backend", &[(req(true, "middleware", "backend", 503), 1.0)])
        });
        // A passing tier's failures are not shown.
        proxies[2].sample = sample("frontend-1", 503, 1.0);
        let report = aggregate(&proxies, &filter(None, None), 60.0).finish(95.0);
        let backend = &report.workloads[0];
        assert_eq!(backend.verdict, Verdict::Fail);
        assert_eq!(backend.sample, sample("backend-2", 500, 2.0));
        assert_eq!(report.workloads[1].name, "frontend");
        assert_eq!(report.workloads[1].sample, None);
        assert_eq!(report.workloads[2].sample, None, "the middleware had none");
        // Across replicas, the newest wins.
        let mut merged = aggregate(&proxies[..1], &filter(None, None), 60.0).finish(95.0);
        merged.merge(aggregate(&proxies[4..], &filter(None, None), 60.0).finish(95.0));
        let merged = merged.finish(95.0);
        assert_eq!(merged.workloads[0].sample, sample("backend-2", 500, 2.0));
        let json = serde_json::to_value(&merged.workloads[0]).unwrap();
        assert_eq!(json["sample"]["status"], 500);
        assert_eq!(json["sample"]["ageSeconds"], 2.0);
        // Narrowed rows count some callers only; the ring does not say whose a request was.
        let to = aggregate(&proxies, &filter(None, Some("backend")), 60.0).finish(95.0);
        assert!(to.workloads.iter().all(|w| w.sample.is_none()));
    }

    #[test]
    fn edges_carry_identities_and_mtls_state() {
        let report = aggregate(&demo(), &filter(None, None), 60.0).finish(95.0);
        let edges: Vec<_> = report
            .edges
            .iter()
            .map(|e| {
                (
                    e.source.as_str(),
                    e.destination.as_str(),
                    e.secured.as_str(),
                )
            })
            .collect();
        assert_eq!(
            edges,
            [
                ("", "frontend", "no"),
                ("frontend", "middleware", "yes"),
                ("middleware", "backend", "yes")
            ]
        );
        let to_backend = &report.edges[2];
        assert_eq!(
            to_backend.source_identity,
            "spiffe://cluster.local/ns/demo/sa/middleware"
        );
        // The middleware proved its identity calling the backend; the frontend never did here.
        assert_eq!(
            report.edges[1].destination_identity,
            "spiffe://cluster.local/ns/demo/sa/middleware"
        );
        assert_eq!(report.edges[2].destination_identity, "");
        assert_eq!(to_backend.success_rate, Some(0.7));
    }

    /// An inbound request from a meshed client its callee's proxy could not name: its
    /// namespace and identity proven over mTLS, its workload unknown (it backs no Service).
    fn unnamed(account: &str, destination: &str, status: u16) -> Series {
        Series::Request(RequestKey {
            source_namespace: "demo".into(),
            source_principal: format!("spiffe://cluster.local/ns/demo/sa/{account}"),
            tls: true,
            ..key(true, "", destination, status)
        })
    }

    fn edge_names(report: &Report) -> Vec<(String, String, u64, u64)> {
        report
            .edges
            .iter()
            .map(|e| {
                let source = match (e.source_namespace.as_str(), e.source.as_str()) {
                    ("", "") => "(outside)".to_owned(),
                    (namespace, name) => format!("{namespace}/{name}"),
                };
                (source, e.destination.clone(), e.requests, e.failures)
            })
            .collect()
    }

    /// A meshed load generator without a Service calls the frontend while the backend fails:
    /// its failing calls are its own edge, not the probes' "outside the mesh" one.
    #[test]
    fn a_meshed_caller_the_callee_cannot_name_is_named_from_its_own_proxies() {
        let proxies = [
            proxy(
                "frontend",
                &[
                    (req(true, "", "frontend", 200), 6.0),
                    (unnamed("default", "frontend", 200), 70.0),
                    (unnamed("default", "frontend", 503), 30.0),
                ],
            ),
            proxy(
                "loadgen",
                &[
                    (req(false, "loadgen", "frontend", 200), 70.0),
                    (req(false, "loadgen", "frontend", 503), 30.0),
                ],
            ),
        ];
        let report = aggregate(&proxies, &filter(None, None), 60.0).finish(95.0);
        assert_eq!(
            edge_names(&report),
            [
                ("(outside)".into(), "frontend".into(), 6, 0),
                ("demo/loadgen".into(), "frontend".into(), 100, 30),
            ]
        );
        // Across replicas (the caller's proxy on one, the callee's on the other) too.
        let mut merged = aggregate(&proxies[..1], &filter(None, None), 60.0).finish(95.0);
        merged.merge(aggregate(&proxies[1..], &filter(None, None), 60.0).finish(95.0));
        assert_eq!(edge_names(&merged.finish(95.0)), edge_names(&report));
    }

    #[test]
    fn an_unnamed_caller_joins_its_named_edge_or_stays_unnamed_when_ambiguous() {
        // Named once the callee's proxy learned of it: the earlier requests join its edge.
        let frontend = proxy(
            "frontend",
            &[
                (unnamed("loadgen", "frontend", 503), 3.0),
                (req(true, "loadgen", "frontend", 200), 10.0),
            ],
        );
        let loadgen = proxy("loadgen", &[(req(false, "loadgen", "frontend", 200), 13.0)]);
        let report = aggregate(
            &[frontend.clone(), loadgen.clone()],
            &filter(None, None),
            60.0,
        )
        .finish(95.0);
        assert_eq!(
            edge_names(&report),
            [("demo/loadgen".into(), "frontend".into(), 13, 3)]
        );
        // Another caller, which proved no identity to anyone: either could be it.
        let web = proxy("web", &[(req(false, "web", "frontend", 200), 1.0)]);
        let report = aggregate(
            &[frontend, loadgen.clone(), web.clone()],
            &filter(None, None),
            60.0,
        )
        .finish(95.0);
        assert_eq!(
            edge_names(&report),
            [
                ("demo/".into(), "frontend".into(), 3, 3),
                ("demo/loadgen".into(), "frontend".into(), 10, 0),
            ]
        );
        // Unless the one named elsewhere proved another identity than the unnamed caller.
        let frontend = proxy(
            "frontend",
            &[
                (unnamed("web", "frontend", 503), 3.0),
                (req(true, "loadgen", "frontend", 200), 10.0),
            ],
        );
        let report = aggregate(&[frontend, loadgen, web], &filter(None, None), 60.0).finish(95.0);
        assert_eq!(
            edge_names(&report),
            [
                ("demo/loadgen".into(), "frontend".into(), 10, 0),
                ("demo/web".into(), "frontend".into(), 3, 3),
            ]
        );
    }

    #[test]
    fn from_and_to_narrow_the_rows() {
        let from = aggregate(&demo(), &filter(Some("frontend"), None), 60.0).finish(95.0);
        assert_eq!(from.workloads.len(), 1);
        assert_eq!(from.workloads[0].name, "middleware");
        assert_eq!(
            from.workloads[0].p50_ms, None,
            "latency is not kept per source"
        );
        let to = aggregate(&demo(), &filter(None, Some("backend")), 60.0).finish(95.0);
        assert_eq!(to.workloads.len(), 1);
        assert_eq!(to.workloads[0].name, "middleware");
        assert_eq!(
            (to.workloads[0].requests, to.workloads[0].failures),
            (100, 30)
        );
    }

    #[test]
    fn replicas_merge_exactly() {
        let proxies = demo();
        let whole = aggregate(&proxies, &filter(None, None), 60.0).finish(95.0);
        let mut first = aggregate(&proxies[..1], &filter(None, None), 60.0);
        first.merge(aggregate(&proxies[1..], &filter(None, None), 60.0));
        let mut again = aggregate(&proxies[..1], &filter(None, None), 60.0);
        again.merge(aggregate(&proxies[..1], &filter(None, None), 60.0));
        let first = first.finish(95.0);
        assert_eq!(format!("{first:#?}"), format!("{whole:#?}"));
        let doubled = again.finish(95.0);
        assert_eq!(doubled.workloads[0].requests, 200);
        assert_eq!(doubled.workloads[0].proxies, 2);
        assert_eq!(doubled.workloads[0].p50_ms, whole.workloads[0].p50_ms);
    }

    #[test]
    fn percentiles_interpolate_within_buckets() {
        let buckets = [
            Bucket {
                le: 0.01,
                count: 50,
            },
            Bucket {
                le: 0.1,
                count: 100,
            },
            Bucket {
                le: f64::INFINITY,
                count: 100,
            },
        ];
        assert_eq!(quantile(&buckets, 0.5), Some(0.01));
        assert!((quantile(&buckets, 0.75).unwrap() - 0.055).abs() < 1e-9);
        assert_eq!(quantile(&buckets, 1.0), Some(0.1));
        let slow = [
            Bucket { le: 1.0, count: 1 },
            Bucket {
                le: f64::INFINITY,
                count: 10,
            },
        ];
        assert_eq!(
            quantile(&slow, 0.99),
            Some(1.0),
            "past the last bound: that bound"
        );
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[Bucket { le: 1.0, count: 0 }], 0.5), None);
    }

    #[test]
    fn reports_survive_json() {
        let report = aggregate(&demo(), &filter(None, None), 60.0).finish(95.0);
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains(r#""le":"+Inf""#), "{text}");
        let back: Report = serde_json::from_str(&text).unwrap();
        // Derived again from the raw counts, as the CLI does after merging.
        let again = back.clone().finish(95.0);
        assert_eq!(again.workloads[0].latency, report.workloads[0].latency);
        assert_eq!(again.workloads[0].verdict, Verdict::Fail);
        assert_eq!(again.edges, back.edges);
        assert_eq!(back.workloads.len(), report.workloads.len());
    }

    #[test]
    fn verdicts_against_the_threshold() {
        assert_eq!(verdict(0, 0, 95.0), Verdict::NoTraffic);
        assert_eq!(verdict(100, 5, 95.0), Verdict::Pass);
        assert_eq!(verdict(100, 6, 95.0), Verdict::Fail);
        assert_eq!(verdict(100, 100, 0.0), Verdict::Pass);
        assert_eq!(
            verdict(3, 9, 95.0),
            Verdict::Fail,
            "odd counts never underflow"
        );
    }
}
