//! Processes `skein dev up` leaves running after it exits (the node agent, the operator, the
//! control plane): detached in their own session, logging to the cluster's `logs/`, with PID
//! files in its `pids/` where `tests/cluster/down.sh` stops them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

/// A background process of a local cluster.
pub struct Background {
    /// Name of its PID file and log.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Background {
    fn pid_file(&self, cluster_dir: &Path) -> PathBuf {
        cluster_dir.join("pids").join(&self.name)
    }

    pub fn log_file(&self, cluster_dir: &Path) -> PathBuf {
        cluster_dir.join("logs").join(format!("{}.log", self.name))
    }

    /// Whether the process its PID file names is alive. A zombie is not: it has exited and
    /// only waits to be reaped (its parent, `skein dev up`, is long gone, and not every init
    /// reaps promptly).
    pub fn running(&self, cluster_dir: &Path) -> bool {
        std::fs::read_to_string(self.pid_file(cluster_dir))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            .is_some_and(alive)
    }

    /// An error naming the process and the end of its log if it is no longer running: what a
    /// wait on its work reports at once instead of timing out.
    pub fn still_running(&self, cluster_dir: &Path) -> anyhow::Result<()> {
        if self.running(cluster_dir) {
            return Ok(());
        }
        let log = self.log_file(cluster_dir);
        let tail = super::log_tail(&log, 15).unwrap_or_default();
        anyhow::bail!(
            "{} exited; the end of its log ({}):\n{}",
            self.name,
            log.display(),
            super::indent(&tail)
        )
    }

    /// Starts the program unless it already runs; returns whether it started it.
    pub fn ensure(&self, cluster_dir: &Path) -> anyhow::Result<bool> {
        if self.running(cluster_dir) {
            return Ok(false);
        }
        let log_path = self.log_file(cluster_dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid in the forked child, before exec: its own session, so it outlives this
        // command and a Ctrl-C here does not reach it.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        let pid_file = self.pid_file(cluster_dir);
        std::fs::write(&pid_file, child.id().to_string())
            .with_context(|| format!("writing {}", pid_file.display()))?;
        Ok(true)
    }
}

/// The process exists and has not exited (`/proc/PID/stat` state other than `Z` or `X`).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}
