//! Mutual TLS in the proxies' configuration: which endpoints callers reach over mTLS (and as
//! whom), and which inbound connections each proxy requires it for.
//!
//! - A pod is meshed when the injector gave it its proxy (the `skein.dev/injection-status`
//!   annotation); its identity is its service account's:
//!   `spiffe://<mtls.trustDomain>/ns/<namespace>/sa/<serviceAccountName or default>`.
//! - Server side: MeshConfig `mtls.mode` for every port (`Permissive` by default).
//! - An endpoint carries its identity, so callers originate mTLS to it, when its pod is meshed,
//!   its mode is not `Disabled`, and the caller's TrafficPolicy for the Service does not set
//!   `mtlsMode: Disabled`.
//! - Under `Strict` the kubelet's probes still come in as plaintext: each proxy is told its
//!   node's address (`status.hostIP`) and the ports (and HTTP paths) of its containers' probes.

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::MeshConfigSpec;
use crate::api::meshconfig::MtlsMode;
use crate::identity::SpiffeId;
use crate::inject::patch::STATUS_ANNOTATION;
use crate::proxy::config::types::{InboundMtls, ProbePort};

/// The mesh-wide settings the translation needs.
#[derive(Clone, Debug)]
pub(super) struct MeshMtls {
    pub trust_domain: String,
    pub mode: MtlsMode,
}

impl MeshMtls {
    pub fn from_mesh(mesh: &MeshConfigSpec) -> Self {
        Self {
            trust_domain: mesh.mtls.trust_domain.clone(),
            mode: mesh.mtls.mode,
        }
    }

    /// The server-side mode of `pod`'s `port`.
    pub fn mode_for(&self, _pod: &Pod, _port: u16) -> MtlsMode {
        self.mode
    }

    /// The identity callers must see when they reach `pod` on `port` with mTLS; `None`: they
    /// speak plaintext to it.
    pub fn endpoint_identity(
        &self,
        pod: &Pod,
        port: u16,
        client_mode: Option<MtlsMode>,
    ) -> Option<String> {
        if client_mode == Some(MtlsMode::Disabled) || self.mode_for(pod, port) == MtlsMode::Disabled
        {
            return None;
        }
        identity_of(pod, &self.trust_domain).map(|id| id.to_string())
    }

    /// The inbound side of `pod`'s proxy.
    pub fn inbound(&self, pod: Option<&Pod>) -> InboundMtls {
        let Some(pod) = pod else {
            return InboundMtls {
                mode: self.mode,
                ..InboundMtls::default()
            };
        };
        InboundMtls {
            mode: self.mode,
            port_modes: Default::default(),
            probes: probe_ports(pod),
            node_ip: pod
                .status
                .as_ref()
                .and_then(|status| status.host_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
        }
    }
}

/// A meshed pod's identity; `None` for a pod without Skein's proxy.
pub(super) fn identity_of(pod: &Pod, trust_domain: &str) -> Option<SpiffeId> {
    let meshed = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(STATUS_ANNOTATION));
    if !meshed {
        return None;
    }
    let namespace = pod.metadata.namespace.as_deref()?;
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    Some(SpiffeId::new(trust_domain, namespace, service_account))
}

/// The ports (with their HTTP paths) the kubelet probes, over every container; sorted.
fn probe_ports(pod: &Pod) -> Vec<ProbePort> {
    let mut ports: Vec<ProbePort> = Vec::new();
    let containers = pod.spec.iter().flat_map(|spec| &spec.containers);
    for container in containers {
        for probe in [
            &container.liveness_probe,
            &container.readiness_probe,
            &container.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            let Some((port, path)) = probe_target(container, probe) else {
                continue;
            };
            let index = match ports.iter().position(|p| p.port == port) {
                Some(index) => index,
                None => {
                    ports.push(ProbePort {
                        port,
                        http_paths: Vec::new(),
                    });
                    ports.len() - 1
                }
            };
            if let Some(path) = path
                && !ports[index].http_paths.contains(&path)
            {
                ports[index].http_paths.push(path);
            }
        }
    }
    for port in &mut ports {
        port.http_paths.sort();
    }
    ports.sort_by_key(|p| p.port);
    ports
}

/// A probe's port and, for HTTP, its path (as the kubelet sends it: the path without query).
fn probe_target(container: &Container, probe: &Probe) -> Option<(u16, Option<String>)> {
    if let Some(http) = &probe.http_get {
        let path = http.path.as_deref().unwrap_or("/");
        let path = path.split('?').next().unwrap_or("/");
        return Some((resolve_port(container, &http.port)?, Some(path.to_owned())));
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Some((resolve_port(container, &tcp.port)?, None));
    }
    if let Some(grpc) = &probe.grpc {
        return Some((u16::try_from(grpc.port).ok()?, None));
    }
    None
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(number) => u16::try_from(*number).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotated: bool, sa: Option<&str>) -> Pod {
        let annotations = if annotated {
            serde_json::json!({STATUS_ANNOTATION: "{}"})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "demo", "annotations": annotations},
            "spec": {
                "serviceAccountName": sa,
                "containers": [{
                    "name": "web",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/ready?full=1", "port": "http"}},
                    "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
                    "startupProbe": {"tcpSocket": {"port": 9000}}
                }]
            },
            "status": {"hostIP": "10.0.0.1"}
        }))
        .unwrap()
    }

    fn mesh(mode: MtlsMode) -> MeshMtls {
        MeshMtls {
            trust_domain: "td".to_owned(),
            mode,
        }
    }

    #[test]
    fn meshed_pods_are_reached_as_their_service_account_unless_disabled() {
        let permissive = mesh(MtlsMode::Permissive);
        assert_eq!(
            permissive.endpoint_identity(&pod(true, Some("web")), 8080, None),
            Some("spiffe://td/ns/demo/sa/web".to_owned())
        );
        assert_eq!(
            permissive.endpoint_identity(&pod(true, None), 8080, None),
            Some("spiffe://td/ns/demo/sa/default".to_owned())
        );
        // Not meshed: nobody would terminate the TLS.
        assert_eq!(
            permissive.endpoint_identity(&pod(false, Some("web")), 8080, None),
            None
        );
        // Disabled by the caller's TrafficPolicy, or on the server side.
        assert_eq!(
            permissive.endpoint_identity(&pod(true, Some("web")), 8080, Some(MtlsMode::Disabled)),
            None
        );
        assert_eq!(
            mesh(MtlsMode::Disabled).endpoint_identity(&pod(true, Some("web")), 8080, None),
            None
        );
    }

    #[test]
    fn the_inbound_side_knows_the_node_and_the_probes() {
        let inbound = mesh(MtlsMode::Strict).inbound(Some(&pod(true, None)));
        assert_eq!(inbound.mode, MtlsMode::Strict);
        assert_eq!(inbound.node_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            inbound.probes,
            vec![
                ProbePort {
                    port: 8080,
                    http_paths: vec!["/live".to_owned(), "/ready".to_owned()],
                },
                ProbePort {
                    port: 9000,
                    http_paths: vec![],
                },
            ]
        );
    }
}
