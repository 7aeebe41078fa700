//! `skein control-plane`: the sidecar-injection and rule-validation webhooks (HTTPS), and the
//! configuration stream every proxy subscribes to (gRPC). The CA joins it with the identity
//! work.
//!
//! Webhooks:
//! - [`state`]: watches of the active MeshConfig and namespace labels (for injection).
//! - [`tls`]: the serving certificate, reloaded when its files change.
//! - [`server`]: the HTTPS routes; [`validate`]: the rule-validating webhook (pure);
//!   [`registration`]: how that webhook is registered.
//!
//! Discovery, one way: apiserver watches → [`index`] (reflectors, debounced rebuilds) →
//! [`translate`] (pure: cluster state → each proxy's configuration) → [`push`] (the
//! Delta-ADS-shaped gRPC stream, ACK/NACK) → proxies; [`status`] writes each rule's verdict
//! back; [`debug`] and [`proxy_status`] show who got what; [`stats`] scrapes the connected
//! proxies' metrics into short windows for `skein stat` and `skein edges`; [`dashboard`] is
//! the web page the debug server serves over all of that.
//!
//! Identity: [`identity`] signs workload certificates with the mesh CA (`Identity/Certify`,
//! on the stream's port) and authenticates the stream's proxies by their service-account
//! tokens.

pub mod dashboard;
pub mod debug;
pub mod identity;
pub mod index;
pub mod proxy_status;
pub mod push;
pub mod registration;
pub mod server;
pub mod state;
pub mod stats;
pub mod status;
pub mod tap;
pub mod tls;
pub mod translate;
pub mod validate;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::cli::ControlPlaneArgs;
use crate::inject::webhook::WebhookMetrics;
use index::Index;
use push::{ConfigSource, PushServer};
use server::AppState;
use state::ClusterState;
use tls::CertSource;

/// How long in-flight requests get to finish on SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes apiserver (KUBECONFIG or in-cluster config)")?;
    let source = match (&args.tls_secret, &args.tls_cert, &args.tls_key) {
        (Some(secret), _, _) => {
            let (namespace, name) = secret
                .split_once('/')
                .with_context(|| format!("--tls-secret {secret:?} is not NAMESPACE/NAME"))?;
            CertSource::Secret {
                client: client.clone(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }
        }
        (None, Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => anyhow::bail!("give either --tls-cert and --tls-key, or --tls-secret"),
    };
    // The tap API's callers (the apiserver's front proxy) are known by their client certificate.
    let front_proxy = tap::front_proxy::FrontProxyTrust::new();
    tokio::spawn(front_proxy.clone().follow(client.clone()));
    let (tls_config, reloader) = source
        .load(front_proxy.client_verifier())
        .await
        .context("loading the webhook serving certificate")?;
    let (cluster, watches) = ClusterState::start(client.clone(), args.xds_address.clone())
        .await
        .context("reading the apiserver version")?;

    let timeouts = server::Timeouts {
        read: args.webhook_read_timeout.as_std(),
        request: args.webhook_request_timeout.as_std(),
    };
    let mut registry = Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let index = Arc::new(OnceLock::new());
    let cluster_for_identity = cluster.clone();
    // The mesh CA: the identity service signs with it, readiness reports it unusable.
    let ca = Arc::new(identity::CaStore::default());
    tokio::spawn(ca.clone().run(client.clone()));
    let served = tap::api::Served::default();
    let app = server::router(AppState {
        cluster,
        metrics,
        registry: Arc::new(registry),
        index: index.clone(),
        ca: ca.clone(),
        xds_tls: args.xds_tls,
        limits: Arc::new(server::Limits::new(timeouts)),
    })
    // Outside the webhooks' request time limit: a tap streams for as long as its client wants.
    .merge(tap::api::router(
        served.clone(),
        front_proxy,
        client.clone(),
    ));

    tokio::spawn(watches);
    tokio::spawn(reloader.run());

    let handle = axum_server::Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone()));
    tracing::info!(addr = %args.webhook_addr, "serving the injection and validation webhooks and the tap API");
    let webhooks = async {
        webhook_server(args.webhook_addr, tls_config, timeouts)
            .handle(handle)
            .serve(app.into_make_service())
            .await
            .with_context(|| format!("serving on {}", args.webhook_addr))
    };
    // The webhooks serve at once; discovery starts serving once its caches are synced. Either
    // failing (a port taken) stops the process.
    tokio::try_join!(
        webhooks,
        discovery(client, &args, index, cluster_for_identity, ca, served)
    )?;
    tracing::info!("stopped");
    Ok(())
}

/// Watches the cluster, streams each proxy its configuration, writes rule statuses, and serves
/// the debug endpoints, until SIGTERM/SIGINT.
async fn discovery(
    client: kube::Client,
    args: &ControlPlaneArgs,
    slot: Arc<OnceLock<Index>>,
    cluster: ClusterState,
    ca: Arc<identity::CaStore>,
    served: tap::api::Served,
) -> anyhow::Result<()> {
    // Bind before the (possibly slow) first sync, so a taken port fails fast.
    let debug_listener = tokio::net::TcpListener::bind(args.debug_addr)
        .await
        .with_context(|| format!("binding the debug server to {}", args.debug_addr))?;
    let index = Index::start(client.clone(), args.cluster_domain.clone(), ca.bundle()).await;
    let _ = slot.set(index.clone());
    let pods = index.clone();
    ca.follow_pods(Arc::new(move |namespace, pod| pods.has_pod(namespace, pod)));
    let source: Arc<dyn ConfigSource> = Arc::new(index.clone());
    let mut registry = Registry::default();
    let xds_tls = if args.xds_tls {
        let names = identity::serving::serving_names(&args.xds_address, &args.cluster_domain);
        let certs = Arc::new(identity::serving::ServingCerts::new(ca.clone(), names));
        Some(Arc::new(
            certs
                .server_config()
                .context("the configuration stream's TLS settings")?,
        ))
    } else {
        None
    };
    let authn: Arc<dyn identity::Authenticate> =
        Arc::new(identity::KubeAuthenticator::new(client.clone()));
    let mesh = cluster.clone();
    let taps = tap::TapHub::default();
    let tap_cluster = cluster.clone();
    let tracing_settings = cluster.clone();
    let push = PushServer::new(source.clone(), authn.clone(), &mut registry)
        .with_identity(identity::IdentityService {
            ca,
            authn,
            mtls: Arc::new(move || cluster.mtls()),
            issued: Arc::default(),
        })
        .with_tap(taps.clone());
    let stats = stats::StatsStore::default();
    let interval = args.stats_interval.as_std();
    if interval.is_zero() {
        tracing::info!("stats collection is off (--stats-interval 0s): /debug/stats stays empty");
    } else {
        tracing::info!(?interval, via = ?args.stats_scrape, "collecting the proxies' metrics for /debug/stats");
        tokio::spawn(stats::collect::run(
            stats.clone(),
            push.clone(),
            args.stats_scrape,
            client.clone(),
            interval.max(stats::collect::MIN_INTERVAL),
            move || {
                u16::try_from(mesh.inject_config().mesh.proxy.ports.admin)
                    .unwrap_or(crate::api::names::DEFAULT_ADMIN_PORT as u16)
            },
        ));
    }
    let tapper = tap::http::Tapper {
        hub: taps,
        push: push.clone(),
        client: client.clone(),
        cluster: tap_cluster,
    };
    let _ = served.tapper.set(tapper.clone());
    let tap_app = tap::http::router(tapper);
    tokio::spawn(status::run(client, index.clone()));

    let registry = Arc::new(registry);
    let stats_routes = if interval.is_zero() {
        debug::stats_off_router()
    } else {
        debug::stats_router(stats)
    };
    let debug_views = debug::router(push.clone(), source)
        .merge(stats_routes)
        .merge(debug::rules_router(index))
        .merge(tap_app);
    let dashboard_app = dashboard::router(
        debug_views.clone(),
        Arc::new(move || tracing_settings.tracing()),
    );
    let _ = served.dashboard.set(dashboard_app.clone());
    let debug_app = debug_views.merge(dashboard_app).route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { crate::telemetry::metrics_response(&registry) }
        }),
    );
    tracing::info!(addr = %args.debug_addr, "serving /debug/proxies, /debug/config, /debug/stats, /debug/rules, /debug/tap, /dashboard and /metrics");
    let debug = async {
        axum::serve(debug_listener, debug_app)
            .with_graceful_shutdown(crate::signals::shutdown())
            .await
            .with_context(|| format!("serving on {}", args.debug_addr))
    };
    tracing::info!(addr = %args.xds_addr, tls = args.xds_tls, "serving the configuration stream");
    let stream = async {
        match xds_tls {
            Some(tls) => {
                let listener = tokio::net::TcpListener::bind(args.xds_addr)
                    .await
                    .with_context(|| {
                        format!("binding the configuration stream to {}", args.xds_addr)
                    })?;
                push.serve_tls_with_listener(listener, tls, crate::signals::shutdown())
                    .await
            }
            None => push.serve(args.xds_addr, crate::signals::shutdown()).await,
        }
        .with_context(|| format!("serving the configuration stream on {}", args.xds_addr))
    };
    tokio::try_join!(debug, stream)?;
    Ok(())
}

/// The webhook server, with the limits that keep slow or greedy clients from starving the
/// apiserver's reviews (see [`server`]'s constants): each stage of a connection is timed, and
/// HTTP/2's per-connection limits are explicit.
fn webhook_server(
    addr: std::net::SocketAddr,
    tls: axum_server::tls_rustls::RustlsConfig,
    timeouts: server::Timeouts,
) -> axum_server::Server<std::net::SocketAddr, axum_server::tls_rustls::RustlsAcceptor> {
    let acceptor =
        axum_server::tls_rustls::RustlsAcceptor::new(tls).handshake_timeout(timeouts.read);
    let mut webhooks = axum_server::bind(addr)
        .acceptor(acceptor)
        // Also bounds hyper's protocol detection, which has no timer of its own.
        .first_request_timeout(timeouts.read);
    let http = webhooks.http_builder();
    http.http1()
        .header_read_timeout(timeouts.read)
        .max_headers(100);
    http.http2()
        .max_concurrent_streams(server::MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(server::MAX_HEADER_BYTES)
        // Reset floods (CVE-2023-44487 and the local-error variant): close the connection.
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(WEBHOOK_KEEPALIVE))
        .keep_alive_timeout(timeouts.read);
    webhooks
}

/// HTTP/2 pings on the webhook's connections, so dead peers are noticed.
const WEBHOOK_KEEPALIVE: Duration = Duration::from_secs(30);

async fn shutdown_on_signal(handle: axum_server::Handle<std::net::SocketAddr>) {
    crate::signals::shutdown().await;
    tracing::info!("shutting down");
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
}
