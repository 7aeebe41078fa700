//! What an active tap costs a proxy per request, in process, side by side with no tap:
//!
//! - `no tap`: the one check the request path makes ([`TapHub::is_tapping`]);
//! - `tap, filtered out`: a tap runs but its filter (another method) rejects the request: the
//!   request's method, authority and path are kept ([`TapRequest::new`]), the event is built
//!   (the same fields `forward.rs` fills) and matched;
//! - `tap, every request`: the event also goes through the tap's bounded buffer to a reader that
//!   encodes it as the tap client does for the control plane (protobuf).
//!
//! CPU is the process's user+system time per request (the reader is drained on the same thread);
//! the three scenarios are interleaved five times and the median is printed, with the buffer's
//! memory bound. Not measured here: the gRPC/TLS write of the encoded events (one stream frame
//! per event) and the control plane's side.
//!
//! Run: `cargo bench --bench tap`. `cargo test --all-targets` runs a short smoke pass.

use std::hint::black_box;
use std::time::Duration;

use prost::Message;
use skein::proxy::tap::{TAP_BUFFER, TapHub, TapRequest, content_length, peer};
use skein::xds::tap::{TapEvent, TapFilter};

const REQUESTS: (u32, u32) = (400_000, 2_000);
const ROUNDS: usize = 5;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let requests = if full { REQUESTS.0 } else { REQUESTS.1 };
    let parts = request_parts();
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("no tap", Vec::new()),
        ("tap, filtered out", Vec::new()),
        ("tap, every request", Vec::new()),
    ];
    let mut encoded_size = 0;
    for _ in 0..ROUNDS {
        results[0].1.push(per_request(requests, || no_tap(&parts)));
        let (filtered, _) = with_tap(&parts, requests, "POST");
        results[1].1.push(filtered);
        let (every, size) = with_tap(&parts, requests, "");
        results[2].1.push(every);
        encoded_size = size;
    }
    println!("tap cost per request (CPU, median of {ROUNDS} interleaved rounds of {requests}):");
    let baseline = median(&mut results[0].1.clone());
    for (name, samples) in &mut results {
        let ns = median(samples);
        println!(
            "  {name:<20} {ns:>9.0} ns   (+{:.0} ns over no tap)",
            ns - baseline
        );
    }
    println!(
        "  buffer bound: {TAP_BUFFER} events x ~{encoded_size} B encoded (about {} KiB per tap, \
         at most {} taps per proxy)",
        TAP_BUFFER * encoded_size / 1024,
        skein::proxy::tap::MAX_TAPS
    );
}

fn request_parts() -> http::request::Parts {
    let (parts, ()) = http::Request::get("/api/orders/1234?expand=items")
        .header("host", "frontend.demo.svc.cluster.local:8080")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "application/json")
        .body(())
        .expect("a request")
        .into_parts();
    parts
}

fn no_tap(parts: &http::request::Parts) {
    static HUB: std::sync::LazyLock<TapHub> = std::sync::LazyLock::new(TapHub::default);
    if HUB.is_tapping() {
        black_box(TapRequest::new(parts));
    }
}

/// The event `forward.rs` builds when a response ends: the kept request plus the request's
/// labels (each a `String` copy) and the response's declared length.
fn event(request: TapRequest, response: &http::HeaderMap) -> TapEvent {
    TapEvent {
        direction: "inbound".to_owned(),
        source: Some(peer(
            "loadgen",
            "demo",
            Some("spiffe://cluster.local/ns/demo/sa/loadgen".to_owned()),
        )),
        destination: Some(peer(
            "frontend",
            "demo",
            Some("spiffe://cluster.local/ns/demo/sa/frontend".to_owned()),
        )),
        destination_service: "frontend.demo.svc.cluster.local".to_owned(),
        tls: true,
        method: request.method,
        authority: request.authority,
        path: request.path,
        status: 200,
        request_bytes: request.request_bytes,
        response_bytes: content_length(response),
        retries: request.retries,
        started_unix_ms: request.started_unix_ms,
        latency_micros: 850,
        completed: true,
        ..TapEvent::default()
    }
}

/// CPU per request with one tap whose filter wants `method` ("" = every request), and the
/// encoded size of one event. The reader is drained on the same thread right after each
/// request, so its encoding is counted and the buffer never fills (a full one drops events,
/// which is cheaper).
fn with_tap(parts: &http::request::Parts, requests: u32, method: &str) -> (f64, usize) {
    let hub = TapHub::default();
    let filter = TapFilter {
        method: method.to_owned(),
        ..TapFilter::default()
    };
    let mut reader = hub.start(1, filter).expect("starting the tap");
    let mut response = http::HeaderMap::new();
    response.insert("content-length", http::HeaderValue::from_static("512"));
    let mut size = 0;
    let cpu = per_request(requests, || {
        if hub.is_tapping() {
            let request = TapRequest::new(parts);
            hub.publish(&event(*request, &response));
        }
        // The tap client's work per event: receive it and encode it for the stream.
        while let Ok(event) = reader.events.try_recv() {
            size = black_box(event.encode_to_vec()).len();
        }
    });
    assert_eq!(
        reader.dropped.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the buffer overflowed: the figure would be too low"
    );
    (cpu, size)
}

/// The process's CPU time per call of `each`, in nanoseconds.
fn per_request(requests: u32, mut each: impl FnMut()) -> f64 {
    let start = cpu_time();
    for _ in 0..requests {
        each();
    }
    (cpu_time() - start).as_nanos() as f64 / f64::from(requests)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
