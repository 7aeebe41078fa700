//! Workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! One type shared by the control plane (which signs them into certificates), the proxy (which
//! verifies them in handshakes) and access policies (which match on them).

use std::fmt;
use std::str::FromStr;

/// The DNS label that marks a TLS server name as a Skein identity (see [`SpiffeId::server_name`]).
const SERVER_NAME_MARKER: &str = "id.skein";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a workload identity (spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT): {problem}"
)]
pub struct BadSpiffeId {
    pub text: String,
    pub problem: &'static str,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The TLS server name (SNI) a client asks for when it expects this identity:
    /// `<sa>.<namespace>.id.skein.<trust domain>`. SNI carries DNS names only, so the identity is
    /// spelt as one; the server checks it is its own and the client's verifier checks the
    /// certificate's SPIFFE ID maps to it. Never resolved.
    pub fn server_name(&self) -> String {
        format!(
            "{}.{}.{SERVER_NAME_MARKER}.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }

    /// Whether a TLS server name is shaped like a Skein identity (a client proxy's connection)
    /// rather than an app's own TLS.
    pub fn is_identity_server_name(name: &str) -> bool {
        name.contains(&format!(".{SERVER_NAME_MARKER}."))
    }

    /// `system:serviceaccount:<ns>:<sa>`, the apiserver's user name for this service account.
    pub fn from_service_account_user(trust_domain: &str, username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, service_account) = rest.split_once(':')?;
        if namespace.is_empty() || service_account.is_empty() || service_account.contains(':') {
            return None;
        }
        Some(Self::new(trust_domain, namespace, service_account))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = BadSpiffeId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |problem| BadSpiffeId {
            text: text.to_owned(),
            problem,
        };
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it does not start with spiffe://"))?;
        let mut parts = rest.split('/');
        let (Some(trust_domain), Some("ns"), Some(namespace), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("the path is not /ns/NAMESPACE/sa/SERVICE-ACCOUNT"));
        };
        if trust_domain.is_empty() || namespace.is_empty() || sa.is_empty() {
            return Err(bad("a part is empty"));
        }
        Ok(Self::new(trust_domain, namespace, sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_bad_ones_say_why() {
        let id = SpiffeId::new("cluster.local", "demo", "frontend");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/frontend");
        assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
        assert_eq!(id.server_name(), "frontend.demo.id.skein.cluster.local");
        assert!(SpiffeId::is_identity_server_name(&id.server_name()));
        assert!(!SpiffeId::is_identity_server_name(
            "backend.demo.svc.cluster.local"
        ));
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/sa/a/ns/b",
        ] {
            let err = bad.parse::<SpiffeId>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn service_account_users_map_to_identities() {
        assert_eq!(
            SpiffeId::from_service_account_user("td", "system:serviceaccount:demo:web"),
            Some(SpiffeId::new("td", "demo", "web"))
        );
        for bad in [
            "system:serviceaccount:demo",
            "system:serviceaccount::web",
            "system:node:n1",
            "alice",
        ] {
            assert_eq!(
                SpiffeId::from_service_account_user("td", bad),
                None,
                "{bad}"
            );
        }
    }
}
