//! `skein dev up`'s first step: check, in seconds, that this machine can run the local cluster and
//! node, before anything slow starts. On Debian, tools that are missing are installed with apt-get
//! (from the same list `tests/install-deps.sh` reads); elsewhere one line names each one and how
//! to get it.
//!
//! Go and disk space for building Kubernetes are checked by `tests/cluster/build.sh` itself,
//! which knows whether anything needs building.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The machine's tools the local cluster and node use: `tests/cluster/host-tools.txt`, compiled
/// in so an installed binary checks the same list.
const HOST_TOOLS: &str = include_str!("../../tests/cluster/host-tools.txt");

/// Free space the cluster's state (etcd, logs, pods' volumes) needs at least.
const MIN_FREE_STATE_BYTES: u64 = 1 << 30;

/// A command the local cluster or node runs, and the Debian package that has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTool {
    pub command: String,
    pub package: String,
    pub purpose: String,
}

/// What stops `skein dev up` on this machine. Each displays as one line that says how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("`skein dev` runs pods as processes in Linux network namespaces; this is {0}")]
    NotLinux(&'static str),
    #[error(
        "`skein dev up` must run as root (it creates network namespaces and iptables rules): sudo -E {0}"
    )]
    NotRoot(String),
    #[error("missing {}: install {} (Debian/Ubuntu: apt-get install {})", commands(.0), what_for(.0), packages(.0))]
    Missing(Vec<HostTool>),
    #[error(
        "`{command}` does not work here ({detail}); pods' traffic capture needs it (is the nf_tables or ip_tables kernel module available?)"
    )]
    Broken { command: String, detail: String },
    #[error("{path} has {free_mib} MiB free; the local cluster needs at least {need_mib} MiB")]
    LowDisk {
        path: PathBuf,
        free_mib: u64,
        need_mib: u64,
    },
}

fn commands(tools: &[HostTool]) -> String {
    tools
        .iter()
        .map(|t| t.command.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn what_for(tools: &[HostTool]) -> String {
    match tools {
        [one] => format!("it ({})", one.purpose),
        _ => "them".to_owned(),
    }
}

fn packages(tools: &[HostTool]) -> String {
    let mut packages: Vec<&str> = tools.iter().map(|t| t.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    packages.join(" ")
}

/// Parses the host-tools list: `command package purpose...` per line, `#` comments.
pub fn parse_host_tools(text: &str) -> Vec<HostTool> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let command = fields.next()?.to_owned();
            let package = fields.next()?.to_owned();
            let purpose = fields.collect::<Vec<_>>().join(" ");
            Some(HostTool {
                command,
                package,
                purpose,
            })
        })
        .collect()
}

pub fn host_tools() -> Vec<HostTool> {
    parse_host_tools(HOST_TOOLS)
}

/// Where to look for commands: `PATH`, as the node and the cluster scripts will.
#[derive(Clone, Debug)]
pub struct SearchPath(Vec<PathBuf>);

impl SearchPath {
    pub fn from_env() -> Self {
        Self::new(std::env::var_os("PATH").unwrap_or_default())
    }

    pub fn new(path: OsString) -> Self {
        Self(std::env::split_paths(&path).collect())
    }

    /// The first executable file named `command`.
    pub fn find(&self, command: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.0.iter().map(|dir| dir.join(command)).find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

/// The tools of `tools` that `path` lacks.
pub fn missing_tools(tools: &[HostTool], path: &SearchPath) -> Vec<HostTool> {
    tools
        .iter()
        .filter(|tool| path.find(&tool.command).is_none())
        .cloned()
        .collect()
}

/// Runs every check; on Debian, installs missing tools first. Returns the one line that says
/// what stops `skein dev up`, if anything does.
pub fn check(state_dir: &Path) -> Result<(), Problem> {
    if !cfg!(target_os = "linux") {
        return Err(Problem::NotLinux(std::env::consts::OS));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let invocation: Vec<String> = std::env::args().collect();
        return Err(Problem::NotRoot(invocation.join(" ")));
    }
    let path = SearchPath::from_env();
    let tools = host_tools();
    let mut missing = missing_tools(&tools, &path);
    if !missing.is_empty() && can_apt_install(&path) {
        apt_install(&missing);
        missing = missing_tools(&tools, &path);
    }
    if !missing.is_empty() {
        return Err(Problem::Missing(missing));
    }
    for command in ["iptables", "ip6tables"] {
        works(command, &["-w", "-t", "nat", "-S"])?;
    }
    free_space(state_dir)
}

/// apt-get is here and this is Debian (or a derivative): what tests/install-deps.sh does.
fn can_apt_install(path: &SearchPath) -> bool {
    path.find("apt-get").is_some() && Path::new("/etc/debian_version").exists()
}

/// Best effort: whatever is still missing afterwards is reported by the caller.
fn apt_install(missing: &[HostTool]) {
    let packages = packages(missing);
    eprintln!(
        "dev up: installing {packages} with apt-get (missing: {})",
        commands(missing)
    );
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(packages.split(' '));
    if !(run(&["update", "-qq"]) && run(&install)) {
        eprintln!("dev up: apt-get could not install {packages}");
    }
}

/// Runs `command args` and turns a failure into [`Problem::Broken`] with its first error line.
fn works(command: &str, args: &[&str]) -> Result<(), Problem> {
    let broken = |detail: String| Problem::Broken {
        command: format!("{command} {}", args.join(" ")),
        detail,
    };
    let output = Command::new(command)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| broken(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().map(str::trim).find(|l| !l.is_empty());
    Err(broken(
        first.map_or_else(|| output.status.to_string(), str::to_owned),
    ))
}

/// The nearest existing ancestor of `dir` (the state directory may not exist yet) must have
/// [`MIN_FREE_STATE_BYTES`] free.
fn free_space(dir: &Path) -> Result<(), Problem> {
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return Ok(());
    };
    let Some(free) = free_bytes(existing) else {
        return Ok(());
    };
    if free >= MIN_FREE_STATE_BYTES {
        return Ok(());
    }
    Err(Problem::LowDisk {
        path: existing.to_owned(),
        free_mib: free >> 20,
        need_mib: MIN_FREE_STATE_BYTES >> 20,
    })
}

fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid, writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(command: &str, package: &str, purpose: &str) -> HostTool {
        HostTool {
            command: command.into(),
            package: package.into(),
            purpose: purpose.into(),
        }
    }

    #[test]
    fn the_shared_list_parses_and_names_the_capture_tools() {
        let tools = host_tools();
        for command in ["iptables", "ip6tables", "ip", "setpriv"] {
            assert!(
                tools
                    .iter()
                    .any(|t| t.command == command && !t.purpose.is_empty()),
                "{command} in {tools:?}"
            );
        }
        assert_eq!(
            parse_host_tools("# c p\n\n  ip  iproute2  veths and more \nbad\n"),
            vec![tool("ip", "iproute2", "veths and more")]
        );
    }

    #[test]
    fn missing_tools_are_those_not_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("ip");
        std::fs::write(&present, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&present, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Not executable: not found, as a shell would not run it.
        std::fs::write(dir.path().join("setpriv"), "").unwrap();
        let path = SearchPath::new(dir.path().as_os_str().to_owned());
        let tools = [
            tool("ip", "iproute2", "x"),
            tool("setpriv", "util-linux", "y"),
            tool("iptables", "iptables", "z"),
        ];
        let missing: Vec<_> = missing_tools(&tools, &path)
            .into_iter()
            .map(|t| t.command)
            .collect();
        assert_eq!(missing, ["setpriv", "iptables"]);
    }

    #[test]
    fn one_line_names_what_is_missing_and_the_packages() {
        let one = Problem::Missing(vec![tool("iptables", "iptables", "the capture")]);
        assert_eq!(
            one.to_string(),
            "missing iptables: install it (the capture) (Debian/Ubuntu: apt-get install iptables)"
        );
        let two = Problem::Missing(vec![
            tool("iptables", "iptables", "a"),
            tool("ip6tables", "iptables", "b"),
            tool("ip", "iproute2", "c"),
        ]);
        let line = two.to_string();
        assert_eq!(
            line,
            "missing iptables, ip6tables, ip: install them (Debian/Ubuntu: apt-get install iproute2 iptables)"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_failing_command_is_reported_with_its_first_error_line() {
        let problem = works("sh", &["-c", "echo; echo 'no table nat' >&2; exit 3"]).unwrap_err();
        assert_eq!(
            problem,
            Problem::Broken {
                command: "sh -c echo; echo 'no table nat' >&2; exit 3".into(),
                detail: "no table nat".into()
            }
        );
        assert!(works("true", &[]).is_ok());
    }
}
