//! Services, EndpointSlices and Pods → destinations: addresses, host names, ports and their
//! protocols, endpoints with their pods' labels and workloads.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};

use super::mtls::MeshMtls;
use super::policy::DestinationPolicy;
use crate::api::meshconfig::MtlsMode;
use crate::proxy::config::types::{Destination, DestinationPort, Endpoint, Protocol, Workload};

/// The label the EndpointSlice controller puts on a Service's slices.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Differs per Deployment rollout: as a subset label it would split one version in two, and
/// in workload names it is noise.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Pods by namespace and name.
pub(super) struct PodIndex {
    by_namespace: HashMap<String, HashMap<String, Arc<Pod>>>,
}

impl PodIndex {
    pub fn new(pods: &[Arc<Pod>]) -> Self {
        let mut by_namespace: HashMap<String, HashMap<String, Arc<Pod>>> = HashMap::new();
        for pod in pods {
            if let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) {
                by_namespace
                    .entry(namespace.clone())
                    .or_default()
                    .insert(name.clone(), pod.clone());
            }
        }
        Self { by_namespace }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.get_shared(namespace, name).map(Arc::as_ref)
    }

    pub fn get_shared(&self, namespace: &str, name: &str) -> Option<&Arc<Pod>> {
        self.by_namespace.get(namespace)?.get(name)
    }

    /// The pods of one namespace, in no particular order.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = &Pod> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flat_map(|pods| pods.values().map(Arc::as_ref))
    }
}

/// EndpointSlices by the Service they belong to, each Service's in name order (so which of two
/// slices listing one address wins never depends on the watch cache's order).
pub(super) struct SliceIndex<'a> {
    /// Namespace → Service name → slices.
    by_service: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(slices: &'a [Arc<EndpointSlice>]) -> Self {
        let mut by_service: HashMap<&str, HashMap<&str, Vec<&EndpointSlice>>> = HashMap::new();
        for slice in slices {
            let meta = &slice.metadata;
            let service = meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL));
            if let (Some(namespace), Some(service)) = (&meta.namespace, service) {
                by_service
                    .entry(namespace.as_str())
                    .or_default()
                    .entry(service.as_str())
                    .or_default()
                    .push(slice.as_ref());
            }
        }
        for slices in by_service.values_mut().flat_map(HashMap::values_mut) {
            slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        Self { by_service }
    }

    fn of(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        self.by_service
            .get(namespace)
            .and_then(|services| services.get(service))
            .map_or(&[], Vec::as_slice)
    }
}

/// The workload a pod belongs to: its Deployment (a ReplicaSet owner named
/// `<deployment>-<pod-template-hash>`), else its controller (StatefulSet, DaemonSet, Job, a
/// ReplicaSet of its own), else the pod itself.
pub(super) fn workload_of(pod: &Pod, namespace: &str) -> Workload {
    let meta = &pod.metadata;
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    let name = match owner {
        Some(owner) => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get(POD_TEMPLATE_HASH));
            match hash {
                Some(hash) if owner.kind == "ReplicaSet" => owner
                    .name
                    .strip_suffix(hash.as_str())
                    .and_then(|rest| rest.strip_suffix('-'))
                    .filter(|deployment| !deployment.is_empty())
                    .unwrap_or(&owner.name),
                _ => &owner.name,
            }
        }
        None => meta.name.as_deref().unwrap_or_default(),
    };
    Workload {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    }
}

fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    let mut labels = pod.metadata.labels.clone().unwrap_or_default();
    labels.remove(POD_TEMPLATE_HASH);
    labels
}

/// A Service the mesh routes: its virtual IPs and TCP ports.
struct Routable<'s> {
    addresses: Vec<IpAddr>,
    ports: Vec<(u16, &'s ServicePort)>,
}

fn routable(svc: &Service) -> Result<Routable<'_>, &'static str> {
    let spec = svc.spec.as_ref().ok_or("has no spec")?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err("is an ExternalName Service");
    }
    let ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if ips.contains(&"None") {
        return Err("is headless (clusterIP: None)");
    }
    let addresses: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    if addresses.is_empty() {
        return Err("has no ClusterIP yet");
    }
    let mut ports: Vec<(u16, &ServicePort)> = Vec::new();
    for port in spec.ports.as_deref().unwrap_or_default() {
        // UDP and SCTP are not proxied; unset means TCP.
        if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
            continue;
        }
        let Some(number) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            continue;
        };
        // The apiserver forbids two TCP ports with one number; the proxy would refuse them.
        if ports.iter().all(|(existing, _)| *existing != number) {
            ports.push((number, port));
        }
    }
    if ports.is_empty() {
        return Err("has no TCP port");
    }
    Ok(Routable { addresses, ports })
}

/// Why a Service that exists has no destination (for ResolvedRefs).
pub(super) fn why_skipped(svc: &Service) -> &'static str {
    routable(svc).err().unwrap_or("cannot be routed")
}

/// How a Service port's traffic is handled: `opaquePorts` first, then `appProtocol`, then the
/// port name's prefix (Istio's convention, which many charts follow), else detection.
pub(super) fn port_protocol(port: &ServicePort, number: u16, opaque_ports: &[u16]) -> Protocol {
    if opaque_ports.contains(&number) {
        return Protocol::Opaque;
    }
    if let Some(protocol) = port.app_protocol.as_deref().and_then(known_protocol) {
        return protocol;
    }
    port.name
        .as_deref()
        .and_then(|name| name.split('-').next())
        .and_then(known_protocol)
        .unwrap_or(Protocol::Detect)
}

/// A protocol name as `appProtocol` or a port-name prefix spells it.
fn known_protocol(name: &str) -> Option<Protocol> {
    Some(match name.to_ascii_lowercase().as_str() {
        "http" => Protocol::Http1,
        "http2" | "kubernetes.io/h2c" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        // TLS cannot be looked into anyway; saying so spares the detection wait.
        "tcp" | "tls" | "https" => Protocol::Opaque,
        _ => return None,
    })
}

/// An endpoint of a slice that can take requests, resolved once for all the Service's ports.
struct ServingEndpoint {
    ips: Vec<IpAddr>,
    labels: BTreeMap<String, String>,
    workload: Option<Workload>,
    /// Serving but terminating: a fallback for when nothing else is left.
    terminating: bool,
    /// Its pod, when the cache has it (for its identity).
    pod: Option<Arc<Pod>>,
}

/// Whether an endpoint takes requests, and whether only as a fallback (terminating). The
/// EndpointSlice API's rules: `serving` says whether it answers (set regardless of termination;
/// when absent, `ready` stands in for it), `ready` is false for every terminating endpoint, and
/// an unset condition counts as true, except `terminating`.
fn serving(conditions: Option<&EndpointConditions>) -> Option<Serving> {
    let ready = conditions.and_then(|c| c.ready);
    let serving = conditions.and_then(|c| c.serving).or(ready);
    let terminating = conditions.and_then(|c| c.terminating) == Some(true);
    match serving {
        Some(false) => None,
        _ if terminating => Some(Serving::Terminating),
        _ => Some(Serving::Ready),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serving {
    Ready,
    Terminating,
}

fn serving_endpoints(slice: &EndpointSlice, pods: &PodIndex) -> Vec<ServingEndpoint> {
    // FQDN slices name hosts, not addresses a proxy can connect to.
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    let slice_namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
    slice
        .endpoints
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|endpoint| Some((endpoint, serving(endpoint.conditions.as_ref())?)))
        .map(|(endpoint, serving)| {
            let ips = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            let pod_ref = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let namespace = r.namespace.as_deref().unwrap_or(slice_namespace);
                    Some((namespace, r.name.as_deref()?))
                });
            let pod = pod_ref.and_then(|(namespace, name)| pods.get_shared(namespace, name));
            let (labels, workload) = match pod_ref {
                Some((namespace, name)) => match pod {
                    Some(pod) => (pod_labels(pod), Some(workload_of(pod, namespace))),
                    // Not in the pod cache yet: the pod is all we know.
                    None => (
                        BTreeMap::new(),
                        Some(Workload {
                            name: name.to_owned(),
                            namespace: namespace.to_owned(),
                        }),
                    ),
                },
                None => (BTreeMap::new(), None),
            };
            ServingEndpoint {
                ips,
                labels,
                workload,
                terminating: serving == Serving::Terminating,
                pod: pod.cloned(),
            }
        })
        .collect()
}

/// The destination of a Service, routes aside; None when the mesh does not route it.
pub(super) fn destination(
    svc: &Service,
    slices: &SliceIndex<'_>,
    pods: &PodIndex,
    cluster_domain: &str,
    policy: Option<&DestinationPolicy>,
    mtls: &MeshMtls,
) -> Option<Destination> {
    let namespace = svc.metadata.namespace.as_deref()?;
    let name = svc.metadata.name.as_deref()?;
    let Routable { addresses, ports } = routable(svc).ok()?;

    let slices: Vec<(&EndpointSlice, Vec<ServingEndpoint>)> = slices
        .of(namespace, name)
        .iter()
        .map(|slice| (*slice, serving_endpoints(slice, pods)))
        .collect();
    let opaque_ports = policy.map_or(&[][..], |p| p.opaque_ports.as_slice());
    let ports = ports
        .into_iter()
        .map(|(number, port)| DestinationPort {
            port: number,
            protocol: port_protocol(port, number, opaque_ports),
            endpoints: port_endpoints(port, &slices, mtls, policy.and_then(|p| p.mtls_mode)),
            not_ready_endpoints: not_ready_endpoints(port, &slices),
        })
        .collect();

    let domain = cluster_domain.trim_matches('.');
    let svc_host = format!("{name}.{namespace}.svc");
    let full_name = if domain.is_empty() {
        svc_host.clone()
    } else {
        format!("{svc_host}.{domain}")
    };
    let mut hosts = vec![format!("{name}.{namespace}"), svc_host];
    if !domain.is_empty() {
        hosts.push(full_name.clone());
    }
    Some(Destination {
        name: full_name,
        addresses,
        hosts,
        ports,
        load_balancer: policy.map(|p| p.load_balancer).unwrap_or_default(),
        outlier_detection: policy.and_then(|p| p.outlier_detection.clone()),
        limits: policy.map(|p| p.limits.clone()).unwrap_or_default(),
        routes: Vec::new(),
    })
}

/// The endpoints of one Service port: each slice's serving endpoints on the slice port with the
/// same name, sorted by address, each address once.
/// The endpoints of the slices carrying `port` that cannot take requests (neither serving
/// nor terminating-but-serving): the pods the Service has besides its ready ones.
fn not_ready_endpoints(
    port: &ServicePort,
    slices: &[(&EndpointSlice, Vec<ServingEndpoint>)],
) -> u32 {
    let name = port.name.as_deref().unwrap_or_default();
    let count: usize = slices
        .iter()
        .filter(|(slice, _)| {
            slice
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|p| p.name.as_deref().unwrap_or_default() == name)
        })
        .flat_map(|(slice, _)| slice.endpoints.as_deref().unwrap_or_default())
        .filter(|endpoint| serving(endpoint.conditions.as_ref()).is_none())
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn port_endpoints(
    port: &ServicePort,
    slices: &[(&EndpointSlice, Vec<ServingEndpoint>)],
    mtls: &MeshMtls,
    client_mtls: Option<MtlsMode>,
) -> Vec<Endpoint> {
    let name = port.name.as_deref().unwrap_or_default();
    let mut endpoints = Vec::new();
    for (slice, serving) in slices {
        let target = slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let Some(target) = target else { continue };
        for endpoint in serving {
            let identity = endpoint
                .pod
                .as_ref()
                .and_then(|pod| mtls.endpoint_identity(pod, target, client_mtls));
            // A caller told to use mTLS only (its TrafficPolicy's `Strict`) never gets an
            // endpoint it would have to reach in plaintext.
            if identity.is_none() && client_mtls == Some(MtlsMode::Strict) {
                continue;
            }
            let http2_upgrade = identity.is_some()
                && endpoint
                    .pod
                    .as_deref()
                    .is_some_and(super::mtls::takes_http2_upgrade);
            for ip in &endpoint.ips {
                endpoints.push(Endpoint {
                    address: SocketAddr::new(*ip, target),
                    labels: endpoint.labels.clone(),
                    workload: endpoint.workload.clone(),
                    terminating: endpoint.terminating,
                    identity: identity.clone(),
                    http2_upgrade,
                });
            }
        }
    }
    // An address listed twice: a serving endpoint wins over a terminating one (a new pod can
    // get the address of one still being removed, and must not be hidden behind it); then the
    // first slice by name (stable sort), as during a slice's replacement.
    endpoints.sort_by_key(|e| (e.address, e.terminating));
    endpoints.dedup_by_key(|e| e.address);
    endpoints
}
