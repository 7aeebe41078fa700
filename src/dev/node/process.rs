//! Starting a container as a process: in the pod's network namespace, in a private mount
//! namespace holding its volumes, resolv.conf and hosts file, with its hostname, working
//! directory and user — what a container runtime does, without an image filesystem.
//!
//! Also entering a running container's namespaces, for `skein dev exec` and exec probes.

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::volumes::Mount;

/// Everything needed to start one container process.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub user: Option<u32>,
    pub group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    /// The pod's network namespace file.
    pub netns: PathBuf,
    pub hostname: String,
    /// Bind mounts, in order, into the container's private mount namespace.
    pub mounts: Vec<Mount>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
}

/// A process running as a container: its own session, so its whole process group can be
/// signalled, including anything it started.
#[derive(Debug)]
pub struct ContainerProcess {
    pub child: tokio::process::Child,
    pub pid: u32,
}

impl ContainerProcess {
    pub fn signal(&self, signal: libc::c_int) {
        signal_group(self.pid, signal);
    }
}

/// Sends `signal` to the process group led by `pid` (a container started by [`spawn`]).
pub fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: plain syscall; a vanished group is ESRCH, ignored.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Creates missing mount points (a directory, or an empty file for a file source) and returns
/// the paths it created, deepest last, so the pod's teardown can remove exactly those.
pub fn prepare_mount_points(mounts: &[Mount]) -> io::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    for mount in mounts {
        if mount.target.exists() {
            continue;
        }
        let source_is_dir = mount.source.is_dir();
        let dir = if source_is_dir {
            mount.target.as_path()
        } else {
            mount.target.parent().unwrap_or(Path::new("/"))
        };
        let mut missing = Vec::new();
        let mut cursor = Some(dir);
        while let Some(path) = cursor {
            if path.exists() {
                break;
            }
            missing.push(path.to_path_buf());
            cursor = path.parent();
        }
        std::fs::create_dir_all(dir)?;
        created.extend(missing.into_iter().rev());
        if !source_is_dir {
            File::create(&mount.target)?;
            created.push(mount.target.clone());
        }
    }
    Ok(created)
}

/// Removes what [`prepare_mount_points`] created, if still empty.
pub fn remove_mount_points(created: &[PathBuf]) {
    for path in created.iter().rev() {
        let removed = if path.is_dir() {
            std::fs::remove_dir(path)
        } else {
            std::fs::remove_file(path)
        };
        if let Err(err) = removed {
            tracing::debug!(path = %path.display(), error = %err, "leaving mount point");
        }
    }
}

struct PreparedMount {
    source: CString,
    target: CString,
    read_only: bool,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts a container process.
pub fn spawn(spec: &ProcessSpec) -> io::Result<ContainerProcess> {
    let netns: OwnedFd = File::open(&spec.netns)?.into();
    let mounts = spec
        .mounts
        .iter()
        .map(|m| {
            Ok(PreparedMount {
                source: c_path(&m.source)?,
                target: c_path(&m.target)?,
                read_only: m.read_only,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let hostname = spec.hostname.clone().into_bytes();
    let working_dir = spec.working_dir.as_deref().map(c_path).transpose()?;
    let ids = Ids {
        user: spec.user,
        group: spec.group,
        supplemental: spec.supplemental_groups.clone(),
    };

    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    let root = c_path(Path::new("/"))?;
    // SAFETY: the closure runs in the forked child before exec and only makes raw syscalls on
    // data prepared above (no allocation, no locks).
    unsafe {
        command.pre_exec(move || {
            // Its own session and process group, so termination reaches everything it starts.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            check(libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            // Private propagation, so these mounts never show up in the machine's namespace.
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for m in &mounts {
                check(libc::mount(
                    m.source.as_ptr(),
                    m.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if m.read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        m.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            // After the mounts, so a working directory inside a volume is the volume's.
            if let Some(dir) = &working_dir {
                check(libc::chdir(dir.as_ptr()))?;
            }
            ids.apply()
        });
    }
    let child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the container process exited before it was tracked"))?;
    Ok(ContainerProcess { child, pid })
}

/// User and groups a process switches to, last, after everything that needs root.
#[derive(Clone, Debug, Default)]
struct Ids {
    user: Option<u32>,
    group: Option<u32>,
    supplemental: Vec<u32>,
}

impl Ids {
    /// Async-signal-safe: no allocation.
    fn apply(&self) -> io::Result<()> {
        if self.user.is_none() && self.group.is_none() {
            return Ok(());
        }
        // SAFETY: plain syscalls on owned data.
        unsafe {
            check(libc::setgroups(
                self.supplemental.len(),
                self.supplemental.as_ptr(),
            ))?;
            if let Some(group) = self.group.or(self.user) {
                check(libc::setgid(group))?;
            }
            if let Some(user) = self.user {
                check(libc::setuid(user))?;
            }
        }
        Ok(())
    }
}

/// What is needed to run a command inside a running container, read from /proc before forking.
pub struct Entered {
    namespaces: Vec<OwnedFd>,
    cwd: Option<CString>,
    ids: Ids,
    pub env: Vec<(OsString, OsString)>,
}

/// Reads a running container process's namespaces, working directory, user and environment.
pub fn enter(pid: u32) -> io::Result<Entered> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    // Mount last: after it, /proc paths would be the container's view.
    let namespaces = ["ns/net", "ns/uts", "ns/mnt"]
        .iter()
        .map(|ns| File::open(proc.join(ns)).map(OwnedFd::from))
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = std::fs::read_link(proc.join("cwd"))
        .ok()
        .and_then(|p| c_path(&p).ok());
    let status = std::fs::read_to_string(proc.join("status"))?;
    let id_line = |key: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let supplemental = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ids = Ids {
        user: id_line("Uid:"),
        group: id_line("Gid:"),
        supplemental,
    };
    let environ = std::fs::read(proc.join("environ"))?;
    let env = environ
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from(std::ffi::OsStr::from_bytes(&kv[..eq])),
                OsString::from(std::ffi::OsStr::from_bytes(&kv[eq + 1..])),
            ))
        })
        .collect();
    Ok(Entered {
        namespaces,
        cwd,
        ids,
        env,
    })
}

impl Entered {
    /// Makes `command` run inside the container: its namespaces, directory, user and env.
    pub fn configure(self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let Entered {
            namespaces,
            cwd,
            ids,
            ..
        } = self;
        // SAFETY: raw syscalls on data prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                for ns in &namespaces {
                    check(libc::setns(ns.as_raw_fd(), 0))?;
                }
                if let Some(dir) = &cwd {
                    // A vanished directory is not worth failing the command for.
                    libc::chdir(dir.as_ptr());
                }
                ids.apply()
            });
        }
    }
}

/// Writes "<pid> <start time>" to `path`, naming a process so that a later run (or
/// `tests/cluster/down.sh`) can stop it without ever hitting a process that reused the PID.
pub fn record(path: &Path, pid: u32) -> io::Result<()> {
    std::fs::write(path, format!("{pid} {}", start_time(pid).unwrap_or(0)))
}

/// The process a [`record`] file names, if it is still that process.
pub fn recorded(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let started: u64 = parts.next()?.parse().ok()?;
    (start_time(pid) == Some(started)).then_some(pid)
}

/// The kernel's start time of a process (clock ticks since boot), which tells a process from a
/// later one that reused its PID.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after its closing
    // parenthesis are plain. starttime is field 22, the 20th after it.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_start_time() {
        let pid = std::process::id();
        let first = start_time(pid).expect("own start time");
        assert_eq!(start_time(pid), Some(first));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn creates_and_removes_only_missing_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let source_dir = dir.path().join("vol");
        std::fs::create_dir(&source_dir).unwrap();
        let source_file = dir.path().join("file");
        std::fs::write(&source_file, "x").unwrap();
        let mounts = vec![
            Mount {
                source: source_dir,
                target: dir.path().join("a/b/c"),
                read_only: false,
            },
            Mount {
                source: source_file,
                target: dir.path().join("d/e.conf"),
                read_only: true,
            },
        ];
        let created = prepare_mount_points(&mounts).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
        assert!(dir.path().join("d/e.conf").is_file());
        assert_eq!(created.len(), 5, "{created:?}");
        remove_mount_points(&created);
        assert!(!dir.path().join("a").exists());
        assert!(!dir.path().join("d").exists());
        assert!(dir.path().join("vol").exists());
    }
}
