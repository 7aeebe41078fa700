use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};

use skein::api::crds;
use skein::cli::{Cli, Command, DevCommand, FederationCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    skein::telemetry::init_logging(cli.command.default_log_filter());
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line with the whole context chain: what an operator reads in `kubectl logs`.
            eprintln!("skein: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `skein proxy ARGS` becomes `skein-proxy ARGS` when that binary sits next to this one (as in
/// the image and in cargo's target directory): the sidecar then maps only the data plane's code,
/// not every role's and a Kubernetes client (megabytes of resident memory per pod). Returns only
/// when there is no such binary or it cannot be executed; the proxy then runs in this process.
fn exec_lean_proxy() {
    use std::os::unix::process::CommandExt;

    // `skein proxy` has no options before its name, so everything after it is the proxy's.
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_none_or(|command| command != "proxy") {
        return;
    }
    let Some(lean) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("skein-proxy")))
    else {
        return;
    };
    // Tried rather than looked up first: one call, and its error tells an absent binary
    // (NotFound) from one this user may not run (e.g. under a home only root can enter).
    let err = std::process::Command::new(&lean).args(argv).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        tracing::info!(
            "no skein-proxy binary next to skein: running the proxy in this process (it works \
             the same, with more resident memory)"
        );
    } else {
        tracing::warn!(
            binary = %lean.display(),
            "could not run the lean proxy binary ({err}); running the proxy in this process"
        );
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // kube's TLS stack uses rustls with ring; installing the provider explicitly keeps rustls
    // from panicking should another dependency ever compile in a second provider.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;

    match cli.command {
        Command::Crds => {
            let yaml = crds::render_yaml().context("rendering the CRDs")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRDs to stdout")?;
        }
        Command::Version(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::cli::version::run(&args))?;
        }
        Command::Completion(args) => {
            let mut command = Cli::command();
            clap_complete::generate(args.shell, &mut command, "skein", &mut std::io::stdout());
        }
        Command::Init(args) => skein::capture::run(&args)?,
        Command::Inject(args) => skein::inject::manual::run(&args)?,
        Command::Operator(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::operator::run(args))?;
        }
        Command::Federation(FederationCommand::CreateSecret(args)) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::operator::federation::create_secret(&args))?;
        }
        Command::ControlPlane(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::controlplane::run(args))?;
        }
        Command::Check(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            return Ok(ExitCode::from(
                runtime.block_on(skein::cli::check::run(&args))?,
            ));
        }
        Command::ProxyStatus(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::controlplane::proxy_status::run(&args))?;
        }
        Command::Stat(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::cli::stat::stat(&args))?;
        }
        Command::Explain(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::cli::explain::explain(&args))?;
        }
        Command::Edges(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::cli::stat::edges(&args))?;
        }
        Command::Dashboard(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::cli::dashboard::run(&args))?;
        }
        Command::Tap(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::cli::tap::tap(&args))?;
        }
        Command::Top(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::cli::top::top(&args))?;
        }
        Command::Proxy(args) => {
            exec_lean_proxy();
            let runtime = skein::proxy::runtime(&args).context("starting the tokio runtime")?;
            runtime.block_on(skein::proxy::run(args))?;
        }
        Command::DemoApp(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(skein::demo::run(args))?;
        }
        Command::Dev(dev) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            match dev {
                DevCommand::Up(args) => runtime.block_on(skein::dev::up(&args))?,
                DevCommand::Down(args) => skein::dev::down(&args)?,
                DevCommand::Node(args) => runtime.block_on(skein::dev::node::run(args))?,
                DevCommand::Exec(args) => {
                    // The command's own exit code, as `kubectl exec` passes it on.
                    let code = runtime.block_on(skein::dev::node::inspect::exec(&args))?;
                    return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
                }
                DevCommand::Logs(args) => {
                    runtime.block_on(skein::dev::node::inspect::logs(&args))?
                }
                DevCommand::Connect(args) => {
                    runtime.block_on(skein::dev::node::inspect::connect(&args))?
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
