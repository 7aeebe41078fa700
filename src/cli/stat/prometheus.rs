//! `skein stat --prometheus URL` and `skein edges --prometheus URL`: the same rows as the
//! embedded source, from a Prometheus that scrapes the proxies with the shipped scrape
//! configuration (`config/prometheus/scrape.yaml`: the `namespace` and `pod` labels, job
//! `skein-proxy`).
//!
//! PromQL gives each pod's counter increases over the window (`increase(...[W])`, evaluated at
//! one instant for every query); they are read back into the very [`Snapshot`] and
//! [`ProxyView`] the embedded collector builds from a scrape, and summed by the one
//! [`query::aggregate`], so rows, success rule (5xx, failed gRPC, no response), the inbound vs
//! outbound view per row, percentiles and verdicts are the same code on both paths.
//!
//! What differs, and why: `increase` extrapolates to the window's edges (counts are rounded),
//! and a series born inside the window loses its first scrape's value (Prometheus has no
//! earlier sample to subtract), while the embedded collector counts a new series from zero.
//! Nothing of a row's numbers is missing: `-` shows where the embedded path shows it too (no
//! latency when filtered by `--from`/`--to`, no traffic). A FAIL row has no sample request:
//! those come from the proxies' recent errors, which only the control plane reads, so the
//! `sample:` line is left out (and `sample` from JSON).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::controlplane::stats::parse::Sample;
use crate::controlplane::stats::query::{self, Filter, ProxyView, Report};
use crate::controlplane::stats::window::{
    LATENCY_BUCKETS, LOCAL_RESPONSES, REQUESTS, Snapshot, TCP_CLOSED, TCP_OPENED, Totals,
};
use crate::plain_http;

/// The scrape job of the shipped configuration whose `up` says which proxies are unreachable.
pub const PROXY_JOB: &str = "skein-proxy";
/// The largest answer read from Prometheus for one query.
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// The labels a request series is grouped by: the pod (which proxy) and every label the rows
/// use.
const REQUEST_LABELS: &str = "namespace, pod, direction, source_workload, source_namespace, \
     source_principal, tls, destination_service, destination_workload, destination_namespace, \
     status_code, grpc_status, classification";

/// `--prometheus`: where the PromQL source is.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrometheusArgs {
    /// Compute the numbers with PromQL against this Prometheus (`http://` or `https://`, system
    /// roots) instead of the control plane's embedded stats. It must scrape the proxies as
    /// `config/prometheus/scrape.yaml` does. FAIL rows then have no sample request (only the
    /// control plane reads the proxies' recent errors).
    #[arg(
        long,
        env = "SKEIN_PROMETHEUS_URL",
        value_name = "URL",
        conflicts_with_all = ["url", "cluster"]
    )]
    pub prometheus: Option<String>,
}

/// One instant query of the report, and what its samples are read as.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The metric name the samples stand for in a [`Snapshot`] (`None`: the `up` query).
    pub metric: Option<&'static str>,
    pub promql: String,
}

/// A label matcher's value, quoted as PromQL strings are.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The queries of one report on `namespace` over the last `window_seconds`.
pub fn queries(namespace: &str, window_seconds: f64) -> Vec<Query> {
    let ns = quoted(namespace);
    let range = format!("[{}s]", window_seconds.round());
    // Inbound requests from this namespace's workloads to other namespaces are edges of it too
    // (as in the embedded report); `or` drops the series both sides select.
    let requests = format!(
        "sum by ({REQUEST_LABELS}) (increase({REQUESTS}{{namespace={ns}}}{range}) or \
         increase({REQUESTS}{{direction=\"inbound\",source_namespace={ns}}}{range}))"
    );
    let latency = format!(
        "sum by (namespace, pod, direction, le) \
         (increase({LATENCY_BUCKETS}{{namespace={ns},direction=\"inbound\"}}{range}))"
    );
    let local = format!(
        "sum by (namespace, pod, direction, reason) \
         (increase({LOCAL_RESPONSES}{{namespace={ns}}}{range}))"
    );
    let tcp = |metric: &str| {
        format!(
            "sum by (namespace, pod, direction) ({metric}{{namespace={ns},direction=\"inbound\"}})"
        )
    };
    let down = format!("up{{job={},namespace={ns}}} == 0", quoted(PROXY_JOB));
    vec![
        Query {
            metric: Some(REQUESTS),
            promql: requests,
        },
        Query {
            metric: Some(LATENCY_BUCKETS),
            promql: latency,
        },
        Query {
            metric: Some(LOCAL_RESPONSES),
            promql: local,
        },
        Query {
            metric: Some(TCP_OPENED),
            promql: tcp(TCP_OPENED),
        },
        Query {
            metric: Some(TCP_CLOSED),
            promql: tcp(TCP_CLOSED),
        },
        Query {
            metric: None,
            promql: down,
        },
    ]
}

/// Why an answer of Prometheus' HTTP API was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is not Prometheus API JSON: {0}")]
    NotJson(String),
    #[error("Prometheus refused the query ({kind}): {error}")]
    Refused { kind: String, error: String },
    #[error("the answer is a {0}, not an instant vector")]
    NotVector(String),
    #[error("a sample value {0:?} is not a number")]
    BadValue(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerData {
    result_type: String,
    result: Vec<VectorSample>,
}

#[derive(Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    /// `[unix time, "value"]`.
    value: (f64, String),
}

/// An instant vector of `/api/v1/query`, as samples named `metric`.
pub fn parse_vector(body: &[u8], metric: &str) -> Result<Vec<Sample>, AnswerError> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|err| AnswerError::NotJson(err.to_string()))?;
    if answer.status != "success" {
        return Err(AnswerError::Refused {
            kind: answer.error_type,
            error: answer.error,
        });
    }
    let data = answer
        .data
        .ok_or_else(|| AnswerError::NotJson("no data".to_owned()))?;
    if data.result_type != "vector" {
        return Err(AnswerError::NotVector(data.result_type));
    }
    let mut samples = Vec::with_capacity(data.result.len());
    for sample in data.result {
        let (_, text) = sample.value;
        let value = match text.as_str() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => text
                .parse()
                .map_err(|_| AnswerError::BadValue(text.clone()))?,
        };
        // NaN: no samples to compute from (e.g. an increase over nothing).
        if value.is_nan() {
            continue;
        }
        samples.push(Sample {
            name: metric.to_owned(),
            labels: sample.metric,
            value,
        });
    }
    Ok(samples)
}

/// Each pod's samples read into what the embedded collector would have of it, and summed.
pub fn report(samples: &[Sample], down: &[Sample], filter: &Filter, window_seconds: f64) -> Report {
    let mut by_pod: BTreeMap<(&str, &str), Vec<Sample>> = BTreeMap::new();
    for sample in samples {
        by_pod
            .entry((sample.label("namespace"), sample.label("pod")))
            .or_default()
            .push(sample.clone());
    }
    let views: Vec<ProxyView> = by_pod
        .values()
        .map(|samples| {
            let snapshot = Snapshot::from_samples(samples);
            ProxyView {
                workload: snapshot.workload(),
                tcp_open: snapshot.tcp_open,
                totals: Totals {
                    counters: snapshot.counters,
                    seconds: window_seconds,
                },
                sample: None,
            }
        })
        .collect();
    let mut report = query::aggregate(&views, filter, window_seconds);
    report.unreachable = down
        .iter()
        .map(|s| {
            format!(
                "{}/{}: Prometheus could not scrape it ({})",
                s.label("namespace"),
                s.label("pod"),
                s.label("instance")
            )
        })
        .collect();
    report
}

/// Where `/api/v1/query` is, from `--prometheus`.
pub fn query_url(base: &str) -> anyhow::Result<String> {
    let uri: http::Uri = base
        .parse()
        .with_context(|| format!("--prometheus {base:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(uri.scheme_str(), Some("http" | "https")),
        "--prometheus {base:?}: give an http:// or https:// URL"
    );
    anyhow::ensure!(
        uri.authority().is_some(),
        "--prometheus {base:?} has no host"
    );
    anyhow::ensure!(
        uri.query().is_none(),
        "--prometheus {base:?}: give the server's URL without a query"
    );
    Ok(format!("{}/api/v1/query", base.trim_end_matches('/')))
}

/// `query=...&time=...` of one instant query.
fn query_string(promql: &str, time: f64) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("query", promql)
        .append_pair("time", &format!("{time:.3}"))
        .finish()
}

/// The report (not yet finished) of `namespace` over the window, from the Prometheus at `base`.
pub async fn fetch_report(
    base: &str,
    filter: &Filter,
    namespace: &str,
    window_seconds: f64,
) -> anyhow::Result<Report> {
    let endpoint = query_url(base)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .context("loading the system's root certificates")?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    // One instant for every query, so the pieces of a row agree.
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs_f64();
    let (mut samples, mut down) = (Vec::new(), Vec::new());
    for query in queries(namespace, window_seconds) {
        let url = format!("{endpoint}?{}", query_string(&query.promql, time));
        let uri: http::Uri = url.parse().context("building the query URL")?;
        let response = client
            .get(uri)
            .await
            .map_err(|err| anyhow::anyhow!(describe_connect_error(&err)))
            .with_context(|| format!("no answer from Prometheus at {base}"))?;
        let status = response.status();
        let body = plain_http::read_limited(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .with_context(|| format!("reading Prometheus' answer from {base}"))?;
        let parsed = parse_vector(&body, query.metric.unwrap_or("up"));
        let parsed = match parsed {
            Err(AnswerError::NotJson(_)) if !status.is_success() => Err(anyhow::anyhow!(
                "{base} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
            other => other.with_context(|| format!("{base}: query {}", query.promql)),
        }?;
        match query.metric {
            Some(_) => samples.extend(parsed),
            None => down.extend(parsed),
        }
    }
    Ok(report(&samples, &down, filter, window_seconds))
}

/// A connect error with its causes on one line ("connection refused", a TLS failure).
fn describe_connect_error(err: &hyper_util::client::legacy::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::stats::query::Verdict;

    fn vector(rows: &[(&[(&str, &str)], &str)]) -> Vec<u8> {
        let result: Vec<serde_json::Value> = rows
            .iter()
            .map(|(labels, value)| {
                let metric: BTreeMap<&str, &str> = labels.iter().copied().collect();
                serde_json::json!({"metric": metric, "value": [1.7e9, value]})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": result}
        }))
        .unwrap()
    }

    fn request(
        pod: &str,
        inbound: bool,
        source: &str,
        dest: &str,
        status: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("namespace", "demo".into()),
            ("pod", pod.into()),
            (
                "direction",
                if inbound { "inbound" } else { "outbound" }.into(),
            ),
            ("source_workload", source.into()),
            ("source_namespace", "demo".into()),
            ("destination_workload", dest.into()),
            ("destination_service", dest.into()),
            ("destination_namespace", "demo".into()),
            ("status_code", status.into()),
            ("grpc_status", String::new()),
            (
                "classification",
                if status.starts_with('5') {
                    "failure"
                } else {
                    "success"
                }
                .into(),
            ),
        ]
    }

    fn samples(metric: &str, rows: &[(Vec<(&'static str, String)>, f64)]) -> Vec<Sample> {
        rows.iter()
            .map(|(labels, value)| Sample {
                name: metric.to_owned(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                value: *value,
            })
            .collect()
    }

    fn demo_filter() -> Filter {
        Filter {
            namespace: Some("demo".into()),
            ..Filter::default()
        }
    }

    #[test]
    fn queries_ask_for_the_namespace_over_the_window() {
        let queries = queries("demo", 60.0);
        assert_eq!(queries.len(), 6);
        assert_eq!(
            queries[0].promql,
            "sum by (namespace, pod, direction, source_workload, source_namespace, \
             source_principal, tls, destination_service, destination_workload, \
             destination_namespace, status_code, grpc_status, classification) \
             (increase(skein_proxy_requests_total{namespace=\"demo\"}[60s]) or \
             increase(skein_proxy_requests_total{direction=\"inbound\",source_namespace=\"demo\"}[60s]))"
        );
        assert_eq!(
            queries[1].promql,
            "sum by (namespace, pod, direction, le) (increase(\
             skein_proxy_request_duration_seconds_bucket{namespace=\"demo\",direction=\"inbound\"}[60s]))"
        );
        assert_eq!(
            queries[3].promql,
            "sum by (namespace, pod, direction) \
             (skein_proxy_tcp_connections_opened_total{namespace=\"demo\",direction=\"inbound\"})"
        );
        assert_eq!(
            queries[5].promql,
            "up{job=\"skein-proxy\",namespace=\"demo\"} == 0"
        );
        assert_eq!(queries[5].metric, None);
        // Names are checked before; a quote still could not end the matcher.
        assert!(
            super::queries("a\"b", 30.0)[0]
                .promql
                .contains(r#"{namespace="a\"b"}[30s]"#)
        );
    }

    #[test]
    fn vectors_become_samples() {
        let body = vector(&[
            (&[("pod", "a"), ("le", "+Inf")], "12.5"),
            (&[("pod", "b")], "NaN"),
            (&[("pod", "c")], "+Inf"),
        ]);
        let samples = parse_vector(&body, REQUESTS).unwrap();
        assert_eq!(samples.len(), 2, "NaN is no sample");
        assert_eq!(samples[0].name, REQUESTS);
        assert_eq!(samples[0].label("le"), "+Inf");
        assert_eq!(samples[0].value, 12.5);
        assert!(samples[1].value.is_infinite());
    }

    #[test]
    fn unusable_answers_are_errors_not_panics() {
        let refused = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(
            parse_vector(refused, "m").unwrap_err().to_string(),
            "Prometheus refused the query (bad_data): parse error"
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(
            parse_vector(matrix, "m").unwrap_err(),
            AnswerError::NotVector("matrix".into())
        );
        assert!(matches!(
            parse_vector(b"<html>", "m"),
            Err(AnswerError::NotJson(_))
        ));
        let bad = vector(&[(&[], "many")]);
        assert_eq!(
            parse_vector(&bad, "m").unwrap_err(),
            AnswerError::BadValue("many".into())
        );
    }

    #[test]
    fn increases_make_the_same_rows_as_the_embedded_source() {
        let mut all = samples(
            REQUESTS,
            &[
                (
                    request("backend-1", true, "middleware", "backend", "200"),
                    70.4,
                ),
                (
                    request("backend-1", true, "middleware", "backend", "503"),
                    29.8,
                ),
                (
                    request("middleware-1", true, "frontend", "middleware", "200"),
                    70.0,
                ),
                (
                    request("middleware-1", true, "frontend", "middleware", "502"),
                    30.0,
                ),
                (
                    request("middleware-1", false, "middleware", "backend", "503"),
                    30.0,
                ),
                (
                    request("middleware-1", false, "middleware", "backend", "200"),
                    70.0,
                ),
            ],
        );
        let bucket = |le: &str, value| {
            (
                vec![
                    ("namespace", "demo".to_owned()),
                    ("pod", "backend-1".to_owned()),
                    ("direction", "inbound".to_owned()),
                    ("le", le.to_owned()),
                ],
                value,
            )
        };
        all.extend(samples(
            LATENCY_BUCKETS,
            &[
                bucket("0.01", 90.0),
                bucket("0.1", 100.0),
                bucket("+Inf", 100.0),
            ],
        ));
        let tcp = |value| {
            vec![(
                vec![
                    ("namespace", "demo".to_owned()),
                    ("pod", "backend-1".to_owned()),
                    ("direction", "inbound".to_owned()),
                ],
                value,
            )]
        };
        all.extend(samples(TCP_OPENED, &tcp(5.0)));
        all.extend(samples(TCP_CLOSED, &tcp(3.0)));
        let down = samples(
            "up",
            &[(
                vec![
                    ("namespace", "demo".to_owned()),
                    ("pod", "frontend-1".to_owned()),
                    ("instance", "10.0.0.9:16000".to_owned()),
                ],
                0.0,
            )],
        );
        let report = report(&all, &down, &demo_filter(), 60.0).finish(95.0);
        let names: Vec<_> = report.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["backend", "middleware"]);
        let backend = &report.workloads[0];
        assert_eq!((backend.requests, backend.failures), (100, 30));
        assert_eq!(backend.verdict, Verdict::Fail);
        assert_eq!(backend.top_reasons[0].to_string(), "503 x30");
        assert_eq!(backend.tcp_open, 2);
        assert!((backend.rps - 100.0 / 60.0).abs() < 1e-9);
        assert!(backend.p50_ms.is_some_and(|ms| ms <= 10.0));
        let middleware = &report.workloads[1];
        let shown: Vec<String> = middleware
            .top_reasons
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["502 x30", "calls to demo/backend failing x30"]);
        assert_eq!(report.edges.len(), 2);
        assert_eq!(
            report.unreachable,
            ["demo/frontend-1: Prometheus could not scrape it (10.0.0.9:16000)"]
        );
    }

    #[test]
    fn urls_name_a_prometheus_server() {
        assert_eq!(
            query_url("http://127.0.0.1:9090/").unwrap(),
            "http://127.0.0.1:9090/api/v1/query"
        );
        assert_eq!(
            query_url("https://prom.example/prometheus").unwrap(),
            "https://prom.example/prometheus/api/v1/query"
        );
        for bad in ["127.0.0.1:9090", "ftp://x", "not a url", "http://x/?q=1"] {
            assert!(query_url(bad).is_err(), "{bad}");
        }
        assert_eq!(query_string("up == 0", 1.5), "query=up+%3D%3D+0&time=1.500");
    }
}
