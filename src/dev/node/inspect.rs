//! `skein dev exec` and `skein dev logs`: what `kubectl exec` and `kubectl logs` do through a
//! kubelet, done directly with the node's state directory. Also the hidden `skein dev connect`,
//! one port-forwarded connection into a pod, which the node's kubelet API runs per stream (as
//! `exec` for `kubectl exec`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;

use super::netns;
use super::process;
use crate::dev::cluster;

/// How long `connect` waits for the pod's side to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The local cluster.
    #[arg(long, default_value = cluster::DEFAULT_CLUSTER)]
    pub cluster: String,
    /// The pod, as NAMESPACE/NAME (NAME alone means the `default` namespace).
    pub pod: String,
    /// The port, on the pod's localhost.
    pub port: u16,
}

/// A pod's sandbox on a dev node.
struct LocatedPod {
    pod: Pod,
    dir: PathBuf,
    label: String,
}

/// A container located on a dev node.
struct Located {
    dir: PathBuf,
    container: String,
    label: String,
}

async fn locate_pod(cluster: &str, pod: &str) -> anyhow::Result<LocatedPod> {
    let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod));
    let kubeconfig = cluster::state_dir(cluster).join("kubeconfig");
    let client = cluster::client(&kubeconfig).await?;
    let pod = Api::<Pod>::namespaced(client, namespace)
        .get(name)
        .await
        .with_context(|| format!("getting pod {namespace}/{name}"))?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .with_context(|| format!("pod {namespace}/{name} is not scheduled to a node yet"))?;
    let dir = sandbox_dir(cluster, &node, &pod);
    if !dir.exists() {
        bail!(
            "pod {namespace}/{name} has no sandbox on dev node {node:?} (is `skein dev node` running it?)"
        );
    }
    Ok(LocatedPod {
        pod,
        dir,
        label: format!("{namespace}/{name}"),
    })
}

async fn locate(target: &PodTarget) -> anyhow::Result<Located> {
    let LocatedPod { pod, dir, label } = locate_pod(&target.cluster, &target.pod).await?;
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
        bail!("container {container:?} is not valid for pod {label}");
    }
    Ok(Located {
        dir,
        container,
        label,
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

/// The process of a container of `pod`, if it runs on a dev node of `cluster`.
pub fn running_pid(cluster: &str, pod: &Pod, container: &str) -> Option<u32> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    container_pid(&sandbox_dir(cluster, node, pod), container)
}

fn container_pid(sandbox: &Path, container: &str) -> Option<u32> {
    process::recorded(&sandbox.join("pids").join(container))
}

/// The last `lines` lines a container of `pod` wrote, if it ran on a dev node of `cluster`.
pub fn log_tail(cluster: &str, pod: &Pod, container: &str, lines: usize) -> Option<String> {
    crate::dev::log_tail(&log_path(cluster, pod, container)?, lines)
}

/// Runs a command inside a running container; returns its exit code.
pub async fn exec(args: &ExecArgs) -> anyhow::Result<i32> {
    let located = locate(&args.target).await?;
    let Some(pid) = container_pid(&located.dir, &located.container) else {
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

/// Copies stdin to localhost:PORT inside the pod's network namespace, and what comes back to
/// stdout, until the pod's side closes: one port-forwarded connection. Localhost, as the
/// kubelet dials: the pod IP would be captured by the mesh's inbound rules.
pub async fn connect(args: &ConnectArgs) -> anyhow::Result<()> {
    let located = locate_pod(&args.cluster, &args.pod).await?;
    // Through a container's process rather than the sandbox's named namespace: the node's
    // streaming server runs this in a mount namespace of its own, which does not see the
    // named namespaces made after it started.
    let pid = std::fs::read_dir(located.dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|entry| process::recorded(&entry.path()))
        .with_context(|| format!("pod {} has no running container", located.label))?;
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("opening the network namespace of pod {}", located.label))?;
    let port = args.port;
    let label = located.label.clone();
    let stream = tokio::task::spawn_blocking(move || {
        netns::run_in(netns, &label, move || dial_localhost(port))
    })
    .await??
    .with_context(|| format!("connecting to localhost:{port} in pod {}", located.label))?;
    // Plain threads: a blocked read of stdin must not keep the process from ending.
    let upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut &upstream);
        // The client is done sending; the pod's side may still answer.
        let _ = upstream.shutdown(Shutdown::Write);
    });
    tokio::task::spawn_blocking(move || copy_flushing(&mut &stream, &mut std::io::stdout().lock()))
        .await?
        .context("copying from the pod to stdout")
}

/// The IPv4 loopback, else the IPv6 one: both are `localhost`.
fn dial_localhost(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|err| {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            CONNECT_TIMEOUT,
        )
        .map_err(|_| err)
    })
}

/// `io::copy` that flushes every chunk: stdout holds back output until a newline otherwise.
fn copy_flushing(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
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
