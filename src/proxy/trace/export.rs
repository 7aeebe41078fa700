//! The exporter: a task that takes finished spans from a bounded queue and sends them in
//! batches to the configured backends. Requests never wait for it: a span that finds the queue
//! full is dropped and counted, and so is a batch whose export fails (no retries: a backend
//! that is down would otherwise pile spans up in every proxy's memory).
//!
//! Its connections are the proxy's own, made as the proxy UID, which `skein init` lets out
//! uncaptured (`capture::rules`), so exports never loop back into the proxy.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use super::span::Span;

/// Spans waiting for export at most; more are dropped (`reason="queue_full"`).
pub const QUEUE: usize = 2048;
/// Spans in one export request at most.
pub const BATCH: usize = 512;
/// A span waits this long at most before its batch is sent.
pub const FLUSH: Duration = Duration::from_secs(1);
/// One export request may take this long; then its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go, in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Zipkin v2 JSON.
    Zipkin(Uri),
    /// OTLP/HTTP protobuf.
    Otlp(Uri),
}

impl Sink {
    fn name(&self) -> &'static str {
        match self {
            Sink::Zipkin(_) => "zipkin",
            Sink::Otlp(_) => "otlp",
        }
    }

    fn uri(&self) -> &Uri {
        match self {
            Sink::Zipkin(uri) | Sink::Otlp(uri) => uri,
        }
    }

    fn body(&self, spans: &[Span]) -> (Vec<u8>, &'static str) {
        match self {
            Sink::Zipkin(_) => (super::zipkin::encode(spans), "application/json"),
            Sink::Otlp(_) => (super::otlp::encode(spans), "application/x-protobuf"),
        }
    }
}

/// `skein_proxy_trace_spans_exported_total` and `skein_proxy_trace_spans_dropped_total`.
#[derive(Debug, Clone)]
pub struct TraceMetrics {
    exported: Family<SinkLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct SinkLabels {
    exporter: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl TraceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let exported = Family::<SinkLabels, Counter>::default();
        let dropped = Family::<ReasonLabels, Counter>::default();
        for reason in ["queue_full", "export_failed"] {
            let _ = dropped.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "trace_spans_exported",
            "Spans a tracing backend accepted, by exporter",
            exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans lost: the export queue was full, or an export failed",
            dropped.clone(),
        );
        Self { exported, dropped }
    }

    fn exported(&self, sink: &Sink, spans: usize) {
        self.exported
            .get_or_create(&SinkLabels {
                exporter: sink.name(),
            })
            .inc_by(spans as u64);
    }

    fn dropped(&self, reason: &'static str, spans: usize) {
        self.dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(spans as u64);
    }
}

/// The sending side, held by the proxy's request handlers.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    metrics: TraceMetrics,
}

impl Exporter {
    /// Starts the export task (on the current runtime) for `sinks`.
    pub fn spawn(sinks: Vec<Sink>, metrics: TraceMetrics) -> Self {
        for sink in &sinks {
            metrics.exported(sink, 0);
        }
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(run(spans, sinks, metrics.clone()));
        Self { queue, metrics }
    }

    /// Queues a finished span, or drops it (counted) if the queue is full. Never waits.
    pub fn submit(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.metrics.dropped("queue_full", 1);
        }
    }
}

async fn run(mut spans: mpsc::Receiver<Span>, sinks: Vec<Sink>, metrics: TraceMetrics) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = spans.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        for sink in &sinks {
            match send(&client, sink, &batch).await {
                Ok(()) => metrics.exported(sink, batch.len()),
                Err(err) => {
                    metrics.dropped("export_failed", batch.len());
                    tracing::warn!(exporter = sink.name(), endpoint = %sink.uri(), spans = batch.len(), error = %err, "exporting spans failed; they are dropped");
                }
            }
        }
        batch.clear();
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    sink: &Sink,
    spans: &[Span],
) -> Result<(), String> {
    let (body, content_type) = sink.body(spans);
    let request = Request::builder()
        .method(Method::POST)
        .uri(sink.uri().clone())
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .map_err(|err| err.to_string())?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| crate::proxy::tcp::ErrorChain(&err).to_string())?;
        let status = response.status();
        // Read the (small) answer so the connection can be reused.
        let answer = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            let answer = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
            Err(format!("the backend answered {status}: {}", answer.trim()))
        }
    };
    match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
    }
}
