//! Pure: what a tap targets (`deploy/NAME`, `pod/NAME`, `ns`), the pods that makes, why a pod
//! cannot be tapped, and the filter a tap's parameters make.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::names::PROXY_CONTAINER;
use crate::xds::tap::TapFilter;

pub const NOT_MESHED: &str = "not meshed (no skein-proxy container)";
pub const NOT_CONNECTED: &str = "proxy not connected to this control plane";
pub const NO_TAP_STREAM: &str = "proxy too old: connected but has no tap stream";

/// What a tap is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Deployment(String),
    Pod(String),
    /// Every pod of the namespace.
    Namespace,
}

impl std::str::FromStr for Resource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, name) = match text.split_once('/') {
            Some((kind, name)) => (kind, Some(name)),
            None => (text, None),
        };
        let named = |make: fn(String) -> Self| match name {
            Some(name) if !name.is_empty() && !name.contains('/') => Ok(make(name.to_owned())),
            _ => Err(format!("{text:?}: give the name, as {kind}/NAME")),
        };
        match kind {
            "deploy" | "deployment" | "deployments" => named(Self::Deployment),
            "po" | "pod" | "pods" => named(Self::Pod),
            "ns" | "namespace" if name.is_none() => Ok(Self::Namespace),
            _ => Err(format!(
                "{text:?} is not a tap target: give deploy/NAME, pod/NAME or ns"
            )),
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deployment(name) => write!(f, "deploy/{name}"),
            Self::Pod(name) => write!(f, "pod/{name}"),
            Self::Namespace => f.write_str("ns"),
        }
    }
}

/// The live pods (not finished, not being deleted) of `resource` among `pods`, by name. A
/// Deployment's pods are those of its ReplicaSets (`NAME-<pod-template-hash>`), found without
/// reading the Deployment.
pub fn selected<'a>(pods: &'a [Pod], resource: &Resource) -> Vec<&'a Pod> {
    let mut chosen: Vec<&Pod> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(|pod| match resource {
            Resource::Namespace => true,
            Resource::Pod(name) => pod.name_any() == *name,
            Resource::Deployment(name) => of_deployment(pod, name),
        })
        .collect();
    chosen.sort_by_key(|pod| pod.name_any());
    chosen
}

fn of_deployment(pod: &Pod, deployment: &str) -> bool {
    let Some(hash) = pod.labels().get("pod-template-hash") else {
        return false;
    };
    let replica_set = format!("{deployment}-{hash}");
    pod.owner_references().iter().any(|owner| {
        owner.controller == Some(true) && owner.kind == "ReplicaSet" && owner.name == replica_set
    })
}

/// Whether the pod runs the proxy (a container or a native sidecar).
pub fn has_proxy(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter())
        .into_iter()
        .flatten();
    containers.chain(init).any(|c| c.name == PROXY_CONTAINER)
}

/// The namespace's injection label as the tap sees it: `key=value`, whether the namespace has
/// it, and when it was last written.
#[derive(Debug, Clone)]
pub struct Labelling {
    pub label: String,
    pub labelled: bool,
    pub since: Option<Timestamp>,
}

/// Why `pod` cannot be tapped, or `None` when it can.
pub fn untappable(
    pod: &Pod,
    labelling: &Labelling,
    connected: bool,
    has_tap_stream: bool,
) -> Option<String> {
    if !has_proxy(pod) {
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let before =
            labelling.labelled && matches!((created, labelling.since), (Some(c), Some(l)) if c < l);
        return Some(if before {
            format!(
                "created before its namespace was labelled {}: restart it",
                labelling.label
            )
        } else {
            NOT_MESHED.to_owned()
        });
    }
    if !connected {
        return Some(NOT_CONNECTED.to_owned());
    }
    if !has_tap_stream {
        return Some(NO_TAP_STREAM.to_owned());
    }
    None
}

/// The filter a tap's parameters make: `to` is `svc/NAME` or `deploy/NAME`, in `to_namespace`
/// or else the tapped namespace `namespace` (as linkerd's `--to-namespace` does), `method` an
/// HTTP method, `path` a prefix starting with `/`. `to_namespace` without `to` is refused
/// rather than ignored.
pub fn filter(
    namespace: &str,
    (to, to_namespace): (Option<&str>, Option<&str>),
    method: Option<&str>,
    path: Option<&str>,
) -> Result<TapFilter, String> {
    let mut filter = TapFilter::default();
    let to = to.filter(|t| !t.is_empty());
    let to_namespace = to_namespace.filter(|n| !n.is_empty());
    if let (None, Some(to_namespace)) = (to, to_namespace) {
        return Err(format!(
            "to_namespace={to_namespace:?} needs a destination: give to=svc/NAME or deploy/NAME"
        ));
    }
    if let Some(to) = to {
        let in_namespace = to_namespace.unwrap_or(namespace);
        if !valid_name(in_namespace) || in_namespace.contains('.') {
            return Err(format!(
                "to_namespace={in_namespace:?} is not a namespace name"
            ));
        }
        in_namespace.clone_into(&mut filter.to_namespace);
        match to.split_once('/') {
            Some(("svc" | "service" | "services", name)) if valid_name(name) => {
                name.clone_into(&mut filter.to_service);
            }
            Some(("deploy" | "deployment" | "deployments", name)) if valid_name(name) => {
                name.clone_into(&mut filter.to_workload);
            }
            _ => {
                return Err(format!(
                    "to={to:?}: give the destination as svc/NAME or deploy/NAME"
                ));
            }
        }
    }
    if let Some(method) = method.filter(|m| !m.is_empty()) {
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err(format!("method={method:?} is not an HTTP method"));
        }
        filter.method = method.to_ascii_uppercase();
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        if !path.starts_with('/') {
            return Err(format!("path={path:?}: a path prefix starts with /"));
        }
        path.clone_into(&mut filter.path_prefix);
    }
    Ok(filter)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, extra: &serde_json::Value) -> Pod {
        let mut value = serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": "2026-01-01T10:00:00Z"},
            "spec": {"containers": [{"name": "app"}, {"name": "skein-proxy"}]},
            "status": {"phase": "Running"},
        });
        merge(&mut value, extra);
        serde_json::from_value(value).expect("a pod")
    }

    fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
                for (key, value) in from {
                    merge(
                        into.entry(key.clone()).or_insert(serde_json::Value::Null),
                        value,
                    );
                }
            }
            (into, from) => *into = from.clone(),
        }
    }

    fn owned_by(replica_set: &str, hash: &str) -> serde_json::Value {
        serde_json::json!({"metadata": {
            "labels": {"pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set, "uid": "u", "controller": true}],
        }})
    }

    #[test]
    fn targets_parse_and_say_what_is_wrong() {
        assert_eq!(
            "deploy/frontend".parse(),
            Ok(Resource::Deployment("frontend".into()))
        );
        assert_eq!("pod/web-1".parse(), Ok(Resource::Pod("web-1".into())));
        assert_eq!("ns".parse(), Ok(Resource::Namespace));
        for bad in ["deploy/", "deploy", "svc/backend", "pod/a/b", ""] {
            assert!(bad.parse::<Resource>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_deployment_is_its_replica_sets_pods() {
        let pods = [
            pod("frontend-abc12-x", &owned_by("frontend-abc12", "abc12")),
            pod(
                "frontend-api-def34-y",
                &owned_by("frontend-api-def34", "def34"),
            ),
            pod("frontend-abc12-gone", &{
                let mut gone = owned_by("frontend-abc12", "abc12");
                merge(
                    &mut gone,
                    &serde_json::json!({"metadata": {"deletionTimestamp": "2026-01-01T11:00:00Z"}}),
                );
                gone
            }),
            pod("lonely", &serde_json::json!({})),
        ];
        let names = |resource: &Resource| -> Vec<String> {
            selected(&pods, resource)
                .iter()
                .map(|p| p.name_any())
                .collect()
        };
        assert_eq!(
            names(&Resource::Deployment("frontend".into())),
            ["frontend-abc12-x"]
        );
        assert_eq!(
            names(&Resource::Deployment("frontend-api".into())),
            ["frontend-api-def34-y"]
        );
        assert_eq!(names(&Resource::Pod("lonely".into())), ["lonely"]);
        assert_eq!(names(&Resource::Namespace).len(), 3);
    }

    #[test]
    fn each_untappable_pod_says_why() {
        let labelling = Labelling {
            label: "skein.dev/injection=enabled".into(),
            labelled: true,
            since: Some("2026-01-01T12:00:00Z".parse().unwrap()),
        };
        let meshed = pod("a", &serde_json::json!({}));
        assert_eq!(untappable(&meshed, &labelling, true, true), None);
        assert_eq!(
            untappable(&meshed, &labelling, false, false).as_deref(),
            Some(NOT_CONNECTED)
        );
        assert_eq!(
            untappable(&meshed, &labelling, true, false).as_deref(),
            Some(NO_TAP_STREAM)
        );
        let bare = pod(
            "b",
            &serde_json::json!({"spec": {"containers": [{"name": "app"}]}}),
        );
        assert_eq!(
            untappable(&bare, &labelling, false, false).as_deref(),
            Some(
                "created before its namespace was labelled skein.dev/injection=enabled: restart it"
            )
        );
        let after = Labelling {
            since: Some("2026-01-01T09:00:00Z".parse().unwrap()),
            ..labelling.clone()
        };
        assert_eq!(
            untappable(&bare, &after, false, false).as_deref(),
            Some(NOT_MESHED)
        );
        let unlabelled = Labelling {
            labelled: false,
            ..labelling
        };
        assert_eq!(
            untappable(&bare, &unlabelled, false, false).as_deref(),
            Some(NOT_MESHED)
        );
        let native = pod(
            "c",
            &serde_json::json!({"spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "skein-proxy"}]}}),
        );
        assert!(has_proxy(&native));
    }

    #[test]
    fn filters_come_from_the_parameters() {
        let f = filter(
            "demo",
            (Some("svc/backend"), None),
            Some("get"),
            Some("/work"),
        )
        .unwrap();
        assert_eq!(f.to_service, "backend");
        assert_eq!(f.to_namespace, "demo", "the tapped namespace by default");
        assert_eq!(f.method, "GET");
        assert_eq!(f.path_prefix, "/work");
        let f = filter("demo", (Some("deploy/backend"), Some("other")), None, None).unwrap();
        assert_eq!(
            (f.to_workload.as_str(), f.to_namespace.as_str()),
            ("backend", "other")
        );
        assert!(filter("demo", (Some("backend"), None), None, None).is_err());
        assert!(
            filter("demo", (None, Some("other")), None, None).is_err(),
            "refused, not ignored"
        );
        assert!(filter("demo", (Some("svc/backend"), Some("a.b")), None, None).is_err());
        assert!(filter("demo", (None, None), Some("GE T"), None).is_err());
        assert!(filter("demo", (None, None), None, Some("work")).is_err());
        assert_eq!(
            filter("demo", (None, Some("")), None, None).unwrap(),
            TapFilter::default(),
            "no destination: every namespace"
        );
    }

    /// The filter as the proxies apply it: a same-named destination in another namespace is
    /// not the one asked for.
    #[test]
    fn a_destination_is_matched_in_its_namespace_only() {
        use crate::proxy::tap::matches;
        use crate::xds::tap::{Peer, TapEvent};
        let event = |service: &str, workload: &str, namespace: &str| TapEvent {
            destination_service: service.into(),
            destination: Some(Peer {
                workload: workload.into(),
                namespace: namespace.into(),
                identity: String::new(),
            }),
            path: "/".into(),
            ..TapEvent::default()
        };
        let ours = event("backend.demo.svc.cluster.local", "backend-v1", "demo");
        let theirs = event("backend.other.svc.cluster.local", "backend-v1", "other");
        let svc = filter("demo", (Some("svc/backend"), None), None, None).unwrap();
        assert!(matches(&svc, &ours));
        assert!(!matches(&svc, &theirs));
        let deploy = filter("demo", (Some("deploy/backend-v1"), None), None, None).unwrap();
        assert!(matches(&deploy, &ours));
        assert!(!matches(&deploy, &theirs));
        let other = filter("demo", (Some("svc/backend"), Some("other")), None, None).unwrap();
        assert!(matches(&other, &theirs) && !matches(&other, &ours));
        // No endpoint chosen (no-endpoints): the namespace is the Service's.
        let unanswered = event("backend.other.svc.cluster.local", "", "");
        assert!(matches(&other, &unanswered));
        assert!(!matches(&svc, &unanswered));
        // Inbound, the host as the client wrote it; the namespace is the tapped pod's.
        let inbound = event("backend", "backend-v1", "demo");
        assert!(matches(&svc, &inbound) && !matches(&other, &inbound));
    }
}
