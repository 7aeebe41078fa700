//! `AccessPolicy` (namespaced, `skein.dev/v1alpha1`): who may reach the pods it selects, on which
//! ports, methods and paths. Enforced by each selected pod's proxy on inbound traffic.
//!
//! ```yaml
//! apiVersion: skein.dev/v1alpha1
//! kind: AccessPolicy
//! metadata: {name: allow-frontend, namespace: demo}
//! spec:
//!   selector: {matchLabels: {app: backend}}
//!   action: Allow
//!   rules:
//!   - from: [{serviceAccounts: [frontend]}]
//!     to: [{ports: [8080], methods: [GET], paths: [{prefix: /api/}]}]
//! ```
//!
//! Semantics, as Istio users know them:
//! - `Deny` policies first: a request one of their rules matches is denied.
//! - Then `Allow`: a workload selected by at least one `Allow` policy denies whatever none of
//!   their rules allows; a workload with no `Allow` policy allows everything not denied.
//! - `Audit` is a dry run of an `Allow` policy: the request is decided as if every `Audit`
//!   policy were an `Allow` policy too, and when that would deny it, the request still passes
//!   while the proxy counts (`skein_proxy_authz_audit_would_deny_total`) and logs it, naming
//!   the audit policy. The first `Allow` policy turns a workload to default-deny, so it is the
//!   step worth trying first.
//!
//! A rule matches when one of its `from` entries and one of its `to` entries match (an empty
//! list matches anything). Inbound opaque TCP has no method or path: an `Allow` (or `Audit`)
//! rule that names methods or paths never matches it, and a `Deny` rule ignores its methods and
//! paths for it (denying the whole port), so a protocol the proxy cannot read never slips past a
//! deny.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::rule_status::RuleStatus;

#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "skein.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    namespaced,
    shortname = "ap",
    category = "skein",
    label("app.kubernetes.io/part-of", "skein"),
    status = "RuleStatus",
    derive = "PartialEq",
    doc = "AccessPolicy allows, denies or audits inbound traffic to the pods it selects.",
    printcolumn = r#"{"name": "Action", "type": "string", "jsonPath": ".spec.action"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// The pods of the policy's namespace it applies to. Unset or empty: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PodSelector>,
    pub action: AccessAction,
    /// For `Allow` and `Audit`, none allows nothing; for `Deny`, none denies nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<AccessRule>,
}

/// Pods by label, as a Deployment's selector (`matchLabels` only).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessAction {
    Allow,
    Deny,
    /// A dry run of `Allow`: what it would deny is counted and logged, never denied.
    Audit,
}

/// Matches when one `from` entry and one `to` entry match; an empty list matches anything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub from: Vec<AccessSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub to: Vec<AccessOperation>,
}

/// Who connects: every field set must match. `unauthenticated` stands alone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessSource {
    /// `sa` (in the policy's namespace) or `namespace/sa`: peers with that workload identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub service_accounts: Vec<String>,
    /// Peers with an identity from any of these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    /// Peers without a verified identity (plaintext, outside the mesh).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
}

/// What is asked for: every field set must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessOperation {
    /// The pod's ports (the container port the client reaches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(p, p >= 1 && p <= 65535)", "message": "ports are between 1 and 65535"}]))]
    pub ports: Vec<u16>,
    /// HTTP methods, upper case (`GET`, `POST`, ...). HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub methods: Vec<String>,
    /// Request paths (without the query). HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub paths: Vec<AccessPath>,
}

/// One of `exact` or `prefix`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPath {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}
