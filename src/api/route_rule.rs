//! `RouteRule` (namespaced, `skein.dev/v1alpha1`): how HTTP and gRPC requests to one Service are
//! routed — ordered matches on path, method, headers and query; a weighted split across subsets
//! of the Service's endpoints selected by pod labels (`version: v2`); timeout; `simpleRetry`;
//! fault injection; mirroring; header edits.
//!
//! ```yaml
//! apiVersion: skein.dev/v1alpha1
//! kind: RouteRule
//! metadata: {name: backend-canary, namespace: demo}
//! spec:
//!   service: backend
//!   http:
//!   - name: canary
//!     match: [{headers: [{name: x-canary, exact: "1"}]}]
//!     route: [{subset: {version: v2}, weight: 100}]
//!   - route: [{subset: {version: v1}, weight: 90}, {subset: {version: v2}, weight: 10}]
//!     simpleRetry: {attempts: 3, perTryTimeout: 500ms, retryOn: [5xx, connect-failure]}
//! ```
//!
//! Shape rules are in the schema (CEL); what it cannot say (weights adding up to 100, regexes
//! that compile) the validating webhook and the control plane check. Requests no route matches
//! go to every endpoint of the Service.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::meshconfig::RetryOn;
use super::rule_status::RuleStatus;

#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "skein.dev",
    version = "v1alpha1",
    kind = "RouteRule",
    namespaced,
    shortname = "rr",
    category = "skein",
    label("app.kubernetes.io/part-of", "skein"),
    status = "RuleStatus",
    derive = "PartialEq",
    doc = "RouteRule routes the HTTP and gRPC requests sent to one Service.",
    printcolumn = r#"{"name": "Service", "type": "string", "jsonPath": ".spec.service"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RouteRuleSpec {
    /// The Service whose requests this rule routes: `name` (in the rule's namespace) or
    /// `name.namespace`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service: String,
    /// Ordered routes: the first whose `match` fits a request takes it.
    #[schemars(length(min = 1, max = 64))]
    pub http: Vec<HttpRoute>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Name shown in logs and `/config`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    pub name: String,
    /// A request matches if any entry matches; no entry matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<HttpMatch>,
    /// Where matching requests go, split by weight (weights add up to 100). Empty: every
    /// endpoint of the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub route: Vec<RouteDestination>,
    /// Overall timeout of a request, retries included. Unset: the mesh default (MeshConfig
    /// `traffic.timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries. Unset: the mesh default (MeshConfig `traffic.retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple_retry: Option<SimpleRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Copies of matching requests sent to a subset; their responses are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderRules>,
}

/// All conditions given must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z]+$"), length(max = 16))]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<KeyMatch>,
    /// Query parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query: Vec<KeyMatch>,
}

/// At most one of `exact`, `prefix`, `regex` (a Rust regex that must match the whole value).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() <= 1", "message": "set at most one of exact, prefix and regex"}]))]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex: Option<String>,
}

/// A header or query parameter by name; with no `exact`, `prefix` or `regex` it only has to be
/// present.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() <= 1", "message": "set at most one of exact, prefix and regex"}]))]
pub struct KeyMatch {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    /// Pod labels an endpoint must carry, e.g. `version: v2`. Empty: every endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Share of the requests, in percent.
    #[schemars(range(min = 0, max = 100))]
    pub weight: u32,
}

/// The seed's simple retry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimpleRetry {
    /// Retries after the first try.
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Which failures are retried. Empty: connect-failure, refused-stream, unavailable,
    /// cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub retry_on: Vec<RetryOn>,
    /// Further HTTP statuses that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(s, s >= 100 && s <= 599)", "message": "status codes are between 100 and 599"}]))]
    pub retriable_status_codes: Vec<u16>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Delays this percentage of requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    pub fixed_delay: Duration,
}

/// Answers this percentage of requests with `httpStatus` without forwarding them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    #[schemars(range(min = 200, max = 599))]
    pub http_status: u16,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Pod labels of the endpoints that get the copies.
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
    /// Share of matching requests copied. Unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRules {
    /// Edits of the request before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderEdits>,
    /// Edits of the response before the client gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderEdits>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderEdits {
    /// Headers replaced or added.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Values appended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub remove: Vec<String>,
}
