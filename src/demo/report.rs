//! The JSON bodies the demo app answers with.

use serde::{Deserialize, Serialize};

/// One tier's identity, as it appears in `chain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub role: String,
    pub version: String,
    pub pod: String,
}

/// A response body: this tier, what went wrong (if anything) and the tiers that answered.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    #[serde(flatten)]
    pub tier: &'a Tier,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The next tier's JSON body when it answered with a non-2xx status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream: Option<serde_json::Value>,
    /// This tier followed by the downstream tiers that answered.
    pub chain: Vec<Tier>,
}

impl<'a> Report<'a> {
    pub fn ok(tier: &'a Tier, downstream_chain: Vec<Tier>) -> Self {
        Self {
            tier,
            error: None,
            downstream: None,
            chain: chain(tier, downstream_chain),
        }
    }

    pub fn error(tier: &'a Tier, error: impl Into<String>) -> Self {
        Self {
            tier,
            error: Some(error.into()),
            downstream: None,
            chain: vec![tier.clone()],
        }
    }

    pub fn to_json(&self) -> bytes::Bytes {
        // A struct of strings always serialises; the fallback only keeps this panic-free.
        serde_json::to_vec(self)
            .map(bytes::Bytes::from)
            .unwrap_or_else(|_| bytes::Bytes::from_static(b"{}"))
    }
}

fn chain(tier: &Tier, rest: Vec<Tier>) -> Vec<Tier> {
    let mut chain = Vec::with_capacity(rest.len() + 1);
    chain.push(tier.clone());
    chain.extend(rest);
    chain
}

/// The `chain` of a downstream body, if it has a well-formed one.
pub fn chain_of(body: &serde_json::Value) -> Option<Vec<Tier>> {
    serde_json::from_value(body.get("chain")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tier(role: &str) -> Tier {
        Tier {
            role: role.into(),
            version: "v1".into(),
            pod: format!("{role}-0"),
        }
    }

    #[test]
    fn ok_report_prepends_this_tier() {
        let me = tier("frontend");
        let body: serde_json::Value =
            serde_json::from_slice(&Report::ok(&me, vec![tier("backend")]).to_json()).unwrap();
        assert_eq!(
            body,
            json!({
                "role": "frontend", "version": "v1", "pod": "frontend-0",
                "chain": [
                    {"role": "frontend", "version": "v1", "pod": "frontend-0"},
                    {"role": "backend", "version": "v1", "pod": "backend-0"},
                ],
            })
        );
    }

    #[test]
    fn error_report_has_error_and_only_this_tier() {
        let me = tier("backend");
        let body: serde_json::Value =
            serde_json::from_slice(&Report::error(&me, "injected failure").to_json()).unwrap();
        assert_eq!(body["error"], "injected failure");
        assert_eq!(
            body["chain"],
            json!([{"role": "backend", "version": "v1", "pod": "backend-0"}])
        );
        assert!(body.get("downstream").is_none());
    }

    #[test]
    fn reads_downstream_chain() {
        assert_eq!(
            chain_of(&json!({"chain": [{"role": "backend", "version": "v1", "pod": "backend-0"}]})),
            Some(vec![tier("backend")])
        );
        assert_eq!(chain_of(&json!({"error": "x"})), None);
        assert_eq!(chain_of(&json!({"chain": "nope"})), None);
    }
}
