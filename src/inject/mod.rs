//! Sidecar injection.
//!
//! - [`decide`]: pure: should this pod get the proxy, and if not, why not.
//! - [`overrides`]: pure: the pod's override annotations, parsed and validated.
//! - [`patch`]: pure: pod + settings → injected pod, and the JSON patch between them.
//! - [`webhook`]: the admission handler (AdmissionReview in, JSON patch out).
//! - [`manual`]: `skein inject -f`, the same code path on YAML files.
//! - [`registration`]: the MutatingWebhookConfiguration that routes pods to the webhook.

pub mod decide;
pub mod manual;
pub mod overrides;
pub mod patch;
pub mod registration;
pub mod webhook;

use crate::api::MeshConfigSpec;

/// Everything the injector needs besides the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// The active MeshConfig's spec (defaults when there is none).
    pub mesh: MeshConfigSpec,
    /// `host:port` proxies use to reach the control plane.
    pub xds_address: String,
    /// The mesh's trust bundle (PEM) when the control plane serves its stream over TLS: given
    /// to each proxy to verify it (`None`: a plaintext stream).
    pub xds_trust_bundle_pem: Option<String>,
    /// Whether the cluster runs native sidecars (Kubernetes ≥ 1.29).
    pub native_sidecars_supported: bool,
    /// Whether the cluster runs `preStop: {sleep: ...}` hooks (Kubernetes ≥ 1.30), which hold a
    /// terminating app for the drain window.
    pub sleep_hooks_supported: bool,
}

impl InjectConfig {
    /// The proxy image: `spec.image:spec.version` (the operator's version when unset).
    pub fn proxy_image(&self) -> String {
        format!("{}:{}", self.mesh.image, self.mesh.effective_version())
    }
}
