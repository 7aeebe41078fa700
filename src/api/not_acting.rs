//! The fields the schema accepts that nothing acts on yet, in one place, so that status says
//! so instead of a setting silently doing nothing.
//!
//! A field is listed when it is set to anything but its default (for optional fields: when it
//! is set at all). Its default asks for nothing beyond what Skein does today, and the apiserver
//! stores every default, so a MeshConfig that never mentions `mtls` still holds
//! `mtls.mode: Permissive`: flagging defaults would flag every object forever and teach users to
//! ignore the condition. A value someone chose is always named.
//!
//! Reported as the condition [`FIELDS_NOT_ACTING`] by the operator (MeshConfig) and the control
//! plane (RouteRule, EgressRule, TrafficPolicy): `True`, reason [`REASON_NOT_IMPLEMENTED`], the
//! message naming each field and its value; `False`, reason [`REASON_ALL_FIELDS_ACT`],
//! otherwise. When a field starts acting, remove it here; the README's tables mark the same
//! fields "(not yet acting; flagged in status)".

use std::fmt;

use super::access_policy::AccessPolicySpec;
use super::egress_rule::EgressRuleSpec;
use super::meshconfig::MeshConfigSpec;
use super::mtls_policy::MtlsPolicySpec;
use super::route_rule::RouteRuleSpec;
use super::traffic_policy::TrafficPolicySpec;

/// Condition type, on MeshConfig and on every traffic rule.
pub const FIELDS_NOT_ACTING: &str = "FieldsNotActing";
/// Reason when some set field does nothing yet.
pub const REASON_NOT_IMPLEMENTED: &str = "NotImplemented";
/// Reason when every field set acts.
pub const REASON_ALL_FIELDS_ACT: &str = "AllFieldsAct";

/// A field set to a value that changes nothing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InertField {
    /// Path from the object's root, as the apiserver names fields: `spec.mtls.mode`.
    pub path: String,
    /// The value set, as written in YAML.
    pub value: String,
}

impl fmt::Display for InertField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path, self.value)
    }
}

/// A spec whose set-but-inert fields can be listed.
pub trait NotActing {
    /// The fields of this spec set to a value nothing acts on yet, in schema order.
    fn fields_not_acting(&self) -> Vec<InertField>;
}

fn inert(path: impl Into<String>, value: impl fmt::Display) -> InertField {
    InertField {
        path: path.into(),
        value: value.to_string(),
    }
}

impl NotActing for MeshConfigSpec {
    fn fields_not_acting(&self) -> Vec<InertField> {
        let mut fields = Vec::new();
        // Every `mtls` field acts: the mode is each proxy's inbound mode (and whether callers
        // originate mTLS), the trust domain and lifetime shape the certificates issued.
        // Every `tracing` field acts: the injector gives each proxy the endpoints and the
        // sampling percentage; the dashboard builds its links from the UI URLs.
        // Remote clusters are probed, but no traffic crosses clusters yet.
        for (i, cluster) in self.federation.clusters.iter().enumerate() {
            if let Some(network) = &cluster.network {
                fields.push(inert(
                    format!("spec.federation.clusters[{i}].network"),
                    network,
                ));
            }
        }
        fields
    }
}

impl NotActing for TrafficPolicySpec {
    fn fields_not_acting(&self) -> Vec<InertField> {
        // Every field acts: `mtlsMode` decides whether callers originate mTLS.
        Vec::new()
    }
}

impl NotActing for AccessPolicySpec {
    fn fields_not_acting(&self) -> Vec<InertField> {
        // Every field acts: sources match the identity a client proves with mutual TLS.
        Vec::new()
    }
}

impl NotActing for MtlsPolicySpec {
    fn fields_not_acting(&self) -> Vec<InertField> {
        // Every field acts: the selected proxies' inbound mode and their callers' mTLS.
        Vec::new()
    }
}

impl NotActing for RouteRuleSpec {
    fn fields_not_acting(&self) -> Vec<InertField> {
        // Every field becomes part of the proxies' routes.
        Vec::new()
    }
}

impl NotActing for EgressRuleSpec {
    fn fields_not_acting(&self) -> Vec<InertField> {
        // Every field becomes part of the proxies' egress policy.
        Vec::new()
    }
}

/// The [`FIELDS_NOT_ACTING`] condition's status (`true` when some field is inert), reason and
/// message for `fields`.
pub fn condition(fields: &[InertField]) -> (bool, &'static str, String) {
    if fields.is_empty() {
        return (
            false,
            REASON_ALL_FIELDS_ACT,
            "every field set is acted on".to_owned(),
        );
    }
    let list: Vec<String> = fields.iter().map(ToString::to_string).collect();
    let (verb, pronoun) = if fields.len() == 1 {
        ("is", "it")
    } else {
        ("are", "them")
    };
    (
        true,
        REASON_NOT_IMPLEMENTED,
        format!(
            "{} {verb} accepted but not acted on yet: setting {pronoun} changes nothing",
            list.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::meshconfig::{MtlsMode, RemoteCluster, SecretKeyRef};

    fn paths(fields: &[InertField]) -> Vec<&str> {
        fields.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn defaults_are_never_flagged() {
        assert!(MeshConfigSpec::default().fields_not_acting().is_empty());
        let sample: crate::api::MeshConfig =
            crate::yaml::from_str(include_str!("../../config/samples/meshconfig.yaml")).unwrap();
        assert!(sample.spec.fields_not_acting().is_empty());
    }

    #[test]
    fn every_meshconfig_field_not_built_yet_is_named_with_its_value() {
        let mut spec = MeshConfigSpec::default();
        spec.mtls.mode = MtlsMode::Strict;
        spec.federation.clusters = vec![RemoteCluster {
            name: "east".to_owned(),
            kubeconfig_secret_ref: SecretKeyRef {
                namespace: "skein-system".to_owned(),
                name: "east".to_owned(),
                key: "kubeconfig".to_owned(),
            },
            network: Some("net-east".to_owned()),
        }];
        let fields = spec.fields_not_acting();
        assert_eq!(paths(&fields), ["spec.federation.clusters[0].network"]);
        let values: Vec<&str> = fields.iter().map(|f| f.value.as_str()).collect();
        assert_eq!(values, ["net-east"]);
    }

    #[test]
    fn settings_that_act_are_not_flagged() {
        let spec: MeshConfigSpec = serde_json::from_value(serde_json::json!({
            "proxy": {"logLevel": "debug", "drainWindow": "10s"},
            "traffic": {"outboundTrafficPolicy": "AllowAny", "timeout": "3s"},
            "controlPlane": {"replicas": 3},
            "federation": {"clusters": [{"name": "east", "kubeconfigSecretRef": {"namespace": "a", "name": "b"}}]},
            "mtls": {"trustDomain": "example.org", "workloadCertLifetime": "1h"},
            "tracing": {
                "zipkinEndpoint": "http://zipkin:9411/api/v2/spans",
                "otlpEndpoint": "http://jaeger:4318/v1/traces",
                "samplingPercentage": 12.5,
            },
        }))
        .unwrap();
        assert!(spec.fields_not_acting().is_empty());
    }

    #[test]
    fn every_traffic_policy_field_acts() {
        let mut spec: TrafficPolicySpec = serde_json::from_value(serde_json::json!({
            "service": "backend", "loadBalancer": "RoundRobin", "opaquePorts": [5432],
        }))
        .unwrap();
        assert!(spec.fields_not_acting().is_empty());
        spec.mtls_mode = Some(MtlsMode::Disabled);
        assert!(spec.fields_not_acting().is_empty());
    }

    #[test]
    fn the_condition_names_each_field() {
        assert_eq!(
            condition(&[]),
            (
                false,
                REASON_ALL_FIELDS_ACT,
                "every field set is acted on".to_owned()
            )
        );
        let one = [inert("spec.mtls.mode", "Strict")];
        assert_eq!(
            condition(&one).2,
            "spec.mtls.mode (Strict) is accepted but not acted on yet: setting it changes nothing"
        );
        let two = [
            inert("spec.mtls.mode", "Strict"),
            inert("spec.tracing.samplingPercentage", 5),
        ];
        let (status, reason, message) = condition(&two);
        assert!(status);
        assert_eq!(reason, REASON_NOT_IMPLEMENTED);
        assert_eq!(
            message,
            "spec.mtls.mode (Strict), spec.tracing.samplingPercentage (5) are accepted but not acted on yet: setting them changes nothing"
        );
    }
}
