//! What `skein init` captures: the contract between the injector (which writes these flags into
//! the `skein-init` container's args) and `skein init` (which parses them with clap).

use std::net::IpAddr;

use clap::Args;

use crate::api::names;

/// Traffic-capture settings of one pod.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    /// UID the proxy runs as; its own connections are never redirected.
    #[arg(long, default_value_t = names::DEFAULT_PROXY_UID as u32)]
    pub proxy_uid: u32,
    /// Port captured inbound connections are redirected to.
    #[arg(long, default_value_t = names::DEFAULT_INBOUND_PORT as u16)]
    pub inbound_port: u16,
    /// Port captured outbound connections are redirected to.
    #[arg(long, default_value_t = names::DEFAULT_OUTBOUND_PORT as u16)]
    pub outbound_port: u16,
    /// Inbound destination ports left alone (comma-separated). The proxy's own ports always are.
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Only outbound traffic to these CIDRs is captured (comma-separated). Empty: all of it.
    #[arg(long, value_delimiter = ',')]
    pub include_outbound_cidrs: Vec<IpCidr>,
    /// Outbound traffic to these CIDRs is never captured (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<IpCidr>,
    /// Ports the proxy itself listens on that must never be redirected (admin, metrics, health).
    #[arg(long, default_value_t = PortList(vec![names::DEFAULT_ADMIN_PORT as u16]))]
    pub proxy_ports: PortList,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            proxy_uid: names::DEFAULT_PROXY_UID as u32,
            inbound_port: names::DEFAULT_INBOUND_PORT as u16,
            outbound_port: names::DEFAULT_OUTBOUND_PORT as u16,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_outbound_cidrs: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            proxy_ports: PortList(vec![names::DEFAULT_ADMIN_PORT as u16]),
        }
    }
}

impl CaptureSettings {
    /// The command-line flags that reproduce these settings (for the init container's args).
    pub fn to_args(&self) -> Vec<String> {
        fn join<T: ToString>(items: &[T]) -> String {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
        let mut args = vec![
            format!("--proxy-uid={}", self.proxy_uid),
            format!("--inbound-port={}", self.inbound_port),
            format!("--outbound-port={}", self.outbound_port),
            format!("--proxy-ports={}", join(&self.proxy_ports.0)),
        ];
        let lists = [
            ("--exclude-inbound-ports", join(&self.exclude_inbound_ports)),
            (
                "--exclude-outbound-ports",
                join(&self.exclude_outbound_ports),
            ),
            (
                "--include-outbound-cidrs",
                join(&self.include_outbound_cidrs),
            ),
            (
                "--exclude-outbound-cidrs",
                join(&self.exclude_outbound_cidrs),
            ),
        ];
        for (flag, value) in lists {
            if !value.is_empty() {
                args.push(format!("{flag}={value}"));
            }
        }
        args
    }
}

/// A comma-separated port list with a default (clap needs a Display type for that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl std::fmt::Display for PortList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for PortList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("{p:?} is not a port (1-65535)"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PortList)
    }
}

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `fd00::/8`). A bare address is a
/// host route (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8")]
pub struct CidrError {
    pub input: String,
}

impl IpCidr {
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl std::str::FromStr for IpCidr {
    type Err = CidrError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || CidrError {
            input: input.to_owned(),
        };
        let (addr, prefix) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for IpCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        settings: CaptureSettings,
    }

    #[test]
    fn args_round_trip_through_clap() {
        let settings = CaptureSettings {
            proxy_uid: 1500,
            inbound_port: 7006,
            outbound_port: 7001,
            exclude_inbound_ports: vec![22, 8081],
            exclude_outbound_ports: vec![5432],
            include_outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            exclude_outbound_cidrs: vec![
                "10.1.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            proxy_ports: PortList(vec![7000, 7002]),
        };
        let args = std::iter::once("skein-init".to_owned()).chain(settings.to_args());
        assert_eq!(Wrapper::parse_from(args).settings, settings);
        let defaults =
            std::iter::once("skein-init".to_owned()).chain(CaptureSettings::default().to_args());
        assert_eq!(
            Wrapper::parse_from(defaults).settings,
            CaptureSettings::default()
        );
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!("10.0.0.0/8".parse::<IpCidr>().unwrap().prefix, 8);
        assert_eq!(
            "10.1.2.3".parse::<IpCidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "fd00::/8".parse::<IpCidr>().unwrap().to_string(),
            "fd00::/8"
        );
        for bad in ["10.0.0/8", "10.0.0.0/33", "fd00::/129", "ten/8", ""] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad} should be rejected");
        }
    }
}
