//! The node's add-ons, real upstream binaries inside the node's network namespace:
//! kube-proxy (iptables mode) programs Service VIPs for traffic from pods, CoreDNS (kubernetes
//! plugin) answers Service names. Plus the Service and EndpointSlices that point pods at them
//! and at the apiserver (the local cluster runs no endpoint reconciler: it listens on loopback
//! only, so the node publishes its relay as the `kubernetes` Service's endpoint).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use super::netns::Netns;
use super::process::{self, ProcessSpec};

const FIELD_MANAGER: &str = "skein-dev-node";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "skein-dev-node.skein.dev";
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// CoreDNS's health and readiness ports, on the node address.
const COREDNS_HEALTH_PORT: u16 = 8080;
const COREDNS_READY_PORT: u16 = 8181;
const RESTART_DELAY: Duration = Duration::from_secs(2);

/// kube-proxy's flags: iptables mode, and nothing that would touch the machine's global
/// settings (conntrack table sizes and timeouts are global sysctls; localhost NodePorts need
/// route_localnet).
pub fn kube_proxy_args(kubeconfig: &Path, node_name: &str, cluster_cidr: &str) -> Vec<String> {
    [
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--proxy-mode=iptables",
        "--hostname-override",
        node_name,
        "--cluster-cidr",
        cluster_cidr,
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--iptables-localhost-nodeports=false",
        "--oom-score-adj=0",
        "--metrics-bind-address=127.0.0.1:10249",
        "--healthz-bind-address=127.0.0.1:10256",
        "--v=1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// CoreDNS answering cluster names only: with no `forward`, other names are refused (pods
/// cannot reach off the machine anyway).
pub fn corefile(node_ip: Ipv4Addr, kubeconfig: &Path, context: &str) -> String {
    format!(
        "{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{\n\
         \x20   bind {node_ip}\n\
         \x20   errors\n\
         \x20   health {node_ip}:{COREDNS_HEALTH_PORT}\n\
         \x20   ready {node_ip}:{COREDNS_READY_PORT}\n\
         \x20   kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n\
         \x20       kubeconfig {kubeconfig} {context}\n\
         \x20       pods insecure\n\
         \x20       fallthrough in-addr.arpa ip6.arpa\n\
         \x20       ttl 5\n\
         \x20   }}\n\
         \x20   cache 5\n\
         \x20   loadbalance\n\
         }}\n",
        kubeconfig = kubeconfig.display(),
    )
}

/// `kube-system/kube-dns` at the cluster DNS address, without a selector: its endpoint is
/// CoreDNS on the node.
pub fn dns_service(dns_ip: Ipv4Addr) -> Service {
    let port = |name: &str, protocol: &str| ServicePort {
        name: Some(name.to_owned()),
        port: 53,
        protocol: Some(protocol.to_owned()),
        target_port: Some(IntOrString::Int(53)),
        ..ServicePort::default()
    };
    Service {
        metadata: ObjectMeta {
            name: Some("kube-dns".to_owned()),
            namespace: Some("kube-system".to_owned()),
            labels: Some(BTreeMap::from([
                ("k8s-app".to_owned(), "kube-dns".to_owned()),
                ("kubernetes.io/name".to_owned(), "CoreDNS".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(dns_ip.to_string()),
            ports: Some(vec![port("dns", "UDP"), port("dns-tcp", "TCP")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// An EndpointSlice for a selector-less Service, with one endpoint on this node.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    node_name: &str,
    ip: Ipv4Addr,
    ports: &[(&str, &str, u16)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-{node_name}")),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.to_owned(), service.to_owned()),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(node_name.to_owned()),
            ..Endpoint::default()
        }]),
        ports: Some(
            ports
                .iter()
                .map(|(name, protocol, port)| EndpointPort {
                    name: Some((*name).to_owned()),
                    protocol: Some((*protocol).to_owned()),
                    port: Some(i32::from(*port)),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}

/// Publishes the DNS Service and the endpoints of DNS and of the apiserver relay.
pub async fn publish(
    client: &Client,
    node_name: &str,
    node_ip: Ipv4Addr,
    dns_ip: Ipv4Addr,
    apiserver_port: u16,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    services
        .patch("kube-dns", &params, &Patch::Apply(&dns_service(dns_ip)))
        .await?;
    let dns = endpoint_slice(
        "kube-system",
        "kube-dns",
        node_name,
        node_ip,
        &[("dns", "UDP", 53), ("dns-tcp", "TCP", 53)],
    );
    let api = endpoint_slice(
        "default",
        "kubernetes",
        node_name,
        node_ip,
        &[("https", "TCP", apiserver_port)],
    );
    for slice in [dns, api] {
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let name = slice.metadata.name.clone().unwrap_or_default();
        Api::<EndpointSlice>::namespaced(client.clone(), &namespace)
            .patch(&name, &params, &Patch::Apply(&slice))
            .await?;
    }
    Ok(())
}

/// A daemon of the node (kube-proxy, CoreDNS), restarted whenever it exits.
pub struct Daemon {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub netns: Netns,
    pub hostname: String,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl Daemon {
    /// Supervises the daemon until the task is aborted (which kills it).
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let spec = ProcessSpec {
                program: self.program.clone(),
                args: self.args.clone(),
                env: std::env::vars().collect(),
                working_dir: None,
                user: None,
                group: None,
                supplemental_groups: Vec::new(),
                netns: self.netns.path(),
                hostname: self.hostname.clone(),
                mounts: Vec::new(),
                log: self.log.clone(),
            };
            // One left by a node agent that was killed would fight the new one.
            if let Some(pid) = process::recorded(&self.pid_file) {
                tracing::info!(
                    daemon = self.name,
                    pid,
                    "stopping the copy a previous node run left"
                );
                process::signal_group(pid, libc::SIGKILL);
            }
            loop {
                match process::spawn(&spec) {
                    Ok(mut child) => {
                        let pid = child.pid;
                        let _ = process::record(&self.pid_file, pid);
                        tracing::info!(daemon = self.name, pid, "started");
                        // Killed with its group when this task is dropped.
                        let guard = KillOnDrop(pid);
                        let exit = child.child.wait().await;
                        drop(guard);
                        tracing::warn!(daemon = self.name, ?exit, log = %self.log.display(), "exited; restarting");
                    }
                    Err(err) => {
                        tracing::warn!(daemon = self.name, error = %err, "cannot start; retrying")
                    }
                }
                tokio::time::sleep(RESTART_DELAY).await;
            }
        })
    }
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        process::signal_group(self.0, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_never_sets_global_sysctls() {
        let args = kube_proxy_args(Path::new("/k"), "n1", "198.18.0.0/16");
        for flag in [
            "--conntrack-max-per-core=0",
            "--iptables-localhost-nodeports=false",
            "--proxy-mode=iptables",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing");
        }
    }

    #[test]
    fn corefile_serves_the_cluster_domain_on_the_node_address() {
        let text = corefile(Ipv4Addr::new(198, 18, 0, 1), Path::new("/kc"), "dev");
        assert!(text.starts_with("cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {\n"));
        assert!(text.contains("    bind 198.18.0.1\n"));
        assert!(text.contains("        kubeconfig /kc dev\n"));
        assert!(!text.contains("forward"));
    }

    #[test]
    fn endpoint_slices_name_their_service() {
        let slice = endpoint_slice(
            "default",
            "kubernetes",
            "n1",
            Ipv4Addr::new(198, 18, 0, 1),
            &[("https", "TCP", 6443)],
        );
        assert_eq!(slice.metadata.name.as_deref(), Some("kubernetes-n1"));
        assert_eq!(
            slice.metadata.labels.unwrap()[SERVICE_NAME_LABEL],
            "kubernetes"
        );
        assert_eq!(slice.ports.unwrap()[0].port, Some(6443));
    }
}
