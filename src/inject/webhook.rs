//! The admission side of injection: an AdmissionReview body in, an AdmissionReview with a JSON
//! patch (or a denial) out. Pure apart from the metrics it counts; the HTTP server lives in
//! `controlplane::server`.
//!
//! The webhook has no side effects (it is registered with `sideEffects: None`), so `dryRun`
//! requests are answered exactly like real ones.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::InjectConfig;
use super::decide::{Decision, decide};
use super::patch;

const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body could not be read as an AdmissionReview: answered with HTTP 400, since there is no
/// request uid to answer to.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("the body is not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "unsupported AdmissionReview {api_version:?}/{kind:?}: only {ADMISSION_API_VERSION} AdmissionReview is served"
    )]
    Version { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Reads an AdmissionReview body. Objects are kept untyped here so that a review of the wrong
/// kind is answered (allowed, unchanged) instead of failing to parse.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != ADMISSION_API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(BadReview::Version {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    review.try_into().map_err(|_| BadReview::NoRequest)
}

/// What the webhook did with one request, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(&'static str),
    Denied(&'static str),
    /// Not a pod creation (a misregistered webhook): allowed unchanged.
    NotAPod,
}

impl Outcome {
    fn labels(&self) -> DecisionLabels {
        let (outcome, reason) = match self {
            Outcome::Injected => ("injected", ""),
            Outcome::Skipped(reason) => ("skipped", *reason),
            Outcome::Denied(reason) => ("denied", *reason),
            Outcome::NotAPod => ("skipped", "not_a_pod"),
        };
        DecisionLabels {
            outcome: outcome.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Answers one admission request. `namespace_labels` are the labels of the pod's namespace
/// (the caller looks them up; `None` when the namespace is unknown).
pub fn respond(
    request: &AdmissionRequest<DynamicObject>,
    cfg: &InjectConfig,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> (AdmissionResponse, Outcome) {
    let allowed = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let Some(object) = request.object.as_ref().filter(|_| is_pod) else {
        let response = with_warning(
            allowed,
            "skein-sidecar-injector only mutates pods; this object was left unchanged",
        );
        return (response, Outcome::NotAPod);
    };
    let pod = match serde_json::to_value(object).and_then(serde_json::from_value::<Pod>) {
        Ok(pod) => pod,
        Err(err) => {
            return (
                allowed.deny(format!("skein: the object is not a valid Pod: {err}")),
                Outcome::Denied("invalid_pod"),
            );
        }
    };
    // The request's namespace is authoritative: pods being created often have none in metadata.
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let empty = BTreeMap::new();
    match decide(
        &pod,
        &namespace,
        namespace_labels.unwrap_or(&empty),
        &cfg.mesh.injection,
    ) {
        Decision::Skip(reason) => (allowed, Outcome::Skipped(reason.as_str())),
        Decision::Inject(_) => {
            let patch =
                patch::inject(&pod, cfg).and_then(|injected| patch::json_patch(&pod, &injected));
            match patch {
                Ok(patch) if patch.0.is_empty() => (allowed, Outcome::Skipped("already_injected")),
                Ok(patch) => match applies_to(object, &patch) {
                    Err(err) => (
                        allowed.deny(format!("skein: the object is not a valid Pod: {err}")),
                        Outcome::Denied("invalid_pod"),
                    ),
                    Ok(()) => match allowed.clone().with_patch(patch) {
                        Ok(response) => (response, Outcome::Injected),
                        Err(err) => (
                            allowed.deny(format!("skein: could not serialize the patch: {err}")),
                            Outcome::Denied("internal"),
                        ),
                    },
                },
                Err(err) => (
                    allowed.deny(format!("skein: {err}")),
                    Outcome::Denied("invalid_pod"),
                ),
            }
        }
    }
}

/// Whether `patch` applies to the object as the apiserver holds it. The patch is the difference
/// between two typed pods, and a typed pod fills in what the object lacks (a container without
/// a `name` gets `""`): a patch replacing such a field cannot be applied, and the apiserver would
/// fail the request with an opaque error instead of saying what is wrong with the pod.
fn applies_to(object: &DynamicObject, patch: &json_patch::Patch) -> Result<(), String> {
    let mut doc = serde_json::to_value(object).map_err(|err| err.to_string())?;
    json_patch::patch(&mut doc, patch).map_err(|err| err.to_string())
}

fn with_warning(mut response: AdmissionResponse, warning: &str) -> AdmissionResponse {
    response.warnings = Some(vec![warning.to_owned()]);
    response
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    outcome: String,
    reason: String,
}

/// The webhook's Prometheus metrics.
#[derive(Clone)]
pub struct WebhookMetrics {
    decisions: Family<DecisionLabels, Counter>,
    handler_seconds: Histogram,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "skein_injection_decisions",
            "Injection webhook decisions, by outcome (injected, skipped, denied) and reason",
            decisions.clone(),
        );
        // 10 µs .. ~80 ms: the handler is expected to take well under a millisecond.
        let handler_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 14));
        registry.register(
            "skein_injection_handler_duration_seconds",
            "Time the webhook spends on one admission request, excluding the network",
            handler_seconds.clone(),
        );
        Self {
            decisions,
            handler_seconds,
        }
    }

    pub fn record(&self, outcome: &Outcome, elapsed: std::time::Duration) {
        self.decisions.get_or_create(&outcome.labels()).inc();
        self.handler_seconds.observe(elapsed.as_secs_f64());
    }
}
