//! The local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler)
//! that `tests/cluster/up.sh` builds from source and starts on loopback. Used by `skein dev`
//! and by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube::Client;

use crate::cli::connect::{ConnectError, KubeArgs};

/// Name of the cluster `skein dev up` starts.
pub const DEFAULT_CLUSTER: &str = "skein-dev";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("running {script}: {source}")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("{script} failed ({status}); its output above says why")]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error(
        "{script} did not print `export KUBECONFIG=<path>` as its last line (got {last_line:?})"
    )]
    NoKubeconfig { script: PathBuf, last_line: String },
    #[error("{0}")]
    Connect(ConnectError),
    #[error(
        "{0} is not a Skein source checkout (no tests/cluster/up.sh): give the checkout with --source-dir or SKEIN_SOURCE_DIR"
    )]
    NotSourceDir(PathBuf),
    #[error(
        "no Skein source checkout in {0} or above it: run from the checkout (the local cluster is built from its tests/cluster/), or give --source-dir or SKEIN_SOURCE_DIR"
    )]
    NoSourceDir(PathBuf),
}

/// The pieces `tests/cluster/build.sh` builds, by who needs them, so each command builds only
/// its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildGroup {
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl.
    Cluster,
    /// kube-proxy, CoreDNS and skein-kubelet-streams, for `skein dev node`.
    Node,
    /// kwok, helm and the proxy tests' peers: only the tests use them.
    Test,
}

impl BuildGroup {
    pub const ALL: &[Self] = &[Self::Cluster, Self::Node, Self::Test];

    fn arg(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Node => "node",
            Self::Test => "test",
        }
    }
}

/// The Skein checkout whose `tests/cluster/` scripts build and run the local cluster: `explicit`
/// (`--source-dir`), else the working directory or the nearest directory above it that is one.
/// Never the directory the binary was built in, which an installed binary cannot rely on.
pub fn source_dir(explicit: Option<&Path>) -> Result<PathBuf, ClusterError> {
    let is_checkout = |dir: &Path| dir.join("tests/cluster/up.sh").is_file();
    if let Some(dir) = explicit {
        return if is_checkout(dir) {
            Ok(dir.to_owned())
        } else {
            Err(ClusterError::NotSourceDir(dir.to_owned()))
        };
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .find(|dir| is_checkout(dir))
        .map(Path::to_owned)
        .ok_or(ClusterError::NoSourceDir(cwd))
}

/// How the apiserver reaches pods, Services and nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiserverNetwork {
    /// It need not: a cluster without a node, or whose webhooks are all URLs on this machine.
    /// A running cluster started `ThroughNode` is reused as it is.
    LoopbackOnly,
    /// Through `skein dev node` (its `egress` module), as on a real cluster: webhooks behind
    /// Services, the kubelet API, pod and Service proxies. Needs the node running.
    ThroughNode,
}

/// Starts the named local cluster, or reuses it if it is already healthy (and, when `network`
/// asks for `ThroughNode`, was started that way), and returns the path of its admin kubeconfig. The script's progress goes to this
/// process's stderr.
pub fn ensure_up(
    source_dir: &Path,
    name: &str,
    network: ApiserverNetwork,
) -> Result<PathBuf, ClusterError> {
    let script = source_dir.join("tests/cluster/up.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(name)
        .args((network == ApiserverNetwork::ThroughNode).then_some("--node-network"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| ClusterError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ClusterError::Failed {
            script,
            status: output.status,
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last_line = stdout.lines().last().unwrap_or_default().trim();
    parse_export_line(last_line).ok_or_else(|| ClusterError::NoKubeconfig {
        script,
        last_line: last_line.to_owned(),
    })
}

/// Builds the binaries of `groups` that are not cached yet (progress on stderr) and returns their
/// directory (which also holds a `kubectl` of the cluster's version).
pub fn bin_dir(source_dir: &Path, groups: &[BuildGroup]) -> Result<PathBuf, ClusterError> {
    let script = source_dir.join("tests/cluster/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(groups.iter().map(|g| g.arg()))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| ClusterError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ClusterError::Failed {
            script,
            status: output.status,
        });
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// Stops the named local cluster and deletes its state.
pub fn down(source_dir: &Path, name: &str) -> Result<(), ClusterError> {
    let script = source_dir.join("tests/cluster/down.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stdin(Stdio::null())
        .status()
        .map_err(|source| ClusterError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !status.success() {
        return Err(ClusterError::Failed { script, status });
    }
    Ok(())
}

/// The state directory of the named cluster, as `tests/cluster/up.sh` lays it out:
/// `${SKEIN_STATE_DIR:-$HOME/.local/state/skein}/clusters/NAME`.
pub fn state_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("SKEIN_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".local/state/skein")
        });
    root.join("clusters").join(name)
}

/// A client for the cluster behind `kubeconfig`.
pub async fn client(kubeconfig: &Path) -> Result<Client, ClusterError> {
    KubeArgs::file(kubeconfig)
        .client()
        .await
        .map_err(ClusterError::Connect)
}

/// `export KUBECONFIG=/abs/path` → `/abs/path`.
fn parse_export_line(line: &str) -> Option<PathBuf> {
    let path = line
        .strip_prefix("export KUBECONFIG=")?
        .trim_matches(['"', '\'']);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kubeconfig_from_the_export_line() {
        assert_eq!(
            parse_export_line("export KUBECONFIG=/tmp/x/kubeconfig"),
            Some(PathBuf::from("/tmp/x/kubeconfig"))
        );
        assert_eq!(
            parse_export_line("export KUBECONFIG='/a b/k'"),
            Some(PathBuf::from("/a b/k"))
        );
        assert_eq!(parse_export_line("export KUBECONFIG="), None);
        assert_eq!(parse_export_line("cluster ready"), None);
    }
}
