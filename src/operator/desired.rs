//! Pure: a MeshConfig (and the certificates the operator holds) → every object that should
//! exist, and the ones that must not. No I/O here, so the whole install is unit-testable.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, HTTPGetAction, Namespace,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::api::ApiResource;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::api::meshconfig::ControlPlaneMode;
use crate::api::{MeshConfig, names};
use crate::controlplane::registration::{
    VALIDATING_WEBHOOK_NAME, validating_webhook_configuration,
};
use crate::controlplane::tap::api::{self as tap_api, DASHBOARD_CLUSTER_ROLE, TAP_CLUSTER_ROLE};
use crate::controlplane::tap::front_proxy;
use crate::inject::registration::{
    WEBHOOK_CONFIGURATION_NAME, WebhookTarget, webhook_configuration,
};

pub const CONTROL_PLANE: &str = "skein-control-plane";
pub const MESH_CONFIG_MAP: &str = "skein-mesh-config";
pub const CA_SECRET: &str = "skein-ca";
/// The intermediate CA the control plane signs workload certificates with (see `certs`).
pub const ISSUER_SECRET: &str = "skein-identity-issuer";
pub const WEBHOOK_TLS_SECRET: &str = "skein-webhook-tls";
/// Every Secret the control plane reads through the API, and the only ones its Role lets it
/// read (by name: it watches each with a `metadata.name` field selector, which is what lets a
/// list or watch pass a `resourceNames` rule). In InCluster mode its webhook serving
/// certificate is mounted by the kubelet, so the control plane's identity never needs it.
pub const CONTROL_PLANE_SECRETS: &[&str] = &[ISSUER_SECRET];
/// Read on top in External mode: `skein control-plane --tls-secret` gets its serving
/// certificate through the API.
pub const EXTERNAL_CONTROL_PLANE_SECRETS: &[&str] = &[WEBHOOK_TLS_SECRET];
/// Port the control plane serves the webhook on, and the Service port in front of it.
pub const WEBHOOK_PORT: i32 = 9443;
pub const WEBHOOK_SERVICE_PORT: i32 = 443;
pub const XDS_PORT: i32 = 9090;
/// Port of the control plane's debug server, on its pod's loopback only: `skein proxy-status`
/// reaches it by port-forwarding through the apiserver.
pub const DEBUG_PORT: u16 = 9091;
/// Name of the control plane's container in its Deployment (its image tag is its version).
pub const CONTROL_PLANE_CONTAINER: &str = "control-plane";
/// Pod-template annotation that changes with the settings, so a change restarts the pods.
pub const SETTINGS_HASH_ANNOTATION: &str = "skein.dev/settings-hash";
/// The RoleBinding (in kube-system) that lets the control plane read the apiserver's front-proxy
/// settings, which the tap API authenticates its callers with.
pub const FRONT_PROXY_READER_BINDING: &str = "skein-control-plane-front-proxy";
/// Label marking everything the operator manages (cluster-scoped objects are found by it).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "skein-operator");

/// One object to server-side apply.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub object: serde_json::Value,
}

/// An object that must not exist (left over from another mode or replica count).
#[derive(Debug, Clone, PartialEq)]
pub struct AbsentObject {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
}

/// Everything the install consists of.
#[derive(Debug, Clone, PartialEq)]
pub struct Install {
    pub objects: Vec<DesiredObject>,
    pub absent: Vec<AbsentObject>,
}

/// What `desired` needs besides the MeshConfig.
pub struct Inputs<'a> {
    /// PEM of the mesh CA certificate (the webhook's caBundle).
    pub ca_cert_pem: &'a str,
    /// A hash of every input that should restart the control plane when it changes.
    pub settings_hash: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("serializing {kind} {name}: {source}")]
    Serialize {
        kind: String,
        name: String,
        source: serde_json::Error,
    },
    #[error("controlPlane.external.webhookUrl {url:?} has no host and port the apiserver can dial")]
    WebhookUrl { url: String },
}

pub fn desired(mc: &MeshConfig, inputs: &Inputs<'_>) -> Result<Install, DesiredError> {
    let spec = &mc.spec;
    let owner = owner_reference(mc);
    let version = spec.effective_version();
    let meta = |name: &str, namespaced: bool, component: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespaced.then(|| names::MESH_NAMESPACE.to_owned()),
        labels: Some(labels(component, version)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };

    let mut objects = Vec::new();
    let mut push = |object: DesiredObjectSource| -> Result<(), DesiredError> {
        objects.push(object.into_desired()?);
        Ok(())
    };

    // The namespace is never owned: deleting the MeshConfig must not take the CA (and the
    // operator, when it runs there) with it.
    push(source(Namespace {
        metadata: ObjectMeta {
            name: Some(names::MESH_NAMESPACE.to_owned()),
            labels: Some(labels("mesh", version)),
            ..Default::default()
        },
        ..Default::default()
    }))?;
    push(source(ServiceAccount {
        metadata: meta(CONTROL_PLANE, true, "control-plane"),
        ..Default::default()
    }))?;
    push(source(ClusterRole {
        metadata: meta(CONTROL_PLANE, false, "control-plane"),
        rules: Some(control_plane_cluster_rules()),
        ..Default::default()
    }))?;
    push(source(ClusterRoleBinding {
        metadata: meta(CONTROL_PLANE, false, "control-plane"),
        role_ref: role_ref("ClusterRole"),
        subjects: Some(vec![control_plane_subject()]),
    }))?;
    push(source(Role {
        metadata: meta(CONTROL_PLANE, true, "control-plane"),
        rules: Some(control_plane_namespace_rules(spec.control_plane.mode)),
    }))?;
    push(source(RoleBinding {
        metadata: meta(CONTROL_PLANE, true, "control-plane"),
        role_ref: role_ref("Role"),
        subjects: Some(vec![control_plane_subject()]),
    }))?;
    // The tap API: who may tap is RBAC on `tap.skein.dev` (bind `skein-tap`); the control plane
    // reads the apiserver's front-proxy CA to know the apiserver's forwarded requests.
    push(source(ClusterRole {
        metadata: meta(TAP_CLUSTER_ROLE, false, "tap"),
        rules: Some(tap_rules()),
        ..Default::default()
    }))?;
    // The dashboard is served by the same API: bind `skein-dashboard` to open it.
    push(source(ClusterRole {
        metadata: meta(DASHBOARD_CLUSTER_ROLE, false, "dashboard"),
        rules: Some(dashboard_rules()),
        ..Default::default()
    }))?;
    push(source(RoleBinding {
        metadata: ObjectMeta {
            namespace: Some(front_proxy::CONFIGMAP_NAMESPACE.to_owned()),
            ..meta(FRONT_PROXY_READER_BINDING, false, "control-plane")
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: front_proxy::READER_ROLE.to_owned(),
        },
        subjects: Some(vec![control_plane_subject()]),
    }))?;
    let settings_yaml = crate::yaml::to_string(spec).unwrap_or_default();
    push(source(ConfigMap {
        metadata: meta(MESH_CONFIG_MAP, true, "mesh-config"),
        data: Some(BTreeMap::from([("mesh.yaml".to_owned(), settings_yaml)])),
        ..Default::default()
    }))?;

    let mut absent = Vec::new();
    let target = match (&spec.control_plane.mode, &spec.control_plane.external) {
        (ControlPlaneMode::External, Some(external)) => {
            absent.push(absent_of::<Deployment>(CONTROL_PLANE));
            absent.push(absent_of::<PodDisruptionBudget>(CONTROL_PLANE));
            // The APIService can only name a Service: an ExternalName one for the control plane
            // outside the cluster (the apiserver dials the name and the APIService's port).
            let host = url_host(&external.webhook_url).ok_or_else(|| DesiredError::WebhookUrl {
                url: external.webhook_url.clone(),
            })?;
            push(source(Service {
                metadata: meta(CONTROL_PLANE, true, "control-plane"),
                spec: Some(ServiceSpec {
                    type_: Some("ExternalName".to_owned()),
                    external_name: Some(host),
                    ..Default::default()
                }),
                ..Default::default()
            }))?;
            WebhookTarget::Url(external.webhook_url.clone())
        }
        _ => {
            push(source(control_plane_deployment(
                mc,
                meta(CONTROL_PLANE, true, "control-plane"),
                inputs,
            )))?;
            push(source(control_plane_service(meta(
                CONTROL_PLANE,
                true,
                "control-plane",
            ))))?;
            if spec.control_plane.replicas > 1 {
                push(source(PodDisruptionBudget {
                    metadata: meta(CONTROL_PLANE, true, "control-plane"),
                    spec: Some(PodDisruptionBudgetSpec {
                        min_available: Some(IntOrString::Int(1)),
                        selector: Some(control_plane_selector()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))?;
            } else {
                absent.push(absent_of::<PodDisruptionBudget>(CONTROL_PLANE));
            }
            WebhookTarget::Service {
                namespace: names::MESH_NAMESPACE.to_owned(),
                name: CONTROL_PLANE.to_owned(),
                port: WEBHOOK_SERVICE_PORT,
            }
        }
    };
    let mut webhook = webhook_configuration(
        WEBHOOK_CONFIGURATION_NAME,
        &spec.injection,
        &target,
        inputs.ca_cert_pem.as_bytes(),
    );
    webhook.metadata = meta(WEBHOOK_CONFIGURATION_NAME, false, "injector");
    push(source(webhook))?;
    let mut validator = validating_webhook_configuration(
        &target,
        inputs.ca_cert_pem.as_bytes(),
        spec.injection.timeout_seconds,
    );
    validator.metadata = meta(VALIDATING_WEBHOOK_NAME, false, "rule-validator");
    push(source(validator))?;
    let mut api_service = tap_api_service(&target, inputs.ca_cert_pem.as_bytes())?;
    api_service.metadata = meta(tap_api::API_SERVICE, false, "tap");
    push(source(api_service))?;

    Ok(Install { objects, absent })
}

/// The DNS names the webhook serving certificate must cover.
pub fn webhook_cert_names(mc: &MeshConfig) -> Vec<String> {
    match (&mc.spec.control_plane.mode, &mc.spec.control_plane.external) {
        // The apiserver checks the tap API's certificate for the Service's name.
        (ControlPlaneMode::External, Some(external)) => url_host(&external.webhook_url)
            .into_iter()
            .chain([format!("{CONTROL_PLANE}.{}.svc", names::MESH_NAMESPACE)])
            .collect(),
        _ => {
            let service = format!("{CONTROL_PLANE}.{}.svc", names::MESH_NAMESPACE);
            vec![format!("{service}.cluster.local"), service]
        }
    }
}

/// The tap API's registration: the apiserver forwards `tap.skein.dev` to the control plane's
/// webhook port (through the Service, or the ExternalName one in External mode) and checks its
/// certificate against the mesh CA.
fn tap_api_service(target: &WebhookTarget, ca_pem: &[u8]) -> Result<APIService, DesiredError> {
    let port = match target {
        WebhookTarget::Service { port, .. } => *port,
        WebhookTarget::Url(url) => {
            url_port(url).ok_or_else(|| DesiredError::WebhookUrl { url: url.clone() })?
        }
    };
    Ok(APIService {
        spec: Some(APIServiceSpec {
            group: Some(tap_api::GROUP.to_owned()),
            version: Some(tap_api::VERSION.to_owned()),
            service: Some(ServiceReference {
                namespace: Some(names::MESH_NAMESPACE.to_owned()),
                name: Some(CONTROL_PLANE.to_owned()),
                port: Some(port),
            }),
            ca_bundle: Some(k8s_openapi::ByteString(ca_pem.to_vec())),
            // Low: never preferred over a built-in group for a short name.
            group_priority_minimum: 1000,
            version_priority: 100,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// What the `skein-tap` ClusterRole grants: tapping deployments, pods and whole namespaces.
pub fn tap_rules() -> Vec<PolicyRule> {
    vec![rule(
        tap_api::GROUP,
        &["deployments/tap", "pods/tap", "tap"],
        &[tap_api::VERB],
    )]
}

/// What the `skein-dashboard` ClusterRole grants: the page (`list`) and what it loads (`get`).
/// Its tap view taps as the viewer, so it also takes `skein-tap` in the namespace tapped.
pub fn dashboard_rules() -> Vec<PolicyRule> {
    vec![rule(
        tap_api::GROUP,
        &[tap_api::DASHBOARD_RESOURCE],
        &["get", "list"],
    )]
}

/// `https://host:port/path` → `port` (443 when the URL has none).
fn url_port(url: &str) -> Option<i32> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.1,
        None => authority.rsplit_once(':').map_or("", |(_, port)| port),
    };
    match after_host.trim_start_matches(':') {
        "" => Some(443),
        port => port.parse().ok(),
    }
}

/// `https://host:port/path` → `host` (brackets of IPv6 literals removed).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

pub fn labels(component: &str, version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            format!("skein-{component}"),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "skein".to_owned()),
        ("app.kubernetes.io/version".to_owned(), version.to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ])
}

pub fn owner_reference(mc: &MeshConfig) -> OwnerReference {
    OwnerReference {
        api_version: MeshConfig::api_version(&()).into_owned(),
        kind: MeshConfig::kind(&()).into_owned(),
        name: mc.name_any(),
        uid: mc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Selects the control plane's pods (Deployment, Service, `skein proxy-status`, `skein version`).
pub fn control_plane_selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            "skein-control-plane".to_owned(),
        )])),
        ..Default::default()
    }
}

fn control_plane_deployment(
    mc: &MeshConfig,
    metadata: ObjectMeta,
    inputs: &Inputs<'_>,
) -> Deployment {
    let spec = &mc.spec;
    let image = format!("{}:{}", spec.image, spec.effective_version());
    let tls_dir = "/etc/skein/tls";
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("webhook".to_owned()),
            scheme: Some("HTTPS".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.to_owned());
    let container = Container {
        name: CONTROL_PLANE_CONTAINER.to_owned(),
        image: Some(image),
        args: Some(vec![
            "control-plane".to_owned(),
            format!("--webhook-addr=0.0.0.0:{WEBHOOK_PORT}"),
            format!("--tls-cert={tls_dir}/tls.crt"),
            format!("--tls-key={tls_dir}/tls.key"),
            format!(
                "--xds-address={CONTROL_PLANE}.{}.svc:{XDS_PORT}",
                names::MESH_NAMESPACE
            ),
            // Injected proxies get the trust bundle to verify it.
            "--xds-tls".to_owned(),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("webhook".to_owned()),
                container_port: WEBHOOK_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("xds".to_owned()),
                container_port: XDS_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("50m")),
                ("memory".to_owned(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("512Mi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tls".to_owned(),
            mount_path: tls_dir.to_owned(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut pod_labels = labels("control-plane", spec.effective_version());
    pod_labels.remove(MANAGED_BY.0);
    Deployment {
        metadata,
        spec: DeploymentSpec {
            replicas: Some(spec.control_plane.replicas),
            selector: control_plane_selector(),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        SETTINGS_HASH_ANNOTATION.to_owned(),
                        inputs.settings_hash.to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROL_PLANE.to_owned()),
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "tls".to_owned(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(WEBHOOK_TLS_SECRET.to_owned()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn control_plane_service(metadata: ObjectMeta) -> Service {
    let port = |name: &str, port: i32, target: &str| ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(target.to_owned())),
        ..Default::default()
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            selector: control_plane_selector().match_labels,
            ports: Some(vec![
                port("webhook", WEBHOOK_SERVICE_PORT, "webhook"),
                port("xds", XDS_PORT, "xds"),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the control plane may do in the mesh namespace: read the Secrets it needs, by name, and
/// keep its CA ledger.
pub fn control_plane_namespace_rules(mode: ControlPlaneMode) -> Vec<PolicyRule> {
    let ledger = crate::controlplane::identity::trust::LEDGER_CONFIGMAP;
    let mut secrets = CONTROL_PLANE_SECRETS.to_vec();
    if mode == ControlPlaneMode::External {
        secrets.extend_from_slice(EXTERNAL_CONTROL_PLANE_SECRETS);
    }
    vec![
        named(rule("", &["secrets"], &["get", "list", "watch"]), &secrets),
        // The CA ledger: which CAs signed certificates still valid. A create cannot be limited
        // by name (the name is in the body), so only reading and updating are.
        rule("", &["configmaps"], &["create"]),
        named(rule("", &["configmaps"], &["get", "update"]), &[ledger]),
    ]
}

/// What the control plane reads: the mesh's workloads and Skein's own resources.
fn control_plane_cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "",
            &["pods", "services", "namespaces"],
            &["get", "list", "watch"],
        ),
        rule(
            "discovery.k8s.io",
            &["endpointslices"],
            &["get", "list", "watch"],
        ),
        rule(
            names::GROUP,
            &[
                "meshconfigs",
                "routerules",
                "egressrules",
                "trafficpolicies",
                "accesspolicies",
                "mtlspolicies",
            ],
            &["get", "list", "watch"],
        ),
        // Each rule's status says whether proxies got it.
        rule(
            names::GROUP,
            &[
                "routerules/status",
                "egressrules/status",
                "trafficpolicies/status",
                "accesspolicies/status",
                "mtlspolicies/status",
            ],
            &["get", "patch", "update"],
        ),
        // Workload identity: proxies prove who they are with a projected token.
        rule("authentication.k8s.io", &["tokenreviews"], &["create"]),
        // The tap API checks each tapper's permission.
        rule(
            "authorization.k8s.io",
            &["subjectaccessreviews"],
            &["create"],
        ),
        rule("", &["events"], &["create", "patch"]),
    ]
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

fn named(rule: PolicyRule, names: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
        ..rule
    }
}

fn role_ref(kind: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".to_owned()),
        kind: kind.to_owned(),
        name: CONTROL_PLANE.to_owned(),
    }
}

fn control_plane_subject() -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: CONTROL_PLANE.to_owned(),
        namespace: Some(names::MESH_NAMESPACE.to_owned()),
        ..Default::default()
    }
}

/// A typed object on its way to becoming a [`DesiredObject`].
struct DesiredObjectSource {
    resource: ApiResource,
    namespace: Option<String>,
    name: String,
    kind: String,
    value: Result<serde_json::Value, serde_json::Error>,
}

impl DesiredObjectSource {
    fn into_desired(self) -> Result<DesiredObject, DesiredError> {
        let object = self.value.map_err(|source| DesiredError::Serialize {
            kind: self.kind,
            name: self.name.clone(),
            source,
        })?;
        Ok(DesiredObject {
            resource: self.resource,
            namespace: self.namespace,
            name: self.name,
            object,
        })
    }
}

fn source<K>(object: K) -> DesiredObjectSource
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let resource = ApiResource::erase::<K>(&());
    let value = serde_json::to_value(&object).map(|mut value| {
        // Server-side apply needs apiVersion and kind in the body.
        value["apiVersion"] = resource.api_version.clone().into();
        value["kind"] = resource.kind.clone().into();
        value
    });
    DesiredObjectSource {
        namespace: object.meta().namespace.clone(),
        name: object.name_any(),
        kind: resource.kind.clone(),
        resource,
        value,
    }
}

fn absent_of<K: Resource<DynamicType = ()>>(name: &str) -> AbsentObject {
    AbsentObject {
        resource: ApiResource::erase::<K>(&()),
        namespace: Some(names::MESH_NAMESPACE.to_owned()),
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshConfigSpec;
    use crate::api::meshconfig::ExternalControlPlane;

    fn mesh(spec: MeshConfigSpec) -> MeshConfig {
        let mut mc = MeshConfig::new(names::ACTIVE_MESHCONFIG, spec);
        mc.metadata.uid = Some("uid-1".to_owned());
        mc
    }

    const INPUTS: Inputs<'static> = Inputs {
        ca_cert_pem: "CA PEM",
        settings_hash: "hash-1",
    };

    fn kinds(install: &Install) -> Vec<(String, String)> {
        install
            .objects
            .iter()
            .map(|o| (o.resource.kind.clone(), o.name.clone()))
            .collect()
    }

    fn find<'a>(install: &'a Install, kind: &str) -> &'a serde_json::Value {
        &install
            .objects
            .iter()
            .find(|o| o.resource.kind == kind)
            .unwrap()
            .object
    }

    #[test]
    fn in_cluster_mode_installs_the_control_plane_and_a_service_webhook() {
        let install = desired(&mesh(MeshConfigSpec::default()), &INPUTS).unwrap();
        let kinds = kinds(&install);
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            assert!(
                kinds.iter().any(|(k, _)| k == kind),
                "{kind} missing from {kinds:?}"
            );
        }
        assert!(
            !kinds.iter().any(|(k, _)| k == "PodDisruptionBudget"),
            "one replica needs no PDB"
        );
        assert!(
            install
                .absent
                .iter()
                .any(|a| a.resource.kind == "PodDisruptionBudget")
        );

        let deployment = find(&install, "Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["image"],
            format!("{}:{}", names::DEFAULT_IMAGE, names::SKEIN_VERSION)
        );
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["annotations"][SETTINGS_HASH_ANNOTATION],
            "hash-1"
        );
        let webhook = find(&install, "MutatingWebhookConfiguration");
        let client = &webhook["webhooks"][0]["clientConfig"];
        assert_eq!(client["service"]["name"], CONTROL_PLANE);
        assert_eq!(client["caBundle"], "Q0EgUEVN"); // base64("CA PEM")
        // Every object but the namespace is owned by the MeshConfig, and all carry our labels.
        for object in &install.objects {
            let meta = &object.object["metadata"];
            assert_eq!(
                meta["labels"]["app.kubernetes.io/part-of"], "skein",
                "{}",
                object.name
            );
            let owned = meta["ownerReferences"][0]["uid"] == "uid-1";
            assert_eq!(
                owned,
                object.resource.kind != "Namespace",
                "{} {}",
                object.resource.kind,
                object.name
            );
        }
    }

    #[test]
    fn replicas_and_version_roll_out() {
        let mut spec = MeshConfigSpec {
            version: Some("9.9.9".to_owned()),
            ..MeshConfigSpec::default()
        };
        spec.control_plane.replicas = 3;
        let install = desired(&mesh(spec), &INPUTS).unwrap();
        let deployment = find(&install, "Deployment");
        assert_eq!(deployment["spec"]["replicas"], 3);
        assert!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .ends_with(":9.9.9")
        );
        assert_eq!(
            find(&install, "PodDisruptionBudget")["spec"]["minAvailable"],
            1
        );
    }

    #[test]
    fn external_mode_has_no_deployment_and_a_url_webhook() {
        let mut spec = MeshConfigSpec::default();
        spec.control_plane.mode = ControlPlaneMode::External;
        spec.control_plane.external = Some(ExternalControlPlane {
            webhook_url: "https://127.0.0.1:9443/inject".to_owned(),
            xds_address: "127.0.0.1:9090".to_owned(),
        });
        let mc = mesh(spec);
        let install = desired(&mc, &INPUTS).unwrap();
        assert!(!kinds(&install).iter().any(|(k, _)| k == "Deployment"));
        let absent: Vec<&str> = install
            .absent
            .iter()
            .map(|a| a.resource.kind.as_str())
            .collect();
        assert_eq!(absent, ["Deployment", "PodDisruptionBudget"]);
        let webhook = find(&install, "MutatingWebhookConfiguration");
        assert_eq!(
            webhook["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:9443/inject"
        );
        // The tap API reaches the control plane through an ExternalName Service, at the
        // webhook URL's host and port, with a certificate for the Service's name.
        let service = find(&install, "Service");
        assert_eq!(service["spec"]["type"], "ExternalName");
        assert_eq!(service["spec"]["externalName"], "127.0.0.1");
        let api_service = find(&install, "APIService");
        assert_eq!(api_service["metadata"]["name"], "v1alpha1.tap.skein.dev");
        assert_eq!(api_service["spec"]["service"]["name"], CONTROL_PLANE);
        assert_eq!(api_service["spec"]["service"]["port"], 9443);
        assert_eq!(
            webhook_cert_names(&mc),
            ["127.0.0.1", "skein-control-plane.skein-system.svc"]
        );
    }

    #[test]
    fn the_tap_api_is_registered_and_its_role_installed() {
        let install = desired(&mesh(MeshConfigSpec::default()), &INPUTS).unwrap();
        let api_service = find(&install, "APIService");
        assert_eq!(api_service["spec"]["group"], "tap.skein.dev");
        assert_eq!(api_service["spec"]["service"]["port"], WEBHOOK_SERVICE_PORT);
        assert_eq!(api_service["spec"]["caBundle"], "Q0EgUEVN");
        let binding = install
            .objects
            .iter()
            .find(|o| o.name == FRONT_PROXY_READER_BINDING)
            .expect("the front-proxy reader binding");
        assert_eq!(binding.namespace.as_deref(), Some("kube-system"));
        assert_eq!(
            binding.object["roleRef"]["name"],
            "extension-apiserver-authentication-reader"
        );
        let tap_role = install
            .objects
            .iter()
            .find(|o| o.resource.kind == "ClusterRole" && o.name == TAP_CLUSTER_ROLE)
            .expect("the skein-tap ClusterRole");
        assert_eq!(tap_role.object["rules"][0]["verbs"][0], "watch");
        let dashboard_role = install
            .objects
            .iter()
            .find(|o| o.resource.kind == "ClusterRole" && o.name == DASHBOARD_CLUSTER_ROLE)
            .expect("the skein-dashboard ClusterRole");
        assert_eq!(
            dashboard_role.object["rules"][0]["resources"],
            serde_json::json!(["dashboard"])
        );
        assert_eq!(url_port("https://cp.example/inject"), Some(443));
        assert_eq!(url_port("https://[::1]:9443/inject"), Some(9443));
    }

    #[test]
    fn the_control_plane_reads_only_the_secrets_it_needs() {
        let install = desired(&mesh(MeshConfigSpec::default()), &INPUTS).unwrap();
        let role = find(&install, "Role");
        let secret_rules: Vec<&serde_json::Value> = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["resources"] == serde_json::json!(["secrets"]))
            .collect();
        assert_eq!(secret_rules.len(), 1, "{role}");
        assert_eq!(
            secret_rules[0]["resourceNames"],
            serde_json::json!(CONTROL_PLANE_SECRETS)
        );
        // Nothing else in the install grants Secrets to the control plane.
        let cluster_role = find(&install, "ClusterRole");
        assert!(
            !cluster_role.to_string().contains("secrets"),
            "{cluster_role}"
        );

        // An external control plane reads its serving certificate through the API too.
        let mut spec = MeshConfigSpec::default();
        spec.control_plane.mode = ControlPlaneMode::External;
        spec.control_plane.external = Some(ExternalControlPlane {
            webhook_url: "https://127.0.0.1:9443/inject".to_owned(),
            xds_address: "127.0.0.1:9090".to_owned(),
        });
        let install = desired(&mesh(spec), &INPUTS).unwrap();
        assert_eq!(
            find(&install, "Role")["rules"][0]["resourceNames"],
            serde_json::json!([ISSUER_SECRET, WEBHOOK_TLS_SECRET])
        );
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://cp.example:9443/inject").as_deref(),
            Some("cp.example")
        );
        assert_eq!(
            url_host("https://[::1]:9443/inject").as_deref(),
            Some("::1")
        );
        assert_eq!(
            url_host("https://10.0.0.5/inject").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(url_host("https:///inject"), None);
    }
}
