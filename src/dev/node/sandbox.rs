//! A pod's sandbox: its network namespace and IP, its /etc/resolv.conf and /etc/hosts, and the
//! on-disk record that lets a restarted node find what an earlier run left behind.
//!
//! Layout under the node's state directory (plain files, so `tests/cluster/down.sh` can clean up
//! after a node that was killed):
//!
//! ```text
//! pods/<uid>/sandbox.json        namespace, name, IP, netns
//! pods/<uid>/netns               the netns name
//! pods/<uid>/pids/<container>    "<pid> <start time>" of each running container process
//! pods/<uid>/logs/<container>.log
//! pods/<uid>/volumes/<volume>/
//! pods/<uid>/etc/{resolv.conf,hosts}
//! ```

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::netns::Netns;
use super::network::{NetworkError, NodeNetwork, host_veth_name};
use super::process;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod has no UID")]
    NoUid,
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("pod network: {0}")]
    Network(#[from] NetworkError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What is written to `sandbox.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// None for host-network pods (they use the node's namespace and address).
    pub ip: Option<Ipv4Addr>,
    pub netns: String,
}

/// A pod's sandbox on this node.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub dir: PathBuf,
    pub record: SandboxRecord,
}

impl Sandbox {
    pub fn netns(&self) -> Netns {
        Netns::named(&self.record.netns)
    }

    pub fn log_path(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.log"))
    }

    pub fn volume_dir(&self, volume: &str) -> PathBuf {
        self.dir.join("volumes").join(volume)
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("etc/resolv.conf")
    }

    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("etc/hosts")
    }

    fn pid_path(&self, container: &str) -> PathBuf {
        self.dir.join("pids").join(container)
    }

    /// Remembers a running container process (and when it started, against PID reuse).
    pub fn record_pid(&self, container: &str, pid: u32) {
        if let Err(err) = process::record(&self.pid_path(container), pid) {
            tracing::warn!(container, error = %err, "cannot record the container's PID");
        }
    }

    pub fn forget_pid(&self, container: &str) {
        let _ = std::fs::remove_file(self.pid_path(container));
    }

    /// Kills container processes an earlier run of the node left behind, so no container ever
    /// runs twice. Returns how many it killed.
    pub fn kill_leftovers(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.join("pids")) else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            if let Some(pid) = process::recorded(&entry.path()) {
                process::signal_group(pid, libc::SIGKILL);
                killed += 1;
            }
            let _ = std::fs::remove_file(entry.path());
        }
        killed
    }

    /// Removes everything: processes, network namespace, files. The IP is free
    /// again once the directory is gone.
    pub fn destroy(self) -> Result<(), SandboxError> {
        self.kill_leftovers();
        if self.record.ip.is_some() {
            // The veth pair goes with the pod's namespace.
            self.netns().delete().map_err(NetworkError::from)?;
        }
        std::fs::remove_dir_all(&self.dir).map_err(io_err("removing", &self.dir))
    }

    /// Removes the network namespace and processes but keeps the record (and so the IP), for a
    /// node that stops and will start the pod again.
    pub fn suspend(&self) -> Result<(), SandboxError> {
        self.kill_leftovers();
        if self.record.ip.is_some() {
            self.netns().delete().map_err(NetworkError::from)?;
        }
        Ok(())
    }
}

/// The pods directory of a node's state directory.
pub fn pods_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pods")
}

/// Sandboxes recorded by earlier runs.
pub fn recorded(state_dir: &Path) -> Vec<Sandbox> {
    let Ok(entries) = std::fs::read_dir(pods_dir(state_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let path = dir.join("sandbox.json");
            let text = std::fs::read_to_string(&path).ok()?;
            match serde_json::from_str(&text) {
                Ok(record) => Some(Sandbox { dir, record }),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "ignoring a broken sandbox record");
                    None
                }
            }
        })
        .collect()
}

/// The IPs recorded sandboxes hold.
pub fn used_ips(state_dir: &Path) -> BTreeSet<Ipv4Addr> {
    recorded(state_dir)
        .into_iter()
        .filter_map(|s| s.record.ip)
        .collect()
}

/// Cluster DNS settings for pods' resolv.conf.
#[derive(Clone, Debug)]
pub struct Dns {
    pub nameserver: Ipv4Addr,
    pub cluster_domain: String,
}

/// Creates the pod's sandbox, or completes and reuses the one recorded for the same UID (keeping
/// its IP). `allocate` picks an IP for a new pod.
pub fn ensure(
    state_dir: &Path,
    pod: &Pod,
    network: &NodeNetwork,
    dns: &Dns,
    allocate: impl FnOnce() -> Result<Ipv4Addr, NetworkError>,
) -> Result<Sandbox, SandboxError> {
    let uid = pod.uid().ok_or(SandboxError::NoUid)?;
    let dir = pods_dir(state_dir).join(&uid);
    let record_path = dir.join("sandbox.json");
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let record = match std::fs::read_to_string(&record_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| SandboxError::Record {
            path: record_path.clone(),
            source,
        })?,
        Err(_) => SandboxRecord {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: uid.clone(),
            ip: if host_network {
                None
            } else {
                Some(allocate()?)
            },
            netns: if host_network {
                network.netns.name.clone()
            } else {
                format!("skein-pod-{uid}")
            },
        },
    };
    for sub in ["logs", "pids", "volumes", "etc"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(io_err("creating", &path))?;
    }
    let json = serde_json::to_string_pretty(&record).unwrap_or_default();
    std::fs::write(&record_path, json).map_err(io_err("writing", &record_path))?;
    let netns_file = dir.join("netns");
    std::fs::write(&netns_file, &record.netns).map_err(io_err("writing", &netns_file))?;

    let sandbox = Sandbox { dir, record };
    if let Some(ip) = sandbox.record.ip {
        network.attach(&sandbox.netns(), ip, &host_veth_name(&uid))?;
    }
    let resolv = resolv_conf(pod, dns);
    std::fs::write(sandbox.resolv_conf(), resolv)
        .map_err(io_err("writing", &sandbox.resolv_conf()))?;
    let ip = sandbox.record.ip.unwrap_or_else(|| network.node_ip());
    std::fs::write(sandbox.hosts_file(), hosts_file(pod, ip))
        .map_err(io_err("writing", &sandbox.hosts_file()))?;
    Ok(sandbox)
}

/// The pod's hostname: `spec.hostname`, else its name (truncated to a DNS label).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.name_any());
    name.chars().take(63).collect()
}

/// resolv.conf for the pod's `dnsPolicy` (ClusterFirst by default) and `dnsConfig`.
pub fn resolv_conf(pod: &Pod, dns: &Dns) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let namespace = pod.namespace().unwrap_or_default();
    let domain = &dns.cluster_domain;
    let (mut nameservers, mut searches, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "Default" => (Vec::new(), Vec::new(), Vec::new()),
        "ClusterFirst" if host_network => (Vec::new(), Vec::new(), Vec::new()),
        _ => (
            vec![dns.nameserver.to_string()],
            vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ],
            vec!["ndots:5".to_owned()],
        ),
    };
    if let Some(config) = &spec.dns_config {
        nameservers.extend(config.nameservers.iter().flatten().cloned());
        searches.extend(config.searches.iter().flatten().cloned());
        for option in config.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            options.retain(|o: &String| o.split(':').next() != Some(name.as_str()));
            options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name,
            });
        }
    }
    let mut text = String::new();
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

/// /etc/hosts as the kubelet writes it.
pub fn hosts_file(pod: &Pod, ip: Ipv4Addr) -> String {
    let mut text = String::from(
        "# Kubernetes-managed hosts file (Skein dev node).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let host = hostname(pod);
    let fqdn = pod
        .spec
        .as_ref()
        .and_then(|s| s.subdomain.clone())
        .map(|sub| {
            format!(
                "{host}.{sub}.{}.svc.cluster.local\t",
                pod.namespace().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    text.push_str(&format!("{ip}\t{fqdn}{host}\n"));
    for alias in pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default()
    {
        let names = alias.hostnames.unwrap_or_default().join("\t");
        text.push_str(&format!(
            "\n# Entries added by HostAliases.\n{}\t{names}\n",
            alias.ip
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn dns() -> Dns {
        Dns {
            nameserver: Ipv4Addr::new(198, 19, 0, 10),
            cluster_domain: "cluster.local".to_owned(),
        }
    }

    #[test]
    fn cluster_first_resolv_conf_searches_the_namespace() {
        let text = resolv_conf(&pod(serde_json::json!({"containers": []})), &dns());
        assert_eq!(
            text,
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.19.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn dns_config_adds_to_the_policy_and_overrides_options() {
        let text = resolv_conf(
            &pod(serde_json::json!({
                "containers": [],
                "dnsConfig": {"nameservers": ["198.18.0.1"], "options": [{"name": "ndots", "value": "2"}]}
            })),
            &dns(),
        );
        assert!(
            text.contains("nameserver 198.19.0.10\nnameserver 198.18.0.1\n"),
            "{text}"
        );
        assert!(text.ends_with("options ndots:2\n"), "{text}");
        let none = resolv_conf(
            &pod(
                serde_json::json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"]}}),
            ),
            &dns(),
        );
        assert_eq!(none, "nameserver 1.2.3.4\n");
    }

    #[test]
    fn hosts_file_names_the_pod_and_its_aliases() {
        let text = hosts_file(
            &pod(serde_json::json!({
                "containers": [], "hostname": "db", "subdomain": "dbs",
                "hostAliases": [{"ip": "198.18.0.9", "hostnames": ["a.example", "b.example"]}]
            })),
            Ipv4Addr::new(198, 18, 0, 7),
        );
        assert!(
            text.contains("198.18.0.7\tdb.dbs.shop.svc.cluster.local\tdb\n"),
            "{text}"
        );
        assert!(
            text.contains("198.18.0.9\ta.example\tb.example\n"),
            "{text}"
        );
    }
}
