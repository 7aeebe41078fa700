//! `skein check`: is the cluster ready for the mesh (`--pre`), and is the installed mesh
//! healthy — like `linkerd check` and `istioctl analyze`, but every check that does not pass
//! says what it found and what to do about it.
//!
//! Each check is a pure function from what was read to a [`CheckResult`] with a stable ID
//! (unit-tested without a cluster), beside a thin function that reads it; [`result`] renders
//! the report and decides the exit code (1 when any check failed; warnings do not fail).
//! When the apiserver cannot be reached, that is the only check reported.

pub mod control_plane;
pub mod data_plane;
pub mod install;
pub mod kubernetes;
pub mod result;
pub mod webhook;

use std::time::Duration;

use anyhow::Context;
use kube::Client;

use self::result::{CheckResult, Report};
use super::connect::KubeArgs;
use super::output::{self, OutputArgs};
use crate::cli::debug_server::DebugServerArgs;

/// How long the apiserver may take to answer the first request.
const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Check that the cluster can take an install instead of checking an installed mesh.
    #[arg(long)]
    pub pre: bool,
    /// Check only this namespace's pods (default: every namespace labelled for injection), and
    /// try injection there if it is labelled.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Warn about a mesh CA certificate that expires within this many days.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    pub ca_warning_days: u32,
    /// Where the control plane's debug server is (in External mode the MeshConfig does not
    /// say: give `--url` or `--cluster`), and the cluster to check.
    #[command(flatten)]
    pub server: DebugServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs the checks, prints the report; the exit code is the report's.
pub async fn run(args: &CheckArgs) -> anyhow::Result<u8> {
    let report = Report::new(checks(args).await);
    print!(
        "{}",
        output::render(args.output.format, &report, result::table)
            .context("rendering the report")?
    );
    Ok(report.exit_code())
}

async fn checks(args: &CheckArgs) -> Vec<CheckResult> {
    let (api, client) = connect(&args.server.kube).await;
    let mut results = vec![api];
    let Some((client, version)) = client else {
        return results;
    };
    results.push(version);
    if args.pre {
        results.push(kubernetes::check_permissions(&client).await);
        results.push(kubernetes::check_previous_install(&client).await);
        return results;
    }
    results.push(install::check_crds(&client).await);
    results.push(install::check_operator(&client).await);
    let (meshconfig, mc) = install::check_meshconfig(&client).await;
    results.push(meshconfig);
    let warn_within = Duration::from_secs(u64::from(args.ca_warning_days) * 24 * 3600);
    results.push(install::check_ca(&client, warn_within).await);

    let (config, target) = webhook::check_config(&client).await;
    results.push(config);
    results.push(match &target {
        Some((target, bundle)) => webhook::check_reachable(&client, target, bundle).await,
        None => CheckResult::warning(
            webhook::REACHABLE,
            "not checked: no webhook is registered",
            "see the webhook-config check",
        ),
    });
    results.push(webhook::check_injection(&client, mc.as_ref(), args.namespace.as_deref()).await);

    let (ready, proxies) =
        control_plane::check_ready(&client, mc.as_ref(), args.server.target()).await;
    results.push(ready);
    results.push(control_plane::check_stream(&client, mc.as_ref()).await);
    results.push(control_plane::check_tap_api(&client).await);

    results.push(data_plane::check_injected(&client, mc.as_ref(), args.namespace.as_deref()).await);
    let proxies = proxies.map(|answer| {
        answer.map(|mut proxies| {
            if let Some(namespace) = &args.namespace {
                proxies.retain(|p| &p.namespace == namespace);
            }
            proxies
        })
    });
    results.push(data_plane::synced(proxies.as_ref()));
    results.push(data_plane::certificates(proxies.as_ref()));
    results
}

/// The `kubernetes-api` check, and with it the client and the `kubernetes-version` check.
async fn connect(kube: &KubeArgs) -> (CheckResult, Option<(Client, CheckResult)>) {
    let fail = |message: String| {
        (
            CheckResult::fail(
                kubernetes::API,
                message,
                "check --kubeconfig/--context (or $KUBECONFIG) and that the cluster is up: kubectl version",
            ),
            None,
        )
    };
    let config = match kube.config().await {
        Ok(config) => config,
        Err(err) => return fail(err.to_string()),
    };
    let server = config.cluster_url.to_string();
    let client = match Client::try_from(config) {
        Ok(client) => client,
        Err(err) => return fail(format!("building a client: {err}")),
    };
    let info = match tokio::time::timeout(API_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(info)) => info,
        Ok(Err(err)) => {
            return fail(format!(
                "{server}: asking its version: {}",
                crate::operator::federation::describe(&err)
            ));
        }
        Err(_) => return fail(format!("{server} did not answer within {API_TIMEOUT:?}")),
    };
    let version = kubernetes::version(&info.major, &info.minor, &info.git_version);
    (
        CheckResult::ok(kubernetes::API, format!("{server} answered")),
        Some((client, version)),
    )
}
