//! `skein dev exec` and `skein dev logs`: what `kubectl exec` and `kubectl logs` do through a
//! kubelet, done directly with the node's state directory (the dev node serves no kubelet API).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;

use super::process;
use crate::dev::cluster;

#[derive(Debug, Clone, clap::Args)]
pub struct PodTarget {
    /// The local cluster.
    #[arg(long, default_value = cluster::DEFAULT_CLUSTER)]
    pub cluster: String,
    /// The pod, as NAMESPACE/NAME (NAME alone means the `default` namespace).
    pub pod: String,
    /// Container name. Default: the pod's `kubectl.kubernetes.io/default-container`, else its
    /// first container.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub target: PodTarget,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: PodTarget,
    /// Keep printing new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// A container located on a dev node.
struct Located {
    dir: PathBuf,
    container: String,
    label: String,
}

async fn locate(target: &PodTarget) -> anyhow::Result<Located> {
    let (namespace, name) = target
        .pod
        .split_once('/')
        .unwrap_or(("default", target.pod.as_str()));
    let kubeconfig = cluster::state_dir(&target.cluster).join("kubeconfig");
    let client = cluster::client(&kubeconfig).await?;
    let pod = Api::<Pod>::namespaced(client, namespace)
        .get(name)
        .await
        .with_context(|| format!("getting pod {namespace}/{name}"))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let container = match &target.container {
        Some(c) => c.clone(),
        None => pod
            .annotations()
            .get("kubectl.kubernetes.io/default-container")
            .cloned()
            .or_else(|| spec.containers.first().map(|c| c.name.clone()))
            .context("the pod has no containers")?,
    };
    let known = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == container);
    if !known {
        bail!("container {container:?} is not valid for pod {namespace}/{name}");
    }
    let node = spec
        .node_name
        .with_context(|| format!("pod {namespace}/{name} is not scheduled to a node yet"))?;
    let dir = sandbox_dir(&target.cluster, &node, &pod);
    if !dir.exists() {
        bail!(
            "pod {namespace}/{name} has no sandbox on dev node {node:?} (is `skein dev node` running it?)"
        );
    }
    Ok(Located {
        dir,
        container,
        label: format!("{namespace}/{name}"),
    })
}

/// The directory a dev node keeps a pod's sandbox in (see `sandbox.rs`).
fn sandbox_dir(cluster: &str, node: &str, pod: &Pod) -> PathBuf {
    super::state_dir(cluster, node)
        .join("pods")
        .join(pod.uid().unwrap_or_default())
}

fn log_file(sandbox: &Path, container: &str) -> PathBuf {
    sandbox.join("logs").join(format!("{container}.log"))
}

/// The log of a container of `pod` (all its runs), if the pod is bound to a dev node of
/// `cluster`.
pub fn log_path(cluster: &str, pod: &Pod, container: &str) -> Option<PathBuf> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    Some(log_file(&sandbox_dir(cluster, node, pod), container))
}

/// The last `lines` lines a container of `pod` wrote, if it ran on a dev node of `cluster`.
pub fn log_tail(cluster: &str, pod: &Pod, container: &str, lines: usize) -> Option<String> {
    crate::dev::log_tail(&log_path(cluster, pod, container)?, lines)
}

/// Runs a command inside a running container; returns its exit code.
pub async fn exec(args: &ExecArgs) -> anyhow::Result<i32> {
    let located = locate(&args.target).await?;
    let Some(pid) = process::recorded(&located.dir.join("pids").join(&located.container)) else {
        bail!(
            "container {:?} of pod {} is not running",
            located.container,
            located.label
        );
    };
    let entered = process::enter(pid)
        .with_context(|| format!("entering container {:?} (pid {pid})", located.container))?;
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut command = Command::new(program);
    command.args(rest);
    entered.configure(&mut command);
    let status = command
        .status()
        .with_context(|| format!("running {program:?} in {}", located.label))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// Prints a container's log (all runs, oldest first).
pub async fn logs(args: &LogsArgs) -> anyhow::Result<()> {
    let located = locate(&args.target).await?;
    let path = log_file(&located.dir, &located.container);
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "container {:?} of pod {} has not started yet (no {})",
            located.container,
            located.label,
            path.display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let position = file.stream_position()?;
        if std::fs::metadata(&path)
            .map(|m| m.len() < position)
            .unwrap_or(true)
        {
            // Pod gone or log replaced.
            return Ok(());
        }
        file.seek(SeekFrom::Start(position))?;
    }
}
