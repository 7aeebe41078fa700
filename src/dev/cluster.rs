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
}

/// Starts the named local cluster, or reuses it if it is already healthy, and returns the path
/// of its admin kubeconfig. The script's progress goes to this process's stderr.
pub fn ensure_up(source_dir: &Path, name: &str) -> Result<PathBuf, ClusterError> {
    let script = source_dir.join("tests/cluster/up.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(name)
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

/// Builds the control plane's binaries if they are not cached yet and returns their directory
/// (which also holds a `kubectl` of the cluster's version).
pub fn bin_dir(source_dir: &Path) -> Result<PathBuf, ClusterError> {
    let script = source_dir.join("tests/cluster/build.sh");
    let output = Command::new("bash")
        .arg(&script)
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
