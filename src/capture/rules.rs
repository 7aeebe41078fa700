//! Pure: capture settings → `iptables-restore --noflush` input.
//!
//! Everything Skein adds lives in four chains of the `nat` table, reached by one TCP jump from
//! each built-in chain:
//!
//! ```text
//! PREROUTING -p tcp → SKEIN_INBOUND  → RETURN (proxy and excluded ports) | SKEIN_REDIRECT_IN
//! OUTPUT     -p tcp → SKEIN_OUTPUT   → RETURN (proxy UID, loopback, exclusions)
//!                                    | SKEIN_INBOUND (app → its own pod IP)
//!                                    | SKEIN_REDIRECT_OUT
//! SKEIN_REDIRECT_IN  → REDIRECT --to-ports <inbound port>
//! SKEIN_REDIRECT_OUT → REDIRECT --to-ports <outbound port>
//! ```
//!
//! Idempotence: `iptables-restore --noflush` leaves every chain it is not told about alone, and a
//! `:CHAIN - [0:0]` line creates *or flushes* that chain. Flushing covers Skein's own chains, but
//! not the jumps into them, which live in PREROUTING and OUTPUT next to other tools' rules. So
//! the caller passes in the current table (`iptables-save -t nat`), and the same restore
//! transaction first deletes every jump into a Skein chain it finds there (`-D` of the exact saved
//! line), then appends the jumps again. One transaction is atomic (no window without capture),
//! self-healing (duplicate jumps left by anyone are removed too) and re-running it yields the same
//! table. Checking with `iptables -C` before inserting would need one process per rule and still
//! leave duplicates made by others in place.

use std::fmt::Write as _;

use super::settings::{CaptureSettings, IpCidr};

/// Inbound entry chain, jumped to from PREROUTING (and from SKEIN_OUTPUT for self traffic).
pub const INBOUND_CHAIN: &str = "SKEIN_INBOUND";
/// Redirects to the proxy's inbound port.
pub const REDIRECT_IN_CHAIN: &str = "SKEIN_REDIRECT_IN";
/// Outbound entry chain, jumped to from OUTPUT.
pub const OUTPUT_CHAIN: &str = "SKEIN_OUTPUT";
/// Redirects to the proxy's outbound port.
pub const REDIRECT_OUT_CHAIN: &str = "SKEIN_REDIRECT_OUT";
/// Every chain Skein owns; cleanup touches these and the jumps into them, nothing else.
pub const CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    REDIRECT_IN_CHAIN,
    OUTPUT_CHAIN,
    REDIRECT_OUT_CHAIN,
];

/// The jumps from built-in chains into Skein's chains.
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)];

/// Which of the two netfilter tables a text is for: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// All loopback destinations of the family.
    fn loopback(self) -> &'static str {
        match self {
            IpFamily::V4 => "127.0.0.0/8",
            IpFamily::V6 => "::1/128",
        }
    }

    fn contains(self, cidr: &IpCidr) -> bool {
        cidr.is_ipv6() == (self == IpFamily::V6)
    }

    /// The family's CIDRs out of a mixed list.
    fn cidrs(self, cidrs: &[IpCidr]) -> impl Iterator<Item = &IpCidr> {
        cidrs.iter().filter(move |cidr| self.contains(cidr))
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// The restore input for a namespace without Skein rules (what `skein init --dry-run` prints).
pub fn capture_rules(settings: &CaptureSettings, family: IpFamily) -> String {
    apply_input(settings, family, "")
}

/// The restore input that leaves exactly Skein's rules for `settings` in place, given the current
/// nat table `current` (the output of `iptables-save -t nat`, empty if unknown).
pub fn apply_input(settings: &CaptureSettings, family: IpFamily, current: &str) -> String {
    let mut lines: Vec<String> = CHAINS
        .iter()
        .map(|chain| format!(":{chain} - [0:0]"))
        .collect();
    lines.extend(Existing::parse(current).jumps);
    lines.extend(
        JUMPS
            .iter()
            .map(|(from, to)| format!("-A {from} -p tcp -j {to}")),
    );
    lines.extend(inbound_rules(settings));
    lines.extend(outbound_rules(settings, family));
    nat_transaction(&lines)
}

/// The restore input that removes Skein's jumps and chains found in `current` (`iptables-save -t
/// nat` output) and touches nothing else; `None` when there is nothing to remove.
pub fn cleanup_input(current: &str) -> Option<String> {
    let existing = Existing::parse(current);
    if existing.chains.is_empty() && existing.jumps.is_empty() {
        return None;
    }
    // The jumps go first and every Skein chain is flushed before any is deleted: a chain can only
    // be deleted once nothing refers to it, and SKEIN_OUTPUT refers to SKEIN_INBOUND.
    let mut lines = existing.jumps;
    lines.extend(
        existing
            .chains
            .iter()
            .map(|chain| format!(":{chain} - [0:0]")),
    );
    lines.extend(existing.chains.iter().map(|chain| format!("-X {chain}")));
    Some(nat_transaction(&lines))
}

fn nat_transaction(lines: &[String]) -> String {
    let mut text = String::from("*nat\n");
    for line in lines {
        let _ = writeln!(text, "{line}");
    }
    text.push_str("COMMIT\n");
    text
}

/// Inbound: everything arriving over TCP goes to the inbound port, except the proxy's own ports
/// (so its admin, health and metrics endpoints stay reachable and it never captures itself) and
/// the excluded ports.
fn inbound_rules(settings: &CaptureSettings) -> Vec<String> {
    let own_ports = settings
        .proxy_ports
        .0
        .iter()
        .chain([&settings.inbound_port, &settings.outbound_port]);
    let mut ports: Vec<u16> = Vec::new();
    for &port in own_ports.chain(&settings.exclude_inbound_ports) {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let mut rules: Vec<String> = ports
        .iter()
        .map(|port| format!("-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"))
        .collect();
    rules.push(format!("-A {INBOUND_CHAIN} -p tcp -j {REDIRECT_IN_CHAIN}"));
    rules.push(format!(
        "-A {REDIRECT_IN_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        settings.inbound_port
    ));
    rules
}

/// Outbound, in this order (first match wins):
///
/// 1. The proxy's UID returns first. Both of its kinds of upstream connection must never be
///    captured again: to remote endpoints (else it would loop into its own outbound port), and,
///    after handling an inbound connection, to the app at the original destination, the pod IP
///    (else rule 3 would send it back to the inbound port, forever).
/// 2. Loopback destinations return: localhost traffic between containers of the pod is not mesh
///    traffic. The whole of 127.0.0.0/8, not only 127.0.0.1: nothing in it is a pod IP.
/// 3. Anything else leaving through `lo` is addressed to one of the pod's own IPs: the app
///    calling itself. It gets the inbound treatment, as a call from any other pod would, so the
///    same policy applies; it jumps to SKEIN_INBOUND rather than straight to the redirect so that
///    the proxy's ports and the excluded inbound ports are honoured here too.
/// 4. ... and whatever SKEIN_INBOUND returned (those ports) returns here as well, instead of
///    falling through to the outbound redirect.
/// 5. Excluded ports and CIDRs return.
/// 6. The rest goes to the outbound port; with include CIDRs, only those do.
///
/// (Istio instead sends the *proxy's* own-pod-IP connections to the inbound port and leaves the
/// app's alone; that only avoids a loop because its inbound proxy connects to the app from a
/// reserved source address, 127.0.0.6, which our rules would then have to trust. Keying on the
/// UID alone keeps the proxy's side of the contract to "run as the proxy UID".)
fn outbound_rules(settings: &CaptureSettings, family: IpFamily) -> Vec<String> {
    let chain = OUTPUT_CHAIN;
    let mut rules = vec![
        format!(
            "-A {chain} -m owner --uid-owner {} -j RETURN",
            settings.proxy_uid
        ),
        format!("-A {chain} -d {} -j RETURN", family.loopback()),
        format!("-A {chain} -o lo -j {INBOUND_CHAIN}"),
        format!("-A {chain} -o lo -j RETURN"),
    ];
    rules.extend(
        settings
            .exclude_outbound_ports
            .iter()
            .map(|port| format!("-A {chain} -p tcp -m tcp --dport {port} -j RETURN")),
    );
    rules.extend(
        family
            .cidrs(&settings.exclude_outbound_cidrs)
            .map(|cidr| format!("-A {chain} -d {cidr} -j RETURN")),
    );
    if settings.include_outbound_cidrs.is_empty() {
        rules.push(format!("-A {chain} -j {REDIRECT_OUT_CHAIN}"));
    } else {
        // Include mode is global: a family without include CIDRs captures nothing outbound, and
        // the end of the chain is an implicit RETURN.
        rules.extend(
            family
                .cidrs(&settings.include_outbound_cidrs)
                .map(|cidr| format!("-A {chain} -d {cidr} -j {REDIRECT_OUT_CHAIN}")),
        );
    }
    rules.push(format!(
        "-A {REDIRECT_OUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        settings.outbound_port
    ));
    rules
}

/// Skein's footprint in a saved nat table.
#[derive(Debug, Default, PartialEq, Eq)]
struct Existing<'a> {
    /// Skein chains that exist.
    chains: Vec<&'a str>,
    /// `-D` lines for every rule outside Skein's chains that jumps into one of them.
    jumps: Vec<String>,
}

impl<'a> Existing<'a> {
    fn parse(saved: &'a str) -> Self {
        let mut existing = Existing::default();
        let mut in_nat = false;
        for line in saved.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat {
                continue;
            } else if let Some(declaration) = line.strip_prefix(':') {
                let name = declaration.split_whitespace().next().unwrap_or_default();
                if is_skein_chain(name) {
                    existing.chains.push(name);
                }
            } else if let Some(rule) = line.strip_prefix("-A ")
                && is_jump_into_skein(rule)
            {
                existing.jumps.push(format!("-D {rule}"));
            }
        }
        existing
    }
}

fn is_skein_chain(name: &str) -> bool {
    CHAINS.contains(&name)
}

/// Whether a saved rule (`CHAIN match... -j TARGET`) sits outside Skein's chains and targets one.
fn is_jump_into_skein(rule: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let Some(chain) = words.first() else {
        return false;
    };
    // The last -j/-g wins, so a comment mentioning a chain cannot fool this.
    let target = words
        .windows(2)
        .rev()
        .find(|pair| pair[0] == "-j" || pair[0] == "-g")
        .map(|pair| pair[1]);
    !is_skein_chain(chain) && target.is_some_and(is_skein_chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::settings::PortList;

    fn cidrs(list: &[&str]) -> Vec<IpCidr> {
        list.iter()
            .map(|cidr| cidr.parse().expect("test CIDR"))
            .collect()
    }

    #[test]
    fn defaults() {
        let expected = "\
*nat
:SKEIN_INBOUND - [0:0]
:SKEIN_REDIRECT_IN - [0:0]
:SKEIN_OUTPUT - [0:0]
:SKEIN_REDIRECT_OUT - [0:0]
-A PREROUTING -p tcp -j SKEIN_INBOUND
-A OUTPUT -p tcp -j SKEIN_OUTPUT
-A SKEIN_INBOUND -p tcp -m tcp --dport 16000 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 16006 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 16001 -j RETURN
-A SKEIN_INBOUND -p tcp -j SKEIN_REDIRECT_IN
-A SKEIN_REDIRECT_IN -p tcp -j REDIRECT --to-ports 16006
-A SKEIN_OUTPUT -m owner --uid-owner 2170 -j RETURN
-A SKEIN_OUTPUT -d 127.0.0.0/8 -j RETURN
-A SKEIN_OUTPUT -o lo -j SKEIN_INBOUND
-A SKEIN_OUTPUT -o lo -j RETURN
-A SKEIN_OUTPUT -j SKEIN_REDIRECT_OUT
-A SKEIN_REDIRECT_OUT -p tcp -j REDIRECT --to-ports 16001
COMMIT
";
        assert_eq!(
            capture_rules(&CaptureSettings::default(), IpFamily::V4),
            expected
        );
    }

    /// The proxy forwards inbound connections to the app at the pod IP, over `lo`: its UID must
    /// return before the rule that sends the app's own calls to its pod IP to the inbound port
    /// (else the proxy would loop into itself), in both families, whatever else is configured.
    #[test]
    fn the_proxys_connection_to_the_pod_ip_returns_before_self_calls_are_captured() {
        let settings = CaptureSettings {
            proxy_uid: 1500,
            exclude_outbound_ports: vec![5432],
            include_outbound_cidrs: cidrs(&["10.0.0.0/8", "fd00::/8"]),
            ..CaptureSettings::default()
        };
        for family in [IpFamily::V4, IpFamily::V6] {
            let text = capture_rules(&settings, family);
            let lines: Vec<&str> = text
                .lines()
                .filter(|line| line.starts_with(&format!("-A {OUTPUT_CHAIN} ")))
                .collect();
            assert_eq!(
                lines.first().copied(),
                Some("-A SKEIN_OUTPUT -m owner --uid-owner 1500 -j RETURN"),
                "{family}: {text}"
            );
            let self_call = lines
                .iter()
                .position(|line| line.ends_with(&format!("-o lo -j {INBOUND_CHAIN}")))
                .expect("self calls are captured");
            assert!(self_call > 0, "{family}: {text}");
        }
    }

    #[test]
    fn excluded_ports_and_cidrs() {
        let settings = CaptureSettings {
            proxy_uid: 1500,
            inbound_port: 7006,
            outbound_port: 7001,
            exclude_inbound_ports: vec![22, 7000, 8081],
            exclude_outbound_ports: vec![5432, 6379],
            exclude_outbound_cidrs: cidrs(&["169.254.169.254/32", "10.1.0.0/16", "fd00::/8"]),
            proxy_ports: PortList(vec![7000, 7002]),
            ..CaptureSettings::default()
        };
        let expected = "\
*nat
:SKEIN_INBOUND - [0:0]
:SKEIN_REDIRECT_IN - [0:0]
:SKEIN_OUTPUT - [0:0]
:SKEIN_REDIRECT_OUT - [0:0]
-A PREROUTING -p tcp -j SKEIN_INBOUND
-A OUTPUT -p tcp -j SKEIN_OUTPUT
-A SKEIN_INBOUND -p tcp -m tcp --dport 7000 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 7002 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 7006 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 7001 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 8081 -j RETURN
-A SKEIN_INBOUND -p tcp -j SKEIN_REDIRECT_IN
-A SKEIN_REDIRECT_IN -p tcp -j REDIRECT --to-ports 7006
-A SKEIN_OUTPUT -m owner --uid-owner 1500 -j RETURN
-A SKEIN_OUTPUT -d 127.0.0.0/8 -j RETURN
-A SKEIN_OUTPUT -o lo -j SKEIN_INBOUND
-A SKEIN_OUTPUT -o lo -j RETURN
-A SKEIN_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
-A SKEIN_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN
-A SKEIN_OUTPUT -d 169.254.169.254/32 -j RETURN
-A SKEIN_OUTPUT -d 10.1.0.0/16 -j RETURN
-A SKEIN_OUTPUT -j SKEIN_REDIRECT_OUT
-A SKEIN_REDIRECT_OUT -p tcp -j REDIRECT --to-ports 7001
COMMIT
";
        assert_eq!(capture_rules(&settings, IpFamily::V4), expected);
    }

    #[test]
    fn include_cidr_mode_captures_only_those() {
        let settings = CaptureSettings {
            include_outbound_cidrs: cidrs(&["10.96.0.0/12", "10.244.0.0/16"]),
            exclude_outbound_cidrs: cidrs(&["10.96.0.1/32"]),
            ..CaptureSettings::default()
        };
        let expected = "\
*nat
:SKEIN_INBOUND - [0:0]
:SKEIN_REDIRECT_IN - [0:0]
:SKEIN_OUTPUT - [0:0]
:SKEIN_REDIRECT_OUT - [0:0]
-A PREROUTING -p tcp -j SKEIN_INBOUND
-A OUTPUT -p tcp -j SKEIN_OUTPUT
-A SKEIN_INBOUND -p tcp -m tcp --dport 16000 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 16006 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 16001 -j RETURN
-A SKEIN_INBOUND -p tcp -j SKEIN_REDIRECT_IN
-A SKEIN_REDIRECT_IN -p tcp -j REDIRECT --to-ports 16006
-A SKEIN_OUTPUT -m owner --uid-owner 2170 -j RETURN
-A SKEIN_OUTPUT -d 127.0.0.0/8 -j RETURN
-A SKEIN_OUTPUT -o lo -j SKEIN_INBOUND
-A SKEIN_OUTPUT -o lo -j RETURN
-A SKEIN_OUTPUT -d 10.96.0.1/32 -j RETURN
-A SKEIN_OUTPUT -d 10.96.0.0/12 -j SKEIN_REDIRECT_OUT
-A SKEIN_OUTPUT -d 10.244.0.0/16 -j SKEIN_REDIRECT_OUT
-A SKEIN_REDIRECT_OUT -p tcp -j REDIRECT --to-ports 16001
COMMIT
";
        assert_eq!(capture_rules(&settings, IpFamily::V4), expected);
    }

    #[test]
    fn ipv6_variant() {
        let settings = CaptureSettings {
            exclude_outbound_cidrs: cidrs(&["fd00:1::/64"]),
            ..CaptureSettings::default()
        };
        let expected = "\
*nat
:SKEIN_INBOUND - [0:0]
:SKEIN_REDIRECT_IN - [0:0]
:SKEIN_OUTPUT - [0:0]
:SKEIN_REDIRECT_OUT - [0:0]
-A PREROUTING -p tcp -j SKEIN_INBOUND
-A OUTPUT -p tcp -j SKEIN_OUTPUT
-A SKEIN_INBOUND -p tcp -m tcp --dport 16000 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 16006 -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 16001 -j RETURN
-A SKEIN_INBOUND -p tcp -j SKEIN_REDIRECT_IN
-A SKEIN_REDIRECT_IN -p tcp -j REDIRECT --to-ports 16006
-A SKEIN_OUTPUT -m owner --uid-owner 2170 -j RETURN
-A SKEIN_OUTPUT -d ::1/128 -j RETURN
-A SKEIN_OUTPUT -o lo -j SKEIN_INBOUND
-A SKEIN_OUTPUT -o lo -j RETURN
-A SKEIN_OUTPUT -d fd00:1::/64 -j RETURN
-A SKEIN_OUTPUT -j SKEIN_REDIRECT_OUT
-A SKEIN_REDIRECT_OUT -p tcp -j REDIRECT --to-ports 16001
COMMIT
";
        assert_eq!(capture_rules(&settings, IpFamily::V6), expected);
    }

    #[test]
    fn cidrs_go_only_to_their_family() {
        let settings = CaptureSettings {
            include_outbound_cidrs: cidrs(&["10.0.0.0/8", "fd00:a::/48"]),
            exclude_outbound_cidrs: cidrs(&["10.1.0.0/16", "fd00:a:b::/64"]),
            ..CaptureSettings::default()
        };
        let v4 = capture_rules(&settings, IpFamily::V4);
        let v6 = capture_rules(&settings, IpFamily::V6);
        for v4_cidr in ["10.0.0.0/8", "10.1.0.0/16"] {
            assert!(v4.contains(v4_cidr) && !v6.contains(v4_cidr), "{v4_cidr}");
        }
        for v6_cidr in ["fd00:a::/48", "fd00:a:b::/64"] {
            assert!(v6.contains(v6_cidr) && !v4.contains(v6_cidr), "{v6_cidr}");
        }
    }

    #[test]
    fn include_mode_without_cidrs_of_a_family_captures_nothing_outbound_there() {
        let settings = CaptureSettings {
            include_outbound_cidrs: cidrs(&["10.0.0.0/8"]),
            ..CaptureSettings::default()
        };
        let v6 = capture_rules(&settings, IpFamily::V6);
        assert!(!v6.contains(&format!("-j {REDIRECT_OUT_CHAIN}")), "{v6}");
        // Inbound capture is unaffected.
        assert!(v6.contains(&format!("-A {INBOUND_CHAIN} -p tcp -j {REDIRECT_IN_CHAIN}")));
    }

    /// What `iptables-save -t nat` prints after `defaults` was applied, plus another tool's rules
    /// and a duplicate jump.
    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Thu Nov 26 02:53:53 2026
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [7:420]
:POSTROUTING ACCEPT [7:420]
:OTHER - [0:0]
:SKEIN_INBOUND - [0:0]
:SKEIN_OUTPUT - [0:0]
:SKEIN_REDIRECT_IN - [0:0]
:SKEIN_REDIRECT_OUT - [0:0]
-A PREROUTING -p tcp -j SKEIN_INBOUND
-A PREROUTING -p udp -m udp --dport 53 -j OTHER
-A OUTPUT -p tcp -j SKEIN_OUTPUT
-A OUTPUT -p tcp -j SKEIN_OUTPUT
-A OTHER -m comment --comment \"-j SKEIN_INBOUND\" -j RETURN
-A SKEIN_INBOUND -p tcp -m tcp --dport 16000 -j RETURN
-A SKEIN_INBOUND -p tcp -j SKEIN_REDIRECT_IN
-A SKEIN_OUTPUT -o lo -j SKEIN_INBOUND
-A SKEIN_OUTPUT -j SKEIN_REDIRECT_OUT
-A SKEIN_REDIRECT_IN -p tcp -j REDIRECT --to-ports 16006
-A SKEIN_REDIRECT_OUT -p tcp -j REDIRECT --to-ports 16001
COMMIT
# Completed on Thu Nov 26 02:53:53 2026
";

    #[test]
    fn reapplying_replaces_existing_jumps_instead_of_duplicating_them() {
        let text = apply_input(&CaptureSettings::default(), IpFamily::V4, SAVED);
        let head: Vec<&str> = text.lines().take(10).collect();
        assert_eq!(
            head,
            [
                "*nat",
                ":SKEIN_INBOUND - [0:0]",
                ":SKEIN_REDIRECT_IN - [0:0]",
                ":SKEIN_OUTPUT - [0:0]",
                ":SKEIN_REDIRECT_OUT - [0:0]",
                "-D PREROUTING -p tcp -j SKEIN_INBOUND",
                "-D OUTPUT -p tcp -j SKEIN_OUTPUT",
                "-D OUTPUT -p tcp -j SKEIN_OUTPUT",
                "-A PREROUTING -p tcp -j SKEIN_INBOUND",
                "-A OUTPUT -p tcp -j SKEIN_OUTPUT",
            ]
        );
        let fresh = capture_rules(&CaptureSettings::default(), IpFamily::V4);
        let without_deletes: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("-D "))
            .collect();
        assert_eq!(without_deletes, fresh.lines().collect::<Vec<_>>());
    }

    #[test]
    fn cleanup_removes_only_skein_jumps_and_chains() {
        let expected = "\
*nat
-D PREROUTING -p tcp -j SKEIN_INBOUND
-D OUTPUT -p tcp -j SKEIN_OUTPUT
-D OUTPUT -p tcp -j SKEIN_OUTPUT
:SKEIN_INBOUND - [0:0]
:SKEIN_OUTPUT - [0:0]
:SKEIN_REDIRECT_IN - [0:0]
:SKEIN_REDIRECT_OUT - [0:0]
-X SKEIN_INBOUND
-X SKEIN_OUTPUT
-X SKEIN_REDIRECT_IN
-X SKEIN_REDIRECT_OUT
COMMIT
";
        assert_eq!(cleanup_input(SAVED).as_deref(), Some(expected));
    }

    #[test]
    fn cleanup_of_a_clean_table_is_a_no_op() {
        let clean =
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j OTHER\nCOMMIT\n";
        assert_eq!(cleanup_input(clean), None);
        assert_eq!(cleanup_input(""), None);
    }

    #[test]
    fn only_the_nat_table_is_considered() {
        let filter = "*filter\n:SKEIN_INBOUND - [0:0]\n-A INPUT -j SKEIN_INBOUND\nCOMMIT\n";
        assert_eq!(cleanup_input(filter), None);
    }
}
