//! `MtlsPolicy` (namespaced, `skein.dev/v1alpha1`): the server-side mutual TLS mode of the pods
//! it selects, overriding MeshConfig `mtls.mode` for a namespace, a workload or single ports.
//!
//! ```yaml
//! apiVersion: skein.dev/v1alpha1
//! kind: MtlsPolicy
//! metadata: {name: db-strict, namespace: demo}
//! spec:
//!   selector: {matchLabels: {app: db}}        # absent or empty: every pod of the namespace
//!   mode: Strict                              # unset: inherited
//!   ports: [{port: 8080, mode: Permissive}]   # container ports
//! ```
//!
//! For port N of pod P the first of these that is set decides: the workload policy's entry for
//! N, the workload policy's `mode`, the namespace policy's entry for N, its `mode`, MeshConfig
//! `mtls.mode`. The workload policy is the oldest policy whose non-empty selector matches P;
//! the namespace policy is the oldest one without a selector.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::access_policy::PodSelector;
use super::meshconfig::MtlsMode;
use super::rule_status::RuleStatus;

#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "skein.dev",
    version = "v1alpha1",
    kind = "MtlsPolicy",
    namespaced,
    shortname = "mp",
    category = "skein",
    label("app.kubernetes.io/part-of", "skein"),
    status = "RuleStatus",
    derive = "PartialEq",
    doc = "MtlsPolicy sets the server-side mutual TLS mode of the pods it selects, per port if need be.",
    printcolumn = r#"{"name": "Mode", "type": "string", "jsonPath": ".spec.mode"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MtlsPolicySpec {
    /// The pods of the policy's namespace it applies to. Unset or empty: all of them (the
    /// namespace's default, which a policy with a selector overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PodSelector>,
    /// The mode of every port of the selected pods. Unset: inherited (from the namespace
    /// policy, else MeshConfig `mtls.mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
    /// Ports (the container port a client reaches) whose mode differs from `mode`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ports: Vec<PortMtls>,
}

/// One port's mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortMtls {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    pub mode: MtlsMode,
}
