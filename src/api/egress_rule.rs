//! `EgressRule` (namespaced, `skein.dev/v1alpha1`): external hosts that pods may reach while the
//! mesh's `outboundTrafficPolicy` is `RegistryOnly` (the default), where every destination the
//! mesh does not know is otherwise refused (HTTP 502 with an explanation, TCP reset).
//!
//! ```yaml
//! apiVersion: skein.dev/v1alpha1
//! kind: EgressRule
//! metadata: {name: payments-api, namespace: shop}
//! spec:
//!   hosts: [api.payments.example, "*.cdn.example"]
//!   ports: [{port: 443, protocol: tls}, {port: 80, protocol: http}]
//! ```
//!
//! HTTP is matched on the `Host` header, TLS on the ClientHello's SNI, TCP on the destination
//! IP (so a `tcp` host is an IP address).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rule_status::RuleStatus;

#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "skein.dev",
    version = "v1alpha1",
    kind = "EgressRule",
    namespaced,
    shortname = "er",
    category = "skein",
    label("app.kubernetes.io/part-of", "skein"),
    status = "RuleStatus",
    derive = "PartialEq",
    doc = "EgressRule lets pods reach external hosts while the mesh blocks unknown destinations.",
    printcolumn = r#"{"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EgressRuleSpec {
    /// Host names (`api.example.com`), `*.example.com` for any subdomain (not the apex), or IP
    /// addresses.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(inner(
        length(min = 1, max = 253),
        regex(pattern = r"^(\*\.)?[a-z0-9:]([-a-z0-9.:]*[a-z0-9])?$")
    ))]
    pub hosts: Vec<EgressHostName>,
    /// Ports and protocols allowed. Empty: any port, any protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub ports: Vec<EgressPort>,
    /// Namespaces whose pods the rule applies to; `*` means all. Empty: the rule's own
    /// namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub namespaces: Vec<String>,
}

/// A host as written in `hosts`.
pub type EgressHostName = String;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressPort {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// How the host is recognised on this port. Unset: any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<EgressRuleProtocol>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EgressRuleProtocol {
    Http,
    Tls,
    Tcp,
}
