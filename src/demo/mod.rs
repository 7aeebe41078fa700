//! `skein demo-app`: a small HTTP service for tests, benchmarks and the `skein dev up` demo.
//! Three copies (frontend → middleware → backend) call each other through the mesh; each answers
//! with the chain of roles, versions and pods that served the request, and can inject latency,
//! failures and dropped connections, from flags or per request from `x-demo-<role>-*` headers.
//!
//! - [`knobs`]: fault knob parsing and the per-request decision (pure).
//! - [`report`]: the JSON bodies.
//! - [`downstream`]: calling the next tier.
//! - [`handler`]: the routes.
//! - [`server`]: HTTP/1.1 + h2c serving and graceful drain.

pub mod downstream;
pub mod handler;
pub mod knobs;
pub mod report;
pub mod server;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use anyhow::Context;
use http::StatusCode;

use downstream::Downstream;
use handler::App;
use knobs::Knobs;
use report::Tier;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoAppArgs {
    /// Role reported in the chain and used in override headers (`x-demo-<role>-*`).
    #[arg(long, env = "DEMO_ROLE", default_value = "backend")]
    pub role: String,
    /// Version reported in the chain and the `x-demo-version` header.
    #[arg(long = "version", env = "DEMO_VERSION", default_value = "v1")]
    pub app_version: String,
    /// Address to serve HTTP/1.1 and h2c on.
    #[arg(long, env = "DEMO_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Base URL of the next tier (`http://middleware:8080`); absent for the last tier.
    #[arg(long, env = "DEMO_NEXT")]
    pub next: Option<String>,
    /// Time limit for the whole call to the next tier.
    #[arg(long, env = "DEMO_NEXT_TIMEOUT", default_value = "5s")]
    pub next_timeout: crate::api::Duration,
    /// Percentage of requests (0–100) answered with --fail-status.
    #[arg(long, env = "DEMO_FAIL_PERCENT", default_value = "0", value_parser = knobs::parse_percent)]
    pub fail_percent: f64,
    /// Status of injected failures.
    #[arg(long, env = "DEMO_FAIL_STATUS", default_value = "503", value_parser = knobs::parse_status)]
    pub fail_status: StatusCode,
    /// Delay added before answering.
    #[arg(long, env = "DEMO_LATENCY", default_value = "0s")]
    pub latency: crate::api::Duration,
    /// Percentage of requests (0–100) whose connection is closed without a response.
    #[arg(long, env = "DEMO_DROP_PERCENT", default_value = "0", value_parser = knobs::parse_percent)]
    pub drop_percent: f64,
    /// Pod name reported in the chain. Default: the hostname.
    #[arg(long, env = "POD_NAME")]
    pub pod: Option<String>,
}

impl DemoAppArgs {
    /// The application these flags describe (checks `--next` and the header values).
    pub fn app(&self) -> anyhow::Result<App> {
        let knobs = Knobs {
            fail_percent: self.fail_percent,
            fail_status: self.fail_status,
            latency: self.latency.as_std(),
            drop_percent: self.drop_percent,
        };
        let downstream = self
            .next
            .as_deref()
            .map(str::trim)
            // An empty DEMO_NEXT (a template left blank) means "last tier".
            .filter(|next| !next.is_empty())
            .map(|next| Downstream::new(next, self.next_timeout.as_std()))
            .transpose()?;
        let pod = self
            .pod
            .clone()
            .filter(|pod| !pod.is_empty())
            .unwrap_or_else(hostname);
        let tier = Tier {
            role: self.role.clone(),
            version: self.app_version.clone(),
            pod,
        };
        Ok(App::new(tier, knobs, downstream)?)
    }
}

/// Serves until SIGTERM/SIGINT, then drains for at most [`server::DRAIN_TIMEOUT`].
pub async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    let app = args.app()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        role = %app.tier.role,
        version = %app.tier.version,
        pod = %app.tier.pod,
        listen = %args.listen,
        next = args.next.as_deref().unwrap_or("-"),
        "serving the demo app"
    );
    server::serve(listener, app, crate::signals::shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

/// The kernel's hostname (what a pod's hostname is: its name), else `unknown`.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
