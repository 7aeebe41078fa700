//! Calls to the next tier: URL building, header propagation, and turning its answer into
//! either its chain or an error this tier reports.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::report::{Tier, chain_of};

/// Trace and routing headers a mesh-aware application passes on; `x-demo-*` travel too so one
/// header set sent at the frontend can reach any tier.
const PROPAGATED: [&str; 9] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
    "x-canary",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NextError {
    #[error("--next {0:?} is not a URL: {1}")]
    Invalid(String, String),
    #[error("--next {0:?} must be an http:// URL with a host (no https, no query)")]
    Unsupported(String),
}

/// Why calling the next tier gave no usable answer (answered as 502).
#[derive(Debug, thiserror::Error)]
#[error("calling {url}: {reason}")]
pub struct CallError {
    pub url: String,
    pub reason: String,
}

/// What the next tier answered.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// 2xx with a well-formed report: its chain.
    Chain(Vec<Tier>),
    /// A non-2xx status, with its body if that was JSON.
    Status(StatusCode, Option<serde_json::Value>),
}

#[derive(Clone)]
pub struct Downstream {
    /// `http://host:port[/prefix]`, without a trailing slash.
    base: String,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Downstream {
    pub fn new(next: &str, timeout: Duration) -> Result<Self, NextError> {
        let base = normalise_base(next)?;
        // Pooled HTTP/1.1: the mesh proxy in between upgrades or not as it is configured.
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Self {
            base,
            timeout,
            client,
        })
    }

    pub fn url_for(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// GETs the same path and query from the next tier, within the timeout.
    pub async fn call(
        &self,
        path_and_query: &str,
        incoming: &HeaderMap,
    ) -> Result<Answer, CallError> {
        let url = self.url_for(path_and_query);
        let fail = |reason: String| CallError {
            url: url.clone(),
            reason,
        };
        let mut request = Request::get(&url)
            .body(Empty::<Bytes>::new())
            .map_err(|err| fail(describe(&err)))?;
        *request.headers_mut() = propagated(incoming);

        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| describe(&err))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| format!("reading the body: {}", describe(&err)))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                fail(format!(
                    "no answer within {}",
                    crate::api::Duration::from(self.timeout)
                ))
            })?
            .map_err(fail)?;
        interpret(status, &body).map_err(fail)
    }
}

fn normalise_base(next: &str) -> Result<String, NextError> {
    let uri: Uri = next
        .parse()
        .map_err(|err: http::uri::InvalidUri| NextError::Invalid(next.into(), err.to_string()))?;
    let unsupported = || NextError::Unsupported(next.into());
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.query().is_some() {
        return Err(unsupported());
    }
    let authority = uri.authority().ok_or_else(unsupported)?;
    Ok(format!(
        "http://{authority}{}",
        uri.path().trim_end_matches('/')
    ))
}

/// The headers to send downstream: the fixed trace/routing set and every `x-demo-*`.
pub fn propagated(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        // Header names are lowercase in `http`, so plain comparisons suffice.
        if PROPAGATED.contains(&name.as_str()) || name.as_str().starts_with("x-demo-") {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A 2xx must carry a report with a chain; other statuses pass through with their JSON body.
pub fn interpret(status: StatusCode, body: &[u8]) -> Result<Answer, String> {
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    if !status.is_success() {
        return Ok(Answer::Status(status, json));
    }
    let json = json.ok_or_else(|| format!("answered {status} with a body that is not JSON"))?;
    chain_of(&json)
        .map(Answer::Chain)
        .ok_or_else(|| format!("answered {status} with JSON that has no \"chain\" list"))
}

/// An error and its sources on one line: hyper's top-level messages ("client error
/// (Connect)") say little on their own.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn base_url_is_normalised() {
        assert_eq!(
            normalise_base("http://middleware:8080"),
            Ok("http://middleware:8080".into())
        );
        assert_eq!(
            normalise_base("http://middleware:8080/"),
            Ok("http://middleware:8080".into())
        );
        assert_eq!(normalise_base("http://m/api/"), Ok("http://m/api".into()));
        for bad in ["https://m", "middleware:8080", "http://m/?a=b", "/path"] {
            assert!(normalise_base(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            normalise_base("http://a b"),
            Err(NextError::Invalid(..))
        ));
    }

    #[test]
    fn propagates_trace_and_demo_headers_only() {
        let mut incoming = HeaderMap::new();
        for name in [
            "x-request-id",
            "traceparent",
            "b3",
            "x-canary",
            "x-demo-backend-fail-percent",
        ] {
            incoming.insert(name, HeaderValue::from_static("1"));
        }
        incoming.insert("authorization", HeaderValue::from_static("secret"));
        incoming.insert("host", HeaderValue::from_static("frontend"));
        let out = propagated(&incoming);
        assert_eq!(out.len(), 5);
        assert!(out.get("authorization").is_none());
        assert!(out.get("host").is_none());
        assert_eq!(
            out.get("x-demo-backend-fail-percent"),
            Some(&HeaderValue::from_static("1"))
        );
    }

    #[test]
    fn interprets_answers() {
        let ok = br#"{"chain":[{"role":"backend","version":"v2","pod":"b"}]}"#;
        assert_eq!(
            interpret(StatusCode::OK, ok),
            Ok(Answer::Chain(vec![Tier {
                role: "backend".into(),
                version: "v2".into(),
                pod: "b".into()
            }]))
        );
        assert!(interpret(StatusCode::OK, b"hello").is_err());
        assert!(interpret(StatusCode::OK, b"{}").is_err());
        assert_eq!(
            interpret(StatusCode::SERVICE_UNAVAILABLE, br#"{"error":"x"}"#),
            Ok(Answer::Status(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(serde_json::json!({"error": "x"}))
            ))
        );
        assert_eq!(
            interpret(StatusCode::NOT_FOUND, b"no such page"),
            Ok(Answer::Status(StatusCode::NOT_FOUND, None))
        );
    }
}
