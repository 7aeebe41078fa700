//! Spans as an OTLP/HTTP protobuf export request (`POST /v1/traces`,
//! `Content-Type: application/x-protobuf`). The messages are `proto/skein/otlp/v1/trace.proto`,
//! which keeps OTLP's field numbers. Pure.

use std::collections::BTreeMap;

use prost::Message;

use super::span::{Kind, Span};
use super::zipkin::service_name;
use skein_core::xds::otlp::{
    AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span as OtlpSpan, SpanKind, Status, StatusCode, any_value,
};

/// The request body for a batch of spans: one resource per local workload.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    request(spans).encode_to_vec()
}

pub fn request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut by_resource: BTreeMap<(&str, &str), Vec<OtlpSpan>> = BTreeMap::new();
    for span in spans {
        by_resource
            .entry((service_name(span), span.namespace.as_str()))
            .or_default()
            .push(otlp_span(span));
    }
    let resource_spans = by_resource
        .into_iter()
        .map(|((service, namespace), spans)| {
            let mut attributes = vec![text("service.name", service)];
            if !namespace.is_empty() {
                attributes.push(text("service.namespace", namespace));
                attributes.push(text("k8s.namespace.name", namespace));
            }
            ResourceSpans {
                resource: Some(Resource { attributes }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "skein-proxy".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                    }),
                    spans,
                }],
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn otlp_span(span: &Span) -> OtlpSpan {
    let mut attributes = vec![
        text("http.request.method", &span.method),
        text("url.path", &span.path),
        int("http.response.status_code", i64::from(span.status_code)),
        text("skein.protocol", if span.grpc { "grpc" } else { "http" }),
    ];
    if let Some(peer) = span.peer {
        attributes.push(text("network.peer.address", &peer.ip().to_string()));
        attributes.push(int("network.peer.port", i64::from(peer.port())));
    }
    if let Some(status) = span.grpc_status {
        attributes.push(int("rpc.grpc.status_code", i64::from(status)));
    }
    if let Some(reason) = span.proxy_error {
        attributes.push(text("skein.error", reason));
    }
    if span.retries > 0 {
        attributes.push(int("skein.retries", i64::from(span.retries)));
    }
    let start = span.start_nanos();
    let duration = u64::try_from(span.duration.as_nanos()).unwrap_or(u64::MAX);
    OtlpSpan {
        trace_id: span.context.trace_id.to_vec(),
        span_id: span.context.span_id.to_vec(),
        parent_span_id: span
            .context
            .parent_span_id
            .map(|p| p.to_vec())
            .unwrap_or_default(),
        name: span.name(),
        kind: match span.kind {
            Kind::Client => SpanKind::Client,
            Kind::Server => SpanKind::Server,
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(duration),
        attributes,
        status: span.error_message().map(|message| Status {
            message,
            code: StatusCode::Error as i32,
        }),
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::example;

    fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn spans_are_grouped_by_workload_with_otlp_fields() {
        let mut other = example();
        other.service = "backend".to_owned();
        let body = encode(&[example(), other, example()]);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("protobuf");
        assert_eq!(request.resource_spans.len(), 2);
        let frontend = &request.resource_spans[1];
        let resource = frontend.resource.as_ref().expect("resource");
        assert_eq!(
            attribute(&resource.attributes, "service.name"),
            Some(&any_value::Value::StringValue("frontend".to_owned()))
        );
        let spans = &frontend.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let span = &spans[0];
        assert_eq!(span.trace_id, vec![0x4b; 16]);
        assert_eq!(span.span_id, vec![0x0f; 8]);
        assert_eq!(span.parent_span_id, vec![0x11; 8]);
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(span.name, "GET backend");
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_123_456_000);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            2_500_000
        );
        assert_eq!(span.status, None, "a success leaves the status unset");
        assert_eq!(
            attribute(&span.attributes, "http.response.status_code"),
            Some(&any_value::Value::IntValue(200))
        );
        assert_eq!(
            attribute(&span.attributes, "network.peer.address"),
            Some(&any_value::Value::StringValue("10.0.0.7".to_owned()))
        );
    }

    #[test]
    fn the_wire_numbers_are_otlps() {
        // trace_id is field 1 (bytes: tag 0x0a), kind field 6 (varint: tag 0x30), start
        // field 7 (fixed64: tag 0x39): what any OTLP decoder expects.
        let mut span = example();
        span.kind = Kind::Server;
        let bytes = otlp_span(&span).encode_to_vec();
        assert_eq!(&bytes[..2], &[0x0a, 16]);
        let kind = bytes
            .windows(2)
            .any(|w| w == [0x30, SpanKind::Server as u8]);
        assert!(kind, "{bytes:02x?}");
        assert!(bytes.contains(&0x39));
        // ExportTraceServiceRequest.resource_spans is field 1, ResourceSpans.scope_spans 2.
        let request = encode(&[span]);
        assert_eq!(request[0], 0x0a);
    }

    #[test]
    fn a_failure_has_status_error() {
        let mut span = example();
        span.kind = Kind::Server;
        span.status_code = 503;
        span.proxy_error = Some("no-endpoints");
        span.retries = 1;
        let request = request(&[span]);
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.status,
            Some(Status {
                message: "no-endpoints (503)".to_owned(),
                code: StatusCode::Error as i32
            })
        );
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(
            attribute(&span.attributes, "skein.retries"),
            Some(&any_value::Value::IntValue(1))
        );
    }
}
