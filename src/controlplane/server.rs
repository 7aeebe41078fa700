//! The control plane's HTTPS server: `/inject` (the injection webhook), `/validate` (the
//! traffic-rule validating webhook), `/healthz`, `/readyz` and `/metrics`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::index::Index;
use super::state::ClusterState;
use super::validate;
use crate::inject::webhook::{self, WebhookMetrics};

/// The apiserver caps an object at ~1.5 MiB in etcd, and a review carries at most two (an
/// UPDATE's object and oldObject): anything larger is not a real review (`413`).
pub const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024;
/// Reviews being read or answered at once, over all connections; more are answered `503` at
/// once, so the webhook's `failurePolicy` decides instead of a queue growing. The apiserver's
/// reviews take about a millisecond each.
pub const MAX_CONCURRENT_REVIEWS: usize = 256;
/// Bytes of review bodies held at once, over all requests: many large bodies at once are
/// answered `503` rather than buffered (256 reviews of 3 MiB would be 768 MiB). A body is
/// counted as it arrives (or whole, when it announces its length), so a client trickling a body
/// holds only what it sent.
pub const REVIEW_BYTES_BUDGET: usize = 64 * 1024 * 1024;
/// HTTP/2 streams one connection may have open at once (the apiserver opens another connection
/// when it needs more).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// Largest request header block (HTTP/2 header list; HTTP/1 counts at most 100 headers).
pub const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// How long the webhook server waits for slow clients (`--webhook-read-timeout`,
/// `--webhook-request-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The TLS handshake, then each request's headers (the first request on a connection
    /// included).
    pub read: Duration,
    /// Reading a request's body and answering it.
    pub request: Duration,
}

/// What the webhook routes share to bound the work slow or greedy clients can cause.
pub struct Limits {
    reviews: Arc<Semaphore>,
    body_bytes: Arc<Semaphore>,
    max_body: usize,
    request_timeout: Duration,
}

impl Limits {
    pub fn new(timeouts: Timeouts) -> Self {
        Self::with(
            timeouts.request,
            MAX_CONCURRENT_REVIEWS,
            REVIEW_BYTES_BUDGET,
            MAX_REVIEW_BYTES,
        )
    }

    fn with(
        request_timeout: Duration,
        reviews: usize,
        body_budget: usize,
        max_body: usize,
    ) -> Self {
        Self {
            reviews: Arc::new(Semaphore::new(reviews)),
            body_bytes: Arc::new(Semaphore::new(body_budget)),
            max_body,
            request_timeout,
        }
    }
}

/// Why a review's body was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum BodyError {
    #[error("the request body is larger than {max} bytes, more than any AdmissionReview")]
    TooLarge { max: usize },
    #[error("the webhook is busy: too many large requests at once; try again")]
    Busy,
    #[error("reading the request body: {0}")]
    Read(String),
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a body of at most `limits.max_body` bytes, holding its size in the shared byte
/// budget until the returned permit is dropped.
async fn read_body(
    limits: &Limits,
    body: Body,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), BodyError> {
    let too_large = BodyError::TooLarge {
        max: limits.max_body,
    };
    let acquire = |bytes: usize| {
        let bytes = u32::try_from(bytes).map_err(|_| BodyError::Busy)?;
        limits
            .body_bytes
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| BodyError::Busy)
    };
    let announced = axum::body::HttpBody::size_hint(&body).exact();
    let mut held: Option<OwnedSemaphorePermit> = None;
    // A body that announces its length is refused (or counted) before any of it is read.
    if let Some(length) = announced {
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length > limits.max_body {
            return Err(too_large);
        }
        held = Some(acquire(length)?);
    }
    let mut body = body;
    let mut bytes = Vec::with_capacity(held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| BodyError::Read(err.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > limits.max_body {
            return Err(too_large);
        }
        if announced.is_none() {
            let permit = acquire(data.len())?;
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
        }
        bytes.extend_from_slice(&data);
    }
    Ok((bytes, held))
}

/// Admission routes: at most [`MAX_CONCURRENT_REVIEWS`] at once, else `503` at once.
async fn limit_reviews(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.limits.reviews.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the webhook is busy: too many requests at once; try again",
        )
            .into_response();
    };
    next.run(request).await
}

/// Every route: its body read and answer within the request timeout, else `408`.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            "the request was not received and answered in time",
        )
            .into_response(),
    }
}

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
    pub limits: Arc<Limits>,
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
    // Probes and metrics are not counted with the reviews: a flood of reviews must not make
    // the kubelet restart the control plane.
    Router::new()
        .route("/inject", post(inject))
        .route("/validate", post(validate_rule))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_reviews))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .with_state(state)
}

/// The review's body, or the answer that refuses it.
async fn review_body(
    state: &AppState,
    body: Body,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), Response> {
    read_body(&state.limits, body).await.map_err(|err| {
        tracing::info!(error = %err, "refusing an admission request");
        (err.status(), err.to_string()).into_response()
    })
}

/// An answer that is not an AdmissionReview, so the apiserver applies the webhook's
/// `failurePolicy` (an AdmissionReview with `allowed: false` would deny whatever the policy).
fn unavailable(message: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

async fn inject(State(state): State<AppState>, body: Body) -> Response {
    let started = Instant::now();
    // Deciding without the namespace labels or the MeshConfig would admit pods un-meshed (or
    // meshed with defaults) that should not be: the failurePolicy decides instead.
    if !state.cluster.is_ready() {
        return unavailable(
            "skein: the injector's namespace and MeshConfig caches are not synced yet".to_owned(),
        );
    }
    let (body, _held) = match review_body(&state, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
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
                tracing::warn!(%namespace, error = %err, "namespace labels unavailable; not deciding without them");
                return unavailable(format!(
                    "skein: cannot read the labels of namespace {namespace}: {err}"
                ));
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

async fn validate_rule(State(state): State<AppState>, body: Body) -> Response {
    let (body, _held) = match review_body(&state, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
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
