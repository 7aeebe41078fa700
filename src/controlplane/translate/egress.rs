//! EgressRule → the egress entries of the proxies in the namespaces the rule applies to: its own
//! namespace, or (only for rules in the mesh namespace, `skein-system`) those it names or all.

use std::collections::BTreeSet;

use crate::api::EgressRuleSpec;
use crate::api::egress_rule::EgressRuleProtocol;
use crate::proxy::config::types::{EgressAllow, EgressProtocol};
use crate::proxy::egress::{EgressError, EgressPolicy};

use super::status::{Acceptance, is_dns_label};
use crate::api::names::MESH_NAMESPACE;

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
        self.applies_to.includes(namespace)
    }
}

impl Scope {
    fn includes(&self, namespace: &str) -> bool {
        match self {
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

/// Translates a valid rule living in `namespace`, within what its namespace may affect
/// ([`scope`]): nothing when that leaves no namespace, and the acceptance to report.
pub(super) fn prepare(
    namespace: &str,
    spec: &EgressRuleSpec,
) -> (Option<PreparedEgress>, Acceptance) {
    let (applies_to, acceptance) = scope(namespace, spec);
    let Some(applies_to) = applies_to else {
        return (None, acceptance);
    };
    let entries = entries(spec);
    let prepared = PreparedEgress {
        applies_to,
        hash: super::hash_json(&entries),
        entries,
    };
    (Some(prepared), acceptance)
}

/// The namespaces a rule in `namespace` applies to, and how its status says so. Only a rule in
/// the mesh namespace may open egress for other namespaces (`*` or named): anywhere else a
/// tenant could open the mesh's egress for every other tenant, so such a rule applies to its
/// own namespace only (if it names it or `*`), or nowhere.
fn scope(namespace: &str, spec: &EgressRuleSpec) -> (Option<Scope>, Acceptance) {
    let asked = if spec.namespaces.iter().any(|ns| ns == "*") {
        Scope::All
    } else if spec.namespaces.is_empty() {
        Scope::Namespaces(BTreeSet::from([namespace.to_owned()]))
    } else {
        Scope::Namespaces(spec.namespaces.iter().cloned().collect())
    };
    let describe = |scope: &Scope| match scope {
        Scope::All => "pods in every namespace".to_owned(),
        Scope::Namespaces(names) => format!(
            "pods in namespace{} {}",
            if names.len() == 1 { "" } else { "s" },
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    if namespace == MESH_NAMESPACE {
        let message = format!("applies to {}", describe(&asked));
        return (Some(asked), Acceptance::Accepted(message));
    }
    let others: Vec<&str> = spec
        .namespaces
        .iter()
        .map(String::as_str)
        .filter(|ns| *ns != namespace)
        .collect();
    if others.is_empty() {
        let message = format!("applies to {}", describe(&asked));
        return (Some(asked), Acceptance::Accepted(message));
    }
    let ignored = format!(
        "only EgressRules in {MESH_NAMESPACE} may apply to other namespaces, so spec.namespaces \
         {others:?} is ignored"
    );
    if asked.includes(namespace) {
        let own = Scope::Namespaces(BTreeSet::from([namespace.to_owned()]));
        let message = format!("{ignored}: the rule applies to {} only", describe(&own));
        (Some(own), Acceptance::Limited(message))
    } else {
        let message = format!(
            "{ignored}, and the rule does not name its own namespace {namespace}: it applies to \
             no pod"
        );
        (None, Acceptance::NotAllowed(message))
    }
}

/// What the validating webhook refuses for a rule created or changed in `namespace`: what
/// [`scope`] would ignore, so new rules say exactly what they do.
pub fn egress_scope_problems(namespace: &str, spec: &EgressRuleSpec) -> Vec<String> {
    if namespace == MESH_NAMESPACE {
        return Vec::new();
    }
    spec.namespaces
        .iter()
        .enumerate()
        .filter(|(_, ns)| *ns != namespace)
        .map(|(k, ns)| {
            format!(
                "spec.namespaces[{k}]: {ns:?}: only EgressRules in {MESH_NAMESPACE} may apply to \
                 other namespaces (or to all, \"*\"); this one may only name its own namespace \
                 {namespace}"
            )
        })
        .collect()
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
