//! The exporter: a task that takes finished spans from a bounded queue and sends them in
//! batches to the configured backends. Requests never wait for it: a span that finds the queue
//! full is dropped and counted, and so is a batch whose export fails (no retries: a backend
//! that is down would otherwise pile spans up in every proxy's memory).
//!
//! At shutdown, once the proxy's connections are drained, [`Exporter::flush`] sends what is
//! still queued (bounded by [`SHUTDOWN_FLUSH`]), so the last requests' spans are not lost.
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
use tokio::sync::{mpsc, watch};

use super::span::Span;

/// Spans waiting for export at most; more are dropped (`reason="queue_full"`).
pub const QUEUE: usize = 2048;
/// Spans in one export request at most.
pub const BATCH: usize = 512;
/// A span waits this long at most before its batch is sent.
pub const FLUSH: Duration = Duration::from_secs(1);
/// How long the proxy waits at shutdown for the queued spans to be sent.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
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
        for reason in ["queue_full", "export_failed", "shutdown"] {
            let _ = dropped.get_or_create(&ReasonLabels { reason });
        }
        registry.register(
            "trace_spans_exported",
            "Spans a tracing backend accepted, by exporter",
            exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans lost: the export queue was full, an export failed, or the proxy was stopping",
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
    /// Tells the task to send what is queued now and stop.
    closing: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Exporter {
    /// Starts the export task (on the current runtime) for `sinks`.
    pub fn spawn(sinks: Vec<Sink>, metrics: TraceMetrics) -> Self {
        for sink in &sinks {
            metrics.exported(sink, 0);
        }
        let (queue, spans) = mpsc::channel(QUEUE);
        let (closing, closed) = watch::channel(false);
        let task = tokio::spawn(run(spans, sinks, metrics.clone(), closed));
        Self {
            queue,
            metrics,
            closing,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Sends every queued span now and stops the task, waiting up to `limit`; spans submitted
    /// afterwards are dropped (`reason="shutdown"`).
    pub async fn flush(&self, limit: Duration) {
        let _ = self.closing.send(true);
        let task = self.task.lock().ok().and_then(|mut task| task.take());
        let Some(mut task) = task else { return };
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                ?limit,
                "the last spans were not all exported before shutdown"
            );
        }
    }

    /// Queues a finished span, or drops it (counted) if the queue is full or the exporter has
    /// stopped. Never waits.
    pub fn submit(&self, span: Span) {
        match self.queue.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.dropped("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.dropped("shutdown", 1),
        }
    }
}

async fn run(
    mut spans: mpsc::Receiver<Span>,
    sinks: Vec<Sink>,
    metrics: TraceMetrics,
    mut closing: watch::Receiver<bool>,
) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Queued spans first: closing only stops the waiting for more.
        let first = tokio::select! {
            biased;
            span = spans.recv() => span,
            _ = closing.wait_for(|closing| *closing) => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            tokio::select! {
                biased;
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
                _ = closing.wait_for(|closing| *closing) => break,
            }
        }
        export(&client, &sinks, &metrics, &mut batch).await;
    }
    // Closing: whatever was queued meanwhile goes out in full batches, without waiting for more.
    spans.close();
    while let Ok(span) = spans.try_recv() {
        batch.push(span);
        if batch.len() == BATCH {
            export(&client, &sinks, &metrics, &mut batch).await;
        }
    }
    export(&client, &sinks, &metrics, &mut batch).await;
}

/// Sends `batch` to every sink (counting what was exported or dropped) and empties it.
async fn export(
    client: &Client<HttpConnector, Full<Bytes>>,
    sinks: &[Sink],
    metrics: &TraceMetrics,
    batch: &mut Vec<Span>,
) {
    if batch.is_empty() {
        return;
    }
    for sink in sinks {
        match send(client, sink, batch).await {
            Ok(()) => metrics.exported(sink, batch.len()),
            Err(err) => {
                metrics.dropped("export_failed", batch.len());
                tracing::warn!(exporter = sink.name(), endpoint = %sink.uri(), spans = batch.len(), error = %err, "exporting spans failed; they are dropped");
            }
        }
    }
    batch.clear();
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
            .map_err(|err| crate::tcp::ErrorChain(&err).to_string())?;
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::trace::span::example;

    fn metrics() -> (Registry, TraceMetrics) {
        let mut registry = Registry::with_prefix("skein_proxy");
        let metrics = TraceMetrics::register(&mut registry);
        (registry, metrics)
    }

    fn value(registry: &Registry, series: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// A collector on loopback that keeps each body it is sent and answers `status`.
    async fn collector(status: u16) -> (Uri, Arc<Mutex<Vec<(String, Bytes)>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/api/v2/spans",
            axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                let kept = kept.clone();
                async move {
                    let content_type = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    kept.lock().expect("lock").push((content_type, body));
                    http::StatusCode::from_u16(status).expect("status")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let uri = format!("http://{address}/api/v2/spans")
            .parse()
            .expect("uri");
        (uri, bodies)
    }

    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn spans_are_sent_in_one_batch_and_counted() {
        let (registry, metrics) = metrics();
        let (uri, bodies) = collector(202).await;
        let exporter = Exporter::spawn(vec![Sink::Zipkin(uri)], metrics);
        for _ in 0..3 {
            exporter.submit(example());
        }
        let exported = "skein_proxy_trace_spans_exported_total{exporter=\"zipkin\"}";
        eventually("3 spans exported", || value(&registry, exported) == 3.0).await;
        let bodies = bodies.lock().expect("lock");
        assert_eq!(bodies.len(), 1, "one batch");
        assert_eq!(bodies[0].0, "application/json");
        let spans: serde_json::Value = serde_json::from_slice(&bodies[0].1).expect("JSON");
        assert_eq!(spans.as_array().map(Vec::len), Some(3));
    }

    #[tokio::test]
    async fn at_shutdown_the_queued_spans_are_sent_at_once() {
        let (registry, metrics) = metrics();
        let (uri, bodies) = collector(202).await;
        let exporter = Exporter::spawn(vec![Sink::Zipkin(uri)], metrics);
        for _ in 0..BATCH + 3 {
            exporter.submit(example());
        }
        // Without the flush these would wait for the next batch; with it, all go out before
        // `flush` returns, in full batches.
        exporter.flush(SHUTDOWN_FLUSH).await;
        let exported = "skein_proxy_trace_spans_exported_total{exporter=\"zipkin\"}";
        assert_eq!(value(&registry, exported), (BATCH + 3) as f64);
        assert_eq!(
            bodies.lock().expect("lock").len(),
            2,
            "a full batch and the rest"
        );
        // Nothing takes spans any more: a late one is dropped and counted, never queued.
        exporter.submit(example());
        let late = "skein_proxy_trace_spans_dropped_total{reason=\"shutdown\"}";
        assert_eq!(value(&registry, late), 1.0);
        exporter.flush(SHUTDOWN_FLUSH).await;
    }

    #[tokio::test]
    async fn a_refused_export_and_a_full_queue_drop_spans_and_count_them() {
        let (registry, metrics) = metrics();
        let (uri, _) = collector(500).await;
        let exporter = Exporter::spawn(vec![Sink::Otlp(uri)], metrics);
        // The test runs on one thread: nothing drains the queue until this loop yields, so
        // whatever is past its capacity is dropped at once.
        for _ in 0..QUEUE + 10 {
            exporter.submit(example());
        }
        let full = "skein_proxy_trace_spans_dropped_total{reason=\"queue_full\"}";
        assert_eq!(value(&registry, full), 10.0);
        // The collector answers 500: every queued span is dropped as a failed export.
        let failed = "skein_proxy_trace_spans_dropped_total{reason=\"export_failed\"}";
        eventually("the queued spans dropped as failed", || {
            value(&registry, failed) == QUEUE as f64
        })
        .await;
        let exported = "skein_proxy_trace_spans_exported_total{exporter=\"otlp\"}";
        assert_eq!(value(&registry, exported), 0.0);
    }
}
