//! The `kubernetes-api` group, and the `pre-install` group `--pre` runs: can this cluster take
//! the mesh, and may this user install it.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use super::result::{Check, CheckResult};
use crate::api::{MeshConfig, names};
use crate::controlplane::registration::VALIDATING_WEBHOOK_NAME;
use crate::inject::registration::WEBHOOK_CONFIGURATION_NAME;
use crate::operator::federation::describe;

pub const API: Check = Check {
    id: "kubernetes-api",
    group: "kubernetes-api",
    description: "can reach the Kubernetes API",
};
pub const VERSION: Check = Check {
    id: "kubernetes-version",
    group: "kubernetes-api",
    description: "the Kubernetes version is supported",
};
pub const PERMISSIONS: Check = Check {
    id: "install-permissions",
    group: "pre-install",
    description: "you may create what an install creates",
};
pub const NO_PREVIOUS: Check = Check {
    id: "no-previous-install",
    group: "pre-install",
    description: "nothing is left from an earlier install",
};

/// Native sidecars (the proxy as a restartable init container) came in 1.29; older clusters
/// run the proxy as a regular container, with the start-up and shutdown races that brings.
const NATIVE_SIDECAR_MINOR: u32 = 29;
/// `admissionregistration.k8s.io/v1` webhooks with `matchConditions`-free selectors, server-side
/// apply and `SelfSubjectAccessReview` v1 are all older than this; below it nothing is tested.
const MIN_MINOR: u32 = 26;

/// Pure: the apiserver's version (`major`, `minor` as `/version` reports them, e.g. `"1"`,
/// `"29+"`) judged against what Skein supports.
pub fn version(major: &str, minor: &str, git_version: &str) -> CheckResult {
    let number = |text: &str| text.trim_end_matches('+').parse::<u32>().ok();
    match (number(major), number(minor)) {
        (Some(1), Some(minor)) if minor >= NATIVE_SIDECAR_MINOR => {
            CheckResult::ok(VERSION, git_version)
        }
        (Some(1), Some(minor)) if minor >= MIN_MINOR => CheckResult::warning(
            VERSION,
            format!(
                "{git_version} has no native sidecars (1.{NATIVE_SIDECAR_MINOR}): the proxy runs as a \
                 regular container and may start after the app or stop before it"
            ),
            format!("upgrade Kubernetes to 1.{NATIVE_SIDECAR_MINOR} or later"),
        ),
        (Some(1), Some(_)) => CheckResult::fail(
            VERSION,
            format!("{git_version} is older than 1.{MIN_MINOR}, the oldest Skein supports"),
            format!("upgrade Kubernetes to 1.{NATIVE_SIDECAR_MINOR} or later"),
        ),
        _ => CheckResult::warning(
            VERSION,
            format!("cannot read the version {major}.{minor} ({git_version})"),
            "check `kubectl version` by hand: Skein needs 1.29 or later",
        ),
    }
}

/// One permission an install needs: `verb` on `resource` of `group` (in `namespace`, if set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub namespace: Option<&'static str>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = match self.group {
            "" => self.resource.to_owned(),
            group => format!("{}.{group}", self.resource),
        };
        match self.namespace {
            Some(ns) => write!(f, "{resource} in {ns}"),
            None => write!(f, "{resource}"),
        }
    }
}

const fn cluster(group: &'static str, resource: &'static str) -> Permission {
    Permission {
        group,
        resource,
        namespace: None,
    }
}

const fn mesh(group: &'static str, resource: &'static str) -> Permission {
    Permission {
        group,
        resource,
        namespace: Some(names::MESH_NAMESPACE),
    }
}

/// What the manifests in config/ (and the Helm chart) create, and the operator then creates
/// in the user's stead: the user's own rights bound what the operator may be granted.
pub const INSTALL_PERMISSIONS: &[Permission] = &[
    cluster("apiextensions.k8s.io", "customresourcedefinitions"),
    cluster("", "namespaces"),
    cluster("rbac.authorization.k8s.io", "clusterroles"),
    cluster("rbac.authorization.k8s.io", "clusterrolebindings"),
    cluster(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    cluster(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
    ),
    // The tap API's registration.
    cluster("apiregistration.k8s.io", "apiservices"),
    cluster(names::GROUP, "meshconfigs"),
    mesh("apps", "deployments"),
    mesh("", "services"),
    mesh("", "serviceaccounts"),
    mesh("", "secrets"),
    mesh("", "configmaps"),
    mesh("rbac.authorization.k8s.io", "roles"),
    mesh("rbac.authorization.k8s.io", "rolebindings"),
    mesh("coordination.k8s.io", "leases"),
];

/// Pure: the permissions refused (each with the apiserver's reason, if it gave one).
pub fn permissions(denied: &[(Permission, String)]) -> CheckResult {
    if denied.is_empty() {
        return CheckResult::ok(
            PERMISSIONS,
            format!("may create all {} kinds", INSTALL_PERMISSIONS.len()),
        );
    }
    let list: Vec<String> = denied
        .iter()
        .map(|(permission, reason)| match reason.as_str() {
            "" => permission.to_string(),
            reason => format!("{permission} ({reason})"),
        })
        .collect();
    CheckResult::fail(
        PERMISSIONS,
        format!("you may not create {}", list.join(", ")),
        "install as a cluster admin, or have one bind you a role granting these",
    )
}

pub async fn check_permissions(client: &Client) -> CheckResult {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for &permission in INSTALL_PERMISSIONS {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(permission.group.to_owned()),
                    resource: Some(permission.resource.to_owned()),
                    namespace: permission.namespace.map(str::to_owned),
                    verb: Some("create".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) => {
                let status = answer.status.unwrap_or_default();
                if !status.allowed {
                    denied.push((permission, status.reason.unwrap_or_default()));
                }
            }
            Err(err) => {
                return CheckResult::fail(
                    PERMISSIONS,
                    format!(
                        "asking whether you may create {permission}: {}",
                        describe(&err)
                    ),
                    "the apiserver must serve authorization.k8s.io/v1 SelfSubjectAccessReviews",
                );
            }
        }
    }
    permissions(&denied)
}

/// Pure: what an earlier install left that a new one would collide with.
pub fn previous_install(meshconfigs: &[String], webhooks: &[(&str, String)]) -> CheckResult {
    if meshconfigs.is_empty() && webhooks.is_empty() {
        return CheckResult::ok(NO_PREVIOUS, "no MeshConfig and no Skein webhook found");
    }
    let mut found: Vec<String> = meshconfigs
        .iter()
        .map(|name| format!("MeshConfig {name}"))
        .collect();
    found.extend(webhooks.iter().map(|(kind, name)| format!("{kind} {name}")));
    let mut fixes: Vec<String> = webhooks
        .iter()
        .map(|(kind, name)| format!("kubectl delete {} {name}", kind.to_lowercase()))
        .collect();
    if !meshconfigs.is_empty() {
        fixes.insert(
            0,
            "the mesh is installed: run `skein check` without --pre, or uninstall with \
             `kubectl delete meshconfig --all` first"
                .to_owned(),
        );
    }
    CheckResult::fail(
        NO_PREVIOUS,
        format!(
            "found {} (a webhook left behind can block pod creation)",
            found.join(", ")
        ),
        fixes.join("; "),
    )
}

pub async fn check_previous_install(client: &Client) -> CheckResult {
    let meshconfigs = match Api::<MeshConfig>::all(client.clone())
        .list_metadata(&Default::default())
        .await
    {
        Ok(list) => list.items.iter().map(|m| m.name_any()).collect(),
        // No Skein CRDs: no MeshConfig either.
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(err) => {
            return CheckResult::fail(
                NO_PREVIOUS,
                format!("listing MeshConfigs: {}", describe(&err)),
                "check that you may list meshconfigs.skein.dev",
            );
        }
    };
    let mut webhooks = Vec::new();
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(WEBHOOK_CONFIGURATION_NAME)
        .await;
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(VALIDATING_WEBHOOK_NAME)
        .await;
    match (mutating, validating) {
        (Ok(mutating), Ok(validating)) => {
            if mutating.is_some() {
                webhooks.push((
                    "MutatingWebhookConfiguration",
                    WEBHOOK_CONFIGURATION_NAME.to_owned(),
                ));
            }
            if validating.is_some() {
                webhooks.push((
                    "ValidatingWebhookConfiguration",
                    VALIDATING_WEBHOOK_NAME.to_owned(),
                ));
            }
        }
        (Err(err), _) | (_, Err(err)) => {
            return CheckResult::fail(
                NO_PREVIOUS,
                format!("reading the webhook configurations: {}", describe(&err)),
                "check that you may get admissionregistration.k8s.io webhook configurations",
            );
        }
    }
    previous_install(&meshconfigs, &webhooks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::result::Status;

    #[test]
    fn versions_from_native_sidecars_on_pass() {
        assert_eq!(version("1", "37", "v1.37.2").status, Status::Ok);
        assert_eq!(version("1", "29+", "v1.29.0-eks").status, Status::Ok);
        let old = version("1", "27", "v1.27.3");
        assert_eq!(old.status, Status::Warning);
        assert!(old.message.contains("native sidecars"), "{}", old.message);
        assert_eq!(version("1", "22", "v1.22.0").status, Status::Fail);
        assert_eq!(version("", "", "weird").status, Status::Warning);
    }

    #[test]
    fn each_refused_permission_is_named() {
        assert_eq!(permissions(&[]).status, Status::Ok);
        let refused = permissions(&[
            (INSTALL_PERMISSIONS[0], String::new()),
            (mesh("apps", "deployments"), "RBAC: no rule".to_owned()),
        ]);
        assert_eq!(refused.status, Status::Fail);
        assert_eq!(
            refused.message,
            "you may not create customresourcedefinitions.apiextensions.k8s.io, \
             deployments.apps in skein-system (RBAC: no rule)"
        );
    }

    #[test]
    fn leftovers_are_named_with_their_delete_command() {
        assert_eq!(previous_install(&[], &[]).status, Status::Ok);
        let left = previous_install(
            &[],
            &[(
                "MutatingWebhookConfiguration",
                "skein-sidecar-injector".to_owned(),
            )],
        );
        assert_eq!(left.status, Status::Fail);
        assert_eq!(
            left.hint.as_deref(),
            Some("kubectl delete mutatingwebhookconfiguration skein-sidecar-injector")
        );
        let installed = previous_install(&["default".to_owned()], &[]);
        assert!(installed.message.contains("MeshConfig default"));
        assert!(installed.hint.unwrap().contains("without --pre"));
    }
}
