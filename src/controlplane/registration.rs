//! Pure: how the traffic-rule validating webhook is registered (the operator applies it next to
//! the injection webhook, on the same control-plane server).
//!
//! `failurePolicy: Ignore`: with the control plane down, rules can still be applied; the
//! control plane checks every rule again when it comes back and reports an invalid one in its
//! status (`Accepted=False`, reason `Invalid`), and proxies never receive it.

use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::names;
use crate::inject::registration::{WebhookTarget, client_config};

/// Name of the ValidatingWebhookConfiguration.
pub const VALIDATING_WEBHOOK_NAME: &str = "skein-rule-validator";
/// The path of the validating webhook on the control plane's HTTPS server.
pub const VALIDATE_PATH: &str = "/validate";

/// The ValidatingWebhookConfiguration for RouteRule, EgressRule, TrafficPolicy, AccessPolicy
/// and MtlsPolicy.
pub fn validating_webhook_configuration(
    target: &WebhookTarget,
    ca_bundle_pem: &[u8],
    timeout_seconds: i32,
) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(VALIDATING_WEBHOOK_NAME.to_owned()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "skein".to_owned())].into()),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: "rules.validate.skein.dev".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(target, ca_bundle_pem, VALIDATE_PATH),
            failure_policy: Some("Ignore".to_owned()),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(timeout_seconds),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![names::GROUP.to_owned()]),
                api_versions: Some(vec![names::VERSION.to_owned()]),
                operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
                resources: Some(vec![
                    "routerules".to_owned(),
                    "egressrules".to_owned(),
                    "trafficpolicies".to_owned(),
                    "accesspolicies".to_owned(),
                    "mtlspolicies".to_owned(),
                ]),
                scope: Some("Namespaced".to_owned()),
            }]),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_control_plane_is_called_on_the_validate_path_of_its_injection_url() {
        let config = validating_webhook_configuration(
            &WebhookTarget::Url("https://127.0.0.1:9443/inject".to_owned()),
            b"ca",
            5,
        );
        let webhook = &config.webhooks.unwrap()[0];
        assert_eq!(
            webhook.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/validate")
        );
        assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    }

    #[test]
    fn an_in_cluster_control_plane_is_called_through_its_service() {
        let config = validating_webhook_configuration(
            &WebhookTarget::Service {
                namespace: "skein-system".to_owned(),
                name: "skein-control-plane".to_owned(),
                port: 443,
            },
            b"ca",
            5,
        );
        let webhook = &config.webhooks.unwrap()[0];
        let service = webhook.client_config.service.as_ref().unwrap();
        assert_eq!(service.path.as_deref(), Some(VALIDATE_PATH));
        assert_eq!(service.port, Some(443));
    }
}
