//! Named network namespaces (`ip netns`, so `ip netns list` shows what the node made) and running
//! code inside one.
//!
//! A thread's network namespace is its own (`setns` changes only the calling thread), and a socket
//! stays in the namespace it was created in. So code that must open a socket inside a namespace
//! runs on a short-lived thread that joins it; the socket it returns works from any thread.
//! Never on tokio's blocking pool: those threads are reused.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Where `ip netns add NAME` mounts a namespace.
const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("running `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("entering network namespace {name}: {source}")]
    Enter { name: String, source: io::Error },
    #[error("a thread inside network namespace {0} panicked")]
    ThreadPanicked(String),
}

/// A named network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Creates the namespace unless it exists, with its loopback up.
    pub fn ensure(&self) -> Result<(), NetnsError> {
        if !self.exists() {
            ip(&["netns", "add", &self.name])?;
        }
        self.ip(&["link", "set", "lo", "up"])
    }

    /// Deletes the namespace; a missing one is not an error.
    pub fn delete(&self) -> Result<(), NetnsError> {
        if self.exists() {
            ip(&["netns", "delete", &self.name])?;
        }
        Ok(())
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Writes a per-namespace sysctl (`net.ipv4.ip_forward` → /proc/sys/net/ipv4/ip_forward) as
    /// seen from inside the namespace; the machine's own value is untouched.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value))?
            .map_err(|source| NetnsError::Enter {
                name: format!("{} (sysctl {key})", self.name),
                source,
            })
    }

    /// Runs `work` on a new thread inside this namespace and returns its result.
    pub fn run<T, F>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let file = File::open(self.path()).map_err(|source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        })?;
        run_in(file, &self.name, work)
    }

    /// [`Netns::run`] for async callers: the namespace thread is waited for off the runtime.
    pub async fn run_async<T, F>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let netns = self.clone();
        tokio::task::spawn_blocking(move || netns.run(work))
            .await
            .map_err(|_| NetnsError::ThreadPanicked(self.name.clone()))?
    }
}

/// Runs `work` on a new thread inside the network namespace `file` (a named one, or a process's
/// `/proc/PID/ns/net`) and returns its result; `name` names it in errors.
pub fn run_in<T, F>(file: File, name: &str, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let enter_error = |source| NetnsError::Enter {
        name: name.to_owned(),
        source,
    };
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> io::Result<T> {
            // SAFETY: `file` is an open file; setns affects only this thread and fails on
            // anything but a network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(work())
        })
        .map_err(enter_error)?;
    handle
        .join()
        .map_err(|_| NetnsError::ThreadPanicked(name.to_owned()))?
        .map_err(enter_error)
}

/// Runs `ip ARGS...`, turning a failure into an error carrying its stderr.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
