//! The data-plane proxy, `skein-proxy` (also `skein proxy`): the sidecar every meshed pod runs.
//! Its own crate, which depends on no Kubernetes client: what it shares with the control plane
//! (its configuration, the stream's messages, identities) comes from `skein-core`.
//!
//! `skein init` redirects the pod's TCP to two listeners; this module serves them:
//!
//! ```text
//!   app ──connect(D)──▶ [REDIRECT] ──▶ outbound :16001 ──connect(D)──▶ D
//!   client ──connect(pod IP:P)──▶ [REDIRECT] ──▶ inbound :16006 ──connect(pod IP:P)──▶ app
//! ```
//!
//! The proxy runs as the proxy UID, whose own connections the capture rules leave alone, so its
//! upstream connections are never redirected back to it.
//!
//! - [`listen`]: binding the listeners, the accept loop, the original destination of a
//!   connection and the refusal of connections that would loop back into the proxy.
//! - [`tcp`]: opaque TCP forwarding (both ways, with half-close) to the upstream.
//! - [`admin`]: the admin HTTP server: `/live`, `/ready`, `/metrics`, `POST /drain`,
//!   `POST /shutdown`.
//! - [`authz`]: AccessPolicy decisions on inbound traffic (403 or a reset, audit counts).
//! - [`client`]: the configuration stream from the control plane (`--xds-address`);
//!   [`stream_trust`]: what its TLS trusts as the mesh CA rotates.
//! - [`identity`]: the workload certificate (key, CSR, renewal) from the control plane.
//! - [`drain`]: stopping accepts, tracking in-flight connections, closing stragglers.
//! - [`limits`]: what one client may hold: connection cap, header-read and idle timeouts,
//!   header sizes, HTTP/2 stream limits.
//! - [`metrics`]: the proxy's Prometheus metrics (names and labels documented there).
//! - [`original_dst`]: `SO_ORIGINAL_DST` for redirected connections.
//! - [`trace`]: spans of sampled requests, exported to Zipkin or OTLP backends.
//!
//! Between [`listen`] (which hands over an accepted connection and its target) and [`tcp`] or
//! [`http`]: [`detect`] tells HTTP, TLS and opaque bytes apart; [`inbound`] and [`outbound`]
//! route each connection by it ([`server_first`]: when the client stays silent).
//!
//! Shutdown of a terminating pod, whatever order Kubernetes delivers its events in (endpoint
//! removal reaches callers asynchronously to the pod's SIGTERM):
//!
//! 1. **Going away** starts at the first of: the control plane saying the pod is being deleted
//!    (`draining` in the configuration, pushed with the same change that marks the endpoint
//!    `terminating` for callers), or SIGTERM/SIGINT. Inbound HTTP/1 responses carry
//!    `Connection: close`, inbound HTTP/2 connections get a GOAWAY; everything is still
//!    accepted and served, `/ready` stays 200.
//! 2. **Stop accepting**, once a signal has come and `--drain-window` has passed since going
//!    away started (at once if it already has): the listeners close (new connections are
//!    refused), `/ready` answers 503, in-flight connections continue for up to
//!    `--drain-timeout`.
//! 3. Whatever is still open is reset and [`run`] returns.
//!
//! A second signal cuts the window short; another one after that resets whatever is open.
//! `POST /shutdown` skips the window (the app asked for it, being done); `POST /drain` does
//! step 2 at once and keeps the process running until it is told to exit. The whole timeline,
//! with the app's side of it, is in `docs/termination.md`.

pub mod admin;
pub mod authz;
pub mod balance;
pub mod client;
pub mod config;
pub mod detect;
pub mod dns;
pub mod drain;
pub mod egress;
pub mod headers;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod mtls;
pub mod original_dst;
pub mod outbound;
pub mod reasons;
pub mod recent;
pub mod retry;
pub mod routes;
pub mod server_first;
pub mod sni;
pub mod stream_trust;
pub mod tap;
pub mod tcp;
pub mod trace;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use skein_core::names;

use self::admin::{AdminCommand, AdminRequest};
use self::config::{Compiled, ConfigStore};
use self::drain::Drain;
use self::metrics::Metrics;

/// How long the admin server gets to finish its last responses once the proxy stops.
const ADMIN_STOP_GRACE: Duration = Duration::from_secs(1);
/// How long `/ready` waits for the first workload certificate. Callers reach a Ready pod over
/// mTLS at once, which needs the certificate; but an unreachable control plane must not keep
/// pods from starting for longer than this (they then serve plaintext, and mTLS once the
/// certificate comes).
const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(10);
/// How long `/ready` waits for the control plane's first configuration, and new outbound
/// connections with it (they cannot be classified before). Bounded, so a control-plane outage
/// never keeps pods from starting; after it, unknown destinations are refused under
/// `RegistryOnly` until the configuration comes.
const FIRST_CONFIGURATION_WAIT: Duration = Duration::from_secs(10);
/// How long connections get to close after being told to, at the end of the drain.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Flags of `skein proxy` (each also read from its environment variable, as injected pods set).
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Port of the outbound listener (where `skein init` redirects the app's connections).
    #[arg(long, env = "SKEIN_OUTBOUND_PORT", default_value_t = names::DEFAULT_OUTBOUND_PORT as u16)]
    pub outbound_port: u16,
    /// Port of the inbound listener (where `skein init` redirects connections to the pod).
    #[arg(long, env = "SKEIN_INBOUND_PORT", default_value_t = names::DEFAULT_INBOUND_PORT as u16)]
    pub inbound_port: u16,
    /// Port of the admin server (`/live`, `/ready`, `/metrics`, `/drain`, `/shutdown`).
    #[arg(long, env = "SKEIN_ADMIN_PORT", default_value_t = names::DEFAULT_ADMIN_PORT as u16)]
    pub admin_port: u16,
    /// How long a terminating pod's proxy keeps accepting after it starts going away (the
    /// control plane's word that the pod is being deleted, or SIGTERM): long enough for every
    /// caller to learn the endpoint is leaving. The injector sets it from MeshConfig
    /// `proxy.drainWindow`.
    #[arg(long, env = "SKEIN_DRAIN_WINDOW", default_value_t = skein_core::Duration::from_secs(names::DEFAULT_DRAIN_WINDOW_SECS))]
    pub drain_window: skein_core::Duration,
    /// Grace period for in-flight connections once the listeners have closed.
    #[arg(long, env = "SKEIN_DRAIN_TIMEOUT", default_value = "5s")]
    pub drain_timeout: skein_core::Duration,
    /// Connect timeout to upstreams.
    #[arg(long, env = "SKEIN_CONNECT_TIMEOUT", default_value = "1s")]
    pub connect_timeout: skein_core::Duration,
    /// Threads serving traffic. One (the default) runs everything on a single thread with no
    /// cross-thread hand-offs: the lowest latency and memory for a sidecar; more only help a
    /// pod whose traffic needs more than a core.
    #[arg(long, env = "SKEIN_PROXY_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Configuration file (YAML or JSON; see `proxy::config::types`), re-read when it changes.
    /// Without it (and without `--xds-address`) the proxy forwards everything to its original
    /// destination.
    #[arg(long, env = "SKEIN_PROXY_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The control plane's configuration stream (`host:port`): the configuration comes from
    /// there instead of a file. Until the first one arrives (`/ready` waits for it up to 10 s,
    /// and so do new outbound connections), `--outbound-traffic-policy` decides on every
    /// destination: under `RegistryOnly` they are refused, never forwarded unchecked.
    #[arg(long, env = "SKEIN_XDS_ADDRESS", conflicts_with = "config")]
    pub xds_address: Option<String>,
    /// The outbound policy until a configuration is loaded: `RegistryOnly` (refuse every
    /// destination; the default with `--xds-address`) or `AllowAny` (forward to the original
    /// destination; the default with neither `--config` nor `--xds-address`). The injector sets
    /// it from MeshConfig `traffic.outboundTrafficPolicy`.
    #[arg(long, env = "SKEIN_OUTBOUND_TRAFFIC_POLICY", value_parser = parse_outbound_policy, conflicts_with = "config")]
    pub outbound_traffic_policy: Option<config::OutboundTrafficPolicy>,
    /// This pod's name: with `--pod-namespace` and `--pod-ip`, the proxy's identity on the
    /// configuration stream (injected pods set them from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// The pod's projected service-account token (audience `skein.dev`; the injector mounts
    /// it): with `--xds-address`, the proxy authenticates the configuration stream with it and
    /// requests its workload certificate. Re-read on every use (the kubelet rotates it).
    #[arg(long, env = "SKEIN_IDENTITY_TOKEN")]
    pub identity_token: Option<std::path::PathBuf>,
    /// The mesh's trust bundle (PEM file): with it the configuration stream and certificate
    /// requests use TLS, and the control plane's certificate must chain to it. Re-read on every
    /// connection.
    #[arg(long, env = "SKEIN_TRUST_BUNDLE")]
    pub trust_bundle: Option<std::path::PathBuf>,
    /// The same as PEM text (the injector sets it to the mesh's bundle when the pod is
    /// created). Once connected, the bundle the control plane pushes is trusted instead.
    #[arg(
        long,
        env = "SKEIN_XDS_TRUST_BUNDLE_PEM",
        conflicts_with = "trust_bundle",
        hide_env_values = true
    )]
    pub xds_trust_bundle_pem: Option<String>,
    /// A directory that outlives this container (the injector mounts an emptyDir): the last
    /// pushed trust bundle is saved there, so a restarted sidecar trusts a rotated CA.
    #[arg(long, env = "SKEIN_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// A workload certificate (PEM chain) to use instead of requesting one: for a proxy without
    /// a control plane (a VM, a test, a benchmark). Needs `--workload-key` and `--trust-bundle`
    /// (the roots peers are checked against); the files are re-read when they change.
    #[arg(long, env = "SKEIN_WORKLOAD_CERT", requires_all = ["workload_key", "trust_bundle"], conflicts_with = "identity_token")]
    pub workload_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "SKEIN_WORKLOAD_KEY", requires = "workload_cert")]
    pub workload_key: Option<std::path::PathBuf>,
    /// An HTTP/1 client must send a whole request head within this (also the longest an HTTP/1
    /// keep-alive connection may sit idle between requests). See `proxy::limits`.
    #[arg(long, env = "SKEIN_HEADER_READ_TIMEOUT", default_value = "30s")]
    pub header_read_timeout: skein_core::Duration,
    /// A connection on which no byte moved in either direction for this long is closed; `0s`:
    /// never.
    #[arg(long, env = "SKEIN_IDLE_TIMEOUT", default_value = "1h")]
    pub idle_timeout: skein_core::Duration,
    /// Connections each listener (inbound, outbound) holds at most; more are reset at once.
    #[arg(long, env = "SKEIN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Largest HTTP/1 request head (request line and headers; bigger ones get 431) and HTTP/2
    /// header list, in bytes.
    #[arg(long, env = "SKEIN_MAX_REQUEST_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_request_header_bytes: usize,
    /// Concurrent streams an HTTP/2 client may open on one connection.
    #[arg(
        long,
        env = "SKEIN_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 250
    )]
    pub http2_max_concurrent_streams: u32,
    /// Where to send spans as Zipkin v2 JSON (`http://zipkin.tracing:9411/api/v2/spans`).
    /// The injector sets it from MeshConfig `tracing.zipkinEndpoint`. With neither this nor
    /// `--otlp-endpoint` the proxy makes no spans and passes trace headers on untouched.
    #[arg(long, env = "SKEIN_ZIPKIN_ENDPOINT", value_parser = parse_trace_endpoint)]
    pub zipkin_endpoint: Option<String>,
    /// Where to send spans as OTLP/HTTP protobuf (`http://jaeger.tracing:4318/v1/traces`):
    /// MeshConfig `tracing.otlpEndpoint`.
    #[arg(long, env = "SKEIN_OTLP_ENDPOINT", value_parser = parse_trace_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// Percentage (0 to 100) of the traces that start at this proxy (requests with no sampling
    /// decision in their trace headers) that are sampled: MeshConfig
    /// `tracing.samplingPercentage`. A caller's decision always stands.
    #[arg(long, env = "SKEIN_TRACE_SAMPLING_PERCENTAGE", default_value_t = 1.0, value_parser = parse_sampling_percentage)]
    pub trace_sampling_percentage: f64,
}

impl ProxyArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.workers >= 1, "--workers must be at least 1");
        let ports = [
            ("--outbound-port", self.outbound_port),
            ("--inbound-port", self.inbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (i, (flag, port)) in ports.iter().enumerate() {
            anyhow::ensure!(*port != 0, "{flag} must be a port between 1 and 65535");
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                anyhow::bail!("{flag} and {other} are both {port}: the ports must differ");
            }
        }
        anyhow::ensure!(
            !self.connect_timeout.as_std().is_zero(),
            "--connect-timeout must be more than 0s"
        );
        self.xds_client()?;
        self.limits().validate()?;
        Ok(())
    }

    /// The listeners' limits ([`limits`]).
    pub fn limits(&self) -> limits::Limits {
        limits::Limits {
            header_read_timeout: self.header_read_timeout.as_std(),
            idle_timeout: self.idle_timeout.as_std(),
            max_connections: self.max_connections,
            max_header_bytes: self.max_request_header_bytes,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
        }
    }

    /// The configuration stream's settings, with `--xds-address`: the control plane needs to
    /// know which pod is asking.
    fn xds_client(&self) -> anyhow::Result<Option<client::ClientSettings>> {
        let Some(address) = &self.xds_address else {
            return Ok(None);
        };
        let (Some(pod), Some(namespace)) = (&self.pod_name, &self.pod_namespace) else {
            anyhow::bail!(
                "--xds-address needs --pod-name and --pod-namespace (POD_NAME, POD_NAMESPACE)"
            );
        };
        Ok(Some(client::ClientSettings {
            address: address.clone(),
            token_path: self.identity_token.clone(),
            trust: stream_trust::StreamTrust::new(
                match (&self.trust_bundle, &self.xds_trust_bundle_pem) {
                    (Some(path), _) => Some(stream_trust::InitialTrust::File(path.clone())),
                    (None, Some(pem)) => Some(stream_trust::InitialTrust::Pem(pem.clone())),
                    (None, None) => None,
                },
                self.state_dir.clone(),
            ),
            identity: skein_core::xds::ProxyIdentity {
                pod: pod.clone(),
                namespace: namespace.clone(),
                ip: self.pod_ip,
            },
        }))
    }
}

/// Checks an endpoint flag; kept as text (a `Uri` would make every `skein` command's arguments
/// bigger) and parsed again, infallibly, by [`ProxyArgs::trace_sinks`].
fn parse_trace_endpoint(text: &str) -> Result<String, String> {
    trace::parse_endpoint(text)
        .map(|_| text.trim().to_owned())
        .map_err(|err| err.to_string())
}

fn parse_sampling_percentage(text: &str) -> Result<f64, String> {
    let percentage: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number (a percentage, 0 to 100)"))?;
    trace::check_percentage(percentage).map_err(|err| err.to_string())
}

impl ProxyArgs {
    /// The export backends set.
    fn trace_sinks(&self) -> Vec<trace::Sink> {
        let uri =
            |text: &Option<String>| text.as_deref().and_then(|t| trace::parse_endpoint(t).ok());
        let zipkin = uri(&self.zipkin_endpoint).map(trace::Sink::Zipkin);
        let otlp = uri(&self.otlp_endpoint).map(trace::Sink::Otlp);
        zipkin.into_iter().chain(otlp).collect()
    }
}

fn parse_outbound_policy(text: &str) -> Result<config::OutboundTrafficPolicy, String> {
    match text {
        "RegistryOnly" => Ok(config::OutboundTrafficPolicy::RegistryOnly),
        "AllowAny" => Ok(config::OutboundTrafficPolicy::AllowAny),
        other => Err(format!(
            "{other:?} is not an outbound traffic policy: RegistryOnly or AllowAny"
        )),
    }
}

/// Which of the two listeners a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From outside the pod to the app.
    Inbound,
    /// From the app to anywhere else.
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every connection handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub metrics: Metrics,
    pub config: Arc<ConfigStore>,
    pub upstreams: http::upstream::Upstreams,
    /// Mutual TLS: the workload certificate and the TLS configurations that use it.
    pub mtls: Arc<mtls::Mtls>,
    pub drain: Drain,
    /// The workload certificate and trust bundle ([`identity`] installs, mTLS reads).
    pub credentials: Arc<mtls::Credentials>,
    pub connect_timeout: Duration,
    /// The proxy's own ports: a connection whose original destination is one of them (on this
    /// host) would be forwarded back into the proxy.
    pub own_ports: [u16; 3],
    /// What one client may hold of the listeners.
    pub limits: limits::Limits,
    /// The names EgressRules allow, resolved (egress goes only to their addresses).
    pub resolver: dns::Resolver,
    /// Sampling and span export; `None` without an export endpoint.
    pub tracer: Option<trace::Tracer>,
    /// The last requests this proxy answered itself or that failed ([`recent`]).
    pub recent_errors: recent::Ring,
    /// Live taps the control plane started ([`tap`]).
    pub tap: Arc<tap::TapHub>,
    /// The destinations seen to speak first ([`server_first`]).
    pub server_first: server_first::Learned,
}

impl Shared {
    pub(crate) fn new(
        metrics: Metrics,
        config: Arc<ConfigStore>,
        credentials: Arc<mtls::Credentials>,
        pod_ip: Option<std::net::IpAddr>,
        connect_timeout: Duration,
        own_ports: [u16; 3],
        limits: limits::Limits,
    ) -> Self {
        let mtls = Arc::new(mtls::Mtls::new(credentials.clone(), pod_ip));
        Self {
            metrics,
            upstreams: http::upstream::Upstreams::new(
                connect_timeout,
                limits.upstream_pool_idle(),
                mtls.clone(),
                config.clone(),
            ),
            config,
            mtls,
            credentials,
            drain: Drain::new(),
            connect_timeout,
            own_ports,
            limits,
            resolver: dns::Resolver::default(),
            tracer: None,
            recent_errors: recent::Ring::default(),
            tap: Arc::default(),
            server_first: server_first::Learned::default(),
        }
    }
}

/// The runtime the proxy runs on: a single-threaded one for one worker, else a multi-threaded
/// one with that many workers.
pub fn runtime(args: &ProxyArgs) -> std::io::Result<tokio::runtime::Runtime> {
    limit_malloc_arenas();
    trim_code_pages();
    let mut builder = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(args.workers);
        builder
    };
    // Blocking work is rare here (reading the config file): a couple of threads suffice.
    builder.max_blocking_threads(2).enable_all().build()
}

/// The kernel maps code in 64 KiB runs around each page the CPU touches, so start-up leaves
/// resident code the request path never runs (and, when the proxy runs inside the whole `skein`
/// binary rather than the lean `skein-proxy`, megabytes of other roles' code). At start the
/// proxy tells the kernel its code is read at random and drops what start-up mapped; pages come
/// back as they are executed.
fn trim_code_pages() {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            // Only the binary's code: never written, so dropping its pages loses nothing.
            // (Its read-only data may not be: relocations are written before it is sealed.)
            if !line.ends_with(exe.to_string_lossy().as_ref()) || perms != "r-xp" {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            // SAFETY: advice on the code mapping of our own binary: MADV_RANDOM only stops
            // read-around, MADV_DONTNEED on a clean private file mapping only unmaps pages that
            // the next access maps again from the file.
            unsafe {
                let address = start as *mut libc::c_void;
                libc::madvise(address, end - start, libc::MADV_RANDOM);
                libc::madvise(address, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// glibc gives each thread that allocates an arena of its own; for a sidecar whose threads are
/// mostly idle that is resident memory for nothing. Two arenas are plenty.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts the allocator's tuning; called before the runtime starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Runs the proxy until SIGTERM, SIGINT or `POST /shutdown`, and a drain.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    args.validate()?;
    // Handlers first: from now on a SIGTERM drains instead of killing the process.
    let mut signals = skein_core::signals::Shutdowns::new();

    // Bind everything before serving anything: readiness then means "all listeners accept".
    let outbound = listen::bind(args.outbound_port).with_context(|| {
        format!(
            "binding the outbound listener (port {})",
            args.outbound_port
        )
    })?;
    let inbound = listen::bind(args.inbound_port)
        .with_context(|| format!("binding the inbound listener (port {})", args.inbound_port))?;
    let admin = listen::bind(args.admin_port)
        .with_context(|| format!("binding the admin server (port {})", args.admin_port))?;
    let ipv6 = outbound.len() > 1 && inbound.len() > 1;

    let (config, config_text) = match &args.config {
        Some(path) => {
            let (text, compiled) = config::load::initial(path)?;
            (compiled, Some(text))
        }
        None => {
            // Nothing to classify traffic with until the control plane's first configuration.
            let policy = args
                .outbound_traffic_policy
                .unwrap_or(match args.xds_address {
                    Some(_) => config::OutboundTrafficPolicy::RegistryOnly,
                    None => config::OutboundTrafficPolicy::AllowAny,
                });
            let awaiting = args.xds_address.is_some();
            (Compiled::without_configuration(policy, awaiting), None)
        }
    };
    let credentials = Arc::new(mtls::Credentials::default());
    let metrics = Metrics::with_identity(credentials.clone());
    metrics.http.set_config_version(&config.source.version);
    let config = Arc::new(if config.awaiting_first {
        ConfigStore::awaiting_first(config, FIRST_CONFIGURATION_WAIT)
    } else {
        ConfigStore::new(config)
    });
    let first_wait = config
        .current()
        .awaiting_first
        .then(|| tokio::spawn(warn_without_first_configuration(config.clone())));
    let mut shared = Shared::new(
        metrics,
        config.clone(),
        credentials,
        args.pod_ip,
        args.connect_timeout.as_std(),
        [args.outbound_port, args.inbound_port, args.admin_port],
        args.limits(),
    );
    let sinks = args.trace_sinks();
    if !sinks.is_empty() {
        tracing::info!(
            zipkin = ?args.zipkin_endpoint,
            otlp = ?args.otlp_endpoint,
            sampling_percentage = args.trace_sampling_percentage,
            "tracing: exporting spans of sampled requests"
        );
        shared.tracer = Some(trace::Tracer {
            sampler: trace::Sampler::new(args.trace_sampling_percentage),
            exporter: trace::Exporter::spawn(sinks, shared.metrics.trace.clone()),
        });
    }
    let shared = Arc::new(shared);

    let mut accept_loops = Vec::new();
    for (direction, listeners) in [
        (Direction::Outbound, outbound),
        (Direction::Inbound, inbound),
    ] {
        for listener in listeners {
            let shared = shared.clone();
            accept_loops.push(tokio::spawn(listen::accept_loop(
                listener, direction, shared,
            )));
        }
    }
    let static_identity = match (&args.workload_cert, &args.workload_key, &args.trust_bundle) {
        (Some(cert), Some(key), Some(bundle)) => {
            let files = identity::CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
                bundle: bundle.clone(),
            };
            files
                .install(&shared.credentials)
                .context("loading the workload certificate")?;
            Some(tokio::spawn(files.watch(shared.credentials.clone())))
        }
        _ => None,
    };
    let xds = args.xds_client()?;
    let issuer = match (&xds, &args.identity_token) {
        (Some(settings), Some(token_path)) => Some(tokio::spawn(identity::run(
            identity::IdentitySettings {
                address: settings.address.clone(),
                token_path: token_path.clone(),
                trust: settings.trust.clone(),
            },
            shared.credentials.clone(),
            shared.metrics.identity.clone(),
        ))),
        (Some(_), None) => {
            tracing::warn!(
                "no --identity-token (SKEIN_IDENTITY_TOKEN): the control plane will refuse the \
                 configuration stream, and no workload certificate is requested"
            );
            None
        }
        _ => None,
    };
    let ready = Arc::new(AtomicBool::new(true));
    let config_watch = match (&args.config, config_text, xds) {
        (Some(path), Some(text), _) => Some(tokio::spawn(watch_config(
            path.clone(),
            text,
            shared.clone(),
        ))),
        (_, _, Some(settings)) => Some(tokio::spawn(stream_config(
            settings,
            shared.clone(),
            // A certificate from files comes with its own bundle: the user's choice stands.
            static_identity.is_none(),
        ))),
        _ => None,
    };

    let (commands, mut requests) = mpsc::channel(8);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let mut admin_server = tokio::spawn(admin::serve(
        admin,
        admin::AdminState {
            ready: ready.clone(),
            first_certificate_by: issuer
                .is_some()
                .then(|| std::time::Instant::now() + FIRST_CERTIFICATE_WAIT),
            shared: shared.clone(),
            commands,
        },
        admin_stopped,
    ));

    tracing::info!(
        outbound_port = args.outbound_port,
        inbound_port = args.inbound_port,
        admin_port = args.admin_port,
        ipv6,
        drain_window = %args.drain_window,
        drain_timeout = %args.drain_timeout,
        connect_timeout = %args.connect_timeout,
        limits = ?shared.limits,
        "skein proxy listening"
    );

    let mut accept_loops = Some(accept_loops);
    let mut admin_open = true;
    let reason = loop {
        tokio::select! {
            () = signals.recv() => break "signal",
            request = requests.recv(), if admin_open => {
                let Some(AdminRequest { command, done }) = request else {
                    // Only if the admin server is gone; signals still work.
                    admin_open = false;
                    continue;
                };
                stop_accepting(&shared, &mut accept_loops, &ready).await;
                let _ = done.send(());
                if command == AdminCommand::Shutdown {
                    break "POST /shutdown";
                }
            }
        }
    };
    // Requests still queued are answered by their handlers seeing the channel closed.
    drop(requests);
    if reason == "signal" {
        serve_out_drain_window(&shared, args.drain_window.as_std(), &mut signals).await;
    }

    stop_accepting(&shared, &mut accept_loops, &ready).await;
    let in_flight = shared.drain.active();
    tracing::info!(
        reason,
        in_flight,
        drain_timeout = %args.drain_timeout,
        "shutting down: waiting for in-flight connections"
    );
    tokio::select! {
        () = shared.drain.idle() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(args.drain_timeout.as_std()) => {
            tracing::warn!(
                open = shared.drain.active(),
                "drain timeout reached: resetting the connections still open"
            );
        }
        () = signals.recv() => tracing::warn!("another signal: resetting the connections still open"),
    }
    shared.drain.abort();
    if tokio::time::timeout(ABORT_GRACE, shared.drain.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.drain.active(),
            "connections did not close after being reset"
        );
    }

    if let Some(tracer) = &shared.tracer {
        tracer.exporter.flush(trace::SHUTDOWN_FLUSH).await;
    }
    let _ = stop_admin.send(true);
    match tokio::time::timeout(ADMIN_STOP_GRACE, &mut admin_server).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "the admin server task failed"),
        Err(_) => admin_server.abort(),
    }
    if let Some(watch) = config_watch {
        watch.abort();
    }
    if let Some(wait) = first_wait {
        wait.abort();
    }
    if let Some(issuer) = issuer {
        issuer.abort();
    }
    if let Some(watch) = static_identity {
        watch.abort();
    }
    tracing::info!("skein proxy stopped");
    Ok(())
}

/// Goes away (if the control plane has not already said so) and keeps accepting until the
/// drain window since then has passed, or a second signal cuts it short.
async fn serve_out_drain_window(
    shared: &Shared,
    window: Duration,
    signals: &mut skein_core::signals::Shutdowns,
) {
    let since = shared.drain.go_away();
    let until = since + window;
    let left = until.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return;
    }
    tracing::info!(
        left_ms = left.as_millis() as u64,
        "going away: still accepting until callers have moved to other endpoints"
    );
    tokio::select! {
        () = tokio::time::sleep(left) => {}
        () = signals.recv() => tracing::warn!("second signal: cutting the drain window short"),
    }
}

/// Says so once the wait for the control plane's first configuration is over without one: the
/// pod turns Ready, and what that means for its outbound traffic.
async fn warn_without_first_configuration(config: Arc<ConfigStore>) {
    let current = config.first().await;
    if current.awaiting_first {
        tracing::warn!(
            waited = ?FIRST_CONFIGURATION_WAIT,
            outbound_traffic_policy = ?current.source.outbound_traffic_policy,
            "no configuration from the control plane yet: ready anyway; until it comes, outbound \
             traffic follows the outbound traffic policy alone (RegistryOnly: every destination \
             is refused)"
        );
    }
}

/// Applies changes of the configuration file, counting and logging each result.
async fn watch_config(path: std::path::PathBuf, text: String, shared: Arc<Shared>) {
    let applied = shared.clone();
    config::load::watch(
        path,
        text,
        shared.config.clone(),
        move |result| match result {
            Ok(compiled) => on_config(&applied, Ok(compiled)),
            Err(err) => on_config(&applied, Err(&err.to_string())),
        },
    )
    .await;
}

/// Applies the configurations the control plane streams, counting and logging each result.
async fn stream_config(settings: client::ClientSettings, shared: Arc<Shared>, follow_bundle: bool) {
    // The tap stream goes to the same control plane, beside the configuration stream.
    let taps = tokio::spawn(tap::client::run(settings.clone(), shared.tap.clone()));
    let _stop_taps = AbortOnDrop(taps);
    let applied = shared.clone();
    let stream_trust = settings.trust.clone();
    client::run(settings, shared.config.clone(), move |result| {
        on_config(&applied, result);
        if let Ok(compiled) = result {
            let bundle = &compiled.source.trust_bundle_pem;
            stream_trust.pushed(bundle);
            if follow_bundle {
                update_trust_bundle(&applied.credentials, bundle);
            }
        }
    })
    .await;
}

/// Aborts a task when dropped (the tap stream ends with the configuration stream's task).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Trusts the bundle the control plane pushed (a CA rotation's new root, or a retired one
/// gone); a bundle that cannot be used is logged and the current one kept.
fn update_trust_bundle(credentials: &mtls::Credentials, bundle_pem: &str) {
    if bundle_pem.is_empty() {
        return;
    }
    let before = credentials
        .current()
        .map(|loaded| loaded.bundle_pem.clone());
    match credentials.update_bundle(bundle_pem) {
        Ok(()) if before.as_deref().is_some_and(|b| b != bundle_pem) => tracing::info!(
            roots = bundle_pem.matches("BEGIN CERTIFICATE").count(),
            "trust bundle updated by the control plane"
        ),
        Ok(()) => {}
        Err(err) => {
            tracing::error!(error = %err, "the pushed trust bundle is unusable: keeping the current one");
        }
    }
}

/// Counts and logs one configuration change (from the file or the control plane); one saying
/// the pod is being deleted (`draining`) starts going away.
fn on_config(shared: &Shared, result: Result<&Compiled, &str>) {
    let metrics = &shared.metrics.http;
    let outcome = match result {
        Ok(compiled) => {
            metrics.set_config_version(&compiled.source.version);
            tracing::info!(version = %compiled.source.version, "configuration applied");
            if compiled.source.draining && shared.drain.going_away_since().is_none() {
                shared.drain.go_away();
                tracing::info!(
                    "the pod is terminating: inbound clients are told to reconnect elsewhere"
                );
            }
            "applied"
        }
        Err(err) => {
            tracing::error!(error = %err, "configuration rejected: keeping the previous one");
            "rejected"
        }
    };
    metrics
        .config_reloads
        .get_or_create(&metrics::ResultLabels { result: outcome })
        .inc();
}

/// Closes the listeners (idempotent) and waits until they are closed: from then on new
/// connections are refused and `/ready` answers 503.
async fn stop_accepting(
    shared: &Shared,
    accept_loops: &mut Option<Vec<JoinHandle<()>>>,
    ready: &AtomicBool,
) {
    let Some(loops) = accept_loops.take() else {
        return;
    };
    shared.drain.stop_accepting();
    for handle in loops {
        if let Err(err) = handle.await {
            tracing::warn!(error = %err, "an accept loop failed");
        }
    }
    ready.store(false, Ordering::SeqCst);
    tracing::info!(
        in_flight = shared.drain.active(),
        "draining: listeners closed"
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyArgs,
    }

    #[test]
    fn the_configuration_comes_from_a_file_or_the_control_plane_not_both() {
        let both = Cli::try_parse_from([
            "proxy",
            "--config=/etc/skein/proxy.yaml",
            "--xds-address=cp:9090",
        ]);
        assert_eq!(
            both.expect_err("conflict").kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
        let streamed = Cli::try_parse_from([
            "proxy",
            "--xds-address=cp:9090",
            "--pod-name=web-1",
            "--pod-namespace=demo",
            "--pod-ip=10.1.0.7",
        ])
        .expect("valid");
        let settings = streamed
            .proxy
            .xds_client()
            .expect("valid")
            .expect("streamed");
        assert_eq!(settings.address, "cp:9090");
        assert_eq!(settings.identity.pod, "web-1");
        assert_eq!(settings.identity.ip, "10.1.0.7".parse().ok());

        let anonymous = Cli::try_parse_from(["proxy", "--xds-address=cp:9090"]).expect("parses");
        let err = anonymous.proxy.validate().expect_err("needs an identity");
        assert!(err.to_string().contains("--pod-name"), "{err}");
    }
}
