//! The `skein` command line: one binary, one subcommand per role.
//!
//! Conventions kubectl, istioctl and linkerd users expect: commands that talk to a cluster take
//! `--kubeconfig` and `--context` ([`KubeArgs`]), commands that print data take
//! `-o table|json|yaml` ([`OutputFormat`]), and the dev cluster is named by `--cluster`.

pub mod check;
pub mod connect;
pub mod dashboard;
pub mod debug_server;
pub mod explain;
pub mod output;
pub mod stat;
pub mod tap;
pub mod top;
pub mod version;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use check::CheckArgs;
pub use connect::KubeArgs;
pub use output::{OutputArgs, OutputFormat};
pub use version::VersionArgs;

/// The roles hidden from the command list, so the list shows what people run.
const ROLES_HELP: &str = "\
Roles the mesh runs itself (hidden above; each has its own --help):
  operator       the operator's Deployment
  control-plane  the control plane's Deployment (or a process, in External mode)
  proxy, init    the containers injected into meshed pods
  demo-app       the demo application
  dev node       the node `skein dev up` runs";

#[derive(Debug, Parser)]
#[command(
    name = "skein",
    version,
    about = "Skein: a service mesh for Kubernetes",
    after_help = ROLES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every Skein CustomResourceDefinition as multi-document YAML.
    Crds,
    /// Print the version of this binary and, when a cluster is reachable, of the mesh, its
    /// control plane and its proxies.
    Version(VersionArgs),
    /// Run the operator: installs and upgrades the mesh from the MeshConfig named `default`.
    #[command(hide = true)]
    Operator(OperatorArgs),
    /// Run the control plane: the sidecar-injection and rule-validation webhooks, and the
    /// configuration stream to every proxy (later also the CA).
    #[command(hide = true)]
    ControlPlane(ControlPlaneArgs),
    /// Check the cluster before an install (`--pre`) or the installed mesh, naming the cause
    /// and the fix of every failure; exits 1 if any check fails.
    Check(CheckArgs),
    /// Show every proxy connected to the control plane: its configuration version, and the
    /// last ACK or NACK.
    ProxyStatus(ProxyStatusArgs),
    /// Per-workload success rate, RPS, latency and a PASS / FAIL verdict with reasons.
    Stat(stat::StatArgs),
    /// Who calls whom: requests, success and mTLS per source → destination workload.
    Edges(stat::EdgesArgs),
    /// The web dashboard: prints its URL, port-forwarding to the control plane when needed
    /// (`--open` also opens a browser).
    Dashboard(dashboard::DashboardArgs),
    /// What the mesh does to a pod's traffic (`pod/NAME`, `deploy/NAME`): identity, mTLS,
    /// access policies, routes, endpoints, sync state, and its proxy's recent errors explained.
    Explain(explain::ExplainArgs),
    /// Live requests and responses through a workload's proxies (`-o json` for scripts).
    Tap(tap::TapArgs),
    /// Live most-requested paths of a workload, with success rate and latency.
    Top(top::TopArgs),
    /// Multi-cluster federation helpers.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Program the pod's traffic capture (the `skein-init` container); needs NET_ADMIN.
    #[command(hide = true)]
    Init(InitArgs),
    /// Add the Skein proxy to workload YAML, like the webhook does (`-f -` reads stdin).
    Inject(InjectArgs),
    /// Run the data-plane proxy (the `skein-proxy` sidecar).
    #[command(hide = true)]
    Proxy(crate::proxy::ProxyArgs),
    /// Run the demo application: frontend -> middleware -> backend, with fault knobs.
    #[command(hide = true)]
    DemoApp(crate::demo::DemoAppArgs),
    /// Local development environment: a real Kubernetes control plane and node on this machine.
    #[command(
        subcommand,
        after_help = "`skein dev node` (hidden above) is the node agent `skein dev up` runs."
    )]
    Dev(DevCommand),
    /// Print a shell completion script, e.g. `source <(skein completion bash)`.
    Completion(CompletionArgs),
}

impl Command {
    /// Roles log at `info`. A command a person runs reports its own errors in one line, so the
    /// kube client's log of the same failure would only repeat it.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            // `dev exec` and `dev connect` also run under the node for kubectl, whose user
            // sees their stderr.
            Self::Version(_)
            | Self::Check(_)
            | Self::ProxyStatus(_)
            | Self::Stat(_)
            | Self::Edges(_)
            | Self::Dashboard(_)
            | Self::Explain(_)
            | Self::Tap(_)
            | Self::Top(_)
            | Self::Federation(_)
            | Self::Completion(_)
            | Self::Dev(DevCommand::Exec(_) | DevCommand::Logs(_) | DevCommand::Connect(_)) => {
                "warn,kube_client=off"
            }
            _ => "info",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Address of the `/metrics` and `/healthz` HTTP server.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = crate::api::names::MESH_NAMESPACE)]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "skein-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease. Default: the pod name, else hostname and pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a leader's Lease lasts without renewal (failover time).
    #[arg(long, default_value = "15s")]
    pub lease_duration: crate::api::Duration,
}

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Print a Secret holding a kubeconfig for the current context, to apply on the primary
    /// cluster and reference from `MeshConfig.spec.federation.clusters[].kubeconfigSecretRef`.
    CreateSecret(CreateSecretArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateSecretArgs {
    /// Name of the remote cluster (as listed in the MeshConfig).
    #[arg(long)]
    pub name: String,
    /// Namespace of the Secret on the primary cluster.
    #[arg(short = 'n', long, default_value = crate::api::names::MESH_NAMESPACE)]
    pub namespace: String,
    /// Key of the kubeconfig in the Secret.
    #[arg(long, default_value = "kubeconfig")]
    pub key: String,
    /// Override the apiserver address written into the kubeconfig (the address the primary
    /// cluster reaches this cluster at).
    #[arg(long)]
    pub server: Option<String>,
    /// The cluster to export: `--context` picks a context other than the current one.
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, clap::Args)]
pub struct ControlPlaneArgs {
    /// Address the HTTPS webhook server listens on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub webhook_addr: std::net::SocketAddr,
    /// PEM serving certificate (chain) of the webhook; reloaded when the file changes.
    #[arg(long, requires = "tls_key", required_unless_present = "tls_secret")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the webhook; reloaded when the file changes.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Read the serving certificate from this Secret (`NAMESPACE/NAME`, keys `tls.crt` and
    /// `tls.key`) instead of files: what a control plane outside the cluster uses (MeshConfig
    /// External mode; the operator writes `skein-system/skein-webhook-tls`). Re-read when it
    /// changes.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_secret: Option<String>,
    /// The webhook server's time for a client's TLS handshake, and then for each request's
    /// headers (and the first request of a new connection): a client that trickles them is cut.
    #[arg(long, default_value = "10s")]
    pub webhook_read_timeout: crate::api::Duration,
    /// The webhook server's time for reading a request's body and answering it (`408` after
    /// that). Keep it at or above the webhooks' `timeoutSeconds` (5s by default).
    #[arg(long, default_value = "10s")]
    pub webhook_request_timeout: crate::api::Duration,
    /// Address proxies use to reach the control plane (written into injected pods).
    #[arg(long, default_value = "skein-control-plane.skein-system.svc:9090")]
    pub xds_address: String,
    /// Address the configuration stream (gRPC) listens on.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub xds_addr: std::net::SocketAddr,
    /// Serve the configuration stream (and certificate requests) over TLS, with a certificate
    /// the control plane issues itself from the mesh CA for its Service names and the host of
    /// `--xds-address`. The injector gives each proxy the trust bundle to verify it; the
    /// operator and `skein dev up` always set it.
    #[arg(long)]
    pub xds_tls: bool,
    /// Address of the plain-HTTP debug server: `/debug/proxies`, `/debug/config?pod=NS/NAME`
    /// and the configuration stream's `/metrics`. Loopback by default: `skein proxy-status`
    /// reaches it by port-forwarding.
    #[arg(long, default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::operator::desired::DEBUG_PORT)))]
    pub debug_addr: std::net::SocketAddr,
    /// The cluster's DNS domain, for Service host names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// How often to scrape the connected proxies' metrics for `/debug/stats` (at least 5s);
    /// `0s` turns stats off.
    #[arg(long, default_value = "10s")]
    pub stats_interval: crate::api::Duration,
    /// How to reach the proxies' admin port: `direct` (pod IP) or `apiserver` (its pod proxy,
    /// for a control plane outside the pod network).
    #[arg(long, value_enum, default_value_t)]
    pub stats_scrape: crate::controlplane::stats::collect::ScrapeVia,
}

#[derive(Debug, clap::Args)]
pub struct ProxyStatusArgs {
    /// Where the control plane's debug server is (`--url`, `--cluster`, else port-forwards to
    /// the kubeconfig's cluster's control-plane pods).
    #[command(flatten)]
    pub server: debug_server::DebugServerArgs,
    /// Only the proxies of this namespace. Default: all namespaces.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub capture: crate::capture::CaptureSettings,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove Skein's rules (and nothing else) instead of adding them.
    #[arg(long, conflicts_with = "dry_run")]
    pub cleanup: bool,
}

#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// YAML file with one or more documents; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub filename: PathBuf,
    /// MeshConfig YAML whose settings to use. Default: the MeshConfig defaults.
    #[arg(long)]
    pub meshconfig: Option<PathBuf>,
    /// Control-plane address written into the proxy's environment.
    #[arg(long, default_value = "skein-control-plane.skein-system.svc:9090")]
    pub xds_address: String,
    /// The mesh's trust bundle (PEM file) for a control plane serving its stream over TLS, as
    /// an installed mesh does: `kubectl -n skein-system get secret skein-ca -o
    /// jsonpath='{.data.tls\.crt}' | base64 -d`. Without it the proxies use plaintext.
    #[arg(long)]
    pub xds_trust_bundle: Option<PathBuf>,
    /// Inject the proxy as a regular container instead of a native sidecar (for clusters older
    /// than Kubernetes 1.29).
    #[arg(long)]
    pub no_native_sidecar: bool,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start (or reuse) the local cluster, install the CRDs and apply the sample MeshConfig.
    Up(DevClusterArgs),
    /// Stop the local cluster and delete its state.
    Down(DevClusterArgs),
    /// Run a node for the local cluster: pods as processes in network namespaces (root only).
    #[command(hide = true)]
    Node(crate::dev::node::NodeArgs),
    /// Run a command in a container of a pod on a dev node, like `kubectl exec` (root only).
    Exec(crate::dev::node::inspect::ExecArgs),
    /// Print a container's log from a dev node, like `kubectl logs`.
    Logs(crate::dev::node::inspect::LogsArgs),
    /// Copy stdin/stdout to a port on a pod's localhost: one `kubectl port-forward` connection,
    /// run by the node (root only).
    #[command(hide = true)]
    Connect(crate::dev::node::inspect::ConnectArgs),
}

#[derive(Debug, clap::Args)]
pub struct DevClusterArgs {
    /// Name of the local cluster; several can run side by side.
    #[arg(long = "cluster", value_name = "NAME", default_value = crate::dev::cluster::DEFAULT_CLUSTER)]
    pub name: String,
    /// Skein source checkout holding `tests/cluster/` and `config/`. Default: the working
    /// directory or the nearest one above it that is a checkout.
    #[arg(long, env = "SKEIN_SOURCE_DIR")]
    pub source_dir: Option<PathBuf>,
}
