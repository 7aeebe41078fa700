//! The `skein-webhook` group: the injection webhook is registered with a CA bundle that
//! verifies its serving certificate, the apiserver can reach it, and it injects.
//!
//! How the apiserver reaches the webhook decides how reachability is tested: a URL (MeshConfig
//! External mode: a control plane on some machine, usually this one) gets a real TLS
//! connection verified with the registered `caBundle` and a `GET /readyz`, as the operator
//! probes it; a Service gets its ready endpoints counted (the apiserver's own network is not
//! this machine's). `injection` then settles it the way the apiserver sees it: a dry-run pod
//! create in a namespace labelled for injection must come back with the proxy.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use time::OffsetDateTime;

use super::result::{Check, CheckResult};
use crate::api::{MeshConfig, names};
use crate::inject::registration::WEBHOOK_CONFIGURATION_NAME;
use crate::operator::desired::WEBHOOK_TLS_SECRET;
use crate::operator::federation::describe;
use crate::pki::CertInfo;

const GROUP: &str = "skein-webhook";
pub const CONFIG: Check = Check {
    id: "webhook-config",
    group: GROUP,
    description: "the injection webhook is registered and its caBundle verifies its certificate",
};
pub const REACHABLE: Check = Check {
    id: "webhook-reachable",
    group: GROUP,
    description: "the apiserver can reach the injection webhook",
};
pub const INJECTION: Check = Check {
    id: "injection",
    group: GROUP,
    description: "a pod created in a labelled namespace gets the proxy",
};

/// Name (prefix, so it cannot collide with a user's pod) and label of the dry-run pod
/// `injection` creates; never stored.
const PROBE_POD: &str = "skein-check-injection";

/// Every certificate of a PEM bundle.
fn certificates(pem: &str) -> Vec<CertInfo> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split_inclusive(END)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .filter_map(|block| CertInfo::parse(block).ok())
        .collect()
}

/// Where the apiserver sends admission requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Url(String),
    Service { namespace: String, name: String },
}

/// Pure: the webhook configuration (`None`: not registered) and the serving certificate the
/// control plane presents (from its Secret), at `now`. Returns the target and bundle to probe.
pub fn config(
    webhook: Option<&MutatingWebhookConfiguration>,
    serving_pem: Option<&str>,
    now: OffsetDateTime,
) -> (CheckResult, Option<(Target, String)>) {
    let reapply = "the operator registers it: check the operator and meshconfig checks";
    let Some(client_config) = webhook
        .and_then(|w| w.webhooks.as_ref())
        .and_then(|hooks| hooks.first())
        .map(|hook| &hook.client_config)
    else {
        return (
            CheckResult::fail(
                CONFIG,
                format!(
                    "MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION_NAME} is not registered: no pod is injected"
                ),
                reapply,
            ),
            None,
        );
    };
    let target = match (&client_config.url, &client_config.service) {
        (Some(url), _) => Target::Url(url.clone()),
        (None, Some(service)) => Target::Service {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        },
        (None, None) => {
            return (
                CheckResult::fail(
                    CONFIG,
                    "the webhook names neither a URL nor a Service",
                    reapply,
                ),
                None,
            );
        }
    };
    let bundle = client_config
        .ca_bundle
        .as_ref()
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    let roots = certificates(&bundle);
    if roots.is_empty() {
        return (
            CheckResult::fail(
                CONFIG,
                "the webhook's caBundle holds no certificate: the apiserver cannot verify it",
                reapply,
            ),
            Some((target, bundle)),
        );
    }
    let location = format!("Secret {}/{WEBHOOK_TLS_SECRET}", names::MESH_NAMESPACE);
    let Some(serving) = serving_pem.and_then(|pem| certificates(pem).into_iter().next()) else {
        return (
            CheckResult::fail(
                CONFIG,
                format!("{location} holds no serving certificate"),
                "the operator writes it: check the operator",
            ),
            Some((target, bundle)),
        );
    };
    let result = if !roots.iter().any(|root| root.subject == serving.issuer) {
        CheckResult::fail(
            CONFIG,
            format!(
                "the caBundle ({}) did not issue the serving certificate in {location} (issuer {}): \
                 the apiserver will refuse the webhook's TLS",
                roots
                    .iter()
                    .map(|r| r.subject.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                serving.issuer
            ),
            "the operator renews both from Secret skein-ca: check that it is running and the CA is valid",
        )
    } else if now >= serving.not_after {
        CheckResult::fail(
            CONFIG,
            format!("the serving certificate in {location} has expired"),
            "the operator renews it: check that it is running",
        )
    } else {
        CheckResult::ok(
            CONFIG,
            match &target {
                Target::Url(url) => format!("at {url}"),
                Target::Service { namespace, name } => format!("at Service {namespace}/{name}"),
            },
        )
    };
    (result, Some((target, bundle)))
}

pub async fn check_config(client: &Client) -> (CheckResult, Option<(Target, String)>) {
    let webhook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(WEBHOOK_CONFIGURATION_NAME)
        .await;
    let secret = Api::<Secret>::namespaced(client.clone(), names::MESH_NAMESPACE)
        .get_opt(WEBHOOK_TLS_SECRET)
        .await;
    match (webhook, secret) {
        (Ok(webhook), Ok(secret)) => {
            let pem = secret
                .as_ref()
                .and_then(|s| s.data.as_ref()?.get("tls.crt"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            config(webhook.as_ref(), pem.as_deref(), OffsetDateTime::now_utc())
        }
        (Err(err), _) | (_, Err(err)) => (
            CheckResult::fail(
                CONFIG,
                format!(
                    "reading the webhook configuration and its Secret: {}",
                    describe(&err)
                ),
                "check that you may get mutatingwebhookconfigurations and secrets in skein-system",
            ),
            None,
        ),
    }
}

/// Pure: ready endpoints behind the webhook's Service.
pub fn service_endpoints(namespace: &str, name: &str, ready: usize) -> CheckResult {
    if ready > 0 {
        CheckResult::ok(
            REACHABLE,
            format!("Service {namespace}/{name}: {ready} ready endpoint(s)"),
        )
    } else {
        CheckResult::fail(
            REACHABLE,
            format!(
                "Service {namespace}/{name} has no ready endpoint: the control plane is not serving"
            ),
            format!(
                "see the control-plane check, and kubectl -n {namespace} describe pods -l app.kubernetes.io/name={name}"
            ),
        )
    }
}

pub async fn check_reachable(client: &Client, target: &Target, bundle: &str) -> CheckResult {
    match target {
        Target::Url(url) => {
            // The same probe the operator runs for an External control plane.
            let status = crate::operator::status::probe_external(url, bundle, "").await;
            if status.ready {
                CheckResult::ok(
                    REACHABLE,
                    format!("{url}: TLS verified with the caBundle, /readyz answered 200"),
                )
            } else {
                CheckResult::fail(
                    REACHABLE,
                    status
                        .message
                        .unwrap_or_else(|| format!("{url} is not ready")),
                    "start the control plane at that address (`skein control-plane --tls-secret \
                     skein-system/skein-webhook-tls`), or fix controlPlane.external.webhookUrl",
                )
            }
        }
        Target::Service { namespace, name } => {
            let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
                .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
                .await;
            match slices {
                Ok(list) => {
                    let ready = list
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter().flatten())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .count();
                    service_endpoints(namespace, name, ready)
                }
                Err(err) => CheckResult::fail(
                    REACHABLE,
                    format!(
                        "listing the endpoints of Service {namespace}/{name}: {}",
                        describe(&err)
                    ),
                    "check that you may list endpointslices",
                ),
            }
        }
    }
}

/// Pure: what came back from the dry-run create in `namespace`.
pub fn injection(namespace: &str, created: Result<&Pod, String>) -> CheckResult {
    match created {
        Ok(pod) => {
            let spec = pod.spec.as_ref();
            let injected = spec.is_some_and(|spec| {
                spec.containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .any(|c| c.name == names::PROXY_CONTAINER)
            });
            if injected {
                CheckResult::ok(
                    INJECTION,
                    format!("dry run in namespace {namespace}: injected"),
                )
            } else {
                CheckResult::fail(
                    INJECTION,
                    format!(
                        "dry run in namespace {namespace}: the pod came back without {}",
                        names::PROXY_CONTAINER
                    ),
                    "the webhook did not act: failurePolicy Ignore hides an unreachable webhook; \
                     see webhook-reachable, and the namespace's exclusion in the MeshConfig",
                )
            }
        }
        Err(error) => CheckResult::fail(
            INJECTION,
            format!("dry run in namespace {namespace}: the apiserver refused the pod: {error}"),
            "pods cannot be created in labelled namespaces until the webhook answers: see webhook-reachable",
        ),
    }
}

/// The namespace to try injection in: `preferred` if it is labelled, else the first labelled.
pub async fn check_injection(
    client: &Client,
    mc: Option<&MeshConfig>,
    preferred: Option<&str>,
) -> CheckResult {
    let label = mc
        .map(|mc| mc.spec.injection.namespace_label.clone())
        .unwrap_or_default();
    let selector = format!("{}={}", label.key, label.value);
    let namespaces = match Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => list.items,
        Err(err) => {
            return CheckResult::fail(
                INJECTION,
                format!("listing namespaces labelled {selector}: {}", describe(&err)),
                "check that you may list namespaces",
            );
        }
    };
    let excluded = mc
        .map(|mc| mc.spec.injection.excluded_namespaces.clone())
        .unwrap_or_default();
    let usable: Vec<String> = namespaces
        .iter()
        .map(|ns| ns.name_any())
        .filter(|name| !excluded.contains(name) && ns_is_live(&namespaces, name))
        .collect();
    let Some(namespace) = preferred
        .filter(|p| usable.iter().any(|u| u == p))
        .map(str::to_owned)
        .or_else(|| usable.first().cloned())
    else {
        return CheckResult::warning(
            INJECTION,
            format!("no namespace is labelled {selector}, so injection could not be tried"),
            format!("label the namespaces to mesh: kubectl label namespace NAME {selector}"),
        );
    };
    let pod: Pod = match serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{PROBE_POD}-"), "labels": {"app.kubernetes.io/name": PROBE_POD}},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    })) {
        Ok(pod) => pod,
        Err(err) => {
            return CheckResult::fail(
                INJECTION,
                format!("building the probe pod: {err}"),
                "report this bug",
            );
        }
    };
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = Api::<Pod>::namespaced(client.clone(), &namespace)
        .create(&params, &pod)
        .await
        .map_err(|err| describe(&err));
    injection(&namespace, created.as_ref().map_err(String::clone))
}

/// A namespace being deleted refuses new pods for that reason alone.
fn ns_is_live(namespaces: &[kube::core::PartialObjectMeta<Namespace>], name: &str) -> bool {
    namespaces
        .iter()
        .find(|ns| ns.name_any() == name)
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::result::Status;
    use crate::pki::Ca;
    use std::time::Duration;

    fn webhook(url: &str, bundle: &str) -> MutatingWebhookConfiguration {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": WEBHOOK_CONFIGURATION_NAME},
            "webhooks": [{"name": "inject.skein.dev", "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {"url": url, "caBundle": k8s_openapi::ByteString(bundle.as_bytes().to_vec())}}],
        }))
        .unwrap()
    }

    #[test]
    fn the_bundle_must_have_issued_the_serving_certificate() {
        let day = Duration::from_secs(24 * 3600);
        let ca = Ca::generate("mesh-ca", 10 * day).unwrap();
        let other = Ca::generate("other-ca", 10 * day).unwrap();
        let serving = ca.issue_serving(&["localhost"], day).unwrap();
        let now = OffsetDateTime::now_utc();
        let url = "https://127.0.0.1:9443/inject";

        let (ok, target) = config(
            Some(&webhook(url, &ca.pem.cert_pem)),
            Some(&serving.cert_pem),
            now,
        );
        assert_eq!(ok.status, Status::Ok, "{}", ok.message);
        assert_eq!(target.unwrap().0, Target::Url(url.to_owned()));

        let (wrong, _) = config(
            Some(&webhook(url, &other.pem.cert_pem)),
            Some(&serving.cert_pem),
            now,
        );
        assert_eq!(wrong.status, Status::Fail);
        assert!(wrong.message.contains("did not issue"), "{}", wrong.message);

        let (late, _) = config(
            Some(&webhook(url, &ca.pem.cert_pem)),
            Some(&serving.cert_pem),
            now + time::Duration::days(2),
        );
        assert!(late.message.contains("expired"), "{}", late.message);

        let (missing, target) = config(None, None, now);
        assert_eq!(missing.status, Status::Fail);
        assert!(target.is_none());
        let (empty, _) = config(Some(&webhook(url, "")), Some(&serving.cert_pem), now);
        assert!(
            empty.message.contains("no certificate"),
            "{}",
            empty.message
        );
    }

    #[test]
    fn a_dry_run_pod_must_come_back_with_the_proxy() {
        let plain: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "app"}]}}))
        .unwrap();
        let injected: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "skein-init"}, {"name": "skein-proxy"}]}}))
        .unwrap();
        assert_eq!(injection("shop", Ok(&injected)).status, Status::Ok);
        assert_eq!(injection("shop", Ok(&plain)).status, Status::Fail);
        let refused = injection(
            "shop",
            Err("failed calling webhook: connection refused".to_owned()),
        );
        assert!(refused.message.contains("connection refused"));
        assert_eq!(
            service_endpoints("skein-system", "skein-control-plane", 0).status,
            Status::Fail
        );
        assert_eq!(
            service_endpoints("skein-system", "skein-control-plane", 2).status,
            Status::Ok
        );
    }
}
