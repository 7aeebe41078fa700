//! The control plane's debug routes, for operators and `skein proxy-status` (plain HTTP, on
//! the debug address, loopback by default):
//!
//! | request | answer |
//! |---|---|
//! | `GET /debug/proxies` | JSON array of the connected proxies ([`ProxyStatus`]), sorted by namespace and pod |
//! | `GET /debug/config?pod=NAMESPACE/NAME` | the configuration (JSON, as the proxy's `--config` would hold it) the control plane computes for that pod now; 404 if it is not connected, 400 if `pod` is missing or not `NAMESPACE/NAME` |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::push::{ConfigSource, ProxyIdentity, ProxyStatus, PushServer};

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
