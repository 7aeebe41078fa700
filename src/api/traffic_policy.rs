//! `TrafficPolicy` (namespaced, `skein.dev/v1alpha1`): how clients treat one Service — load
//! balancing, connection-pool limits (circuit breaking), outlier detection, opaque ports, and
//! the mTLS mode for the identity work.
//!
//! ```yaml
//! apiVersion: skein.dev/v1alpha1
//! kind: TrafficPolicy
//! metadata: {name: backend, namespace: demo}
//! spec:
//!   service: backend
//!   loadBalancer: RoundRobin
//!   connectionPool: {maxPendingRequests: 100}
//!   outlierDetection: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}
//! ```

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::meshconfig::MtlsMode;
use super::rule_status::RuleStatus;

#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "skein.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    shortname = "tp",
    category = "skein",
    label("app.kubernetes.io/part-of", "skein"),
    status = "RuleStatus",
    derive = "PartialEq",
    doc = "TrafficPolicy sets how clients balance, limit and eject the endpoints of one Service.",
    printcolumn = r#"{"name": "Service", "type": "string", "jsonPath": ".spec.service"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service: `name` (in the policy's namespace) or `name.namespace`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service: String,
    /// Unset: `PeakEwma` (power of two choices over latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerAlgorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Service ports whose traffic is forwarded as bytes, never inspected (server-speaks-first
    /// protocols).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(p, p >= 1 && p <= 65535)", "message": "ports are between 1 and 65535"}]))]
    pub opaque_ports: Vec<u16>,
    /// mTLS towards this Service. Unset: the mesh's (MeshConfig `mtls.mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_mode: Option<MtlsMode>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LoadBalancerAlgorithm {
    PeakEwma,
    RoundRobin,
    LeastRequest,
}

/// Beyond these limits, requests are answered 503 at once with `x-skein-overloaded`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pending_requests: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx responses or connect failures that eject an endpoint. Unset: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// First ejection; doubled for each further ejection. Unset: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Never eject more than this share of the endpoints. Unset: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u8>,
}
