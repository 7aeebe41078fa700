//! AccessPolicy → the access policies of the proxies of the pods it selects.
//!
//! A policy applies to the pods of its own namespace whose labels include its
//! `selector.matchLabels` (no selector, or an empty one: every pod of the namespace). Service
//! account references become full SPIFFE IDs with the mesh's trust domain (MeshConfig
//! `mtls.trustDomain`): `sa` is `spiffe://<td>/ns/<policy's namespace>/sa/<sa>`, `ns/sa` is
//! `spiffe://<td>/ns/<ns>/sa/<sa>`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::status::is_dns_label;
use crate::api::access_policy::{AccessAction, AccessPath, AccessPolicySpec};
use crate::identity::SpiffeId;
use crate::proxy::config::types as cfg;

/// Methods a rule may name: what HTTP defines (RFC 9110, and PATCH).
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// An accepted policy, ready to be handed to the proxies it selects.
#[derive(Clone, Debug)]
pub(super) struct PreparedAccessPolicy {
    pub namespace: String,
    pub match_labels: BTreeMap<String, String>,
    pub policy: cfg::AccessPolicy,
    /// Hash of `policy`, for proxies' versions.
    pub hash: u64,
}

impl PreparedAccessPolicy {
    /// Whether the policy applies to a pod of `namespace` with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace && selector_matches(&self.match_labels, labels)
    }
}

/// Whether `labels` include every `match_labels` pair (an empty selector matches any pod).
pub(super) fn selector_matches(
    match_labels: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod's labels as the selector sees them.
pub(super) fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

pub(super) fn match_labels(spec: &AccessPolicySpec) -> BTreeMap<String, String> {
    spec.selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default()
}

/// Every problem of a policy, with its field path; empty when it is valid.
pub fn validate_access_policy(spec: &AccessPolicySpec) -> Vec<String> {
    let mut problems = validate_match_labels(&match_labels(spec));
    for (i, rule) in spec.rules.iter().enumerate() {
        for (j, source) in rule.from.iter().enumerate() {
            let at = format!("spec.rules[{i}].from[{j}]");
            let names_identities =
                !source.service_accounts.is_empty() || !source.namespaces.is_empty();
            if source.unauthenticated && names_identities {
                problems.push(format!(
                    "{at}: unauthenticated matches peers without an identity, so it cannot be \
                     combined with serviceAccounts or namespaces in one source (use two sources)"
                ));
            }
            if !source.unauthenticated && !names_identities {
                problems.push(format!(
                    "{at}: names no serviceAccounts, namespaces or unauthenticated (to match any \
                     peer, leave `from` out)"
                ));
            }
            for (k, reference) in source.service_accounts.iter().enumerate() {
                if let Err(problem) = parse_service_account(reference, "default") {
                    problems.push(format!("{at}.serviceAccounts[{k}]: {problem}"));
                }
            }
            for (k, namespace) in source.namespaces.iter().enumerate() {
                if !is_dns_label(namespace) {
                    problems.push(format!(
                        "{at}.namespaces[{k}]: {namespace:?} is not a namespace name"
                    ));
                }
            }
        }
        for (j, operation) in rule.to.iter().enumerate() {
            let at = format!("spec.rules[{i}].to[{j}]");
            for (k, port) in operation.ports.iter().enumerate() {
                if *port == 0 {
                    problems.push(format!("{at}.ports[{k}]: 0 is not a port"));
                }
            }
            for (k, method) in operation.methods.iter().enumerate() {
                if !KNOWN_METHODS.contains(&method.as_str()) {
                    problems.push(format!(
                        "{at}.methods[{k}]: {method:?} is not an HTTP method (one of {})",
                        KNOWN_METHODS.join(", ")
                    ));
                }
            }
            for (k, path) in operation.paths.iter().enumerate() {
                if let Err(problem) = path_match(path) {
                    problems.push(format!("{at}.paths[{k}]: {problem}"));
                }
            }
        }
    }
    problems
}

/// The problems of a selector's `matchLabels` (Kubernetes label syntax), with field paths.
pub(super) fn validate_match_labels(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in labels {
        let at = "spec.selector.matchLabels";
        let (prefix, name) = key
            .rsplit_once('/')
            .map_or((None, key.as_str()), |(p, n)| (Some(p), n));
        if !is_label_name(name) || prefix.is_some_and(|p| !is_dns_subdomain(p)) {
            problems.push(format!(
                "{at}: {key:?} is not a label key ([PREFIX/]NAME: NAME up to 63 letters, digits, \
                 '-', '_' or '.', starting and ending with a letter or digit; PREFIX a DNS name)"
            ));
        }
        if !value.is_empty() && !is_label_name(value) {
            problems.push(format!(
                "{at}.{key}: {value:?} is not a label value (up to 63 letters, digits, '-', '_' \
                 or '.', starting and ending with a letter or digit)"
            ));
        }
    }
    problems
}

/// A label name, or a non-empty label value.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `sa` (in `policy_namespace`) or `namespace/sa` → (namespace, service account).
fn parse_service_account<'r>(
    reference: &'r str,
    policy_namespace: &'r str,
) -> Result<(&'r str, &'r str), String> {
    let (namespace, name) = reference
        .split_once('/')
        .unwrap_or((policy_namespace, reference));
    if is_dns_label(namespace) && is_dns_subdomain(name) {
        Ok((namespace, name))
    } else {
        Err(format!(
            "{reference:?} is not SERVICE-ACCOUNT or NAMESPACE/SERVICE-ACCOUNT (lowercase DNS names)"
        ))
    }
}

/// An RFC 1123 subdomain: what service account names are.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn path_match(path: &AccessPath) -> Result<cfg::PathMatch, String> {
    let (value, matched) = match (&path.exact, &path.prefix) {
        (Some(exact), None) => (exact, cfg::PathMatch::Exact(exact.clone())),
        (None, Some(prefix)) => (prefix, cfg::PathMatch::Prefix(prefix.clone())),
        _ => return Err("set exactly one of exact and prefix".to_owned()),
    };
    if !value.starts_with('/') {
        return Err(format!("{value:?} does not start with /"));
    }
    if value.contains(['?', '#']) {
        return Err(format!(
            "{value:?} has a query or fragment: paths are matched without them"
        ));
    }
    // The proxy matches normalized paths: one that normalizes differently would never match.
    let normalized = crate::proxy::authz::normalize_path(value);
    if normalized != *value {
        return Err(format!(
            "{value:?} is not in normal form (requests are matched as {normalized:?})"
        ));
    }
    Ok(matched)
}

/// The proxy's form of a valid policy named `namespace/name`.
pub(super) fn translate(
    namespace: &str,
    name: &str,
    spec: &AccessPolicySpec,
    trust_domain: &str,
) -> cfg::AccessPolicy {
    cfg::AccessPolicy {
        name: format!("{namespace}/{name}"),
        action: match spec.action {
            AccessAction::Allow => cfg::AccessAction::Allow,
            AccessAction::Deny => cfg::AccessAction::Deny,
            AccessAction::Audit => cfg::AccessAction::Audit,
        },
        rules: spec
            .rules
            .iter()
            .map(|rule| cfg::AccessRule {
                from: rule
                    .from
                    .iter()
                    .map(|source| cfg::AccessSource {
                        identities: source
                            .service_accounts
                            .iter()
                            .filter_map(|reference| {
                                parse_service_account(reference, namespace).ok()
                            })
                            .map(|(ns, sa)| SpiffeId::new(trust_domain, ns, sa).to_string())
                            .collect(),
                        namespaces: source.namespaces.clone(),
                        unauthenticated: source.unauthenticated,
                    })
                    .collect(),
                to: rule
                    .to
                    .iter()
                    .map(|operation| cfg::AccessOperation {
                        ports: operation.ports.clone(),
                        methods: operation.methods.clone(),
                        paths: operation
                            .paths
                            .iter()
                            .filter_map(|p| path_match(p).ok())
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> AccessPolicySpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn malformed_policies_are_refused_with_their_field_paths() {
        let cases = [
            (
                json!({"action": "Allow", "rules": [{"from": [{"serviceAccounts": ["Frontend"]}]}]}),
                "spec.rules[0].from[0].serviceAccounts[0]: \"Frontend\" is not SERVICE-ACCOUNT",
            ),
            (
                json!({"action": "Allow", "rules": [{"from": [{"serviceAccounts": ["a/b/c"]}]}]}),
                "serviceAccounts[0]: \"a/b/c\"",
            ),
            (
                json!({"action": "Allow", "rules": [{"from": [{"unauthenticated": true, "serviceAccounts": ["fe"]}]}]}),
                "spec.rules[0].from[0]: unauthenticated matches peers without an identity",
            ),
            (
                json!({"action": "Allow", "rules": [{"from": [{}]}]}),
                "spec.rules[0].from[0]: names no serviceAccounts",
            ),
            (
                json!({"action": "Deny", "rules": [{"from": [{"namespaces": ["Prod"]}]}]}),
                "spec.rules[0].from[0].namespaces[0]: \"Prod\" is not a namespace name",
            ),
            (
                json!({"action": "Deny", "rules": [{}, {"to": [{"ports": [80, 0]}]}]}),
                "spec.rules[1].to[0].ports[1]: 0 is not a port",
            ),
            (
                json!({"action": "Deny", "rules": [{"to": [{"methods": ["get"]}]}]}),
                "spec.rules[0].to[0].methods[0]: \"get\" is not an HTTP method",
            ),
            (
                json!({"action": "Deny", "rules": [{"to": [{"paths": [{"prefix": "admin"}]}]}]}),
                "spec.rules[0].to[0].paths[0]: \"admin\" does not start with /",
            ),
            (
                json!({"action": "Deny", "rules": [{"to": [{"paths": [{"prefix": "/a", "exact": "/b"}]}]}]}),
                "paths[0]: set exactly one of exact and prefix",
            ),
            (
                json!({"action": "Deny", "rules": [{"to": [{"paths": [{}]}]}]}),
                "paths[0]: set exactly one of exact and prefix",
            ),
            (
                json!({"action": "Deny", "rules": [{"to": [{"paths": [{"exact": "/a?b=1"}]}]}]}),
                "has a query or fragment",
            ),
            (
                json!({"action": "Deny", "rules": [{"to": [{"paths": [{"prefix": "/x/../admin"}]}]}]}),
                "is not in normal form (requests are matched as \"/admin\")",
            ),
        ];
        for (value, want) in cases {
            let problems = validate_access_policy(&spec(value.clone()));
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{value}: want {want:?}, got {problems:?}"
            );
        }
    }

    #[test]
    fn well_formed_policies_pass() {
        for value in [
            json!({"action": "Allow"}),
            json!({"action": "Audit", "rules": [{}]}),
            json!({"selector": {"matchLabels": {"app": "backend"}}, "action": "Allow", "rules": [
                {"from": [{"serviceAccounts": ["frontend", "other/batch.v2"]}, {"unauthenticated": true},
                          {"namespaces": ["demo"], "serviceAccounts": ["x"]}],
                 "to": [{"ports": [8080], "methods": ["GET", "PATCH"],
                         "paths": [{"exact": "/"}, {"prefix": "/api/"}]}]}
            ]}),
        ] {
            let problems = validate_access_policy(&spec(value.clone()));
            assert!(problems.is_empty(), "{value}: {problems:?}");
        }
    }

    #[test]
    fn service_accounts_become_spiffe_ids_in_the_mesh_trust_domain() {
        let spec = spec(json!({"action": "Deny", "rules": [
            {"from": [{"serviceAccounts": ["batch", "other/etl"], "namespaces": ["demo"]},
                      {"unauthenticated": true}],
             "to": [{"ports": [5432], "methods": ["GET"], "paths": [{"exact": "/a"}, {"prefix": "/b/"}]}]}
        ]}));
        let policy = translate("demo", "no-batch", &spec, "example.org");
        assert_eq!(
            policy,
            cfg::AccessPolicy {
                name: "demo/no-batch".to_owned(),
                action: cfg::AccessAction::Deny,
                rules: vec![cfg::AccessRule {
                    from: vec![
                        cfg::AccessSource {
                            identities: vec![
                                "spiffe://example.org/ns/demo/sa/batch".to_owned(),
                                "spiffe://example.org/ns/other/sa/etl".to_owned(),
                            ],
                            namespaces: vec!["demo".to_owned()],
                            unauthenticated: false,
                        },
                        cfg::AccessSource {
                            unauthenticated: true,
                            ..cfg::AccessSource::default()
                        },
                    ],
                    to: vec![cfg::AccessOperation {
                        ports: vec![5432],
                        methods: vec!["GET".to_owned()],
                        paths: vec![
                            cfg::PathMatch::Exact("/a".to_owned()),
                            cfg::PathMatch::Prefix("/b/".to_owned()),
                        ],
                    }],
                }],
            }
        );
    }

    #[test]
    fn selectors_match_pods_whose_labels_include_them() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let pod = labels(&[("app", "backend"), ("version", "v1")]);
        assert!(selector_matches(&labels(&[]), &pod));
        assert!(selector_matches(&labels(&[("app", "backend")]), &pod));
        assert!(!selector_matches(&labels(&[("app", "frontend")]), &pod));
        assert!(!selector_matches(
            &labels(&[("app", "backend"), ("tier", "x")]),
            &pod
        ));
        assert!(!selector_matches(
            &labels(&[("app", "backend")]),
            &labels(&[])
        ));
    }
}
