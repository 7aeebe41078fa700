//! The node's pod network, all of it inside namespaces the node creates:
//!
//! ```text
//!   node netns  <cluster>.<node>
//!     skein0 (bridge)  <podCIDR>.1   = the node's InternalIP and every pod's gateway
//!     kube-proxy's iptables rules, CoreDNS, relays to the machine's loopback
//!       │ veth (hairpin on: a pod may reach itself through a Service)
//!   pod netns   skein-pod-<uid>
//!     eth0 <podCIDR>.N   routes: the cluster's pod CIDR and Service CIDR via the gateway, nothing else
//! ```
//!
//! Pods have no default route: traffic can only reach pods, Services and the node, never leave
//! the machine. The machine's own namespace gets no interface, route, rule or sysctl; the node
//! reaches the apiserver through relays (see `relay.rs`). Bridged traffic passes the node
//! namespace's iptables (`net.bridge.bridge-nf-call-iptables`, a per-namespace setting), so
//! kube-proxy's DNAT sees pod-to-pod Service traffic exactly as on a kubenet node.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::netns::{Netns, NetnsError};

/// The bridge inside the node's namespace.
pub const BRIDGE: &str = "skein0";
/// The pod's interface, as in every Kubernetes network plugin.
pub const POD_INTERFACE: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid IPv4 CIDR {0:?} (expected a.b.c.d/len with len 8-30 and no host bits)")]
    InvalidCidr(String),
    #[error("no free address left in pod CIDR {0}")]
    Exhausted(Ipv4Cidr),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The `n`th address of the network (0 is the network address).
    pub fn nth_host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// The first host address: the node's address and the pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth_host(1)
    }

    /// The next address no pod holds (after the gateway, before the broadcast address), going
    /// round from the one after `last`, as CNI's host-local IPAM does: an address a pod just
    /// gave up is reused last, so callers never mistake a new pod for the old one whose
    /// endpoint they may still hold (terminating) or remember.
    pub fn allocate(
        &self,
        used: &BTreeSet<Ipv4Addr>,
        last: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, NetworkError> {
        let hosts = 2..self.size() - 1;
        let start = last
            .filter(|ip| self.contains(*ip))
            .map(|ip| u32::from(ip) - u32::from(self.network) + 1)
            .filter(|n| hosts.contains(n))
            .unwrap_or(hosts.start);
        (start..hosts.end)
            .chain(hosts.start..start)
            .map(|n| self.nth_host(n))
            .find(|ip| !used.contains(ip))
            .ok_or(NetworkError::Exhausted(*self))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetworkError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || NetworkError::InvalidCidr(input.to_owned());
        let (ip, prefix) = input.split_once('/').ok_or_else(invalid)?;
        let network: Ipv4Addr = ip.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if !(8..=30).contains(&prefix) {
            return Err(invalid());
        }
        let cidr = Self { network, prefix };
        if !cidr.contains(network) || u32::from(network) & !(u32::MAX << (32 - prefix)) != 0 {
            return Err(invalid());
        }
        Ok(cidr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The node's side of the pod network.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    pub netns: Netns,
    pub pod_cidr: Ipv4Cidr,
    /// Routed from every pod: all pods of the cluster, and Service VIPs.
    pub cluster_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
}

impl NodeNetwork {
    pub fn node_ip(&self) -> Ipv4Addr {
        self.pod_cidr.gateway()
    }

    /// Creates (or completes) the node namespace and its bridge; safe to repeat.
    pub fn ensure(&self) -> Result<(), NetworkError> {
        self.netns.ensure()?;
        if self.netns.ip(&["link", "show", BRIDGE]).is_err() {
            self.netns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        }
        let address = format!("{}/{}", self.node_ip(), self.pod_cidr.prefix);
        self.netns
            .ip(&["addr", "replace", &address, "dev", BRIDGE])?;
        self.netns.ip(&["link", "set", BRIDGE, "up"])?;
        // Service VIPs are routable from the node itself, as on a real node: what the
        // apiserver's tunnels (`egress`) dial for a webhook behind a Service. kube-proxy's
        // OUTPUT rules then rewrite the VIP to a pod; a VIP with no route would fail first.
        let services = self.service_cidr.to_string();
        self.netns
            .ip(&["route", "replace", &services, "dev", BRIDGE])?;
        // Routing between pods and toward Service backends, and iptables on bridged frames so
        // that kube-proxy's NAT applies to pod-to-pod traffic on the same bridge. Both are
        // settings of this namespace only.
        self.netns.sysctl("net.ipv4.ip_forward", "1")?;
        self.netns
            .sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
        Ok(())
    }

    pub fn delete(&self) -> Result<(), NetworkError> {
        Ok(self.netns.delete()?)
    }

    /// Wires a pod namespace to the bridge with `ip`; safe to repeat for a half-wired pod.
    pub fn attach(&self, pod: &Netns, ip: Ipv4Addr, host_veth: &str) -> Result<(), NetworkError> {
        pod.ensure()?;
        if pod.ip(&["link", "show", POD_INTERFACE]).is_err() {
            // A leftover host side from an interrupted attach would make `add` fail.
            let _ = self.netns.ip(&["link", "delete", host_veth]);
            self.netns.ip(&[
                "link",
                "add",
                host_veth,
                "type",
                "veth",
                "peer",
                "name",
                POD_INTERFACE,
                "netns",
                &pod.name,
            ])?;
        }
        self.netns
            .ip(&["link", "set", host_veth, "master", BRIDGE])?;
        self.netns.ip(&[
            "link",
            "set",
            host_veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        self.netns.ip(&["link", "set", host_veth, "up"])?;

        let address = format!("{ip}/{}", self.pod_cidr.prefix);
        pod.ip(&["addr", "replace", &address, "dev", POD_INTERFACE])?;
        pod.ip(&["link", "set", POD_INTERFACE, "up"])?;
        let gateway = self.node_ip().to_string();
        // The node's own /24 is on-link; these cover other nodes' pods and the Service VIPs.
        for cidr in [self.cluster_cidr, self.service_cidr] {
            pod.ip(&[
                "route",
                "replace",
                &cidr.to_string(),
                "via",
                &gateway,
                "dev",
                POD_INTERFACE,
            ])?;
        }
        Ok(())
    }
}

/// The node-side veth name for a pod: interface names are at most 15 bytes, so a prefix of the
/// pod's UID (unique on the node in practice) stands for the pod.
pub fn host_veth_name(pod_uid: &str) -> String {
    let id: String = pod_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(11)
        .collect();
    format!("sk{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects_cidrs() {
        assert_eq!(
            cidr("198.18.0.0/24"),
            Ipv4Cidr {
                network: Ipv4Addr::new(198, 18, 0, 0),
                prefix: 24
            }
        );
        for bad in [
            "198.18.0.1/24",
            "198.18.0.0",
            "198.18.0.0/31",
            "10.0.0.0/7",
            "x/24",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn allocates_after_the_gateway_and_skips_used_addresses() {
        let pods = cidr("198.18.0.0/29");
        assert_eq!(pods.gateway(), Ipv4Addr::new(198, 18, 0, 1));
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        let mut last = None;
        while let Ok(ip) = pods.allocate(&used, last) {
            used.insert(ip);
            got.push(ip.octets()[3]);
            last = Some(ip);
        }
        // .0 network, .1 gateway, .7 broadcast.
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        // Full: a released address is the only one left, wherever the round is.
        used.remove(&Ipv4Addr::new(198, 18, 0, 4));
        assert_eq!(
            pods.allocate(&used, last).unwrap(),
            Ipv4Addr::new(198, 18, 0, 4)
        );
    }

    #[test]
    fn a_released_address_is_reused_last() {
        let pods = cidr("198.18.0.0/29");
        let ip = |n| Ipv4Addr::new(198, 18, 0, n);
        let mut used = BTreeSet::from([ip(2), ip(3)]);
        // .2 is released right after .3 was handed out: .4, .5, .6 come first.
        used.remove(&ip(2));
        let mut last = Some(ip(3));
        let mut got = Vec::new();
        for _ in 0..4 {
            let next = pods.allocate(&used, last).unwrap();
            used.insert(next);
            got.push(next.octets()[3]);
            last = Some(next);
        }
        assert_eq!(got, vec![4, 5, 6, 2]);
    }

    #[test]
    fn contains_checks_the_prefix() {
        let cluster = cidr("198.18.0.0/16");
        assert!(cluster.contains(Ipv4Addr::new(198, 18, 200, 1)));
        assert!(!cluster.contains(Ipv4Addr::new(198, 19, 0, 1)));
    }

    #[test]
    fn veth_names_fit_in_an_interface_name() {
        let name = host_veth_name("0b8f3c2e-7a41-4d2b-9c55-1f0e2d3c4b5a");
        assert_eq!(name, "sk0b8f3c2e7a4");
        assert!(name.len() <= 15);
    }
}
