//! The `skein` command line: one binary, one subcommand per role.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "skein",
    version,
    about = "Skein: a service mesh for Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every Skein CustomResourceDefinition as multi-document YAML.
    Crds,
    /// Print the version of this binary.
    Version,
    /// Run the operator: installs and upgrades the mesh from the MeshConfig named `default`.
    Operator(OperatorArgs),
    /// Run the control plane: the sidecar-injection and rule-validation webhooks, and the
    /// configuration stream to every proxy (later also the CA).
    ControlPlane(ControlPlaneArgs),
    /// Show every proxy connected to the control plane: its configuration version, and the
    /// last ACK or NACK.
    ProxyStatus(ProxyStatusArgs),
    /// Multi-cluster federation helpers.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Program the pod's traffic capture (the `skein-init` container); needs NET_ADMIN.
    Init(InitArgs),
    /// Add the Skein proxy to workload YAML, like the webhook does (`-f -` reads stdin).
    Inject(InjectArgs),
    /// Run the data-plane proxy (the `skein-proxy` sidecar).
    Proxy(crate::proxy::ProxyArgs),
    /// Run the demo application: frontend -> middleware -> backend, with fault knobs.
    DemoApp(crate::demo::DemoAppArgs),
    /// Local development environment: a real Kubernetes control plane and node on this machine.
    #[command(subcommand)]
    Dev(DevCommand),
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
    #[arg(long, default_value = crate::api::names::MESH_NAMESPACE)]
    pub namespace: String,
    /// Key of the kubeconfig in the Secret.
    #[arg(long, default_value = "kubeconfig")]
    pub key: String,
    /// Override the apiserver address written into the kubeconfig (the address the primary
    /// cluster reaches this cluster at).
    #[arg(long)]
    pub server: Option<String>,
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
    /// Address proxies use to reach the control plane (written into injected pods).
    #[arg(long, default_value = "skein-control-plane.skein-system.svc:9090")]
    pub xds_address: String,
    /// Address the configuration stream (gRPC) listens on.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub xds_addr: std::net::SocketAddr,
    /// Address of the plain-HTTP debug server: `/debug/proxies`, `/debug/config?pod=NS/NAME`
    /// and the configuration stream's `/metrics`. Loopback by default: reach it with
    /// `kubectl port-forward`.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub debug_addr: std::net::SocketAddr,
    /// The cluster's DNS domain, for Service host names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
}

#[derive(Debug, clap::Args)]
pub struct ProxyStatusArgs {
    /// The control plane's debug server (`skein control-plane --debug-addr`). Default: the
    /// one `skein dev up` started for `--cluster`.
    #[arg(long)]
    pub url: Option<String>,
    /// The `skein dev up` cluster whose control plane to ask.
    #[arg(long, default_value = "skein-dev")]
    pub cluster: String,
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
    Node(crate::dev::node::NodeArgs),
    /// Run a command in a container of a pod on a dev node, like `kubectl exec` (root only).
    Exec(crate::dev::node::inspect::ExecArgs),
    /// Print a container's log from a dev node, like `kubectl logs`.
    Logs(crate::dev::node::inspect::LogsArgs),
}

#[derive(Debug, clap::Args)]
pub struct DevClusterArgs {
    /// Name of the local cluster; several can run side by side.
    #[arg(long, default_value = crate::dev::cluster::DEFAULT_CLUSTER)]
    pub name: String,
    /// Skein source checkout holding `tests/cluster/` and `config/`. Default: the working
    /// directory or the nearest one above it that is a checkout.
    #[arg(long, env = "SKEIN_SOURCE_DIR")]
    pub source_dir: Option<PathBuf>,
}
