//! Spans as Zipkin v2 JSON (`POST /api/v2/spans`: a JSON array of spans). Pure.

use serde_json::{Map, Value, json};

use super::span::{Kind, Span};
use crate::headers::hex;

/// The request body for a batch of spans.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    let spans: Vec<Value> = spans.iter().map(span).collect();
    // Serialising a Value to bytes cannot fail.
    serde_json::to_vec(&spans).unwrap_or_default()
}

fn span(span: &Span) -> Value {
    let mut tags = Map::new();
    let mut tag = |key: &str, value: String| {
        tags.insert(key.to_owned(), Value::String(value));
    };
    tag("http.method", span.method.clone());
    tag("http.path", span.path.clone());
    tag("http.status_code", span.status_code.to_string());
    tag(
        "skein.protocol",
        if span.grpc { "grpc" } else { "http" }.to_owned(),
    );
    if !span.namespace.is_empty() {
        tag("skein.namespace", span.namespace.clone());
    }
    if let Some(status) = span.grpc_status {
        tag("grpc.status_code", status.to_string());
    }
    if let Some(reason) = span.proxy_error {
        tag("skein.error", reason.to_owned());
    }
    if span.retries > 0 {
        tag("skein.retries", span.retries.to_string());
    }
    // Zipkin's convention: an `error` tag (any value, the message) marks a failed span.
    if let Some(message) = span.error_message() {
        tag("error", message);
    }
    let mut out = json!({
        "traceId": hex(&span.context.trace_id),
        "id": hex(&span.context.span_id),
        "kind": match span.kind { Kind::Client => "CLIENT", Kind::Server => "SERVER" },
        "name": span.name(),
        "timestamp": span.start_micros(),
        // Zipkin reads 0 as "unknown": a request always took some time.
        "duration": u64::try_from(span.duration.as_micros()).unwrap_or(u64::MAX).max(1),
        "localEndpoint": {"serviceName": service_name(span)},
        "tags": tags,
    });
    if let Some(parent) = span.context.parent_span_id {
        out["parentId"] = Value::String(hex(&parent));
    }
    if let Some(peer) = span.peer {
        let key = if peer.is_ipv4() { "ipv4" } else { "ipv6" };
        out["remoteEndpoint"] = json!({key: peer.ip().to_string(), "port": peer.port()});
    }
    out
}

/// The local workload's name; a proxy that was never told it still names its spans.
pub fn service_name(span: &Span) -> &str {
    if span.service.is_empty() {
        "skein-proxy"
    } else {
        &span.service
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::example;

    #[test]
    fn a_span_has_zipkins_fields() {
        let body = encode(&[example()]);
        let value: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            value,
            json!([{
                "traceId": "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b",
                "id": "0f0f0f0f0f0f0f0f",
                "parentId": "1111111111111111",
                "kind": "CLIENT",
                "name": "GET backend",
                "timestamp": 1_700_000_000_123_456_u64,
                "duration": 2500,
                "localEndpoint": {"serviceName": "frontend"},
                "remoteEndpoint": {"ipv4": "10.0.0.7", "port": 8080},
                "tags": {
                    "http.method": "GET",
                    "http.path": "/api/items",
                    "http.status_code": "200",
                    "skein.protocol": "http",
                    "skein.namespace": "demo",
                },
            }])
        );
    }

    #[test]
    fn a_failed_server_span_carries_error_and_reason() {
        let mut span = example();
        span.kind = Kind::Server;
        span.context.parent_span_id = None;
        span.status_code = 503;
        span.proxy_error = Some("connect-failure");
        span.retries = 2;
        span.grpc = true;
        span.grpc_status = Some(14);
        span.peer = Some("[fd00::1]:443".parse().expect("address"));
        let value: Value = serde_json::from_slice(&encode(&[span])).expect("JSON");
        let span = &value[0];
        assert_eq!(span["kind"], "SERVER");
        assert!(span.get("parentId").is_none());
        assert_eq!(
            span["remoteEndpoint"],
            json!({"ipv6": "fd00::1", "port": 443})
        );
        assert_eq!(span["tags"]["error"], "connect-failure (503)");
        assert_eq!(span["tags"]["skein.error"], "connect-failure");
        assert_eq!(span["tags"]["skein.retries"], "2");
        assert_eq!(span["tags"]["grpc.status_code"], "14");
        assert_eq!(span["tags"]["skein.protocol"], "grpc");
    }
}
