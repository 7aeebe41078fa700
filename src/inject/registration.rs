//! Pure: how the injection webhook is registered with the apiserver. The operator applies this
//! object; tests register it against a local control plane.
//!
//! Two webhooks, because a selector cannot say "namespace labelled OR pod labelled":
//! - `namespace.inject.skein.dev`: pods in namespaces with the injection label, unless the pod
//!   opts out (`skein.dev/inject: "false"` label);
//! - `pod.inject.skein.dev`: pods labelled `skein.dev/inject: "true"` in other namespaces.
//!
//! Both skip the excluded namespaces (the mesh's own above all: a `Fail` webhook that matches
//! the namespace of its own server would block the control plane from ever starting). An opt-in
//! by *annotation* is honoured whenever the webhook is called (and by `skein inject`), but it
//! cannot route a pod to the webhook: selectors see labels only.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use crate::api::meshconfig::{FailurePolicy, InjectionSpec};
use crate::api::names;

/// Name of the MutatingWebhookConfiguration.
pub const WEBHOOK_CONFIGURATION_NAME: &str = "skein-sidecar-injector";
/// Label every namespace carries with its own name (set by the apiserver).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The path of the injection webhook on the control plane's HTTPS server.
pub const INJECT_PATH: &str = "/inject";

/// Where the apiserver reaches the webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookTarget {
    /// An explicit URL (External mode, local development).
    Url(String),
    /// A Service in the cluster (InCluster mode).
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

/// The MutatingWebhookConfiguration for `injection`, trusting `ca_bundle` (PEM).
pub fn webhook_configuration(
    name: &str,
    injection: &InjectionSpec,
    target: &WebhookTarget,
    ca_bundle_pem: &[u8],
) -> MutatingWebhookConfiguration {
    let label = &injection.namespace_label;
    let not_excluded = requirement(
        NAMESPACE_NAME_LABEL,
        "NotIn",
        &injection.excluded_namespaces,
    );
    let namespace_webhook = webhook(
        "namespace.inject.skein.dev",
        injection,
        target,
        ca_bundle_pem,
        vec![
            requirement(&label.key, "In", std::slice::from_ref(&label.value)),
            not_excluded.clone(),
        ],
        requirement(names::INJECT_POD_KEY, "NotIn", &["false".to_owned()]),
    );
    let pod_webhook = webhook(
        "pod.inject.skein.dev",
        injection,
        target,
        ca_bundle_pem,
        // NotIn also matches namespaces without the label at all.
        vec![
            requirement(&label.key, "NotIn", std::slice::from_ref(&label.value)),
            not_excluded,
        ],
        requirement(names::INJECT_POD_KEY, "In", &["true".to_owned()]),
    );
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "skein".to_owned())].into()),
            ..Default::default()
        },
        webhooks: Some(vec![namespace_webhook, pod_webhook]),
    }
}

/// How the apiserver reaches `path` on the control plane. A URL target names the injection
/// webhook (`https://host:port/inject`, MeshConfig External mode); other paths are served on
/// the same host and port.
pub fn client_config(
    target: &WebhookTarget,
    ca_bundle_pem: &[u8],
    path: &str,
) -> WebhookClientConfig {
    match target {
        WebhookTarget::Url(url) => WebhookClientConfig {
            url: Some(with_path(url, path)),
            ca_bundle: Some(ByteString(ca_bundle_pem.to_vec())),
            service: None,
        },
        WebhookTarget::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle: Some(ByteString(ca_bundle_pem.to_vec())),
            service: Some(
                k8s_openapi::api::admissionregistration::v1::ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.to_owned()),
                    port: Some(*port),
                },
            ),
        },
    }
}

/// `url` with its path replaced by `path` (the injection URL is used as given).
fn with_path(url: &str, path: &str) -> String {
    if path == INJECT_PATH {
        return url.to_owned();
    }
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    format!("{}{path}", &url[..authority_end])
}

fn webhook(
    name: &str,
    injection: &InjectionSpec,
    target: &WebhookTarget,
    ca_bundle_pem: &[u8],
    namespace_requirements: Vec<LabelSelectorRequirement>,
    object_requirement: LabelSelectorRequirement,
) -> MutatingWebhook {
    let client_config = client_config(target, ca_bundle_pem, INJECT_PATH);
    MutatingWebhook {
        name: name.to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config,
        failure_policy: Some(
            match injection.failure_policy {
                FailurePolicy::Fail => "Fail",
                FailurePolicy::Ignore => "Ignore",
            }
            .to_owned(),
        ),
        match_policy: Some("Equivalent".to_owned()),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(namespace_requirements),
            match_labels: None,
        }),
        object_selector: Some(LabelSelector {
            match_expressions: Some(vec![object_requirement]),
            match_labels: None,
        }),
        // Never: a second call could not add anything (an injected pod is left as it is), and
        // IfNeeded costs one more round trip per pod, since the apiserver's own plugins edit
        // the containers we add (service-account token mounts) and that triggers reinvocation.
        reinvocation_policy: Some("Never".to_owned()),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_owned()]),
            operations: Some(vec!["CREATE".to_owned()]),
            resources: Some(vec!["pods".to_owned()]),
            scope: Some("Namespaced".to_owned()),
        }]),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(injection.timeout_seconds),
        match_conditions: None,
    }
}

fn requirement(key: &str, operator: &str, values: &[String]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: Some(values.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> MutatingWebhookConfiguration {
        webhook_configuration(
            WEBHOOK_CONFIGURATION_NAME,
            &InjectionSpec::default(),
            &WebhookTarget::Url("https://127.0.0.1:9443/inject".to_owned()),
            b"PEM",
        )
    }

    #[test]
    fn both_webhooks_skip_the_mesh_namespace_and_only_see_pod_creation() {
        for webhook in built().webhooks.unwrap() {
            let ns = webhook
                .namespace_selector
                .unwrap()
                .match_expressions
                .unwrap();
            let excluded = ns.iter().find(|r| r.key == NAMESPACE_NAME_LABEL).unwrap();
            assert_eq!(excluded.operator, "NotIn");
            assert!(
                excluded
                    .values
                    .as_ref()
                    .unwrap()
                    .contains(&names::MESH_NAMESPACE.to_owned())
            );
            let rule = &webhook.rules.unwrap()[0];
            assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_owned()][..]));
            assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
            assert_eq!(webhook.side_effects, "None");
            assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(webhook.timeout_seconds, Some(5));
            assert_eq!(
                webhook.client_config.ca_bundle,
                Some(ByteString(b"PEM".to_vec()))
            );
        }
    }

    #[test]
    fn namespace_webhook_honours_opt_out_and_pod_webhook_opt_in() {
        let webhooks = built().webhooks.unwrap();
        let object = |i: usize| {
            webhooks[i]
                .object_selector
                .clone()
                .unwrap()
                .match_expressions
                .unwrap()[0]
                .clone()
        };
        assert_eq!(
            (object(0).operator.as_str(), object(0).values.unwrap()),
            ("NotIn", vec!["false".to_owned()])
        );
        assert_eq!(
            (object(1).operator.as_str(), object(1).values.unwrap()),
            ("In", vec!["true".to_owned()])
        );
        let ns_label = |i: usize| {
            webhooks[i]
                .namespace_selector
                .clone()
                .unwrap()
                .match_expressions
                .unwrap()[0]
                .clone()
        };
        assert_eq!(
            (ns_label(0).key.as_str(), ns_label(0).operator.as_str()),
            ("injection", "In")
        );
        assert_eq!(
            (ns_label(1).key.as_str(), ns_label(1).operator.as_str()),
            ("injection", "NotIn")
        );
    }
}
