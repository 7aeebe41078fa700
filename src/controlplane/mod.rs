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
use tls::CertFiles;

/// How long in-flight requests get to finish on SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let files = CertFiles {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
    };
    let (tls_config, reloader) = files
        .load()
        .context("loading the webhook serving certificate")?;

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes apiserver (KUBECONFIG or in-cluster config)")?;
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
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
}
