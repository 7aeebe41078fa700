//! What every pod worker on the node shares: the API client, the pod network, DNS settings,
//! IP allocation, the Service cache and the "image" (the local skein binary).

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use super::network::{NetworkError, NodeNetwork};
use super::sandbox::Dns;

/// Node capacity, as reported on the Node and used for downward-API resource fields.
#[derive(Clone, Copy, Debug)]
pub struct Allocatable {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Allocatable {
    /// This machine's CPUs and memory.
    pub fn of_machine() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory_kib: i64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(1 << 20);
        Self {
            cpu_millis: i64::try_from(cpus).unwrap_or(1) * 1000,
            memory_bytes: memory_kib * 1024,
        }
    }
}

/// The project image, as the dev node runs it: a copy of the skein binary in a directory every
/// container user can reach (the source may sit under a private home directory). Re-copied when
/// the source changes, like pulling a new image; running containers keep the old file.
#[derive(Debug)]
pub struct ImageCache {
    pub source: PathBuf,
    pub dir: PathBuf,
    copied: Mutex<Option<(SystemTime, u64, PathBuf)>>,
}

impl ImageCache {
    pub fn new(source: PathBuf, dir: PathBuf) -> Self {
        Self {
            source,
            dir,
            copied: Mutex::new(None),
        }
    }

    /// The binary to run, copying the source first if it changed.
    pub fn current(&self) -> io::Result<PathBuf> {
        let meta = std::fs::metadata(&self.source)?;
        let stamp = (meta.modified()?, meta.len());
        let mut copied = self
            .copied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((modified, len, path)) = copied.as_ref()
            && (*modified, *len) == stamp
            && path.exists()
        {
            return Ok(path.clone());
        }
        std::fs::create_dir_all(&self.dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        let generation = stamp
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let target = self.dir.join(format!("skein-{generation}"));
        let partial = self.dir.join(format!(".skein-{generation}.partial"));
        std::fs::copy(&self.source, &partial)?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&partial, &target)?;
        if let Some((_, _, old)) = copied.replace((stamp.0, stamp.1, target.clone())) {
            // Unlinking is safe for processes still running it.
            let _ = std::fs::remove_file(old);
        }
        Ok(target)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Paths the node created on the machine as mount points, one per line (read by
/// `tests/cluster/down.sh` too).
fn mount_points_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("mountpoints")
}

pub struct NodeContext {
    pub client: Client,
    pub node_name: String,
    pub network: NodeNetwork,
    pub dns: Dns,
    /// The node's state directory (pods, logs, volumes).
    pub state_dir: PathBuf,
    pub image: ImageCache,
    /// First crash back-off; doubles per crash up to five minutes.
    pub backoff_base: Duration,
    pub allocatable: Allocatable,
    /// PATH for commands that are not the skein binary (they run from the machine).
    pub host_path: String,
    pub services: Store<Service>,
    pub pod_ips: Mutex<PodIps>,
}

/// The pod addresses in use, and the one handed out last (allocation goes round from it).
#[derive(Debug, Default)]
pub struct PodIps {
    pub used: BTreeSet<Ipv4Addr>,
    pub last: Option<Ipv4Addr>,
}

impl NodeContext {
    pub fn allocate_ip(&self) -> Result<Ipv4Addr, NetworkError> {
        let mut ips = self
            .pod_ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ip = self.network.pod_cidr.allocate(&ips.used, ips.last)?;
        ips.used.insert(ip);
        ips.last = Some(ip);
        Ok(ip)
    }

    pub fn release_ip(&self, ip: Ipv4Addr) {
        self.pod_ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .used
            .remove(&ip);
    }

    /// Remembers paths created on the machine as mount points. They belong to the node, not to
    /// one pod: removing a directory that is a mount point in another pod's mount namespace
    /// would detach that pod's mount, so they go only when the node stops.
    pub fn note_mount_points(&self, created: &[PathBuf]) {
        if created.is_empty() {
            return;
        }
        let _guard = self
            .pod_ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = mount_points_file(&self.state_dir);
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        for created in created {
            text.push_str(&created.to_string_lossy());
            text.push('\n');
        }
        if let Err(err) = std::fs::write(&path, text) {
            tracing::warn!(error = %err, "cannot record mount points");
        }
    }

    /// Removes the mount points the node created; only once no container runs.
    pub fn remove_mount_points(&self) {
        let path = mount_points_file(&self.state_dir);
        let created: Vec<PathBuf> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(PathBuf::from)
            .collect();
        super::process::remove_mount_points(&created);
        let _ = std::fs::remove_file(path);
    }

    pub fn services_in(&self, namespace: &str) -> Vec<Service> {
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(namespace))
            .map(|s| (**s).clone())
            .collect()
    }

    /// The `kubernetes` Service, whose variables every container gets.
    pub fn master_services(&self) -> Vec<Service> {
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some("default") && s.name_any() == "kubernetes")
            .map(|s| (**s).clone())
            .collect()
    }
}
