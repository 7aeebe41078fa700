//! The Node object and its heartbeat: what makes the scheduler place pods here and the node
//! lifecycle controller consider the node alive.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::context::Allocatable;
use super::network::Ipv4Cidr;
use crate::api::names;

/// Namespace of node heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Full status is re-posted this often even without changes (the kubelet's default is 5 min).
const STATUS_REFRESH: Duration = Duration::from_secs(60);
/// Label on Nodes run by `skein dev node`.
pub const DEV_NODE_LABEL: &str = "skein.dev/dev-node";
/// Pods per node, the kubelet's default.
const MAX_PODS: &str = "110";

/// Who this node is.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub pod_cidr: Ipv4Cidr,
    pub node_ip: Ipv4Addr,
    pub allocatable: Allocatable,
    /// The cluster's version, reported as the kubelet's.
    pub kubernetes_version: String,
    pub started: Timestamp,
}

/// Metadata and spec, server-side applied.
pub fn node_object(id: &NodeIdentity) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), id.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        ),
        (DEV_NODE_LABEL.to_owned(), "true".to_owned()),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(id.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(id.pod_cidr.to_string()),
            pod_cidrs: Some(vec![id.pod_cidr.to_string()]),
            ..NodeSpec::default()
        }),
        ..Node::default()
    }
}

/// The status of a working node.
pub fn node_status(id: &NodeIdentity, now: Timestamp, ready: bool) -> NodeStatus {
    let resources = BTreeMap::from([
        (
            "cpu".to_owned(),
            Quantity(format!("{}m", id.allocatable.cpu_millis)),
        ),
        (
            "memory".to_owned(),
            Quantity(id.allocatable.memory_bytes.to_string()),
        ),
        ("pods".to_owned(), Quantity(MAX_PODS.to_owned())),
        ("ephemeral-storage".to_owned(), Quantity("100Gi".to_owned())),
    ]);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(if ready { id.started } else { now })),
    };
    let (ready_status, ready_reason, ready_message) = if ready {
        (
            "True",
            "KubeletReady",
            "skein dev node is posting ready status",
        )
    } else {
        (
            "False",
            "NodeAgentStopped",
            "the skein dev node agent stopped",
        )
    };
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "no memory pressure",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "no PID pressure",
            ),
            condition("Ready", ready_status, ready_reason, ready_message),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(super::kubelet_api::PORT),
            }),
        }),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: id.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: id.name.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.to_owned(),
            operating_system: "linux".to_owned(),
            os_image: "Skein dev node (pods as processes)".to_owned(),
            kernel_version: kernel_version(),
            container_runtime_version: format!("skein-dev-node://{}", names::SKEIN_VERSION),
            kubelet_version: id.kubernetes_version.clone(),
            kube_proxy_version: id.kubernetes_version.clone(),
            machine_id: String::new(),
            system_uuid: String::new(),
            boot_id: String::new(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The heartbeat Lease, owned by the Node so it goes when the Node does.
pub fn lease(id: &NodeIdentity, node_uid: Option<String>, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(id.name.clone()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Node".to_owned(),
                    name: id.name.clone(),
                    uid,
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(id.name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply("skein-dev-node").force()
}

/// Creates or updates the Node and marks it Ready; returns its UID.
pub async fn register(client: &Client, id: &NodeIdentity) -> Result<Option<String>, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .patch(&id.name, &apply_params(), &Patch::Apply(&node_object(id)))
        .await?;
    post_status(client, id, true).await?;
    Ok(node.uid())
}

pub async fn post_status(
    client: &Client,
    id: &NodeIdentity,
    ready: bool,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "status": node_status(id, Timestamp::now(), ready) });
    nodes
        .patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Renews the Lease and re-posts the status, forever.
pub async fn heartbeat(client: Client, id: NodeIdentity, node_uid: Option<String>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let mut last_status = tokio::time::Instant::now();
    loop {
        let lease = lease(&id, node_uid.clone(), Timestamp::now());
        if let Err(err) = leases
            .patch(&id.name, &apply_params(), &Patch::Apply(&lease))
            .await
        {
            tracing::warn!(error = %err, "renewing the node lease");
        }
        if last_status.elapsed() >= STATUS_REFRESH {
            match post_status(&client, &id, true).await {
                Ok(()) => last_status = tokio::time::Instant::now(),
                Err(err) => tracing::warn!(error = %err, "posting node status"),
            }
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeIdentity {
        NodeIdentity {
            name: "dev-node".to_owned(),
            pod_cidr: "198.18.0.0/24".parse().unwrap(),
            node_ip: Ipv4Addr::new(198, 18, 0, 1),
            allocatable: Allocatable {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
            },
            kubernetes_version: "v1.37.2".to_owned(),
            started: Timestamp::from_second(1_800_000_000).unwrap(),
        }
    }

    #[test]
    fn node_carries_its_pod_cidr_and_labels() {
        let node = node_object(&id());
        let spec = node.spec.unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("198.18.0.0/24"));
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "dev-node");
        assert_eq!(labels[DEV_NODE_LABEL], "true");
    }

    #[test]
    fn status_reports_ready_capacity_and_address() {
        let status = node_status(&id(), Timestamp::now(), true);
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(
            status.allocatable.unwrap()["cpu"],
            Quantity("2000m".to_owned())
        );
        assert_eq!(status.addresses.unwrap()[0].address, "198.18.0.1");
        let stopped = node_status(&id(), Timestamp::now(), false);
        assert!(
            stopped
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
        );
    }

    #[test]
    fn lease_is_held_by_the_node_and_owned_by_it() {
        let lease = lease(&id(), Some("uid-1".to_owned()), Timestamp::now());
        assert_eq!(lease.metadata.namespace.as_deref(), Some("kube-node-lease"));
        assert_eq!(lease.metadata.owner_references.unwrap()[0].uid, "uid-1");
        assert_eq!(
            lease.spec.unwrap().holder_identity.as_deref(),
            Some("dev-node")
        );
    }
}
