//! The control plane's debug routes, for operators and `skein proxy-status` (plain HTTP, on
//! the debug address, loopback by default):
//!
//! | request | answer |
//! |---|---|
//! | `GET /debug/proxies` | JSON array of the connected proxies ([`ProxyStatus`]), sorted by namespace and pod |
//! | `GET /debug/config?pod=NAMESPACE/NAME` | the configuration (JSON, as the proxy's `--config` would hold it) the control plane computes for that pod now; 404 if it is not connected, 400 if `pod` is missing or not `NAMESPACE/NAME` |
//! | `GET /debug/stats?namespace=NS&window=1m&threshold=95&from=W&to=W` | per-workload and per-edge stats over the window (10s to 5m, default 1m) from this replica's proxies, with each workload's PASS/FAIL verdict against `threshold` percent (default 95) and, for a FAIL row, one recent failing request (`sample`): a [`Report`](super::stats::query::Report) as JSON; 400 for a bad parameter ([`super::stats`]) |
//! | `GET /debug/rules` | JSON array of the traffic rules ([`RuleRow`]) with the conditions the control plane decided for them (what it writes into their `status`), by namespace, kind and name |
//! | `GET /debug/tap?namespace=NS&resource=deploy/NAME&to=svc/NAME&to_namespace=NS&method=M&path=/p&max=N` | live tap: a stream of NDJSON lines ([`super::tap`], served by [`super::tap::http`]) |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::index::Index;
use super::push::{ConfigSource, ProxyIdentity, ProxyStatus, PushServer};
use super::stats::StatsStore;
use super::stats::query::Filter;
use super::stats::window::MAX_WINDOW_SECONDS;
use super::translate::RuleReport;

#[derive(Clone)]
struct DebugState {
    push: PushServer,
    source: Arc<dyn ConfigSource>,
}

pub fn router(push: PushServer, source: Arc<dyn ConfigSource>) -> Router {
    Router::new()
        .route("/debug/proxies", get(proxies))
        .route("/debug/config", get(config))
        .with_state(DebugState { push, source })
}

/// `/debug/stats`, answered from the collector's store.
pub fn stats_router(store: StatsStore) -> Router {
    Router::new()
        .route("/debug/stats", get(stats))
        .with_state(store)
}

/// `/debug/stats` of a control plane that does not collect: says so, rather than showing every
/// workload without traffic.
pub fn stats_off_router() -> Router {
    Router::new().route(
        "/debug/stats",
        get(|| async { (StatusCode::SERVICE_UNAVAILABLE, STATS_OFF).into_response() }),
    )
}

pub const STATS_OFF: &str = "this control plane does not collect the proxies' stats \
    (--stats-interval 0s): start it with an interval (10s by default) for `skein stat`";

/// The longest and shortest windows `/debug/stats` takes.
const MIN_WINDOW: f64 = 10.0;
pub const DEFAULT_WINDOW: &str = "1m";
pub const DEFAULT_THRESHOLD: f64 = 95.0;

#[derive(Debug, serde::Deserialize)]
struct StatsQuery {
    namespace: Option<String>,
    window: Option<String>,
    threshold: Option<f64>,
    from: Option<String>,
    to: Option<String>,
}

async fn stats(
    State(store): State<StatsStore>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_request(&rejection.body_text()),
    };
    let window = match parse_window(query.window.as_deref().unwrap_or(DEFAULT_WINDOW)) {
        Ok(window) => window,
        Err(message) => return bad_request(&message),
    };
    let threshold = query.threshold.unwrap_or(DEFAULT_THRESHOLD);
    if !(0.0..=100.0).contains(&threshold) {
        return bad_request(&format!(
            "threshold {threshold} is not a percentage (0-100)"
        ));
    }
    let filter = Filter {
        namespace: query.namespace.filter(|n| !n.is_empty()),
        from: query.from.filter(|n| !n.is_empty()),
        to: query.to.filter(|n| !n.is_empty()),
    };
    axum::Json(store.report(&filter, window).finish(threshold)).into_response()
}

/// `30s`, `1m`, `5m`: the window in seconds, within what the store keeps.
pub fn parse_window(text: &str) -> Result<f64, String> {
    let duration: crate::api::Duration = text
        .parse()
        .map_err(|_| format!("window {text:?} is not a duration such as 30s or 1m"))?;
    let seconds = duration.as_std().as_secs_f64();
    if !(MIN_WINDOW..=MAX_WINDOW_SECONDS).contains(&seconds) {
        return Err(format!(
            "window {text:?} is outside 10s to 5m (the scrape interval to what is kept)"
        ));
    }
    Ok(seconds)
}

async fn proxies(State(state): State<DebugState>) -> Response {
    axum::Json(sorted(state.push.proxies())).into_response()
}

/// By namespace, pod and stream start: the order `/debug/proxies` and `skein proxy-status` list.
pub(crate) fn sorted(mut proxies: Vec<ProxyStatus>) -> Vec<ProxyStatus> {
    proxies.sort_by(|a, b| {
        (&a.namespace, &a.pod, &a.connected_since).cmp(&(&b.namespace, &b.pod, &b.connected_since))
    });
    proxies
}

#[derive(Debug, serde::Deserialize)]
struct ConfigQuery {
    pod: Option<String>,
}

async fn config(
    State(state): State<DebugState>,
    query: Result<Query<ConfigQuery>, QueryRejection>,
) -> Response {
    let pod = match query {
        Ok(Query(ConfigQuery { pod: Some(pod) })) => pod,
        Ok(_) => return bad_request("give the pod as ?pod=NAMESPACE/NAME"),
        Err(rejection) => return bad_request(&rejection.body_text()),
    };
    let Some((namespace, name)) = pod.split_once('/').filter(|(namespace, name)| {
        !namespace.is_empty() && !name.is_empty() && !name.contains('/')
    }) else {
        return bad_request(&format!("pod {pod:?} is not NAMESPACE/NAME"));
    };
    // The source may answer by IP, which only the connected proxy knows.
    let Some(identity) = connected(&state.push.proxies(), namespace, name) else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{name} is not connected to this control plane\n"),
        )
            .into_response();
    };
    axum::Json(state.source.config_for(&identity)).into_response()
}

/// The identity of a connected proxy of that pod (the most recent stream, if several).
fn connected(proxies: &[ProxyStatus], namespace: &str, name: &str) -> Option<ProxyIdentity> {
    proxies
        .iter()
        .filter(|status| status.namespace == namespace && status.pod == name)
        .max_by(|a, b| a.connected_since.cmp(&b.connected_since))
        .map(|status| ProxyIdentity {
            pod: status.pod.clone(),
            namespace: status.namespace.clone(),
            ip: status.ip,
        })
}

/// `/debug/rules`, answered from the current mesh view.
pub fn rules_router(index: Index) -> Router {
    Router::new()
        .route(
            "/debug/rules",
            get(|State(index): State<Index>| async move {
                axum::Json(rule_rows(index.view().rule_reports()))
            }),
        )
        .with_state(index)
}

/// One traffic rule and what the control plane decided about it.
#[derive(Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRow {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub conditions: Vec<RuleCondition>,
}

#[derive(Debug, PartialEq, serde::Serialize)]
pub struct RuleCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The reports as rows, by namespace, kind and name (transition times are the status
/// writer's business, not the translation's, so they are left out).
pub fn rule_rows(reports: &[RuleReport]) -> Vec<RuleRow> {
    let mut rows: Vec<RuleRow> = reports
        .iter()
        .map(|report| RuleRow {
            kind: report.kind.to_string(),
            namespace: report.namespace.clone(),
            name: report.name.clone(),
            generation: report.generation,
            conditions: report
                .conditions
                .iter()
                .map(|c| RuleCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                })
                .collect(),
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    rows
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(namespace: &str, pod: &str, since: &str) -> ProxyStatus {
        ProxyStatus {
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            ip: "10.0.0.1".parse().ok(),
            connected_since: since.to_owned(),
            sent_version: String::new(),
            acked_version: String::new(),
            last_nack: None,
            resources: 0,
            pushes: 0,
            cert_expires: None,
            cert_expires_in_seconds: None,
        }
    }

    #[test]
    fn rules_are_listed_with_their_conditions() {
        use super::super::translate::RuleKind;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let report = |kind, namespace: &str, name: &str, status: &str| RuleReport {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            generation: Some(2),
            conditions: vec![Condition {
                type_: "Accepted".to_owned(),
                status: status.to_owned(),
                reason: "Conflicted".to_owned(),
                message: "an older rule wins".to_owned(),
                last_transition_time: super::super::translate::TRANSITION_TIME_PLACEHOLDER,
                observed_generation: Some(2),
            }],
        };
        let rows = rule_rows(&[
            report(RuleKind::TrafficPolicy, "demo", "a", "True"),
            report(RuleKind::RouteRule, "demo", "b", "False"),
            report(RuleKind::RouteRule, "alpha", "z", "True"),
        ]);
        let names: Vec<_> = rows
            .iter()
            .map(|r| format!("{}/{}/{}", r.namespace, r.kind, r.name))
            .collect();
        assert_eq!(
            names,
            [
                "alpha/RouteRule/z",
                "demo/RouteRule/b",
                "demo/TrafficPolicy/a"
            ]
        );
        assert_eq!(
            serde_json::to_value(&rows[1]).unwrap(),
            serde_json::json!({
                "kind": "RouteRule", "namespace": "demo", "name": "b", "generation": 2,
                "conditions": [{"type": "Accepted", "status": "False", "reason": "Conflicted",
                                "message": "an older rule wins"}],
            })
        );
    }

    #[test]
    fn windows_are_durations_within_what_is_kept() {
        assert_eq!(parse_window("1m"), Ok(60.0));
        assert_eq!(parse_window("30s"), Ok(30.0));
        assert_eq!(parse_window("5m"), Ok(300.0));
        for bad in ["1s", "6m", "1h", "soon", "", "-1m"] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proxies_are_listed_by_namespace_then_pod() {
        let listed = sorted(vec![
            status("b", "a", "2026-01-01T00:00:00Z"),
            status("a", "z", "2026-01-01T00:00:00Z"),
            status("a", "c", "2026-01-01T00:00:00Z"),
        ]);
        let names: Vec<_> = listed
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.pod))
            .collect();
        assert_eq!(names, ["a/c", "a/z", "b/a"]);
    }

    #[test]
    fn a_pod_is_found_among_the_connected_proxies() {
        let proxies = [
            status("demo", "web", "2026-01-01T00:00:00Z"),
            ProxyStatus {
                ip: "10.0.0.2".parse().ok(),
                ..status("demo", "web", "2026-01-01T00:00:05Z")
            },
        ];
        let found = connected(&proxies, "demo", "web").expect("connected");
        assert_eq!(found.ip, "10.0.0.2".parse().ok(), "the latest stream");
        assert!(connected(&proxies, "demo", "api").is_none());
    }
}
