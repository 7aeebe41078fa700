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
    /// Local development environment: a real Kubernetes control plane on loopback.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start (or reuse) the local cluster, install the CRDs and apply the sample MeshConfig.
    Up(DevClusterArgs),
    /// Stop the local cluster and delete its state.
    Down(DevClusterArgs),
}

#[derive(Debug, clap::Args)]
pub struct DevClusterArgs {
    /// Name of the local cluster; several can run side by side.
    #[arg(long, default_value = crate::dev::cluster::DEFAULT_CLUSTER)]
    pub name: String,
    /// Skein source checkout holding `tests/cluster/` and `config/samples/`.
    #[arg(long, env = "SKEIN_SOURCE_DIR", default_value = env!("CARGO_MANIFEST_DIR"))]
    pub source_dir: PathBuf,
}
