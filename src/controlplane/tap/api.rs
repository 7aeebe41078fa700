//! The tap API: live tap as a Kubernetes aggregated API (`APIService v1alpha1.tap.skein.dev`,
//! installed by the operator), so that who may tap what is Kubernetes RBAC, as for any other
//! resource. `skein tap` asks the apiserver; the apiserver authenticates the user, checks RBAC,
//! and forwards the request to the control plane's webhook port as its front proxy
//! ([`super::front_proxy`]); the control plane believes the forwarded user only from the front
//! proxy, checks the same permission again with a SubjectAccessReview, and streams the tap.
//!
//! | request (GET) | RBAC the caller needs (API group `tap.skein.dev`) |
//! |---|---|
//! | `/apis/tap.skein.dev/v1alpha1/watch/namespaces/NS/deployments/NAME/tap` | `watch` on `deployments/tap` in NS |
//! | `/apis/tap.skein.dev/v1alpha1/watch/namespaces/NS/pods/NAME/tap` | `watch` on `pods/tap` in NS |
//! | `/apis/tap.skein.dev/v1alpha1/watch/namespaces/NS/tap` (every pod of NS) | `watch` on `tap` in NS |
//!
//! The query takes `to`, `method`, `path` and `max` as `/debug/tap` does, and the answer is the
//! same stream of lines ([`super`]). The ClusterRole `skein-tap` grants all three; bind it
//! per namespace (`kubectl create rolebinding ... --clusterrole skein-tap`) or cluster-wide.
//! `/apis/tap.skein.dev/v1alpha1` answers the apiserver's discovery and availability checks.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Extension, Path, Query, State, rejection::QueryRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::front_proxy::{AuthError, FrontProxyTrust, User, authenticate};
use super::http::{TapQuery, Tapper};
use super::target::Resource;
use axum_server::tls::TlsInfo;
use rustls::pki_types::CertificateDer;

pub const GROUP: &str = "tap.skein.dev";
pub const VERSION: &str = "v1alpha1";
/// The APIService's name, `VERSION.GROUP` as Kubernetes requires.
pub const API_SERVICE: &str = "v1alpha1.tap.skein.dev";
/// The ClusterRole that grants every tap.
pub const TAP_CLUSTER_ROLE: &str = "skein-tap";
/// The verb of every tap (the apiserver derives it from the `/watch/` path prefix).
pub const VERB: &str = "watch";

/// The tappers of a control plane, once its discovery has started them.
pub type TapperSlot = Arc<OnceLock<Tapper>>;

#[derive(Clone)]
struct ApiState {
    tapper: TapperSlot,
    trust: FrontProxyTrust,
    client: kube::Client,
}

/// The tap API's routes, served on the webhook port (whose certificate the APIService trusts).
pub fn router(tapper: TapperSlot, trust: FrontProxyTrust, client: kube::Client) -> Router {
    let base = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route(&base, get(discovery))
        .route(
            &format!("{base}/watch/namespaces/{{namespace}}/{{kind}}/{{name}}/tap"),
            get(tap_named),
        )
        .route(
            &format!("{base}/watch/namespaces/{{namespace}}/tap"),
            get(tap_namespace),
        )
        .with_state(ApiState {
            tapper,
            trust,
            client,
        })
}

/// What `kubectl api-resources` lists for the group (subresources are not listed by kubectl).
async fn discovery() -> Response {
    let resource = |name: &str| {
        serde_json::json!({
            "name": name, "singularName": "", "namespaced": true, "kind": "Tap", "verbs": [VERB],
        })
    };
    axum::Json(serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [resource("tap"), resource("deployments/tap"), resource("pods/tap")],
    }))
    .into_response()
}

async fn tap_named(
    State(state): State<ApiState>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    Path((namespace, kind, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    query: Result<Query<TapQuery>, QueryRejection>,
) -> Response {
    let resource = match kind.as_str() {
        "deployments" => Resource::Deployment(name),
        "pods" => Resource::Pod(name),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{kind} cannot be tapped: tap deployments, pods or a whole namespace"),
            );
        }
    };
    serve(state, tls, namespace, resource, headers, query).await
}

async fn tap_namespace(
    State(state): State<ApiState>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    query: Result<Query<TapQuery>, QueryRejection>,
) -> Response {
    serve(state, tls, namespace, Resource::Namespace, headers, query).await
}

async fn serve(
    state: ApiState,
    tls: Option<Extension<Arc<TlsInfo>>>,
    namespace: String,
    resource: Resource,
    headers: HeaderMap,
    query: Result<Query<TapQuery>, QueryRejection>,
) -> Response {
    let user = match state.trust.config().and_then(|config| {
        // axum-server hands each request its connection's TLS details; the certificate there
        // has passed the server's verifier ([`FrontProxyTrust::client_verifier`]).
        let cert = tls
            .as_ref()
            .and_then(|Extension(tls)| tls.peer_certificates.first())
            .map(|der| CertificateDer::from(der.as_slice()));
        authenticate(&config, cert.as_ref(), &headers)
    }) {
        Ok(user) => user,
        Err(err @ AuthError::NotConfigured(_)) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &err.to_string(),
            );
        }
        Err(err) => return status(StatusCode::UNAUTHORIZED, "Unauthorized", &err.to_string()),
    };
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &rejection.body_text(),
            );
        }
    };
    let attributes = attributes(&namespace, &resource);
    match review(&state.client, &user, attributes.clone()).await {
        Ok(Decision::Allowed) => {}
        Ok(Decision::Denied(reason)) => {
            let message = refusal(&user, &attributes, &reason);
            tracing::info!(user = %user.name, %namespace, %resource, "tap refused: {reason}");
            return status(StatusCode::FORBIDDEN, "Forbidden", &message);
        }
        Err(err) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("checking the tap permission with a SubjectAccessReview: {err}"),
            );
        }
    }
    let Some(tapper) = state.tapper.get() else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the control plane is starting: its view of the cluster is not synced yet",
        );
    };
    tracing::info!(user = %user.name, %namespace, %resource, "tap started");
    tapper.tap(namespace, resource, &query).await
}

/// The RBAC attributes of a tap, as the apiserver computes them from the request's path.
pub fn attributes(namespace: &str, resource: &Resource) -> ResourceAttributes {
    let (resource, subresource, name) = match resource {
        Resource::Deployment(name) => ("deployments", Some("tap"), Some(name.clone())),
        Resource::Pod(name) => ("pods", Some("tap"), Some(name.clone())),
        Resource::Namespace => ("tap", None, None),
    };
    ResourceAttributes {
        group: Some(GROUP.to_owned()),
        version: Some(VERSION.to_owned()),
        namespace: Some(namespace.to_owned()),
        resource: Some(resource.to_owned()),
        subresource: subresource.map(str::to_owned),
        name,
        verb: Some(VERB.to_owned()),
        ..Default::default()
    }
}

enum Decision {
    Allowed,
    Denied(String),
}

async fn review(
    client: &kube::Client,
    user: &User,
    attributes: ResourceAttributes,
) -> Result<Decision, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: Some(user.extra.clone().into_iter().collect()),
            resource_attributes: Some(attributes),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let status = answer.status.unwrap_or_default();
    Ok(if status.allowed && !status.denied.unwrap_or(false) {
        Decision::Allowed
    } else {
        Decision::Denied(
            status
                .reason
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "no RBAC rule allows it".to_owned()),
        )
    })
}

/// The refusal a user reads: what was asked, why not, and the binding that would allow it.
fn refusal(user: &User, attributes: &ResourceAttributes, reason: &str) -> String {
    let resource = match (&attributes.resource, &attributes.subresource) {
        (Some(resource), Some(sub)) => format!("{resource}/{sub}"),
        (Some(resource), None) => resource.clone(),
        _ => String::new(),
    };
    let namespace = attributes.namespace.as_deref().unwrap_or_default();
    let named = attributes
        .name
        .as_deref()
        .map(|n| format!(" {n:?}"))
        .unwrap_or_default();
    format!(
        "user {:?} may not {VERB} {resource}{named} in namespace {namespace} (API group {GROUP}): \
         {reason}. Grant it with: kubectl create rolebinding {}-tap -n {namespace} \
         --clusterrole {TAP_CLUSTER_ROLE} --user {}",
        user.name,
        binding_name(&user.name),
        user.name
    )
}

/// A RoleBinding name for `user` (`system:serviceaccount:ns:sa` → `system-serviceaccount-ns-sa`).
fn binding_name(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// A Kubernetes `Status` answer, which kubectl and client libraries show by its message.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_match_what_the_apiserver_computes_from_the_path() {
        let deploy = attributes("demo", &Resource::Deployment("frontend".to_owned()));
        assert_eq!(deploy.resource.as_deref(), Some("deployments"));
        assert_eq!(deploy.subresource.as_deref(), Some("tap"));
        assert_eq!(deploy.name.as_deref(), Some("frontend"));
        assert_eq!(deploy.verb.as_deref(), Some("watch"));
        assert_eq!(deploy.group.as_deref(), Some(GROUP));
        let ns = attributes("demo", &Resource::Namespace);
        assert_eq!(ns.resource.as_deref(), Some("tap"));
        assert_eq!((ns.subresource, ns.name), (None, None));
    }

    #[test]
    fn a_refusal_names_the_permission_and_the_binding_that_grants_it() {
        let user = User {
            name: "system:serviceaccount:demo:ci".to_owned(),
            ..Default::default()
        };
        let message = refusal(
            &user,
            &attributes("demo", &Resource::Pod("web-1".to_owned())),
            "no RBAC rule allows it",
        );
        assert_eq!(
            message,
            "user \"system:serviceaccount:demo:ci\" may not watch pods/tap \"web-1\" in namespace \
             demo (API group tap.skein.dev): no RBAC rule allows it. Grant it with: kubectl \
             create rolebinding system-serviceaccount-demo-ci-tap -n demo --clusterrole skein-tap \
             --user system:serviceaccount:demo:ci"
        );
    }
}
