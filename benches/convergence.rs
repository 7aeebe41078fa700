//! Control-plane convergence: how long an EndpointSlice change in the apiserver takes to reach
//! every connected proxy (time to its ACK), how many bytes a change pushes, and the control
//! plane's memory — at 1,000 Services, 10,000 endpoints and 100 proxies. Then what `skein stat`'s
//! embedded data costs at that scale: two control planes side by side with the same proxies, one
//! collecting every proxy's `/metrics` (every 5 s, until its five-minute window is full), one with
//! collection off (`--stats-interval 0s`); the difference in memory is the stats' cost.
//!
//! A real kube-apiserver and a real `skein control-plane` process; the proxies are 100 Delta ADS
//! clients in this process (the stream's own generated client), each ACKing what it receives the
//! way `skein proxy` does. The Services and EndpointSlices are written straight to the apiserver
//! (what the EndpointSlice controller would write for 10,000 pods): the control plane watches
//! slices, not pods, for endpoints, so pods on kwok nodes would add load to the apiserver and
//! nothing to what is measured.
//!
//! The simulated proxies serve `/metrics` on their own loopback address (127.0.1.N, the
//! admin port), written by the proxy's own metrics code with a realistic label set that moves
//! at every scrape: a workload with three callers and four destinations, 2xx and 5xx, latency
//! histograms.
//!
//! Run: `benches/convergence.sh` (or `cargo bench --bench convergence`), on a local cluster of
//! its own (`skein-bench-convergence`, started or reused). `cargo test --all-targets` runs a
//! small smoke version on the shared test cluster. Goals: p99 < 1 s; memory < 200 MiB; a change
//! pushes only what changed. The last line printed is one JSON object with the figures.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use prost::Message;
use serde_json::json;
use skein::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use skein::xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use skein::xds::resources;
use support::control_plane::ControlPlane;
use tokio::sync::mpsc;

/// (services, endpoints per service, proxies, changes) for `cargo bench` and for the smoke run.
const FULL: Scale = Scale {
    services: 1_000,
    endpoints: 10,
    proxies: 100,
    changes: 30,
};
const SMOKE: Scale = Scale {
    services: 20,
    endpoints: 3,
    proxies: 4,
    changes: 3,
};
/// The collector's shortest interval, and how many rounds the stats phase waits: a full
/// five-minute window for the benchmark, a few rounds for the smoke run.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
const STATS_ROUNDS_FULL: u32 = 61;
const STATS_ROUNDS_SMOKE: u32 = 3;
const BENCH_CLUSTER: &str = "skein-bench-convergence";
/// A change no proxy has ACKed within this long counts as lost.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Scale {
    services: usize,
    endpoints: usize,
    proxies: usize,
    changes: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if full {
        support::use_cluster(BENCH_CLUSTER);
    }
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("installing the rustls provider");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(if full { FULL } else { SMOKE }, full));
}

/// What one proxy saw of one change.
#[derive(Clone, Copy, Debug)]
struct Seen {
    change: usize,
    /// From the apiserver write to the ACK of the push's last response.
    latency: Duration,
    /// Encoded size of every response of the push.
    bytes: usize,
    /// Resources (and removals) in the push, and how many of them were destinations.
    resources: usize,
    destinations: usize,
}

async fn run(scale: Scale, full: bool) {
    let ctx = support::TestContext::new().await;
    let namespace = ctx.namespace.clone();
    let started = Instant::now();
    create_services(&ctx.client, &namespace, scale).await;
    let created = started.elapsed();
    // Collection off here: the convergence figures and the memory baseline are the stream's own.
    let control_plane = ControlPlane::start_with(&["--stats-interval", "0s"]).await;
    let endpoint = format!("http://127.0.0.1:{}", control_plane.xds_port);

    // The proxies connect and take in the whole mesh.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let current = Arc::new(Mutex::new(None::<(usize, String, Instant)>));
    let connect_started = Instant::now();
    let mut synced = Vec::new();
    // Each simulated proxy authenticates as the real one does: a token bound to its (pending) pod.
    support::identity::service_account(&ctx.client, &namespace).await;
    let mut tokens = Vec::new();
    for index in 0..scale.proxies {
        let pod = support::identity::pod(&ctx.client, &namespace, &format!("proxy-{index}")).await;
        tokens.push(support::identity::token_for(&ctx.client, &pod, "skein.dev").await);
    }
    for (index, token) in tokens.iter().cloned().enumerate() {
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        synced.push(synced_rx);
        tokio::spawn(proxy(
            endpoint.clone(),
            SimulatedPod {
                name: format!("proxy-{index}"),
                token,
                ip: None,
            },
            namespace.clone(),
            scale.services,
            current.clone(),
            seen_tx.clone(),
            synced_tx,
        ));
    }
    let mut initial_bytes = 0;
    for synced in synced {
        initial_bytes += tokio::time::timeout(Duration::from_secs(300), synced)
            .await
            .expect("every proxy receives the mesh within 5 minutes")
            .expect("a proxy stream ended before its first configuration");
    }
    let initial_sync = connect_started.elapsed();

    // Changes: one endpoint address of one Service at a time.
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut samples: Vec<Seen> = Vec::new();
    for change in 0..scale.changes {
        let service = (change * 7919) % scale.services;
        let destination = format!("svc-{service}.{namespace}.svc.cluster.local");
        *current.lock().unwrap() = Some((change, destination, Instant::now()));
        let address = format!(
            "10.{}.{}.{}",
            200 + change / 250,
            change % 250,
            1 + service % 250
        );
        let patch = json!({"endpoints": endpoints(service, scale.endpoints, Some(address))});
        slices
            .patch(
                &format!("svc-{service}"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("patching an EndpointSlice");
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let mut got = 0;
        while got < scale.proxies {
            match tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await {
                Ok(Some(seen)) if seen.change == change => {
                    samples.push(seen);
                    got += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(
            got, scale.proxies,
            "change {change}: only {got} proxies ACKed"
        );
    }
    let rss = memory(control_plane.pid());
    drop(control_plane);
    let stats = stats_memory(&namespace, scale, &tokens, full).await;
    report(
        scale,
        full,
        created,
        initial_sync,
        initial_bytes,
        &samples,
        rss,
        &stats,
    );
}

/// What the stats phase measured.
struct StatsMemory {
    rounds: u32,
    /// Series each simulated proxy exports of those the collector keeps.
    series_per_proxy: usize,
    /// Proxies the collecting control plane reported in `/debug/stats` at the end.
    proxies_seen: u64,
    /// (RSS, peak) in MiB: collecting, and not.
    with_stats: (f64, f64),
    without_stats: (f64, f64),
}

/// Two control planes, collection on and off, each with every simulated proxy connected; waits
/// `rounds` collection intervals and measures both at the same moment.
async fn stats_memory(namespace: &str, scale: Scale, tokens: &[String], full: bool) -> StatsMemory {
    let rounds = if full {
        STATS_ROUNDS_FULL
    } else {
        STATS_ROUNDS_SMOKE
    };
    let interval = format!("{}s", STATS_INTERVAL.as_secs());
    let collecting = ControlPlane::start_with(&["--stats-interval", &interval]).await;
    let idle = ControlPlane::start_with(&["--stats-interval", "0s"]).await;
    let farms: Vec<_> = (0..scale.proxies)
        .map(|index| metrics_farm::serve(simulated_ip(index), index))
        .collect();
    let series_per_proxy = metrics_farm::series_per_proxy();
    let mut synced = Vec::new();
    for control_plane in [&collecting, &idle] {
        let endpoint = format!("http://127.0.0.1:{}", control_plane.xds_port);
        for (index, token) in tokens.iter().enumerate() {
            let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
            synced.push(synced_rx);
            let (seen_tx, _) = mpsc::unbounded_channel();
            tokio::spawn(proxy(
                endpoint.clone(),
                SimulatedPod {
                    name: format!("proxy-{index}"),
                    token: token.clone(),
                    ip: Some(simulated_ip(index)),
                },
                namespace.to_owned(),
                scale.services,
                Arc::new(Mutex::new(None)),
                seen_tx,
                synced_tx,
            ));
        }
    }
    for synced in synced {
        tokio::time::timeout(Duration::from_secs(300), synced)
            .await
            .expect("every proxy receives the mesh within 5 minutes")
            .expect("a proxy stream ended before its first configuration");
    }
    tokio::time::sleep(STATS_INTERVAL * rounds).await;
    let proxies_seen = proxies_in_stats(collecting.debug_port).await;
    let measured = StatsMemory {
        rounds,
        series_per_proxy,
        proxies_seen,
        with_stats: memory(collecting.pid()),
        without_stats: memory(idle.pid()),
    };
    for farm in farms {
        farm.abort();
    }
    measured
}

/// A simulated proxy's pod IP: its own loopback address, where its `/metrics` is served.
fn simulated_ip(index: usize) -> std::net::IpAddr {
    let index = u8::try_from(index + 1).expect("at most 254 simulated proxies");
    std::net::IpAddr::from([127, 0, 1, index])
}

/// How many proxies the collecting control plane's `/debug/stats` counts over five minutes.
async fn proxies_in_stats(debug_port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{debug_port}/debug/stats?window=5m");
    let stats: serde_json::Value = reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("asking /debug/stats")
        .json()
        .await
        .expect("/debug/stats is JSON");
    stats["workloads"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| row["proxies"].as_u64()).sum())
        .unwrap_or(0)
}

/// The simulated proxies' admin servers: `/metrics` from the proxy's own metrics code, with new
/// requests recorded before each scrape so every series the collector keeps moves.
mod metrics_farm {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use skein::proxy::Direction;
    use skein::proxy::metrics::{LatencyLabels, Metrics, RequestLabels};

    const CALLERS: [&str; 3] = ["frontend", "batch", "admin"];
    const DESTINATIONS: [&str; 4] = ["users", "orders", "payments", "search"];
    const OUTCOMES: [(u16, &str); 3] = [(200, "success"), (503, "failure"), (504, "failure")];

    pub fn serve(ip: IpAddr, index: usize) -> tokio::task::JoinHandle<()> {
        let addr = SocketAddr::new(ip, skein::api::names::DEFAULT_ADMIN_PORT as u16);
        let workload = format!("app-{}", index % 10);
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|err| panic!("binding {addr}: {err}"));
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    let workload = workload.clone();
                    async move {
                        record_traffic(&metrics, &workload);
                        metrics.encode().unwrap_or_default()
                    }
                }),
            );
            let _ = axum::serve(listener, app).await;
        })
    }

    /// One scrape's worth of traffic: every caller → this workload, this workload → every
    /// destination, each with every outcome.
    fn record_traffic(metrics: &Metrics, workload: &str) {
        for (status, classification) in OUTCOMES {
            for caller in CALLERS {
                let labels = request(Direction::Inbound, caller, workload, workload);
                let labels = RequestLabels {
                    status_code: status,
                    classification,
                    ..labels
                };
                metrics.http.requests.get_or_create(&labels).inc_by(7);
            }
            for destination in DESTINATIONS {
                let labels = request(Direction::Outbound, workload, destination, destination);
                let labels = RequestLabels {
                    status_code: status,
                    classification,
                    ..labels
                };
                metrics.http.requests.get_or_create(&labels).inc_by(5);
            }
            for (direction, service) in [
                (Direction::Inbound, workload),
                (Direction::Outbound, DESTINATIONS[0]),
            ] {
                let latency = LatencyLabels {
                    direction,
                    destination_service: service.to_owned(),
                    classification,
                };
                for millis in [0.4, 3.0, 40.0] {
                    metrics
                        .http
                        .latency
                        .get_or_create(&latency)
                        .observe(millis / 1000.0);
                }
            }
        }
    }

    fn request(
        direction: Direction,
        source: &str,
        destination: &str,
        service: &str,
    ) -> RequestLabels {
        RequestLabels {
            direction,
            protocol: "http",
            source_workload: source.to_owned(),
            source_namespace: "bench".to_owned(),
            source_principal: format!("spiffe://cluster.local/ns/bench/sa/{source}"),
            tls: "true",
            destination_service: format!("{service}.bench.svc.cluster.local"),
            destination_workload: destination.to_owned(),
            destination_namespace: "bench".to_owned(),
            status_code: 200,
            grpc_status: String::new(),
            classification: "success",
        }
    }

    /// The series of one proxy's `/metrics` that the collector keeps.
    pub fn series_per_proxy() -> usize {
        let metrics = Metrics::new();
        record_traffic(&metrics, "app-0");
        let text = metrics.encode().unwrap_or_default();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                skein::controlplane::stats::window::wanted(name)
            })
            .count()
    }
}

/// `count` Services with a port 80 and their EndpointSlices, `endpoints` addresses each.
async fn create_services(client: &kube::Client, namespace: &str, scale: Scale) {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    stream::iter(0..scale.services)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let service: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .unwrap();
                services
                    .create(&PostParams::default(), &service)
                    .await
                    .expect("creating a Service");
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {
                        "name": format!("svc-{i}"),
                        "labels": {"kubernetes.io/service-name": format!("svc-{i}")}
                    },
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": endpoints(i, scale.endpoints, None),
                }))
                .unwrap();
                slices
                    .create(&PostParams::default(), &slice)
                    .await
                    .expect("creating an EndpointSlice");
            }
        })
        .buffer_unordered(16)
        .collect::<()>()
        .await;
}

/// The endpoints of Service `service`; `first` replaces the first address (a change).
fn endpoints(service: usize, count: usize, first: Option<String>) -> serde_json::Value {
    let list: Vec<serde_json::Value> = (0..count)
        .map(|j| {
            let address = match (&first, j) {
                (Some(address), 0) => address.clone(),
                _ => format!("10.{}.{}.{}", service / 250, service % 250, 1 + j),
            };
            json!({"addresses": [address], "conditions": {"ready": true}})
        })
        .collect();
    json!(list)
}

/// One simulated proxy: subscribes like `skein proxy`, ACKs every response, reports the first
/// full configuration's size on `synced` and each change it sees on `seen`.
/// Who a simulated proxy is: its pod, and a `skein.dev` token bound to it.
struct SimulatedPod {
    name: String,
    token: String,
    /// The pod IP it tells the control plane (where its `/metrics` is served), if any.
    ip: Option<std::net::IpAddr>,
}

async fn proxy(
    endpoint: String,
    SimulatedPod {
        name: pod,
        token,
        ip,
    }: SimulatedPod,
    namespace: String,
    services: usize,
    current: Arc<Mutex<Option<(usize, String, Instant)>>>,
    seen: mpsc::UnboundedSender<Seen>,
    synced: tokio::sync::oneshot::Sender<usize>,
) {
    let mut client = loop {
        match AggregatedDiscoveryServiceClient::connect(endpoint.clone()).await {
            Ok(client) => break client.max_decoding_message_size(64 << 20),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (requests, outbound) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for (index, type_url) in resources::TYPE_URLS.iter().enumerate() {
        let _ = requests
            .send(DeltaDiscoveryRequest {
                node: (index == 0).then(|| Node {
                    id: format!("{pod}.{namespace}"),
                    pod: pod.clone(),
                    namespace: namespace.clone(),
                    ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
                }),
                type_url: (*type_url).to_owned(),
                resource_names_subscribe: vec!["*".to_owned()],
                ..Default::default()
            })
            .await;
    }
    let mut outbound = tonic::Request::new(tokio_stream_from(outbound));
    skein::proxy::identity::authorize(&mut outbound, &token).expect("a token header");
    let mut responses = client
        .delta_aggregated_resources(outbound)
        .await
        .expect("opening the stream")
        .into_inner();
    let mut synced = Some(synced);
    let mut push: Option<Push> = None;
    let mut destinations = 0;
    let mut initial_bytes = 0;
    while let Ok(Some(response)) = responses.message().await {
        let bytes = response.encoded_len();
        let _ = requests.send(ack(&response)).await;
        let acked = Instant::now();
        if synced.is_some() {
            initial_bytes += bytes;
            if response.type_url == resources::DESTINATION_TYPE {
                destinations += response.resources.len();
            }
            // The mesh is in once every Service arrived (and `kubernetes`, the default one).
            if destinations >= services
                && let Some(tx) = synced.take()
            {
                let _ = tx.send(initial_bytes);
            }
            continue;
        }
        let Some((change, name, written)) = current.lock().unwrap().clone() else {
            continue;
        };
        // A push is the responses of one version: the changed destination, then the settings
        // that carry the new version and end it (what a proxy waits for before applying).
        if response.resources.iter().any(|r| r.name == name) {
            push = Some(Push {
                change,
                version: response.system_version_info.clone(),
                written,
                bytes: 0,
                resources: 0,
                destinations: 0,
            });
        }
        let Some(current_push) = push.as_mut() else {
            continue;
        };
        if current_push.version != response.system_version_info {
            continue;
        }
        current_push.bytes += bytes;
        current_push.resources += response.resources.len() + response.removed_resources.len();
        if response.type_url == resources::DESTINATION_TYPE {
            current_push.destinations +=
                response.resources.len() + response.removed_resources.len();
        }
        if response.type_url == resources::SETTINGS_TYPE
            && let Some(done) = push.take()
        {
            let _ = seen.send(Seen {
                change: done.change,
                latency: acked - done.written,
                bytes: done.bytes,
                resources: done.resources,
                destinations: done.destinations,
            });
        }
    }
}

/// The responses of one push, as a proxy receives them.
struct Push {
    change: usize,
    version: String,
    written: Instant,
    bytes: usize,
    resources: usize,
    destinations: usize,
}

fn ack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

/// An mpsc receiver as the request stream tonic wants.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// VmRSS and VmHWM of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[allow(clippy::too_many_arguments)]
fn report(
    scale: Scale,
    full: bool,
    created: Duration,
    initial_sync: Duration,
    initial_bytes: usize,
    samples: &[Seen],
    (rss, hwm): (f64, f64),
    stats: &StatsMemory,
) {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    // Per change: the last proxy's ACK is when the change has converged.
    let mut last_per_change: BTreeMap<usize, Duration> = BTreeMap::new();
    for s in samples {
        let last = last_per_change.entry(s.change).or_default();
        *last = (*last).max(s.latency);
    }
    let mut converged: Vec<Duration> = last_per_change.values().copied().collect();
    converged.sort();
    let changes = last_per_change.len().max(1) as f64;
    let bytes_per_change = samples.iter().map(|s| s.bytes).sum::<usize>() as f64 / changes;
    let max_resources = samples.iter().map(|s| s.resources).max().unwrap_or(0);
    let max_destinations = samples.iter().map(|s| s.destinations).max().unwrap_or(0);
    println!(
        "control-plane convergence ({})",
        if full { "full" } else { "smoke" }
    );
    println!(
        "  {} Services x {} endpoints, {} proxies, {} changes; objects created in {:.1}s; \
         initial sync of every proxy {:.1}s ({:.1} MiB pushed)",
        scale.services,
        scale.endpoints,
        scale.proxies,
        scale.changes,
        created.as_secs_f64(),
        initial_sync.as_secs_f64(),
        initial_bytes as f64 / 1048576.0
    );
    println!(
        "  EndpointSlice write -> proxy ACK of the push, ms (every proxy x change): p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0)
    );
    println!(
        "  ... to the last proxy's ACK (per change):                    p50 {:.1}  p99 {:.1}",
        percentile(&converged, 50.0),
        percentile(&converged, 99.0)
    );
    println!(
        "  bytes pushed per change: {:.0} in all, {:.0} per proxy; per push at most {} resources, \
         {} of them destinations (the rest: the settings carrying the new version)",
        bytes_per_change,
        bytes_per_change / scale.proxies as f64,
        max_resources,
        max_destinations
    );
    println!("  control plane memory: RSS {rss:.1} MiB, peak {hwm:.1} MiB");
    let (stats_rss, stats_hwm) = stats.with_stats;
    let (idle_rss, idle_hwm) = stats.without_stats;
    let stats_cost = stats_rss - idle_rss;
    println!(
        "  stats (`skein stat`'s data), side by side after {} rounds of {}s, {} proxies x {} series: \
         RSS {stats_rss:.1} MiB collecting vs {idle_rss:.1} MiB not (+{stats_cost:.1} MiB, \
         {:.0} KiB per proxy); peaks {stats_hwm:.1} vs {idle_hwm:.1} MiB; /debug/stats counted {} proxies",
        stats.rounds,
        STATS_INTERVAL.as_secs(),
        scale.proxies,
        stats.series_per_proxy,
        stats_cost * 1024.0 / scale.proxies as f64,
        stats.proxies_seen
    );
    assert_eq!(
        stats.proxies_seen, scale.proxies as u64,
        "the collecting control plane should have every simulated proxy's stats"
    );
    let p99 = percentile(&latencies, 99.0);
    println!(
        "  goals: p99 < 1 s: {}; memory < 200 MiB: {}; only what changed: {}",
        if p99 < 1000.0 { "yes" } else { "NO" },
        if hwm < 200.0 { "yes" } else { "NO" },
        if max_destinations == 1 { "yes" } else { "NO" }
    );
    println!(
        "{}",
        json!({
            "services": scale.services,
            "endpoints": scale.services * scale.endpoints,
            "proxies": scale.proxies,
            "changes": scale.changes,
            "initial_sync_s": initial_sync.as_secs_f64(),
            "initial_bytes": initial_bytes,
            "ack_latency_ms": {"p50": percentile(&latencies, 50.0), "p99": p99,
                               "max": percentile(&latencies, 100.0)},
            "last_ack_latency_ms": {"p50": percentile(&converged, 50.0),
                                    "p99": percentile(&converged, 99.0)},
            "bytes_per_change": bytes_per_change,
            "bytes_per_change_per_proxy": bytes_per_change / scale.proxies as f64,
            "max_resources_per_push": max_resources,
            "max_destinations_per_push": max_destinations,
            "control_plane_rss_mib": rss,
            "control_plane_peak_rss_mib": hwm,
            "stats": {"rounds": stats.rounds, "series_per_proxy": stats.series_per_proxy,
                      "rss_mib_collecting": stats_rss, "rss_mib_not_collecting": idle_rss,
                      "cost_mib": stats_cost, "proxies_seen": stats.proxies_seen},
            "goals": {"p99_lt_1s": p99 < 1000.0, "memory_lt_200mib": hwm < 200.0,
                      "only_what_changed": max_destinations == 1},
        })
    );
}
