//! Distributed tracing end to end: real sidecars (real capture, real `skein proxy`) in front of
//! three `skein demo-app` tiers, frontend → middleware → backend, each app passing on the trace
//! headers it received, and a real Jaeger (built by tests/cluster/build.sh from its Go module)
//! receiving the spans as Zipkin JSON or OTLP protobuf. Everything is asserted through Jaeger's
//! query API, as a user would look at it.
//!
//! ```text
//!   client pod (no sidecar) ─▶ [in] frontend [out] ─▶ [in] middleware [out] ─▶ [in] backend
//!                                 └──── spans ──────────────┴────────────────────┘
//!                                                   ▼
//!                          Jaeger in the mesh's external host (10.223.N.2)
//! ```

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::pods::{APP_PORT, Mesh, Pod, Process, Proxy};

const SERVICE_PORT: u16 = 80;
/// How long spans may take to show up in Jaeger (batches leave a proxy within 1 s).
const SPANS_WAIT: Duration = Duration::from_secs(30);

/// Jaeger v2 (all in one, in memory) in the mesh's external host: Zipkin on :9411, OTLP/HTTP on
/// :4318, the query API on :16686.
struct Jaeger<'m> {
    host: &'m Pod<'m>,
    _process: Process,
}

impl<'m> Jaeger<'m> {
    fn start(host: &'m Pod<'m>) -> Self {
        let config = host.mesh().dir().join("jaeger.yaml");
        std::fs::write(&config, JAEGER_CONFIG).expect("writing Jaeger's configuration");
        let binary = support::bin_dir().join("jaeger");
        let binary = binary.to_str().expect("a UTF-8 path");
        let config_flag = format!("--config=file:{}", config.display());
        let mut process = host.spawn("jaeger", None, &[binary, &config_flag], &[]);
        for port in [9411, 4318, 16686] {
            host.wait_listening(port, &mut process);
        }
        Jaeger {
            host,
            _process: process,
        }
    }

    fn zipkin_endpoint(&self) -> String {
        format!("http://{}:9411/api/v2/spans", self.host.ip)
    }

    fn otlp_endpoint(&self) -> String {
        format!("http://{}:4318/v1/traces", self.host.ip)
    }

    /// `GET /api/...` on the query API; its JSON.
    fn api(&self, path_and_query: &str) -> Value {
        let url = format!("http://127.0.0.1:16686/api/{path_and_query}");
        let output = self
            .host
            .run(None, &["curl", "-sS", "--max-time", "10", &url]);
        assert!(
            output.status.success(),
            "{url}: {}",
            support::pods::describe(&output)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "{url} answered no JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The traces that have a span of `service`.
    fn traces(&self, service: &str) -> Vec<Trace> {
        let answer = self.api(&format!(
            "traces?service={service}&limit=100000&lookback=1h"
        ));
        answer["data"]
            .as_array()
            .map(|traces| traces.iter().map(Trace::from_json).collect())
            .unwrap_or_default()
    }

    /// One trace by id (`None` while Jaeger does not have it).
    fn trace(&self, trace_id: &str) -> Option<Trace> {
        let answer = self.api(&format!("traces/{trace_id}"));
        answer["data"].as_array()?.first().map(Trace::from_json)
    }

    /// Waits (bounded) until `service`'s traces satisfy `ok`.
    fn wait_for_traces(&self, service: &str, ok: impl Fn(&[Trace]) -> bool) -> Vec<Trace> {
        let deadline = Instant::now() + SPANS_WAIT;
        loop {
            let traces = self.traces(service);
            if ok(&traces) {
                return traces;
            }
            assert!(
                Instant::now() < deadline,
                "Jaeger's traces of {service} are still not as expected after {SPANS_WAIT:?}: {traces:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Only what the tests need: the zipkin and OTLP/HTTP receivers, memory storage and the query
/// API, on every address of the external host's own namespace.
const JAEGER_CONFIG: &str = r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp, zipkin]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memory_store:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memory_store
    http:
      endpoint: 0.0.0.0:16686
    grpc:
      endpoint: 127.0.0.1:16685
receivers:
  otlp:
    protocols:
      http:
        endpoint: 0.0.0.0:4318
  zipkin:
    endpoint: 0.0.0.0:9411
exporters:
  jaeger_storage_exporter:
    trace_storage: memory_store
"#;

/// A span as Jaeger's API shows it.
#[derive(Debug, Clone)]
struct SpanView {
    id: String,
    parent: Option<String>,
    service: String,
    kind: String,
    tags: BTreeMap<String, Value>,
}

#[derive(Debug, Clone)]
struct Trace {
    id: String,
    spans: Vec<SpanView>,
}

impl Trace {
    fn from_json(trace: &Value) -> Self {
        let processes = &trace["processes"];
        let spans = trace["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .map(|span| {
                let tags: BTreeMap<String, Value> = span["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|tag| {
                        (
                            tag["key"].as_str().unwrap_or_default().to_owned(),
                            tag["value"].clone(),
                        )
                    })
                    .collect();
                let parent = span["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned);
                let process = span["processID"].as_str().unwrap_or_default();
                SpanView {
                    id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                    parent,
                    service: processes[process]["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    kind: tags
                        .get("span.kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    tags,
                }
            })
            .collect();
        Trace {
            id: trace["traceID"].as_str().unwrap_or_default().to_owned(),
            spans,
        }
    }

    /// The one span of `service` of `kind` (`client`, `server`).
    fn span(&self, service: &str, kind: &str) -> &SpanView {
        let found: Vec<&SpanView> = self
            .spans
            .iter()
            .filter(|s| s.service == service && s.kind == kind)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} span of {service} in {self:#?}");
        found[0]
    }
}

impl SpanView {
    /// Marked failed: a Zipkin `error` tag, or an OTLP status ERROR (Jaeger shows both as tags).
    fn is_error(&self) -> bool {
        let error_tag = self
            .tags
            .get("error")
            .is_some_and(|v| v != &json!(false) && v != &json!("false"));
        error_tag || self.tags.get("otel.status_code") == Some(&json!("ERROR"))
    }

    /// The HTTP status, under the name of either format (Zipkin's `http.status_code`,
    /// OpenTelemetry's `http.response.status_code`).
    fn status(&self) -> String {
        let zipkin = self.tag_text("http.status_code");
        if zipkin.is_empty() {
            self.tag_text("http.response.status_code")
        } else {
            zipkin
        }
    }

    /// The method, likewise (`http.method`, `http.request.method`).
    fn method(&self) -> String {
        let zipkin = self.tag_text("http.method");
        if zipkin.is_empty() {
            self.tag_text("http.request.method")
        } else {
            zipkin
        }
    }

    fn tag_text(&self, key: &str) -> String {
        match self.tags.get(key) {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }
    }
}

/// The three tiers, each behind its sidecar, and a client pod without one.
struct Chain<'m> {
    client: Pod<'m>,
    frontend: Pod<'m>,
    middleware: Pod<'m>,
    backend: Pod<'m>,
}

impl<'m> Chain<'m> {
    fn pods(mesh: &'m Mesh) -> Self {
        Chain {
            client: mesh.pod("client"),
            frontend: mesh.pod("frontend"),
            middleware: mesh.pod("middleware"),
            backend: mesh.pod("backend"),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.frontend.endpoint())
    }
}

/// A sidecar configuration naming the pod's workload, with at most one destination: `service`
/// at VIP `mesh.vip(vip)`:80, whose endpoint is `to`'s app.
fn sidecar_config(pod: &Pod, destination: Option<(&str, u8, &Pod)>) -> Value {
    let destinations: Vec<Value> = destination
        .into_iter()
        .map(|(service, vip, to)| {
            json!({
                "name": service,
                "addresses": [pod.mesh().vip(vip).to_string()],
                "hosts": [service],
                "ports": [{"port": SERVICE_PORT, "endpoints": [{
                    "address": to.endpoint().to_string(),
                    "workload": {"name": to.name, "namespace": "demo"},
                }]}],
            })
        })
        .collect();
    json!({
        "version": "1",
        "workload": {"name": pod.name, "namespace": "demo"},
        "destinations": destinations,
    })
}

/// Starts the three tiers' sidecars (with `flags`) and apps. Returned in start order so they
/// are dropped before their pods.
fn start_chain<'c>(
    chain: &'c Chain<'c>,
    flags: &[&str],
) -> (Vec<Proxy<'c>>, Vec<support::pods::App<'c>>) {
    let mesh = chain.frontend.mesh();
    let proxies = vec![
        chain.frontend.sidecar_with(
            Some(&sidecar_config(
                &chain.frontend,
                Some(("middleware", 1, &chain.middleware)),
            )),
            flags,
        ),
        chain.middleware.sidecar_with(
            Some(&sidecar_config(
                &chain.middleware,
                Some(("backend", 2, &chain.backend)),
            )),
            flags,
        ),
        chain
            .backend
            .sidecar_with(Some(&sidecar_config(&chain.backend, None)), flags),
    ];
    let next = |vip: u8| format!("http://{}:{SERVICE_PORT}", mesh.vip(vip));
    let apps = vec![
        tier_app(&chain.frontend, Some(&next(1))),
        tier_app(&chain.middleware, Some(&next(2))),
        tier_app(&chain.backend, None),
    ];
    (proxies, apps)
}

/// `skein demo-app` in the role named like its pod, calling `next`.
fn tier_app<'p>(pod: &'p Pod<'p>, next: Option<&str>) -> support::pods::App<'p> {
    let listen = format!("0.0.0.0:{APP_PORT}");
    let mut args = vec![
        support::pods::SKEIN,
        "demo-app",
        "--role",
        &pod.name,
        "--pod",
        &pod.name,
        "--listen",
        &listen,
    ];
    if let Some(next) = next {
        args.extend(["--next", next]);
    }
    pod.demo_app_raw(&args, APP_PORT)
}

/// One request through the chain makes one trace: a server span per tier and a client span per
/// call between tiers, each the child of the span before it.
fn assert_one_nested_trace(jaeger: &Jaeger, chain: &Chain) {
    let reply = chain.client.curl(&[&chain.url()]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let traces = jaeger.wait_for_traces("frontend", |traces| {
        traces.len() == 1 && traces[0].spans.len() == 5
    });
    let trace = &traces[0];
    let frontend_in = trace.span("frontend", "server");
    let frontend_out = trace.span("frontend", "client");
    let middleware_in = trace.span("middleware", "server");
    let middleware_out = trace.span("middleware", "client");
    let backend_in = trace.span("backend", "server");
    assert_eq!(
        frontend_in.parent, None,
        "the first meshed hop starts the trace"
    );
    assert_eq!(frontend_out.parent.as_ref(), Some(&frontend_in.id));
    assert_eq!(middleware_in.parent.as_ref(), Some(&frontend_out.id));
    assert_eq!(middleware_out.parent.as_ref(), Some(&middleware_in.id));
    assert_eq!(backend_in.parent.as_ref(), Some(&middleware_out.id));
    for span in &trace.spans {
        assert!(!span.is_error(), "{span:#?}");
        assert_eq!(span.status(), "200", "{span:#?}");
    }
    // What a span says about its request.
    assert_eq!(frontend_out.method(), "GET");
    assert_eq!(middleware_in.status(), "200");
    // Every tier is one service in Jaeger.
    let services = jaeger.api("services");
    let services: BTreeSet<&str> = services["data"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for tier in ["frontend", "middleware", "backend"] {
        assert!(services.contains(tier), "{services:?}");
    }
}

#[test]
fn a_request_through_three_tiers_is_one_trace_in_zipkin_format_and_failures_are_errors() {
    let mesh = Mesh::new();
    let chain = Chain::pods(&mesh);
    let host = mesh.external("jaeger");
    let jaeger = Jaeger::start(&host);
    let endpoint = jaeger.zipkin_endpoint();
    let flags = [
        "--zipkin-endpoint",
        &endpoint,
        "--trace-sampling-percentage",
        "100",
    ];
    let (proxies, _apps) = start_chain(&chain, &flags);
    assert_one_nested_trace(&jaeger, &chain);
    assert_backend_failure_is_an_error(&jaeger, &chain, &proxies[2]);
    for proxy in &proxies {
        proxy.wait_for_metric(
            "skein_proxy_trace_spans_exported_total",
            &[("exporter", "zipkin")],
            |n| n >= 1.0,
        );
    }
}

#[test]
fn a_request_through_three_tiers_is_one_trace_in_otlp_format_and_failures_are_errors() {
    let mesh = Mesh::new();
    let chain = Chain::pods(&mesh);
    let host = mesh.external("jaeger");
    let jaeger = Jaeger::start(&host);
    let endpoint = jaeger.otlp_endpoint();
    let flags = [
        "--otlp-endpoint",
        &endpoint,
        "--trace-sampling-percentage",
        "100",
    ];
    let (proxies, _apps) = start_chain(&chain, &flags);
    assert_one_nested_trace(&jaeger, &chain);
    assert_backend_failure_is_an_error(&jaeger, &chain, &proxies[2]);
}

/// The backend fails (the demo app's per-request knob, passed along the chain): its span and
/// the middleware's call to it are errors with the status, and the backend proxy's recent
/// errors (what `skein stat` and the dashboard show as the failing tier's sample) name that
/// trace, so the dashboard's link opens it.
fn assert_backend_failure_is_an_error(jaeger: &Jaeger, chain: &Chain, backend_proxy: &Proxy) {
    let reply = chain.client.curl(&[
        "-H",
        "x-demo-backend-fail-percent: 100",
        "-H",
        "x-demo-backend-fail-status: 503",
        &chain.url(),
    ]);
    assert!(reply.status >= 500, "{reply:?}");
    let traces = jaeger.wait_for_traces("backend", |traces| traces.len() == 2);
    let failed = traces
        .iter()
        .find(|t| t.span("backend", "server").is_error())
        .unwrap_or_else(|| panic!("no failed backend span in {traces:#?}"));
    let backend_in = failed.span("backend", "server");
    assert_eq!(backend_in.status(), "503", "{backend_in:#?}");
    let middleware_out = failed.span("middleware", "client");
    assert!(middleware_out.is_error(), "{middleware_out:#?}");
    assert_eq!(middleware_out.status(), "503");
    let recent = backend_proxy.admin("GET", "/debug/recent-errors");
    let recent: Value = serde_json::from_str(&recent.body).expect("recent errors as JSON");
    let inbound: Vec<&Value> = recent["errors"]
        .as_array()
        .expect("a list of errors")
        .iter()
        .filter(|e| e["direction"] == "inbound" && e["status"] == 503)
        .collect();
    assert_eq!(inbound.len(), 1, "{recent:#}");
    // Jaeger writes a 128-bit id without its leading zeros; proxies write all 32 digits.
    let jaeger_id = format!("{:0>32}", failed.id);
    assert_eq!(inbound[0]["traceId"], jaeger_id.as_str(), "{recent:#}");
    assert!(
        jaeger.trace(&failed.id).is_some(),
        "Jaeger serves the trace the sample names"
    );
}

#[test]
fn ten_percent_sampling_samples_about_a_tenth_of_new_traces() {
    const REQUESTS: usize = 2_000;
    let mesh = Mesh::new();
    let client = mesh.pod("client");
    let frontend = mesh.pod("frontend");
    let host = mesh.external("jaeger");
    let jaeger = Jaeger::start(&host);
    let endpoint = jaeger.zipkin_endpoint();
    let proxy = frontend.sidecar_with(
        Some(&sidecar_config(&frontend, None)),
        &[
            "--zipkin-endpoint",
            &endpoint,
            "--trace-sampling-percentage",
            "10",
        ],
    );
    let _app = frontend.demo_app("v1", &[]);
    let url = format!("http://{}/", frontend.endpoint());
    let tally = client.curl_many(REQUESTS, &url, &[]);
    assert_eq!(tally.total(), REQUESTS, "{tally:?}");
    // A last request whose caller decided to sample: its span is queued after every other, and
    // the exporter sends in order, so once it is in Jaeger all the others are too.
    let marker = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = client.curl(&[
        "-H",
        &format!("traceparent: 00-{marker}-00f067aa0ba902b7-01"),
        &url,
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let deadline = Instant::now() + SPANS_WAIT;
    while jaeger.trace(marker).is_none() {
        assert!(
            Instant::now() < deadline,
            "the marker trace never reached Jaeger"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let sampled = jaeger
        .traces("frontend")
        .iter()
        .filter(|t| t.id != marker)
        .count();
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; within 5 of them.
    let (mean, sd) = (200.0, (REQUESTS as f64 * 0.1 * 0.9).sqrt());
    let low = (mean - 5.0 * sd).floor() as usize;
    let high = (mean + 5.0 * sd).ceil() as usize;
    assert!(
        (low..=high).contains(&sampled),
        "{sampled} of {REQUESTS} requests sampled at 10% (expected {low}..={high})"
    );
    assert_eq!(
        proxy
            .metrics()
            .sum("skein_proxy_trace_spans_dropped_total", &[]),
        0.0,
        "no span lost"
    );
}

/// The request heads an app received, for the headers they carried.
fn recording_app(pod: &Pod) -> (support::pods::TcpServer, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let server = pod.tcp_server(APP_PORT, move |stream: TcpStream| {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line.to_ascii_lowercase()),
            }
        }
        seen.lock().expect("lock").push(head);
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    });
    (server, heads)
}

#[test]
fn unsampled_requests_get_no_trace_headers_and_a_callers_context_is_continued() {
    let mesh = Mesh::new();
    let client = mesh.pod("client");
    let server = mesh.pod("server");
    let host = mesh.external("jaeger");
    let jaeger = Jaeger::start(&host);
    let endpoint = jaeger.zipkin_endpoint();
    let _proxy = server.sidecar_with(
        Some(&sidecar_config(&server, None)),
        &[
            "--zipkin-endpoint",
            &endpoint,
            "--trace-sampling-percentage",
            "0",
        ],
    );
    let (_app, heads) = recording_app(&server);
    let url = format!("http://{}/", SocketAddr::from((server.ip, APP_PORT)));

    // No context, sampling 0: the app sees no trace header at all.
    for _ in 0..20 {
        assert_eq!(client.curl(&[&url]).status, 200);
    }
    // A caller that samples: its trace goes on, with this hop's span as the app's parent.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let reply = client.curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{caller_span}-01"),
        &url,
    ]);
    assert_eq!(reply.status, 200);
    let heads = heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 21, "{heads:#?}");
    for head in &heads[..20] {
        for name in ["traceparent", "x-b3-", "b3:"] {
            assert!(!head.contains(name), "{name} reached the app:\n{head}");
        }
    }
    let continued = &heads[20];
    assert!(
        continued.contains(&format!("traceparent: 00-{trace}-")),
        "{continued}"
    );
    assert!(
        continued.contains(&format!("x-b3-parentspanid: {caller_span}")),
        "{continued}"
    );

    // Nothing but the caller's trace reached Jaeger, as the server span under the caller's.
    let deadline = Instant::now() + SPANS_WAIT;
    let found = loop {
        if let Some(found) = jaeger.trace(trace) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the caller's trace never reached Jaeger"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let span = found.span("server", "server");
    assert_eq!(span.parent.as_deref(), Some(caller_span));
    assert_eq!(jaeger.traces("server").len(), 1);
}
