//! EgressRule → the egress entries of the proxies in the namespaces the rule applies to.

use std::collections::BTreeSet;

use crate::api::EgressRuleSpec;
use crate::api::egress_rule::EgressRuleProtocol;
use crate::proxy::config::types::{EgressAllow, EgressProtocol};
use crate::proxy::egress::{EgressError, EgressPolicy};

use super::status::is_dns_label;

/// An accepted EgressRule, translated.
pub(super) struct PreparedEgress {
    applies_to: Scope,
    pub entries: Vec<EgressAllow>,
    /// Hash of `entries`, for proxies' versions.
    pub hash: u64,
}

/// The namespaces whose proxies a rule applies to.
enum Scope {
    All,
    Namespaces(BTreeSet<String>),
}

impl PreparedEgress {
    pub fn applies_to(&self, namespace: &str) -> bool {
        match &self.applies_to {
            Scope::All => true,
            Scope::Namespaces(namespaces) => namespaces.contains(namespace),
        }
    }
}

fn protocol(protocol: Option<EgressRuleProtocol>) -> EgressProtocol {
    match protocol {
        None => EgressProtocol::Any,
        Some(EgressRuleProtocol::Http) => EgressProtocol::Http,
        Some(EgressRuleProtocol::Tls) => EgressProtocol::Tls,
        Some(EgressRuleProtocol::Tcp) => EgressProtocol::Tcp,
    }
}

/// One entry per host and port (each port has its own protocol); a rule without ports gives
/// one entry per host for any port and protocol.
fn entries(spec: &EgressRuleSpec) -> Vec<EgressAllow> {
    spec.hosts
        .iter()
        .flat_map(|host| {
            let any = EgressAllow {
                host: host.clone(),
                ports: Vec::new(),
                protocol: EgressProtocol::Any,
            };
            let per_port: Vec<EgressAllow> = spec
                .ports
                .iter()
                .map(|port| EgressAllow {
                    host: host.clone(),
                    ports: vec![port.port],
                    protocol: protocol(port.protocol),
                })
                .collect();
            if per_port.is_empty() {
                vec![any]
            } else {
                per_port
            }
        })
        .collect()
}

/// Translates a valid rule living in `namespace`.
pub(super) fn prepare(namespace: &str, spec: &EgressRuleSpec) -> PreparedEgress {
    let applies_to = if spec.namespaces.iter().any(|ns| ns == "*") {
        Scope::All
    } else if spec.namespaces.is_empty() {
        Scope::Namespaces(BTreeSet::from([namespace.to_owned()]))
    } else {
        Scope::Namespaces(spec.namespaces.iter().cloned().collect())
    };
    let entries = entries(spec);
    PreparedEgress {
        applies_to,
        hash: super::hash_json(&entries),
        entries,
    }
}

/// Checks, with the proxy's own host rules, what would make a proxy refuse its whole
/// configuration, plus the namespaces: every problem with its field path.
pub fn validate_egress_rule(spec: &EgressRuleSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.hosts.is_empty() {
        problems.push("spec.hosts: at least one host is needed".to_owned());
    }
    for (j, port) in spec.ports.iter().enumerate() {
        if port.port == 0 {
            problems.push(format!("spec.ports[{j}].port: 0 is not a port"));
        }
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let check = |protocol| {
            EgressPolicy::compile(&[EgressAllow {
                host: host.clone(),
                ports: Vec::new(),
                protocol,
            }])
        };
        // The host on its own first; only an IP address can then still fail, on a port whose
        // protocol looks at names (http, tls).
        if let Err(EgressError::Invalid { reason, .. }) = check(EgressProtocol::Any) {
            problems.push(format!("spec.hosts[{i}]: {host:?}: {reason}"));
            continue;
        }
        for (j, port) in spec.ports.iter().enumerate() {
            if let Err(EgressError::Invalid { reason, .. }) = check(protocol(port.protocol)) {
                problems.push(format!(
                    "spec.hosts[{i}]: {host:?}: {reason} (spec.ports[{j}] has protocol {})",
                    protocol_name(port.protocol)
                ));
            }
        }
    }
    for (k, namespace) in spec.namespaces.iter().enumerate() {
        if namespace != "*" && !is_dns_label(namespace) {
            problems.push(format!(
                "spec.namespaces[{k}]: {namespace:?} is neither a namespace name nor *"
            ));
        }
    }
    problems
}

fn protocol_name(protocol: Option<EgressRuleProtocol>) -> &'static str {
    match protocol {
        None => "any",
        Some(EgressRuleProtocol::Http) => "http",
        Some(EgressRuleProtocol::Tls) => "tls",
        Some(EgressRuleProtocol::Tcp) => "tcp",
    }
}
