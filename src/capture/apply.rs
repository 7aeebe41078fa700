//! The I/O shell of `skein init`: checks privileges, picks the iptables backend, reads the current
//! nat table and feeds [`rules`](super::rules) to `iptables-restore --noflush`.

use std::io::Write as _;
use std::process::{Command, ExitStatus, Stdio};

use tracing::{debug, info};

use super::rules::{self, IpFamily};
use super::settings::{CaptureSettings, IpCidr};
use crate::cli::InitArgs;

/// Bit of CAP_NET_ADMIN in the capability sets of `/proc/<pid>/status`.
const CAP_NET_ADMIN: u32 = 12;
/// How long iptables waits for the xtables lock (legacy backend) before giving up.
const XTABLES_WAIT: &str = "--wait=10";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "skein init: NET_ADMIN capability required to program iptables (run as the skein-init init container)"
    )]
    NetAdminRequired,
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write the rules to `{command}`")]
    Stdin {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// `skein init`: apply, clean up or print the capture rules.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    if args.dry_run {
        print!("{}", dry_run(&args.capture));
        return Ok(());
    }
    // Checked before anything is logged, so the error is the only line a user sees.
    if has_net_admin(&read_proc("/proc/self/status")) == Some(false) {
        return Err(CaptureError::NetAdminRequired.into());
    }
    let backend = Backend::detect();
    let ipv6_required = ipv6_required(&args.capture, &read_proc("/proc/net/if_inet6"));
    for family in [IpFamily::V4, IpFamily::V6] {
        let result = if args.cleanup {
            cleanup(backend, family)
        } else {
            apply(&args.capture, backend, family)
        };
        match result {
            // Without an IPv6 address nothing can use IPv6, so a kernel or image without ip6tables
            // support is no reason to fail the pod. We still try: SLAAC may add an address later.
            Err(err) if family == IpFamily::V6 && !ipv6_required && !is_permission(&err) => {
                info!(error = %err, "ip6tables unusable and the pod has no IPv6 address: skipping IPv6");
            }
            other => other?,
        }
    }
    Ok(())
}

/// What `--dry-run` prints: the rules for a namespace without Skein rules, per family.
fn dry_run(settings: &CaptureSettings) -> String {
    [IpFamily::V4, IpFamily::V6]
        .map(|family| {
            let tool = Backend::System.restore_command(family);
            format!(
                "# {family} rules for `{tool} --noflush`\n{}",
                rules::capture_rules(settings, family)
            )
        })
        .concat()
}

fn apply(
    settings: &CaptureSettings,
    backend: Backend,
    family: IpFamily,
) -> Result<(), CaptureError> {
    let current = backend.save(family)?;
    backend.restore(family, &rules::apply_input(settings, family, &current))?;
    info!(%family, ?backend, "traffic capture programmed");
    Ok(())
}

fn cleanup(backend: Backend, family: IpFamily) -> Result<(), CaptureError> {
    match rules::cleanup_input(&backend.save(family)?) {
        Some(input) => {
            backend.restore(family, &input)?;
            info!(%family, ?backend, "traffic capture removed");
        }
        None => info!(%family, ?backend, "no Skein rules to remove"),
    }
    Ok(())
}

fn is_permission(err: &CaptureError) -> bool {
    matches!(err, CaptureError::NetAdminRequired)
}

/// Which iptables implementation programs the namespace. The kernel has two (x_tables and
/// nf_tables) and rules written through one are invisible to the other's tools, so mixing them up
/// splits the ruleset: use the one already in use here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
    /// Whatever plain `iptables` is on this image (nothing in the namespace tells us).
    System,
}

impl Backend {
    /// The backend holding more rules in this namespace (like Istio and Linkerd decide).
    fn detect() -> Self {
        let nft = count_rules(&["iptables-nft-save", "ip6tables-nft-save"]);
        let legacy = count_rules(&["iptables-legacy-save", "ip6tables-legacy-save"]);
        let backend = choose(nft, legacy);
        info!(
            ?backend,
            nft_rules = nft,
            legacy_rules = legacy,
            "iptables backend selected"
        );
        backend
    }

    fn prefix(self, family: IpFamily) -> &'static str {
        match (self, family) {
            (Backend::Nft, IpFamily::V4) => "iptables-nft",
            (Backend::Nft, IpFamily::V6) => "ip6tables-nft",
            (Backend::Legacy, IpFamily::V4) => "iptables-legacy",
            (Backend::Legacy, IpFamily::V6) => "ip6tables-legacy",
            (Backend::System, IpFamily::V4) => "iptables",
            (Backend::System, IpFamily::V6) => "ip6tables",
        }
    }

    fn restore_command(self, family: IpFamily) -> String {
        format!("{}-restore", self.prefix(family))
    }

    /// The current nat table.
    fn save(self, family: IpFamily) -> Result<String, CaptureError> {
        let program = format!("{}-save", self.prefix(family));
        run_command(&program, &["-t", "nat"], None)
    }

    /// Applies `input` atomically, leaving chains it does not mention alone.
    fn restore(self, family: IpFamily, input: &str) -> Result<(), CaptureError> {
        debug!(%family, rules = input, "iptables-restore input");
        let program = self.restore_command(family);
        run_command(&program, &["--noflush", XTABLES_WAIT], Some(input)).map(drop)
    }
}

fn choose(nft_rules: usize, legacy_rules: usize) -> Backend {
    match nft_rules.cmp(&legacy_rules) {
        std::cmp::Ordering::Greater => Backend::Nft,
        std::cmp::Ordering::Less => Backend::Legacy,
        std::cmp::Ordering::Equal => Backend::System,
    }
}

/// Rules listed by the given save commands; a missing or failing tool counts as none.
fn count_rules(programs: &[&str]) -> usize {
    programs
        .iter()
        .filter_map(|program| run_command(program, &[], None).ok())
        .map(|saved| saved.lines().filter(|line| line.starts_with("-A ")).count())
        .sum()
}

/// Runs `program args...`, feeding `stdin`, and returns its stdout.
fn run_command(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, CaptureError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_error = |source| CaptureError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let written = match (stdin, child.stdin.take()) {
        // Dropping the pipe after writing closes it, so the tool sees the end of its input.
        (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
        _ => Ok(()),
    };
    let output = child.wait_with_output().map_err(spawn_error)?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        if is_permission_denied(&stderr) {
            return Err(CaptureError::NetAdminRequired);
        }
        return Err(CaptureError::Failed {
            command,
            status: output.status,
            stderr,
        });
    }
    // A write error with a successful exit would mean the tool ignored part of the rules.
    written.map_err(|source| CaptureError::Stdin { command, source })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn is_permission_denied(stderr: &str) -> bool {
    [
        "Permission denied",
        "Operation not permitted",
        "you must be root",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

/// `/proc` text, or empty when unreadable (not Linux, or IPv6 disabled).
fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether the effective capabilities in a `/proc/<pid>/status` text include CAP_NET_ADMIN;
/// `None` when the text has no parsable `CapEff` line.
fn has_net_admin(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    let caps = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN) != 0)
}

/// IPv6 capture must succeed when the pod has a global IPv6 address or IPv6 CIDRs were asked for.
fn ipv6_required(settings: &CaptureSettings, if_inet6: &str) -> bool {
    let mut cidrs = settings
        .include_outbound_cidrs
        .iter()
        .chain(&settings.exclude_outbound_cidrs);
    cidrs.any(IpCidr::is_ipv6) || has_global_ipv6(if_inet6)
}

/// Whether `/proc/net/if_inet6` lists a global-scope address on an interface other than `lo`.
/// Columns: address, ifindex, prefix length, scope, flags, interface name.
fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        matches!(columns.as_slice(), [_, _, _, scope, _, name]
            if *name != "lo" && u8::from_str_radix(scope, 16) == Ok(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_is_read_from_the_effective_set() {
        let status =
            |eff: &str| format!("Name:\tskein\nCapInh:\t0000000000000000\nCapEff:\t{eff}\n");
        assert_eq!(has_net_admin(&status("000001fffeffffff")), Some(true));
        assert_eq!(has_net_admin(&status("0000000000001000")), Some(true));
        assert_eq!(has_net_admin(&status("0000000000000000")), Some(false));
        assert_eq!(has_net_admin(&status("00000000a80425fb")), Some(false)); // docker default set
        assert_eq!(has_net_admin(""), None);
    }

    #[test]
    fn global_ipv6_ignores_loopback_and_link_local() {
        let no_v6 = "\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000e85e3ffffe175b26 02 40 20 c0     eth0
";
        assert!(!has_global_ipv6(no_v6));
        assert!(!has_global_ipv6(""));
        let ula = format!("{no_v6}fd000000000000000000000000000002 02 40 00 80     eth0\n");
        assert!(has_global_ipv6(&ula));
    }

    #[test]
    fn ipv6_cidrs_require_ipv6() {
        let mut settings = CaptureSettings::default();
        assert!(!ipv6_required(&settings, ""));
        settings.exclude_outbound_cidrs = vec!["10.0.0.0/8".parse().expect("CIDR")];
        assert!(!ipv6_required(&settings, ""));
        settings.include_outbound_cidrs = vec!["fd00::/8".parse().expect("CIDR")];
        assert!(ipv6_required(&settings, ""));
    }

    #[test]
    fn backend_follows_existing_rules() {
        assert_eq!(choose(3, 0), Backend::Nft);
        assert_eq!(choose(0, 5), Backend::Legacy);
        assert_eq!(choose(0, 0), Backend::System);
        assert_eq!(
            Backend::Legacy.restore_command(IpFamily::V6),
            "ip6tables-legacy-restore"
        );
    }

    #[test]
    fn permission_errors_are_recognised() {
        let nft = "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: \
                   Permission denied (you must be root)";
        assert!(is_permission_denied(nft));
        assert!(!is_permission_denied(
            "iptables-restore: line 4 failed: Bad rule"
        ));
    }

    #[test]
    fn net_admin_error_is_one_line() {
        let message = CaptureError::NetAdminRequired.to_string();
        assert!(
            message.contains("NET_ADMIN") && !message.contains('\n'),
            "{message}"
        );
    }

    #[test]
    fn dry_run_prints_both_families() {
        let text = dry_run(&CaptureSettings::default());
        assert!(
            text.starts_with("# IPv4 rules for `iptables-restore --noflush`\n*nat\n"),
            "{text}"
        );
        assert!(
            text.contains("# IPv6 rules for `ip6tables-restore --noflush`\n*nat\n"),
            "{text}"
        );
        assert_eq!(text.matches("REDIRECT --to-ports 16001").count(), 2);
    }
}
