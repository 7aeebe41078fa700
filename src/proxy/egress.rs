//! Egress policy: which external hosts traffic may reach under `RegistryOnly`. The config's
//! [`EgressAllow`] entries are validated once, when a config is loaded, so a typo is an error
//! there instead of a host that silently never matches.
//!
//! The `Host` header and the SNI are chosen by the client, and so is the address it connects
//! to: traffic allowed for a name therefore goes only to an address of that name
//! ([`destination`]): the client's own choice when the name resolves to it (the app's DNS
//! answer and its pooled connections stand), else one the proxy resolved
//! ([`super::dns`]). A forged `Host: allowed.example` sent to any other IP reaches
//! `allowed.example`, never that IP. A host written as an IP address is reached at that
//! address. A name that does not resolve is refused (`reason="unresolved"`).
//!
//! Before the first configuration from the control plane, nothing is known: under `RegistryOnly`
//! (the injector passes the mesh's policy to the proxy at start) every unknown destination is
//! refused (`reason="no_configuration"`), never forwarded unchecked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::Shared;
use crate::config::{Compiled, EgressAllow, EgressProtocol};
use crate::metrics::EgressLabels;

/// Longest DNS name in its dotted text form.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("egress entry {index} (host {host:?}): {reason}")]
    Invalid {
        /// Position of the entry in the config's `egress` list.
        index: usize,
        host: String,
        reason: &'static str,
    },
}

/// The compiled allow list; empty allows nothing.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    host: HostPattern,
    /// Empty allows any port.
    ports: Vec<u16>,
    protocol: EgressProtocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: the suffix a matching host ends with.
    Subdomains(String),
    Ip(IpAddr),
}

/// A host to check, normalized.
enum Host {
    Name(String),
    Ip(IpAddr),
}

impl EgressPolicy {
    /// Validates hosts (lowercased; DNS-name characters; an optional single leading `*.`; a
    /// trailing dot dropped; no port; IP literals only for protocol `tcp` or `any`).
    pub fn compile(allow: &[EgressAllow]) -> Result<Self, EgressError> {
        let entries = allow
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let invalid = |reason| EgressError::Invalid {
                    index,
                    host: entry.host.clone(),
                    reason,
                };
                if entry.ports.contains(&0) {
                    return Err(invalid("port 0 is not a port"));
                }
                let host = compile_host(&entry.host, entry.protocol).map_err(invalid)?;
                let mut ports = entry.ports.clone();
                ports.sort_unstable();
                ports.dedup();
                Ok(Entry {
                    host,
                    ports,
                    protocol: entry.protocol,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Whether traffic to `host` on `port` is allowed. `host` is an HTTP `Host` value (a port,
    /// a trailing dot and case do not matter; IPv6 in brackets), a TLS SNI, or an IP literal for
    /// opaque TCP; `protocol` is `Http`, `Tls` or `Tcp`, and an entry with `Any` matches all
    /// three. A host that is not a valid name or address matches nothing.
    pub fn allows(&self, host: &str, port: u16, protocol: EgressProtocol) -> bool {
        let Some(host) = normalize(host) else {
            return false;
        };
        self.entries.iter().any(|entry| {
            (entry.protocol == EgressProtocol::Any || entry.protocol == protocol)
                && (entry.ports.is_empty() || entry.ports.binary_search(&port).is_ok())
                && entry.host.matches(&host)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl HostPattern {
    fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(name), Host::Name(host)) => name == host,
            (HostPattern::Subdomains(suffix), Host::Name(host)) => {
                // Hosts are validated, so what precedes the suffix is at least one label.
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            (HostPattern::Ip(ip), Host::Ip(host)) => ip == host,
            _ => false,
        }
    }
}

/// Why traffic to an unknown destination was refused: the `reason` label of
/// `skein_proxy_egress_blocked_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockReason {
    /// No EgressRule allows the host.
    NotAllowed,
    /// An EgressRule allows the name, but it does not resolve: there is no address it may go to.
    Unresolved,
    /// `RegistryOnly`, and no configuration has come from the control plane yet.
    NoConfiguration,
}

impl BlockReason {
    pub const ALL: [BlockReason; 3] = [
        BlockReason::NotAllowed,
        BlockReason::Unresolved,
        BlockReason::NoConfiguration,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            BlockReason::NotAllowed => "not_allowed",
            BlockReason::Unresolved => "unresolved",
            BlockReason::NoConfiguration => "no_configuration",
        }
    }
}

/// The body of the HTTP 502 a blocked request gets.
pub fn blocked_message(host: &str) -> String {
    blocked_message_for(host, BlockReason::NotAllowed)
}

/// [`blocked_message`] for each reason.
pub fn blocked_message_for(host: &str, reason: BlockReason) -> String {
    let why = match reason {
        BlockReason::NotAllowed => "no EgressRule allows it",
        BlockReason::Unresolved => "the allowed name does not resolve",
        BlockReason::NoConfiguration => "no configuration from the control plane yet",
    };
    format!("egress to {host} blocked by Skein: {why}\n")
}

/// What an allowed host must be reached at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The host is an IP address: exactly there.
    Address(IpAddr),
    /// A DNS name: one of its addresses.
    Name(String),
}

/// Pure: what `host` (as [`EgressPolicy::allows`] takes it) must be reached at; `None` if it is
/// neither a name nor an address.
pub fn reach(host: &str) -> Option<Reach> {
    Some(match normalize(host)? {
        Host::Ip(ip) => Reach::Address(ip),
        Host::Name(name) => Reach::Name(name),
    })
}

/// Pure: where traffic allowed for a host whose addresses are `addresses` goes, when the client
/// connected to `original`: there if it is one of them, else to one of them on the same port
/// (of the client's address family when there is one); `None` without addresses.
pub fn destination(original: SocketAddr, addresses: &[IpAddr]) -> Option<SocketAddr> {
    let wanted = original.ip().to_canonical();
    if addresses.iter().any(|ip| ip.to_canonical() == wanted) {
        return Some(SocketAddr::new(wanted, original.port()));
    }
    let same_family = addresses
        .iter()
        .find(|ip| ip.to_canonical().is_ipv4() == wanted.is_ipv4());
    same_family
        .or(addresses.first())
        .map(|ip| SocketAddr::new(ip.to_canonical(), original.port()))
}

/// Where traffic to a destination the mesh does not know may go: the address to connect to, or
/// why it is refused (counted in `skein_proxy_egress_blocked_total` and logged here). `host` is
/// the `Host`, the SNI, or the original address as text; `label` is the metric's protocol.
pub(crate) async fn route(
    shared: &Shared,
    config: &Compiled,
    host: &str,
    original: SocketAddr,
    protocol: EgressProtocol,
    label: &'static str,
) -> Result<SocketAddr, BlockReason> {
    let decided = decide(shared, config, host, original, protocol).await;
    match decided {
        Ok(address) if address != original => tracing::info!(
            %host,
            %original,
            %address,
            protocol = label,
            "egress: the client's address is not one of the allowed host's; connecting to the host's own address instead"
        ),
        Ok(_) => {}
        Err(reason) => {
            shared
                .metrics
                .http
                .egress_blocked
                .get_or_create(&EgressLabels {
                    protocol: label,
                    reason: reason.as_str(),
                })
                .inc();
            tracing::info!(%host, %original, protocol = label, reason = reason.as_str(), "egress blocked");
        }
    }
    decided
}

/// [`route`]'s decision, without counting or logging it.
pub(crate) async fn decide(
    shared: &Shared,
    config: &Compiled,
    host: &str,
    original: SocketAddr,
    protocol: EgressProtocol,
) -> Result<SocketAddr, BlockReason> {
    if config.allow_any() {
        return Ok(original);
    }
    if config.awaiting_first {
        return Err(BlockReason::NoConfiguration);
    }
    if !config.egress.allows(host, original.port(), protocol) {
        return Err(BlockReason::NotAllowed);
    }
    let addresses: std::sync::Arc<[IpAddr]> = match reach(host) {
        Some(Reach::Address(ip)) => [ip].into(),
        Some(Reach::Name(name)) => match shared.resolver.lookup(&name).await {
            Ok(addresses) => addresses,
            Err(err) => {
                tracing::info!(error = %err, "egress: an allowed name does not resolve");
                return Err(BlockReason::Unresolved);
            }
        },
        None => return Err(BlockReason::NotAllowed),
    };
    destination(original, &addresses).ok_or(BlockReason::Unresolved)
}

fn compile_host(raw: &str, protocol: EgressProtocol) -> Result<HostPattern, &'static str> {
    let lowered = raw.to_ascii_lowercase();
    let host = lowered.strip_suffix('.').unwrap_or(&lowered);
    if host.is_empty() {
        return Err("the host is empty");
    }
    let ip = match host.strip_prefix('[') {
        Some(bracketed) => {
            let Some(inner) = bracketed.strip_suffix(']') else {
                return Err("the host must not carry a port; list it in `ports`");
            };
            let ip: Ipv6Addr = inner.parse().map_err(|_| "not a valid IPv6 address")?;
            Some(IpAddr::V6(ip))
        }
        None => host.parse::<IpAddr>().ok(),
    };
    if let Some(ip) = ip {
        if !matches!(protocol, EgressProtocol::Tcp | EgressProtocol::Any) {
            return Err("an IP address can only be allowed with protocol tcp or any");
        }
        return Ok(HostPattern::Ip(ip.to_canonical()));
    }
    if host.contains(':') {
        return Err("the host must not carry a port; list it in `ports`");
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err("only a single leading `*.` wildcard is allowed");
        }
        check_name(suffix)?;
        return Ok(HostPattern::Subdomains(format!(".{suffix}")));
    }
    if host.contains('*') {
        return Err("a wildcard must be a single leading `*.`");
    }
    check_name(host)?;
    Ok(HostPattern::Exact(host.to_owned()))
}

/// The host of a request in the form the patterns use, or `None` if it is neither a DNS name
/// nor an IP address.
fn normalize(host: &str) -> Option<Host> {
    if let Some(bracketed) = host.strip_prefix('[') {
        let (inner, after) = bracketed.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let ip: Ipv6Addr = inner.parse().ok()?;
        return Some(Host::Ip(IpAddr::V6(ip).to_canonical()));
    }
    // A bare IPv6 address (opaque TCP) has colons that are not a port separator.
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Host::Ip(ip.to_canonical()));
    }
    let host = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.to_ascii_lowercase();
    check_name(&name).ok()?;
    Some(Host::Name(name))
}

/// RFC 3986 allows an empty port (`host:`).
fn is_port(port: &str) -> bool {
    port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// A lowercase DNS name: labels of letters, digits, `-` and `_` (for `_service` names).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the host is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("the host is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the host has an empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("the host has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
        {
            return Err("the host may only hold letters, digits, `-`, `_` and `.`");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of the host starts or ends with `-`");
        }
    }
    // `1.2.3.400` and the like: neither an address nor a name anyone can register.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the host is not a valid IP address, and a DNS name cannot end in a number");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use EgressProtocol::{Any, Http, Tcp, Tls};

    fn allow(host: &str, ports: &[u16], protocol: EgressProtocol) -> EgressAllow {
        EgressAllow {
            host: host.to_owned(),
            ports: ports.to_vec(),
            protocol,
        }
    }

    fn policy(entries: &[EgressAllow]) -> EgressPolicy {
        EgressPolicy::compile(entries).unwrap()
    }

    fn error(entry: EgressAllow) -> String {
        EgressPolicy::compile(&[allow("ok.example", &[], Any), entry])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_policy_allows_nothing() {
        let empty = policy(&[]);
        assert!(empty.is_empty());
        assert!(!empty.allows("api.example.com", 443, Tls));
        assert!(!policy(&[allow("a.example", &[], Any)]).is_empty());
    }

    #[test]
    fn exact_host_matches_whatever_its_form() {
        let p = policy(&[allow("API.Example.com.", &[], Any)]);
        for host in [
            "api.example.com",
            "API.EXAMPLE.COM",
            "api.example.com.",
            "api.example.com:8443",
            "api.example.com.:80",
            "api.example.com:",
        ] {
            assert!(p.allows(host, 443, Http), "{host}");
        }
        for host in [
            "example.com",
            "x.api.example.com",
            "api.example.co",
            "api.example.com..",
            "api.example.com:x",
            "api.example.com:80:80",
            "",
        ] {
            assert!(!p.allows(host, 443, Http), "{host}");
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = policy(&[allow("*.example.com", &[], Any)]);
        assert!(p.allows("a.example.com", 443, Tls));
        assert!(p.allows("a.b.example.com", 443, Tls));
        assert!(p.allows("A.Example.Com:80", 80, Http));
        assert!(!p.allows("example.com", 443, Tls));
        assert!(!p.allows("badexample.com", 443, Tls));
        assert!(!p.allows(".example.com", 443, Tls));
        assert!(!p.allows("a..example.com", 443, Tls));
        assert!(!p.allows("a/b.example.com", 443, Http));
        assert!(!p.allows("a b.example.com", 443, Http));
    }

    #[test]
    fn ports_restrict_and_empty_allows_any() {
        let p = policy(&[
            allow("pinned.example", &[443, 8443], Any),
            allow("open.example", &[], Any),
        ]);
        assert!(p.allows("pinned.example", 443, Tls));
        assert!(p.allows("pinned.example", 8443, Tls));
        assert!(!p.allows("pinned.example", 80, Http));
        for port in [1, 80, 443, 65535] {
            assert!(p.allows("open.example", port, Tcp));
        }
    }

    #[test]
    fn protocols_match_themselves_and_any_matches_all() {
        let p = policy(&[
            allow("any.example", &[], Any),
            allow("http.example", &[], Http),
            allow("tls.example", &[], Tls),
            allow("10.0.0.1", &[], Tcp),
        ]);
        for protocol in [Http, Tls, Tcp] {
            assert!(p.allows("any.example", 443, protocol));
            assert_eq!(p.allows("http.example", 443, protocol), protocol == Http);
            assert_eq!(p.allows("tls.example", 443, protocol), protocol == Tls);
            assert_eq!(p.allows("10.0.0.1", 443, protocol), protocol == Tcp);
        }
    }

    #[test]
    fn ip_literals() {
        let p = policy(&[
            allow("192.0.2.10", &[5432], Tcp),
            allow("[2001:db8::1]", &[], Any),
            allow("2001:DB8::2", &[], Tcp),
        ]);
        assert!(p.allows("192.0.2.10", 5432, Tcp));
        assert!(p.allows("192.0.2.10:5432", 5432, Tcp));
        assert!(p.allows("::ffff:192.0.2.10", 5432, Tcp));
        assert!(!p.allows("192.0.2.11", 5432, Tcp));
        assert!(!p.allows("192.0.2.10", 5433, Tcp));
        assert!(p.allows("[2001:db8::1]:8080", 8080, Http));
        assert!(p.allows("[2001:DB8:0::1]", 80, Http));
        assert!(p.allows("2001:db8::1", 80, Tcp));
        assert!(p.allows("2001:db8::2", 80, Tcp));
        assert!(!p.allows("[2001:db8::1]x", 80, Http));
        assert!(!p.allows("[2001:db8::1", 80, Http));
        assert!(!p.allows("[api.example]", 80, Http));
        // A name never matches an address entry, nor the reverse.
        let names = policy(&[allow("*.example.com", &[], Any)]);
        assert!(!names.allows("192.0.2.10", 80, Tcp));
    }

    #[test]
    fn compile_rejects_bad_hosts_and_names_the_entry() {
        for (host, protocol, reason) in [
            ("", Any, "empty"),
            (".", Any, "empty"),
            ("api.example.com:443", Any, "port"),
            ("[::1]:443", Tcp, "port"),
            ("a.*.example.com", Any, "wildcard"),
            ("*.*.example.com", Any, "wildcard"),
            ("*", Any, "wildcard"),
            ("*example.com", Any, "wildcard"),
            ("*.", Any, "wildcard"),
            ("a..example", Any, "empty label"),
            ("a b.example", Any, "letters"),
            ("-a.example", Any, "`-`"),
            ("1.2.3.400", Any, "number"),
            ("10.0.0.1", Http, "tcp or any"),
            ("2001:db8::1", Tls, "tcp or any"),
            ("[not-ip]", Tcp, "IPv6"),
        ] {
            let message = error(allow(host, &[], protocol));
            assert!(
                message.starts_with(&format!("egress entry 1 (host {host:?}): ")),
                "{message}"
            );
            assert!(message.contains(reason), "{host}: {message}");
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(error(allow(&long_label, &[], Any)).contains("63"));
        let long_name = ["abcdefghi"; 26].join(".");
        assert!(error(allow(&long_name, &[], Any)).contains("253"));
        assert!(error(allow("a.example", &[443, 0], Any)).contains("port 0"));
    }

    #[test]
    fn compile_accepts_dns_names() {
        let p = policy(&[
            allow("_grpc._tcp.example.com", &[], Any),
            allow("xn--bcher-kva.example", &[], Tls),
            allow("a-b.example.com.", &[443, 443], Http),
            allow("*.svc.example", &[], Any),
        ]);
        assert!(p.allows("_grpc._tcp.example.com", 1, Tcp));
        assert!(p.allows("xn--bcher-kva.example", 443, Tls));
        assert!(p.allows("a-b.example.com", 443, Http));
        assert!(p.allows("x.svc.example", 1, Tcp));
    }

    #[test]
    fn any_as_query_needs_an_any_entry() {
        let p = policy(&[allow("http.example", &[], Http)]);
        assert!(!p.allows("http.example", 80, Any));
        assert!(policy(&[allow("a.example", &[], Any)]).allows("a.example", 80, Any));
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().expect("ip")).collect()
    }

    #[test]
    fn allowed_traffic_goes_only_to_an_address_of_the_allowed_host() {
        let addresses = ips(&["192.0.2.10", "192.0.2.11", "2001:db8::10"]);
        // The client's choice, when it is one of the host's addresses.
        assert_eq!(
            destination(at("192.0.2.11:443"), &addresses),
            Some(at("192.0.2.11:443"))
        );
        assert_eq!(
            destination(at("[::ffff:192.0.2.10]:80"), &addresses),
            Some(at("192.0.2.10:80"))
        );
        assert_eq!(
            destination(at("[2001:db8::10]:443"), &addresses),
            Some(at("[2001:db8::10]:443"))
        );
        // Any other address (a forged Host or SNI): the host's own, same family, same port.
        assert_eq!(
            destination(at("203.0.113.5:443"), &addresses),
            Some(at("192.0.2.10:443"))
        );
        assert_eq!(
            destination(at("[2001:db8::99]:443"), &addresses),
            Some(at("[2001:db8::10]:443"))
        );
        // Only the other family: that one.
        assert_eq!(
            destination(at("203.0.113.5:443"), &ips(&["2001:db8::10"])),
            Some(at("[2001:db8::10]:443"))
        );
        assert_eq!(destination(at("203.0.113.5:443"), &[]), None);
    }

    #[test]
    fn hosts_are_reached_by_name_or_at_their_address() {
        assert_eq!(
            reach("API.Example.com.:8443"),
            Some(Reach::Name("api.example.com".to_owned()))
        );
        assert_eq!(
            reach("192.0.2.10:80"),
            Some(Reach::Address("192.0.2.10".parse().expect("ip")))
        );
        assert_eq!(
            reach("[2001:db8::1]:80"),
            Some(Reach::Address("2001:db8::1".parse().expect("ip")))
        );
        assert_eq!(reach("a b"), None);
    }

    #[test]
    fn blocked_message_text() {
        assert_eq!(
            blocked_message("api.example.com"),
            "egress to api.example.com blocked by Skein: no EgressRule allows it\n"
        );
        assert_eq!(
            blocked_message_for("api.example.com", BlockReason::NoConfiguration),
            "egress to api.example.com blocked by Skein: no configuration from the control plane yet\n"
        );
    }
}
