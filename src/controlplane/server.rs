//! The control plane's HTTPS server: `/inject` (the injection webhook), `/validate` (the
//! traffic-rule validating webhook), `/healthz`, `/readyz` and `/metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;

use super::index::Index;
use super::state::ClusterState;
use super::validate;
use crate::inject::webhook::{self, WebhookMetrics};

/// The apiserver caps an object at ~1.5 MiB in etcd, and a CREATE review carries one object:
/// anything much larger is not a real review.
pub const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub cluster: ClusterState,
    pub metrics: WebhookMetrics,
    pub registry: Arc<Registry>,
    /// The discovery index, once its caches are synced (the validator warns about rules for
    /// Services it does not know).
    pub index: Arc<OnceLock<Index>>,
    /// The mesh CA workload certificates are signed with.
    pub ca: Arc<super::identity::CaStore>,
    /// The configuration stream is TLS: injected proxies get the trust bundle to verify it.
    pub xds_tls: bool,
}

/// How long an injection waits for the mesh CA at start-up (read a moment after the webhook
/// starts serving) before injecting a proxy that could not verify the stream.
const CA_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The trust bundle for injected proxies, when the stream is TLS.
async fn stream_trust_bundle(state: &AppState) -> Option<String> {
    if !state.xds_tls {
        return None;
    }
    let mut bundle = state.ca.bundle();
    let loaded = tokio::time::timeout(CA_WAIT, bundle.wait_for(|pem| !pem.is_empty())).await;
    match loaded {
        Ok(Ok(pem)) => Some(pem.clone()),
        _ => {
            tracing::warn!(
                "the mesh CA is not loaded: the injected proxy cannot verify the configuration \
                 stream until its pod is recreated"
            );
            None
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/validate", post(validate_rule))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(state)
}

async fn inject(State(state): State<AppState>, body: Bytes) -> Response {
    let started = Instant::now();
    let request = match webhook::parse_review(&body) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(error = %err, "rejecting a malformed admission request");
            return (StatusCode::BAD_REQUEST, err.to_string()).into_response();
        }
    };
    let labels = match &request.namespace {
        Some(namespace) => match state.cluster.namespace_labels(namespace).await {
            Ok(labels) => Some(labels),
            Err(err) => {
                tracing::warn!(%namespace, error = %err, "namespace labels unavailable; deciding without them");
                None
            }
        },
        None => None,
    };
    let mut cfg = state.cluster.inject_config();
    cfg.xds_trust_bundle_pem = stream_trust_bundle(&state).await;
    let (response, outcome) = webhook::respond(&request, &cfg, labels.as_ref());
    state.metrics.record(&outcome, started.elapsed());
    tracing::debug!(
        uid = %request.uid,
        namespace = request.namespace.as_deref().unwrap_or(""),
        name = %request.name,
        dry_run = request.dry_run,
        ?outcome,
        "admission"
    );
    axum::Json(response.into_review()).into_response()
}

async fn validate_rule(State(state): State<AppState>, body: Bytes) -> Response {
    let request = match webhook::parse_review(&body) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(error = %err, "rejecting a malformed admission request");
            return (StatusCode::BAD_REQUEST, err.to_string()).into_response();
        }
    };
    // Before the index has synced, no Service is reported missing.
    let response = validate::review(&request, |namespace, name| {
        state
            .index
            .get()
            .is_none_or(|index| index.has_service(namespace, name))
    });
    tracing::debug!(
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or(""),
        name = %request.name,
        allowed = response.allowed,
        "rule validation"
    );
    axum::Json(response.into_review()).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    // Every certificate it signed would be refused: not Ready, saying why.
    if let Some(problem) = state.ca.unusable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the mesh CA cannot sign: {problem}"),
        )
            .into_response();
    }
    if state.cluster.is_ready() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the namespace and MeshConfig caches to sync",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    crate::telemetry::metrics_response(&state.registry)
}
