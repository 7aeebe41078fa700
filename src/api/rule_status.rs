//! The status every traffic rule (RouteRule, EgressRule, TrafficPolicy, AccessPolicy,
//! MtlsPolicy) reports: which generation the control plane last looked at and whether it took
//! it.
//!
//! Conditions:
//! - `Accepted`: `True` when the rule is in the configuration proxies receive; `False` with
//!   reason `Invalid` (the message says what is wrong; proxies keep what they had) or
//!   `Conflicted` (another rule for the same Service takes precedence; the message names it;
//!   for MtlsPolicy: an older policy of the namespace without a selector, or older policies
//!   for every pod it selects), or `NamespacesNotAllowed` (an EgressRule outside
//!   `skein-system` that names only other namespaces). `True` messages say to whom the rule
//!   applies: a RouteRule or TrafficPolicy in the Service's own namespace is a *producer rule*
//!   (all callers), one in another namespace a *consumer rule* (callers in its own namespace
//!   only, before the producer rule). `True` with reason `NamespacesLimited`: an EgressRule
//!   outside `skein-system` naming other namespaces (or `*`) applies to its own namespace only.
//! - `ResolvedRefs`: `False` with reason `ServiceNotFound` when the Service the rule names does
//!   not exist (yet): the rule is accepted and takes effect when the Service appears. An
//!   AccessPolicy or MtlsPolicy reports `False` with reason `NoPodsSelected` when its selector
//!   matches no pod of its namespace (yet), and `True` with the number of pods it applies to.
//! - `FieldsNotActing`: `True` with reason `NotImplemented` when the rule sets a field that
//!   nothing acts on yet (the message names it; see [`super::not_acting`]), else `False`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// Reasons of the `Accepted` condition.
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_INVALID: &str = "Invalid";
pub const REASON_CONFLICTED: &str = "Conflicted";
/// Accepted, but applied to fewer namespaces than the rule names: only rules in the mesh
/// namespace (`skein-system`) may apply to other namespaces.
pub const REASON_NAMESPACES_LIMITED: &str = "NamespacesLimited";
/// Not applied: every namespace the rule names is one its own namespace may not affect.
pub const REASON_NAMESPACES_NOT_ALLOWED: &str = "NamespacesNotAllowed";
/// Reasons of the `ResolvedRefs` condition.
pub const REASON_RESOLVED: &str = "ResolvedRefs";
pub const REASON_SERVICE_NOT_FOUND: &str = "ServiceNotFound";
/// An AccessPolicy's or MtlsPolicy's selector matches no pod (yet).
pub const REASON_NO_PODS_SELECTED: &str = "NoPodsSelected";

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl RuleStatus {
    /// The condition of this type, if reported.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
