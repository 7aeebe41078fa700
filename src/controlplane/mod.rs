//! `skein control-plane`: serves the sidecar-injection webhook over HTTPS. Discovery (the proxy
//! configuration stream) and the CA join it in later issues.
//!
//! - [`state`]: watches of the active MeshConfig and namespace labels.
//! - [`tls`]: the serving certificate, reloaded when its files change.
//! - [`server`]: the HTTP routes.

pub mod server;
pub mod state;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::cli::ControlPlaneArgs;
use crate::inject::webhook::WebhookMetrics;
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
    let (tls_config, reloader) = source
        .load()
        .await
        .context("loading the webhook serving certificate")?;
    let (cluster, watches) = ClusterState::start(client, args.xds_address.clone())
        .await
        .context("reading the apiserver version")?;

    let mut registry = Registry::default();
    let metrics = WebhookMetrics::register(&mut registry);
    let app = server::router(AppState {
        cluster,
        metrics,
        registry: Arc::new(registry),
    });

    tokio::spawn(watches);
    tokio::spawn(reloader.run());

    let handle = axum_server::Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone()));
    tracing::info!(addr = %args.webhook_addr, "serving the injection webhook");
    axum_server::bind_rustls(args.webhook_addr, tls_config)
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .with_context(|| format!("serving on {}", args.webhook_addr))?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_on_signal(handle: axum_server::Handle<std::net::SocketAddr>) {
    crate::signals::shutdown().await;
    tracing::info!("shutting down");
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
}
