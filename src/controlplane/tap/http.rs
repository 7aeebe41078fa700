//! `GET /debug/tap?namespace=NS&resource=deploy/NAME[&to=svc/NAME|deploy/NAME[&to_namespace=NS]][&method=GET][&path=/prefix][&max=N]`
//! on the debug server: the tap's lines as `application/x-ndjson` (see [`super`]), until the
//! client goes away, `max` events were sent, or no tapped proxy is left. 400 for a bad
//! parameter, 404 when the target has no pod.

use std::collections::BTreeSet;
use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::target::{self, Labelling, Resource};
use super::{TapHub, TapLine};
use crate::controlplane::push::PushServer;
use crate::controlplane::state::ClusterState;

/// What a tap needs: the proxies' tap streams, who is connected, and the cluster's pods. Shared
/// by `/debug/tap` and the tap API ([`super::api`]).
#[derive(Clone)]
pub struct Tapper {
    pub hub: TapHub,
    pub push: PushServer,
    pub client: kube::Client,
    pub cluster: ClusterState,
}

pub fn router(tapper: Tapper) -> Router {
    Router::new()
        .route("/debug/tap", get(debug_tap))
        .with_state(tapper)
}

/// The query of `/debug/tap`; the tap API takes the same but for `namespace` and `resource`,
/// which are in its path.
#[derive(Debug, Default, serde::Deserialize)]
pub struct TapQuery {
    pub namespace: Option<String>,
    pub resource: Option<String>,
    pub to: Option<String>,
    pub to_namespace: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub max: Option<u64>,
}

async fn debug_tap(
    State(tapper): State<Tapper>,
    query: Result<Query<TapQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return answer(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    let Some(namespace) = query.namespace.clone().filter(|n| !n.is_empty()) else {
        return answer(StatusCode::BAD_REQUEST, "give the namespace: ?namespace=NS");
    };
    let resource: Resource = match query.resource.as_deref().unwrap_or_default().parse() {
        Ok(resource) => resource,
        Err(message) => return answer(StatusCode::BAD_REQUEST, &message),
    };
    tapper.tap(namespace, resource, &query).await
}

impl Tapper {
    /// Taps `resource`'s pods in `namespace` with the query's filter: the stream of lines the
    /// module doc describes, or an error answer.
    pub async fn tap(&self, namespace: String, resource: Resource, query: &TapQuery) -> Response {
        let filter = match target::filter(
            &namespace,
            (query.to.as_deref(), query.to_namespace.as_deref()),
            query.method.as_deref(),
            query.path.as_deref(),
        ) {
            Ok(filter) => filter,
            Err(message) => return answer(StatusCode::BAD_REQUEST, &message),
        };
        let pods = match Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(err) => {
                return answer(
                    StatusCode::BAD_GATEWAY,
                    &format!("listing the pods of {namespace}: {err}"),
                );
            }
        };
        let chosen = target::selected(&pods, &resource);
        if chosen.is_empty() {
            return answer(
                StatusCode::NOT_FOUND,
                &format!("{resource} has no running pod in namespace {namespace}"),
            );
        }
        let labelling = labelling(self, &namespace).await;
        let connected: BTreeSet<String> = self
            .push
            .proxies()
            .into_iter()
            .map(|p| format!("{}/{}", p.namespace, p.pod))
            .collect();
        let mut untappable = Vec::new();
        let mut tappable = Vec::new();
        for pod in chosen {
            let name = format!("{namespace}/{}", pod.name_any());
            let reason = target::untappable(
                pod,
                &labelling,
                connected.contains(&name),
                self.hub.has_stream(&name),
            );
            match reason {
                Some(reason) => untappable.push(TapLine::Untappable { pod: name, reason }),
                None => tappable.push(name),
            }
        }
        let (session, refused) = self.hub.open(&tappable, &filter);
        untappable.extend(refused);
        let mut first = vec![TapLine::Tapping {
            pods: session.pods().to_vec(),
        }];
        first.extend(untappable);
        let max = query.max.filter(|&m| m > 0);
        let idle = session.pods().is_empty();
        let lines = futures::stream::unfold(
            (first.into_iter(), session, 0u64),
            move |(mut first, mut session, sent)| async move {
                if let Some(line) = first.next() {
                    return Some((line, (first, session, sent)));
                }
                // Nothing to tap: the first lines say why, and the stream ends.
                if idle || max.is_some_and(|m| sent >= m) {
                    return None;
                }
                let line = session.next().await?;
                let sent = sent + u64::from(matches!(line, TapLine::Event(_)));
                Some((line, (first, session, sent)))
            },
        );
        let body = futures::StreamExt::map(lines, |line| {
            let mut json = serde_json::to_vec(&line).unwrap_or_default();
            json.push(b'\n');
            Ok::<_, Infallible>(Bytes::from(json))
        });
        (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(body),
        )
            .into_response()
    }
}

/// The namespace's injection label, whether it has it, and since when.
async fn labelling(state: &Tapper, namespace: &str) -> Labelling {
    let label = state.cluster.inject_config().mesh.injection.namespace_label;
    let found = Api::<Namespace>::all(state.client.clone())
        .get_opt(namespace)
        .await
        .ok()
        .flatten();
    let labelled = found
        .as_ref()
        .is_some_and(|ns| ns.labels().get(&label.key) == Some(&label.value));
    Labelling {
        since: found
            .as_ref()
            .and_then(|ns| crate::cli::check::data_plane::labelled_at(ns, &label.key)),
        label: format!("{}={}", label.key, label.value),
        labelled,
    }
}

fn answer(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}
