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
//!
//! The web dashboard ([`crate::controlplane::dashboard`]) is served here too, as the
//! cluster-scoped resource `dashboard`, so that opening it is RBAC as well:
//!
//! | request (GET) | RBAC the caller needs |
//! |---|---|
//! | `/apis/tap.skein.dev/v1alpha1/dashboard` (the page) | `list` on `dashboard` |
//! | `/apis/tap.skein.dev/v1alpha1/dashboard/VIEW` (its script, stylesheet, settings and views) | `get` on `dashboard` |
//! | `/apis/tap.skein.dev/v1alpha1/dashboard/tap?namespace=NS&resource=…` (its tap view) | that, and the tap's own permission in NS as above |
//!
//! The ClusterRole `skein-dashboard` grants the first two (`kubectl create clusterrolebinding
//! ... --clusterrole skein-dashboard`); the page's tap view also needs `skein-tap` in the
//! namespace it taps.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, RawQuery, State, rejection::QueryRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tower::ServiceExt;

use super::front_proxy::{AuthError, FrontProxyTrust, User, authenticate};
use super::http::{TapQuery, Tapper};
use super::target::Resource;
use crate::controlplane::dashboard;
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

/// The ClusterRole that grants the dashboard (its tap view also needs [`TAP_CLUSTER_ROLE`]).
pub const DASHBOARD_CLUSTER_ROLE: &str = "skein-dashboard";
/// The dashboard's resource in the group.
pub const DASHBOARD_RESOURCE: &str = "dashboard";

/// The tappers of a control plane, once its discovery has started them.
pub type TapperSlot = Arc<OnceLock<Tapper>>;
/// The dashboard's routes ([`crate::controlplane::dashboard::router`]), once discovery has
/// started what they read.
pub type DashboardSlot = Arc<OnceLock<Router>>;

/// What the API serves, each set once the control plane's discovery has started.
#[derive(Clone, Default)]
pub struct Served {
    pub tapper: TapperSlot,
    pub dashboard: DashboardSlot,
}

#[derive(Clone)]
struct ApiState {
    served: Served,
    trust: FrontProxyTrust,
    client: kube::Client,
}

/// The API's routes, served on the webhook port (whose certificate the APIService trusts).
pub fn router(served: Served, trust: FrontProxyTrust, client: kube::Client) -> Router {
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
        .route(&format!("{base}/{DASHBOARD_RESOURCE}"), get(dashboard_page))
        .route(
            &format!("{base}/{DASHBOARD_RESOURCE}/{{view}}"),
            get(dashboard_view),
        )
        .with_state(ApiState {
            served,
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
    let dashboard = serde_json::json!({
        "name": DASHBOARD_RESOURCE, "singularName": "", "namespaced": false,
        "kind": "Dashboard", "verbs": ["get"],
    });
    axum::Json(serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [resource("tap"), resource("deployments/tap"), resource("pods/tap"), dashboard],
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
    let user = match authenticate_request(&state, tls.as_ref(), &headers) {
        Ok(user) => user,
        Err(refused) => return refused,
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
    if let Err(refused) = authorize(&state, &user, attributes(&namespace, &resource)).await {
        return refused;
    }
    let Some(tapper) = state.served.tapper.get() else {
        return starting();
    };
    tracing::info!(user = %user.name, %namespace, %resource, "tap started");
    tapper.tap(namespace, resource, &query).await
}

/// `…/dashboard`: the page.
async fn dashboard_page(
    State(state): State<ApiState>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    headers: HeaderMap,
) -> Response {
    dashboard(state, tls, headers, None, None).await
}

/// `…/dashboard/VIEW?QUERY`: the page's assets, settings and views.
async fn dashboard_view(
    State(state): State<ApiState>,
    tls: Option<Extension<Arc<TlsInfo>>>,
    Path(view): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    dashboard(state, tls, headers, Some(view), query).await
}

async fn dashboard(
    state: ApiState,
    tls: Option<Extension<Arc<TlsInfo>>>,
    headers: HeaderMap,
    view: Option<String>,
    query: Option<String>,
) -> Response {
    let user = match authenticate_request(&state, tls.as_ref(), &headers) {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    if let Err(refused) = authorize(&state, &user, dashboard_attributes(view.as_deref())).await {
        return refused;
    }
    // The tap view taps as the viewer: the tap's own permission too.
    if view.as_deref() == Some("tap") {
        let target = match tap_target(query.as_deref().unwrap_or_default()) {
            Ok(target) => target,
            Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message),
        };
        let (namespace, resource) = target;
        if let Err(refused) = authorize(&state, &user, attributes(&namespace, &resource)).await {
            return refused;
        }
        tracing::info!(user = %user.name, %namespace, %resource, "dashboard tap started");
    }
    let Some(router) = state.served.dashboard.get() else {
        return starting();
    };
    let path = match view {
        Some(view) => format!("{}/{view}", dashboard::PATH),
        None => dashboard::PATH.to_owned(),
    };
    let uri = match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let request = match axum::http::Request::get(uri).body(Body::empty()) {
        Ok(request) => request,
        Err(err) => return status(StatusCode::BAD_REQUEST, "BadRequest", &err.to_string()),
    };
    match router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The namespace and resource the dashboard's tap view asks for (`/debug/tap`'s query).
fn tap_target(query: &str) -> Result<(String, Resource), String> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|err: axum::http::uri::InvalidUri| err.to_string())?;
    let Query(query) = Query::<TapQuery>::try_from_uri(&uri).map_err(|err| err.body_text())?;
    let namespace = query
        .namespace
        .filter(|n| !n.is_empty())
        .ok_or("give the namespace: ?namespace=NS")?;
    let resource = query.resource.as_deref().unwrap_or_default().parse()?;
    Ok((namespace, resource))
}

/// The forwarded user, believed only from the apiserver's front proxy; or the refusal.
#[allow(clippy::result_large_err)] // the error is the response itself, built once
fn authenticate_request(
    state: &ApiState,
    tls: Option<&Extension<Arc<TlsInfo>>>,
    headers: &HeaderMap,
) -> Result<User, Response> {
    state
        .trust
        .config()
        .and_then(|config| {
            // axum-server hands each request its connection's TLS details; the certificate
            // there has passed the server's verifier ([`FrontProxyTrust::client_verifier`]).
            let cert = tls
                .and_then(|Extension(tls)| tls.peer_certificates.first())
                .map(|der| CertificateDer::from(der.as_slice()));
            authenticate(&config, cert.as_ref(), headers)
        })
        .map_err(|err| match err {
            AuthError::NotConfigured(_) => status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &err.to_string(),
            ),
            err => status(StatusCode::UNAUTHORIZED, "Unauthorized", &err.to_string()),
        })
}

/// The same permission the apiserver checked, checked again with a SubjectAccessReview.
async fn authorize(
    state: &ApiState,
    user: &User,
    attributes: ResourceAttributes,
) -> Result<(), Response> {
    match review(&state.client, user, attributes.clone()).await {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::Denied(reason)) => {
            let message = refusal(user, &attributes, &reason);
            tracing::info!(user = %user.name, "refused: {message}");
            Err(status(StatusCode::FORBIDDEN, "Forbidden", &message))
        }
        Err(err) => Err(status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("checking the permission with a SubjectAccessReview: {err}"),
        )),
    }
}

fn starting() -> Response {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the control plane is starting: its view of the cluster is not synced yet",
    )
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

/// The RBAC attributes of a dashboard request: `list` for the page (the path names no object),
/// `get` for what it loads.
pub fn dashboard_attributes(view: Option<&str>) -> ResourceAttributes {
    ResourceAttributes {
        group: Some(GROUP.to_owned()),
        version: Some(VERSION.to_owned()),
        resource: Some(DASHBOARD_RESOURCE.to_owned()),
        name: view.map(str::to_owned),
        verb: Some(if view.is_some() { "get" } else { "list" }.to_owned()),
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

/// The refusal a user reads: what was asked, why not, and the binding that would allow it
/// (`skein-tap` in the namespace for a tap; `skein-dashboard` cluster-wide for the dashboard).
fn refusal(user: &User, attributes: &ResourceAttributes, reason: &str) -> String {
    let resource = match (&attributes.resource, &attributes.subresource) {
        (Some(resource), Some(sub)) => format!("{resource}/{sub}"),
        (Some(resource), None) => resource.clone(),
        _ => String::new(),
    };
    let verb = attributes.verb.as_deref().unwrap_or(VERB);
    let named = attributes
        .name
        .as_deref()
        .map(|n| format!(" {n:?}"))
        .unwrap_or_default();
    let binding = binding_name(&user.name);
    let (scope, grant) = match attributes.namespace.as_deref() {
        Some(namespace) => (
            format!(" in namespace {namespace}"),
            format!(
                "kubectl create rolebinding {binding}-tap -n {namespace} --clusterrole \
                 {TAP_CLUSTER_ROLE} --user {}",
                user.name
            ),
        ),
        None => (
            String::new(),
            format!(
                "kubectl create clusterrolebinding {binding}-dashboard --clusterrole \
                 {DASHBOARD_CLUSTER_ROLE} --user {}",
                user.name
            ),
        ),
    };
    format!(
        "user {:?} may not {verb} {resource}{named}{scope} (API group {GROUP}): {reason}. \
         Grant it with: {grant}",
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
    fn dashboard_attributes_match_the_apiservers_for_the_page_and_its_parts() {
        let page = dashboard_attributes(None);
        assert_eq!(page.verb.as_deref(), Some("list"));
        assert_eq!(page.resource.as_deref(), Some("dashboard"));
        assert_eq!((page.namespace, page.name), (None, None));
        let script = dashboard_attributes(Some("app.js"));
        assert_eq!(script.verb.as_deref(), Some("get"));
        assert_eq!(script.name.as_deref(), Some("app.js"));
    }

    #[test]
    fn the_dashboards_tap_view_names_its_target() {
        assert_eq!(
            tap_target("namespace=demo&resource=deploy%2Ffrontend&max=5"),
            Ok((
                "demo".to_owned(),
                Resource::Deployment("frontend".to_owned())
            ))
        );
        assert!(tap_target("resource=deploy/frontend").is_err());
        assert!(tap_target("namespace=demo&resource=svc/x").is_err());
        assert!(tap_target("namespace=demo&max=many").is_err());
    }

    #[test]
    fn a_dashboard_refusal_names_the_cluster_role() {
        let user = User {
            name: "jane".to_owned(),
            ..Default::default()
        };
        assert_eq!(
            refusal(&user, &dashboard_attributes(None), "no RBAC rule allows it"),
            "user \"jane\" may not list dashboard (API group tap.skein.dev): no RBAC rule \
             allows it. Grant it with: kubectl create clusterrolebinding jane-dashboard \
             --clusterrole skein-dashboard --user jane"
        );
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
