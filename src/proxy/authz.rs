//! AccessPolicy enforcement on inbound traffic: the pure decision ([`decide`]) and what a
//! denial looks like to the client (an HTTP `403` naming the policy, or a reset connection).
//!
//! Order, as in Istio: a `Deny` policy whose rule matches denies; else, when the pod has any
//! `Allow` policy, a request no `Allow` rule matches is denied; else it is allowed. `Audit`
//! policies never change the outcome: an allowed request that would be denied were every
//! `Audit` policy an `Allow` policy too is reported as a would-deny of each audit policy (see
//! the AccessPolicy resource).
//!
//! Opaque TCP has no method or path ([`RequestFacts::method`] and `path` are `None`): an `Allow`
//! or `Audit` rule that names methods or paths never matches it, and a `Deny` rule ignores them
//! (so it denies the whole port), the way Istio keeps what it cannot read on the safe side.
//!
//! Paths are matched after normalization ([`normalize_path`]): `/%61dmin`, `//admin` and
//! `/x/../admin` are all `/admin` to a policy, so an encoding trick cannot walk past a deny.

use std::fmt::Write as _;

use std::net::SocketAddr;

use http::Method;

use super::config::types::{AccessAction, AccessOperation, AccessPolicy, AccessSource, PathMatch};
use super::metrics::{AuthzLabels, HttpMetrics};
use skein_core::identity::SpiffeId;

/// What a policy is matched against.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// The verified identity of the client; `None` when it has none (plaintext).
    pub peer: Option<&'a SpiffeId>,
    /// The pod's port the client reached.
    pub port: u16,
    /// `None` for opaque TCP.
    pub method: Option<&'a Method>,
    /// Normalized ([`normalize_path`]); `None` for opaque TCP.
    pub path: Option<&'a str>,
}

/// One policy's objection: its `namespace/name` and a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial<'p> {
    pub policy: &'p str,
    pub reason: String,
}

impl std::fmt::Display for Denial<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "denied by AccessPolicy {}: {}", self.policy, self.reason)
    }
}

/// The outcome for one request or connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision<'p> {
    /// `Some`: refuse it.
    pub denied: Option<Denial<'p>>,
    /// Audit policies that would have denied it (it passes anyway).
    pub would_deny: Vec<Denial<'p>>,
}

/// Decides one request (or TCP connection) against the policies that select this pod.
pub fn decide<'p>(policies: &'p [AccessPolicy], facts: &RequestFacts) -> Decision<'p> {
    if policies.is_empty() {
        return Decision::default();
    }
    // Policies hold identities as text: spell the peer's once.
    let peer = facts.peer.map(|id| (id, id.to_string()));
    let peer = peer.as_ref().map(|(id, text)| (*id, text.as_str()));
    let matching_rule = |policy: &AccessPolicy| matching_rule(policy, facts, peer);
    let of = |action| policies.iter().filter(move |p| p.action == action);
    for policy in of(AccessAction::Deny) {
        if let Some(index) = matching_rule(policy) {
            return Decision {
                denied: Some(Denial {
                    policy: &policy.name,
                    reason: format!("rules[{index}] denies {}", describe(facts)),
                }),
                would_deny: Vec::new(),
            };
        }
    }
    let allows: Vec<&AccessPolicy> = of(AccessAction::Allow).collect();
    let allowed = allows.iter().any(|p| matching_rule(p).is_some());
    if !allows.is_empty() && !allowed {
        return Decision {
            denied: Some(Denial {
                policy: &allows[0].name,
                reason: no_rule_allows(facts, &allows[1..]),
            }),
            would_deny: Vec::new(),
        };
    }
    let audits: Vec<&AccessPolicy> = of(AccessAction::Audit).collect();
    let would_allow = allowed || audits.iter().any(|p| matching_rule(p).is_some());
    let would_deny = if audits.is_empty() || would_allow {
        Vec::new()
    } else {
        audits
            .iter()
            .map(|audit| Denial {
                policy: &audit.name,
                reason: no_rule_allows(facts, &[]),
            })
            .collect()
    };
    Decision {
        denied: None,
        would_deny,
    }
}

/// Counts and logs a decision (its denial, or each audit policy's would-deny) and returns the
/// denial, if any, for the caller to enforce. `protocol`: `http`, `grpc` or `tcp`; `client`:
/// the connection's address, for the log.
pub fn account<'p>(
    decision: Decision<'p>,
    metrics: &HttpMetrics,
    protocol: &'static str,
    client: SocketAddr,
) -> Option<Denial<'p>> {
    let labels = |denial: &Denial| AuthzLabels {
        policy: denial.policy.to_owned(),
        protocol,
    };
    for audit in &decision.would_deny {
        metrics
            .authz_audit_would_deny
            .get_or_create(&labels(audit))
            .inc();
        tracing::info!(
            policy = audit.policy,
            %client,
            protocol,
            reason = %audit.reason,
            "audit: the policy would deny this (it passes)"
        );
    }
    if let Some(denial) = &decision.denied {
        metrics.authz_denied.get_or_create(&labels(denial)).inc();
        tracing::info!(
            policy = denial.policy,
            %client,
            protocol,
            reason = %denial.reason,
            "access denied"
        );
    }
    decision.denied
}

/// `no rule allows <peer> (<request>)`, naming the other Allow policies that were asked too.
fn no_rule_allows(facts: &RequestFacts, others: &[&AccessPolicy]) -> String {
    let mut reason = format!("no rule allows {}", describe(facts));
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().map(|p| p.name.as_str()).collect();
        let _ = write!(reason, " (nor does {})", names.join(", "));
    }
    reason
}

/// `spiffe://cluster.local/ns/demo/sa/batch (GET /admin, port 8080)`; `an unauthenticated
/// peer (port 5432)` for TCP.
fn describe(facts: &RequestFacts) -> String {
    let peer = facts
        .peer
        .map_or_else(|| "an unauthenticated peer".to_owned(), ToString::to_string);
    match (facts.method, facts.path) {
        (Some(method), Some(path)) => format!("{peer} ({method} {path}, port {})", facts.port),
        _ => format!("{peer} (TCP, port {})", facts.port),
    }
}

/// The index of the first rule of `policy` that matches.
fn matching_rule(
    policy: &AccessPolicy,
    facts: &RequestFacts,
    peer: Option<(&SpiffeId, &str)>,
) -> Option<usize> {
    // What a deny cannot read, it denies; what an allow cannot read, it does not allow.
    let ignore_http_fields = policy.action == AccessAction::Deny;
    policy.rules.iter().position(|rule| {
        (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, peer)))
            && (rule.to.is_empty()
                || rule
                    .to
                    .iter()
                    .any(|o| operation_matches(o, facts, ignore_http_fields)))
    })
}

/// `peer`: the identity and its text.
fn source_matches(source: &AccessSource, peer: Option<(&SpiffeId, &str)>) -> bool {
    let Some((peer, peer_text)) = peer else {
        return source.unauthenticated
            || (source.identities.is_empty() && source.namespaces.is_empty());
    };
    !source.unauthenticated
        && (source.identities.is_empty() || source.identities.iter().any(|id| id == peer_text))
        && (source.namespaces.is_empty() || source.namespaces.contains(&peer.namespace))
}

fn operation_matches(
    operation: &AccessOperation,
    facts: &RequestFacts,
    ignore_http_fields: bool,
) -> bool {
    let opaque = facts.method.is_none();
    let ports = operation.ports.is_empty() || operation.ports.contains(&facts.port);
    let methods = operation.methods.is_empty()
        || (opaque && ignore_http_fields)
        || facts
            .method
            .is_some_and(|m| operation.methods.iter().any(|want| want == m.as_str()));
    let paths = operation.paths.is_empty()
        || (opaque && ignore_http_fields)
        || facts
            .path
            .is_some_and(|path| operation.paths.iter().any(|want| path_matches(want, path)));
    ports && methods && paths
}

fn path_matches(want: &PathMatch, path: &str) -> bool {
    match want {
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
    }
}

/// The path a policy sees: percent-encoded unreserved characters decoded (`%61` is `a`),
/// repeated slashes merged, and `.` and `..` segments resolved (RFC 3986 5.2.4). Other
/// escapes (`%2F`) stay as they are: decoding them would change what the path means.
pub fn normalize_path(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            other => segments.push(other),
        }
    }
    let mut normalized = String::with_capacity(decoded.len());
    for segment in &segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        normalized.push('/');
    }
    normalized
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
            && (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(char::from(byte));
            i += 3;
            continue;
        }
        // Copy up to the next `%` as is (keeps multi-byte characters whole).
        let next = path[i + 1..].find('%').map_or(path.len(), |at| at + i + 1);
        out.push_str(&path[i..next]);
        i = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::AccessRule;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "demo", sa)
    }

    fn policy(name: &str, action: AccessAction, rules: Vec<AccessRule>) -> AccessPolicy {
        AccessPolicy {
            name: format!("demo/{name}"),
            action,
            rules,
        }
    }

    fn rule(from: Vec<AccessSource>, to: Vec<AccessOperation>) -> AccessRule {
        AccessRule { from, to }
    }

    fn from_ids(ids: &[&str]) -> AccessSource {
        AccessSource {
            identities: ids.iter().map(|sa| id(sa).to_string()).collect(),
            ..AccessSource::default()
        }
    }

    fn unauthenticated() -> AccessSource {
        AccessSource {
            unauthenticated: true,
            ..AccessSource::default()
        }
    }

    fn from_namespaces(namespaces: &[&str]) -> AccessSource {
        AccessSource {
            namespaces: namespaces.iter().map(|&n| n.to_owned()).collect(),
            ..AccessSource::default()
        }
    }

    fn to_paths(paths: Vec<PathMatch>) -> AccessOperation {
        AccessOperation {
            paths,
            ..AccessOperation::default()
        }
    }

    fn to_ports(ports: &[u16]) -> AccessOperation {
        AccessOperation {
            ports: ports.to_vec(),
            ..AccessOperation::default()
        }
    }

    fn to_methods(methods: &[&str]) -> AccessOperation {
        AccessOperation {
            methods: methods.iter().map(|&m| m.to_owned()).collect(),
            ..AccessOperation::default()
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_owned())
    }

    fn exact(p: &str) -> PathMatch {
        PathMatch::Exact(p.to_owned())
    }

    struct Req {
        peer: Option<SpiffeId>,
        port: u16,
        method: Option<Method>,
        path: Option<&'static str>,
    }

    fn http(peer: Option<&str>, method: Method, path: &'static str) -> Req {
        Req {
            peer: peer.map(id),
            port: 8080,
            method: Some(method),
            path: Some(path),
        }
    }

    fn tcp(peer: Option<&str>, port: u16) -> Req {
        Req {
            peer: peer.map(id),
            port,
            method: None,
            path: None,
        }
    }

    /// `None` when allowed, else the denying policy.
    fn denied_by(policies: &[AccessPolicy], req: &Req) -> Option<String> {
        let facts = RequestFacts {
            peer: req.peer.as_ref(),
            port: req.port,
            method: req.method.as_ref(),
            path: req.path,
        };
        decide(policies, &facts).denied.map(|d| d.policy.to_owned())
    }

    #[test]
    fn decisions() {
        let deny_admin = policy(
            "deny-admin",
            AccessAction::Deny,
            vec![rule(vec![], vec![to_paths(vec![prefix("/admin")])])],
        );
        let allow_frontend = policy(
            "allow-frontend",
            AccessAction::Allow,
            vec![rule(vec![from_ids(&["frontend"])], vec![])],
        );
        let allow_anon_health = policy(
            "allow-health",
            AccessAction::Allow,
            vec![rule(
                vec![unauthenticated()],
                vec![to_paths(vec![exact("/healthz")])],
            )],
        );
        let allow_demo_ns_gets = policy(
            "allow-demo-gets",
            AccessAction::Allow,
            vec![rule(
                vec![from_namespaces(&["demo"])],
                vec![to_methods(&["GET", "HEAD"])],
            )],
        );
        let allow_port_5432 = policy(
            "allow-db",
            AccessAction::Allow,
            vec![rule(vec![from_ids(&["api"])], vec![to_ports(&[5432])])],
        );
        let deny_db_to_batch = policy(
            "deny-db-batch",
            AccessAction::Deny,
            vec![rule(
                vec![from_ids(&["batch"])],
                vec![AccessOperation {
                    ports: vec![5432],
                    methods: vec!["GET".to_owned()],
                    ..AccessOperation::default()
                }],
            )],
        );
        let allow_nothing = policy("allow-nothing", AccessAction::Allow, vec![]);
        let deny_nothing = policy("deny-nothing", AccessAction::Deny, vec![]);
        let anyone = policy("anyone", AccessAction::Allow, vec![rule(vec![], vec![])]);

        let cases: Vec<(&str, Vec<AccessPolicy>, Req, Option<&str>)> = vec![
            (
                "no policies: allowed",
                vec![],
                http(None, Method::GET, "/"),
                None,
            ),
            (
                "a deny by path denies that path",
                vec![deny_admin.clone()],
                http(Some("frontend"), Method::GET, "/admin/users"),
                Some("demo/deny-admin"),
            ),
            (
                "a deny by path leaves other paths",
                vec![deny_admin.clone()],
                http(None, Method::GET, "/api"),
                None,
            ),
            (
                "deny beats allow",
                vec![allow_frontend.clone(), deny_admin.clone()],
                http(Some("frontend"), Method::GET, "/admin"),
                Some("demo/deny-admin"),
            ),
            (
                "an allow policy allows its identity",
                vec![allow_frontend.clone()],
                http(Some("frontend"), Method::POST, "/x"),
                None,
            ),
            (
                "an allow policy denies other identities",
                vec![allow_frontend.clone()],
                http(Some("batch"), Method::GET, "/x"),
                Some("demo/allow-frontend"),
            ),
            (
                "an identity rule never matches an unauthenticated peer",
                vec![allow_frontend.clone()],
                http(None, Method::GET, "/x"),
                Some("demo/allow-frontend"),
            ),
            (
                "unauthenticated matches a peer without identity",
                vec![allow_anon_health.clone()],
                http(None, Method::GET, "/healthz"),
                None,
            ),
            (
                "unauthenticated does not match a peer with one",
                vec![allow_anon_health.clone()],
                http(Some("frontend"), Method::GET, "/healthz"),
                Some("demo/allow-health"),
            ),
            (
                "exact paths are exact",
                vec![allow_anon_health.clone()],
                http(None, Method::GET, "/healthz/more"),
                Some("demo/allow-health"),
            ),
            (
                "any allow policy may allow",
                vec![allow_anon_health.clone(), allow_frontend.clone()],
                http(Some("frontend"), Method::GET, "/x"),
                None,
            ),
            (
                "namespaces match the peer's",
                vec![allow_demo_ns_gets.clone()],
                http(Some("batch"), Method::HEAD, "/"),
                None,
            ),
            (
                "other namespaces do not",
                vec![allow_demo_ns_gets.clone()],
                Req {
                    peer: Some(SpiffeId::new("cluster.local", "other", "batch")),
                    ..http(None, Method::GET, "/")
                },
                Some("demo/allow-demo-gets"),
            ),
            (
                "methods must be listed",
                vec![allow_demo_ns_gets.clone()],
                http(Some("batch"), Method::DELETE, "/"),
                Some("demo/allow-demo-gets"),
            ),
            (
                "a namespace rule never matches TCP (no method)",
                vec![allow_demo_ns_gets.clone()],
                tcp(Some("batch"), 8080),
                Some("demo/allow-demo-gets"),
            ),
            (
                "a port rule matches TCP on its port",
                vec![allow_port_5432.clone()],
                tcp(Some("api"), 5432),
                None,
            ),
            (
                "and not on another port",
                vec![allow_port_5432.clone()],
                tcp(Some("api"), 6379),
                Some("demo/allow-db"),
            ),
            (
                "a deny by path denies the TCP it cannot read",
                vec![deny_admin.clone()],
                tcp(None, 5432),
                Some("demo/deny-admin"),
            ),
            (
                "a deny with methods still denies TCP on its port and source",
                vec![deny_db_to_batch.clone(), allow_port_5432.clone()],
                tcp(Some("batch"), 5432),
                Some("demo/deny-db-batch"),
            ),
            (
                "and only its source",
                vec![deny_db_to_batch.clone(), allow_port_5432.clone()],
                tcp(Some("api"), 5432),
                None,
            ),
            (
                "an allow without rules allows nothing",
                vec![allow_nothing.clone()],
                http(Some("frontend"), Method::GET, "/"),
                Some("demo/allow-nothing"),
            ),
            (
                "a deny without rules denies nothing",
                vec![deny_nothing],
                http(None, Method::GET, "/"),
                None,
            ),
            (
                "an empty rule matches everything, TCP included",
                vec![anyone],
                tcp(None, 1),
                None,
            ),
        ];
        for (name, policies, req, want) in cases {
            assert_eq!(denied_by(&policies, &req).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn a_denial_names_the_policy_the_peer_and_the_request() {
        let policies = [
            policy(
                "allow-frontend",
                AccessAction::Allow,
                vec![rule(vec![from_ids(&["frontend"])], vec![])],
            ),
            policy("allow-more", AccessAction::Allow, vec![]),
        ];
        let batch = id("batch");
        let facts = RequestFacts {
            peer: Some(&batch),
            port: 8080,
            method: Some(&Method::GET),
            path: Some("/orders"),
        };
        let denial = decide(&policies, &facts).denied.unwrap();
        assert_eq!(
            denial.to_string(),
            "denied by AccessPolicy demo/allow-frontend: no rule allows spiffe://cluster.local/ns/demo/sa/batch \
             (GET /orders, port 8080) (nor does demo/allow-more)"
        );
        let deny = [policy(
            "deny-all",
            AccessAction::Deny,
            vec![rule(vec![], vec![])],
        )];
        let facts = RequestFacts {
            peer: None,
            port: 5432,
            method: None,
            path: None,
        };
        assert_eq!(
            decide(&deny, &facts).denied.unwrap().to_string(),
            "denied by AccessPolicy demo/deny-all: rules[0] denies an unauthenticated peer (TCP, port 5432)"
        );
    }

    #[test]
    fn audit_is_an_allow_that_only_reports() {
        let audit = policy(
            "try-health-only",
            AccessAction::Audit,
            vec![rule(vec![], vec![to_paths(vec![exact("/healthz")])])],
        );
        let decision_for = |policies: &[AccessPolicy], path: &'static str| {
            let facts = RequestFacts {
                peer: None,
                port: 8080,
                method: Some(&Method::GET),
                path: Some(path),
            };
            let decision = decide(policies, &facts);
            (
                decision.denied.map(|d| d.policy.to_owned()),
                decision
                    .would_deny
                    .iter()
                    .map(|d| d.policy.to_owned())
                    .collect::<Vec<_>>(),
            )
        };
        let only_audit = [audit.clone()];
        // What the audit policy allows passes silently ...
        assert_eq!(decision_for(&only_audit, "/healthz"), (None, vec![]));
        // ... and what it would deny passes, reported.
        assert_eq!(
            decision_for(&only_audit, "/orders"),
            (None, vec!["demo/try-health-only".to_owned()])
        );
        // An Allow policy that already allows it: audited as one allow-list, so no would-deny.
        let with_allow = [
            audit.clone(),
            policy(
                "allow-orders",
                AccessAction::Allow,
                vec![rule(vec![], vec![to_paths(vec![prefix("/orders")])])],
            ),
        ];
        assert_eq!(decision_for(&with_allow, "/orders"), (None, vec![]));
        // Denied for real: nothing to audit.
        assert_eq!(
            decision_for(&with_allow, "/admin"),
            (Some("demo/allow-orders".to_owned()), vec![])
        );
        // A Deny policy wins before audit matters.
        let with_deny = [
            audit,
            policy(
                "deny-orders",
                AccessAction::Deny,
                vec![rule(vec![], vec![to_paths(vec![prefix("/orders")])])],
            ),
        ];
        assert_eq!(
            decision_for(&with_deny, "/orders"),
            (Some("demo/deny-orders".to_owned()), vec![])
        );
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("/admin", "/admin"),
            ("/admin/", "/admin/"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%41dmin", "/Admin"),
            ("/x/../admin", "/admin"),
            ("/./admin/.", "/admin/"),
            ("/../../admin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/%zz/%", "/%zz/%"),
            ("/caf\u{e9}/%7e", "/caf\u{e9}/~"),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path), want, "{path}");
        }
    }
}
