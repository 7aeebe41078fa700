//! `skein version`: this binary's version and, when a cluster is reachable, the mesh's — as
//! `istioctl version` and `linkerd version` print them.
//!
//! Where each version comes from (all read through the apiserver, nothing is port-forwarded):
//! - **mesh**: the active MeshConfig's `status.version`, the version the operator installed.
//! - **control plane**: the image tag of the `control-plane` container of each Running
//!   control-plane pod in `skein-system` (their `app.kubernetes.io/version` label if the image
//!   has no tag), counted per version so a rollout in progress shows both. A control plane run
//!   outside the cluster (MeshConfig External mode, as `skein dev up` does) has no pods there;
//!   the mesh version is then the only server-side one.
//! - **data plane**: the image tag of the `skein-proxy` container of every Running pod (the
//!   `skein.dev/proxy-version` annotation the injector writes if the image has no tag), counted
//!   per version. The image is what actually runs, even where an annotation overrides it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, ListParams};
use kube::core::Selector;
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::connect::KubeArgs;
use super::output::{self, OutputArgs};
use crate::api::{MeshConfig, names};
use crate::inject::patch::VERSION_ANNOTATION;
use crate::operator::desired::{CONTROL_PLANE_CONTAINER, control_plane_selector};
use crate::operator::federation::describe;

/// How long the cluster may take to answer before only the client's version is printed.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pods per list request, so a large cluster is read in pages.
const PAGE: u32 = 500;
const VERSION_LABEL: &str = "app.kubernetes.io/version";

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Print only this binary's version; do not contact a cluster.
    #[arg(long)]
    pub client: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What `skein version` prints (`-o json|yaml` shows these fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    pub client_version: String,
    /// Absent with `--client` or when no cluster answered.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterVersions>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterVersions {
    /// The active MeshConfig's `status.version`; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_version: Option<String>,
    /// Running control-plane pods per version.
    pub control_plane: Vec<VersionCount>,
    /// Running pods with a `skein-proxy` container per proxy version.
    pub data_plane: Vec<VersionCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionCount {
    pub version: String,
    pub count: usize,
}

pub async fn run(args: &VersionArgs) -> anyhow::Result<()> {
    let cluster = if args.client {
        None
    } else {
        match tokio::time::timeout(CLUSTER_TIMEOUT, cluster_versions(&args.kube)).await {
            Ok(Ok(versions)) => Some(versions),
            // One line, not the client's retries: no cluster is a normal case for `version`.
            Ok(Err(err)) => {
                eprintln!("skein: no cluster versions: {err:#}");
                None
            }
            Err(_) => {
                eprintln!("skein: no cluster versions: no answer within {CLUSTER_TIMEOUT:?}");
                None
            }
        }
    };
    let versions = Versions {
        client_version: names::SKEIN_VERSION.to_owned(),
        cluster,
    };
    print!("{}", output::render(args.output.format, &versions, table)?);
    Ok(())
}

async fn cluster_versions(kube: &KubeArgs) -> anyhow::Result<ClusterVersions> {
    let client = kube.client().await?;
    let mesh = match Api::<MeshConfig>::all(client.clone())
        .get(names::ACTIVE_MESHCONFIG)
        .await
    {
        Ok(mesh) => Some(mesh),
        // No such MeshConfig, or no Skein CRDs installed at all.
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(err) => anyhow::bail!("reading the MeshConfig: {}", describe(&err)),
    };
    let mesh_version = mesh.and_then(|mesh| mesh.status?.version);
    let selector = Selector::try_from(control_plane_selector())
        .context("the control plane's label selector")?;
    let control_plane = running_pods(
        &client,
        Some(names::MESH_NAMESPACE),
        ListParams::default().labels_from(&selector),
    )
    .await
    .map_err(|err| anyhow::anyhow!("listing the control-plane pods: {}", describe(&err)))?;
    let proxies = running_pods(&client, None, ListParams::default())
        .await
        .map_err(|err| anyhow::anyhow!("listing the pods: {}", describe(&err)))?;
    Ok(ClusterVersions {
        mesh_version,
        control_plane: count(control_plane.iter().filter_map(control_plane_version)),
        data_plane: count(proxies.iter().filter_map(proxy_version)),
    })
}

/// Every Running pod (of `namespace`, else of all), read in pages.
async fn running_pods(
    client: &Client,
    namespace: Option<&str>,
    params: ListParams,
) -> Result<Vec<Pod>, kube::Error> {
    let api: Api<Pod> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let params = params.fields("status.phase=Running").limit(PAGE);
    let mut pods = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = match &token {
            Some(token) => params.clone().continue_token(token),
            None => params.clone(),
        };
        let list = api.list(&page).await?;
        pods.extend(list.items);
        token = list.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(pods);
        }
    }
}

/// The version a control-plane pod runs: its container's image tag, else its version label.
fn control_plane_version(pod: &Pod) -> Option<String> {
    let container = container(pod, CONTROL_PLANE_CONTAINER)?;
    Some(
        image_tag(container)
            .or_else(|| pod.labels().get(VERSION_LABEL).cloned())
            .unwrap_or_else(unknown),
    )
}

/// The proxy version of a meshed pod (None for a pod without the proxy).
fn proxy_version(pod: &Pod) -> Option<String> {
    let container = container(pod, names::PROXY_CONTAINER)?;
    Some(
        image_tag(container)
            .or_else(|| pod.annotations().get(VERSION_ANNOTATION).cloned())
            .unwrap_or_else(unknown),
    )
}

fn unknown() -> String {
    "unknown".to_owned()
}

/// The container named `name`, regular or init (a native-sidecar proxy is an init container).
fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
}

/// `registry:5000/skein:0.1.0@sha256:...` → `0.1.0`; None for an image without a tag.
fn image_tag(container: &Container) -> Option<String> {
    let image = container.image.as_deref()?;
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    let (_, tag) = last.rsplit_once(':')?;
    (!tag.is_empty()).then(|| tag.to_owned())
}

/// Occurrences per version, by version.
fn count(versions: impl Iterator<Item = String>) -> Vec<VersionCount> {
    let mut counts = BTreeMap::new();
    for version in versions {
        *counts.entry(version).or_insert(0) += 1;
    }
    counts
        .into_iter()
        .map(|(version, count)| VersionCount { version, count })
        .collect()
}

/// The lines `version` prints without `-o`.
pub fn table(versions: &Versions) -> String {
    let mut out = format!("client version: {}\n", versions.client_version);
    let Some(cluster) = &versions.cluster else {
        return out;
    };
    let mesh = cluster
        .mesh_version
        .as_deref()
        .unwrap_or("none (no MeshConfig status)");
    out.push_str(&format!("mesh version: {mesh}\n"));
    out.push_str(&format!(
        "control plane version: {}\n",
        counted(
            &cluster.control_plane,
            "pod",
            "pods",
            "no Running pods in the cluster"
        )
    ));
    out.push_str(&format!(
        "data plane version: {}\n",
        counted(
            &cluster.data_plane,
            "proxy",
            "proxies",
            "no Running proxies"
        )
    ));
    out
}

/// `0.1.0 (3 proxies), 0.0.9 (1 proxy)`.
fn counted(versions: &[VersionCount], one: &str, many: &str, none: &str) -> String {
    if versions.is_empty() {
        return none.to_owned();
    }
    versions
        .iter()
        .map(|v| {
            let noun = if v.count == 1 { one } else { many };
            format!("{} ({} {noun})", v.version, v.count)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a pod")
    }

    #[test]
    fn the_proxy_version_is_its_image_tag_else_the_injector_annotation() {
        let native = pod(serde_json::json!({
            "spec": {
                "initContainers": [{"name": "skein-proxy", "image": "registry:5000/skein:0.2.0"}],
                "containers": [{"name": "app", "image": "app:9"}],
            },
        }));
        assert_eq!(proxy_version(&native).as_deref(), Some("0.2.0"));
        let regular_by_digest = pod(serde_json::json!({
            "metadata": {"annotations": {VERSION_ANNOTATION: "0.1.0"}},
            "spec": {"containers": [
                {"name": "skein-proxy", "image": "registry:5000/skein@sha256:abcd"},
            ]},
        }));
        assert_eq!(proxy_version(&regular_by_digest).as_deref(), Some("0.1.0"));
        let untagged = pod(serde_json::json!({
            "spec": {"containers": [{"name": "skein-proxy", "image": "skein"}]},
        }));
        assert_eq!(proxy_version(&untagged).as_deref(), Some("unknown"));
        let unmeshed = pod(serde_json::json!({
            "spec": {"containers": [{"name": "app", "image": "app:9"}]},
        }));
        assert_eq!(proxy_version(&unmeshed), None);
    }

    #[test]
    fn the_control_plane_version_falls_back_to_its_label() {
        let tagged = pod(serde_json::json!({
            "metadata": {"labels": {VERSION_LABEL: "0.1.0"}},
            "spec": {"containers": [{"name": "control-plane", "image": "ghcr.io/x/skein:0.3.0"}]},
        }));
        assert_eq!(control_plane_version(&tagged).as_deref(), Some("0.3.0"));
        let untagged = pod(serde_json::json!({
            "metadata": {"labels": {VERSION_LABEL: "0.1.0"}},
            "spec": {"containers": [{"name": "control-plane", "image": "skein"}]},
        }));
        assert_eq!(control_plane_version(&untagged).as_deref(), Some("0.1.0"));
    }

    #[test]
    fn versions_are_counted_and_printed_like_istioctl() {
        let data_plane = count(["0.2.0", "0.1.0", "0.2.0"].map(str::to_owned).into_iter());
        assert_eq!(
            data_plane,
            [
                VersionCount {
                    version: "0.1.0".to_owned(),
                    count: 1
                },
                VersionCount {
                    version: "0.2.0".to_owned(),
                    count: 2
                },
            ]
        );
        let versions = Versions {
            client_version: "0.2.0".to_owned(),
            cluster: Some(ClusterVersions {
                mesh_version: Some("0.2.0".to_owned()),
                control_plane: Vec::new(),
                data_plane,
            }),
        };
        assert_eq!(
            table(&versions),
            "client version: 0.2.0\n\
             mesh version: 0.2.0\n\
             control plane version: no Running pods in the cluster\n\
             data plane version: 0.1.0 (1 proxy), 0.2.0 (2 proxies)\n"
        );
        let json = serde_json::to_value(&versions).expect("json");
        assert_eq!(json["clientVersion"], "0.2.0");
        assert_eq!(json["dataPlane"][1]["count"], 2);
        let client_only = Versions {
            client_version: "0.2.0".to_owned(),
            cluster: None,
        };
        assert_eq!(
            serde_json::to_value(&client_only).expect("json"),
            serde_json::json!({"clientVersion": "0.2.0"})
        );
        assert_eq!(table(&client_only), "client version: 0.2.0\n");
    }
}
