//! `skein-proxy`: the sidecar's own binary. `skein proxy ARGS` runs it when it sits next to
//! `skein` (as in the image), so a meshed pod maps only the data plane's code, not the CLI, the
//! operator and a Kubernetes client.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Skein's data-plane proxy: the `skein-proxy` sidecar of every meshed pod.
#[derive(Debug, Parser)]
#[command(name = "skein-proxy", version)]
struct Cli {
    #[command(flatten)]
    args: skein_proxy::ProxyArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    skein_core::telemetry::init_logging("info");
    match run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole context chain, as `skein` prints its errors.
            eprintln!("skein-proxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: skein_proxy::ProxyArgs) -> anyhow::Result<()> {
    // The same provider as `skein`'s, installed before anything builds a TLS configuration.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let runtime = skein_proxy::runtime(&args).context("starting the tokio runtime")?;
    runtime.block_on(skein_proxy::run(args))
}
