//! `skein dev`: a local playground on one machine, no containers needed.

pub mod cluster;

use std::path::Path;

use anyhow::Context;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::api::{MeshConfig, crds, names};
use crate::cli::DevClusterArgs;

/// The sample MeshConfig, relative to the source checkout.
const SAMPLE_MESHCONFIG: &str = "config/samples/meshconfig.yaml";

/// `skein dev up`: cluster up, CRDs installed, sample MeshConfig applied, next steps printed.
pub async fn up(args: &DevClusterArgs) -> anyhow::Result<()> {
    let kubeconfig = cluster::ensure_up(&args.source_dir, &args.name)?;
    let client = cluster::client(&kubeconfig).await?;
    crds::install(&client)
        .await
        .context("installing the Skein CRDs")?;
    let mesh = apply_sample_meshconfig(&client, &args.source_dir.join(SAMPLE_MESHCONFIG)).await?;
    let bin_dir = cluster::bin_dir(&args.source_dir)?;
    println!(
        "\nSkein's local cluster `{name}` is up; MeshConfig `{mesh}` is applied.\n\n\
         Next:\n  \
         export KUBECONFIG={kubeconfig}\n  \
         export PATH={bin_dir}:$PATH   # a kubectl of the cluster's version\n  \
         kubectl get meshconfig        # the mesh settings, defaults filled in\n  \
         kubectl explain meshconfig.spec --recursive\n\n\
         Stop the cluster and delete its state with `cargo run -- dev down --name {name}`.\n",
        name = args.name,
        kubeconfig = kubeconfig.display(),
        bin_dir = bin_dir.display(),
    );
    Ok(())
}

/// `skein dev down`.
pub fn down(args: &DevClusterArgs) -> anyhow::Result<()> {
    cluster::down(&args.source_dir, &args.name)?;
    Ok(())
}

async fn apply_sample_meshconfig(client: &Client, path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mesh: MeshConfig = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("parsing {} as a MeshConfig", path.display()))?;
    let name = mesh.name_any();
    Api::<MeshConfig>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(names::FIELD_MANAGER),
            &Patch::Apply(&mesh),
        )
        .await
        .with_context(|| format!("applying {}", path.display()))?;
    Ok(name)
}
