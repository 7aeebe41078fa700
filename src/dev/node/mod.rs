//! `skein dev node`: a local node for the local cluster. It registers a Node and does the
//! kubelet's job for the pods bound to it, running their containers as processes in network
//! namespaces (no container runtime), with the real kube-proxy and CoreDNS beside them.
//!
//! Layout: `network`/`netns` (the pod network), `sandbox` (a pod's namespace, IP and files),
//! `pod` (one pod's lifecycle), `process` (a container as a process), `env`/`command`/`volumes`
//! (pure translation of the pod spec), `probe`, `hooks` (preStop), `status` (pure kubelet
//! status), `registration` (Node and Lease), `addons` (kube-proxy, CoreDNS), `relay` (reaching
//! the apiserver), `egress` (the apiserver reaching pods, Services and the node), `kubelet_api`
//! (what the apiserver calls there: logs, exec, attach, port-forward), `inspect` (`skein dev
//! exec`, `logs` and `connect`).

pub mod addons;
pub mod command;
pub mod context;
pub mod egress;
pub mod env;
pub mod hooks;
pub mod inspect;
pub mod kubelet_api;
pub mod netns;
pub mod network;
pub mod pod;
pub mod probe;
pub mod process;
pub mod registration;
pub mod relay;
pub mod sandbox;
pub mod status;
pub mod volumes;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::{mpsc, watch};

use self::context::{Allocatable, ImageCache, NodeContext};
use self::netns::Netns;
use self::network::{Ipv4Cidr, NodeNetwork};
use self::pod::Stop;
use self::registration::NodeIdentity;
use self::sandbox::Dns;
use super::cluster::{self, BuildGroup};

/// Pod and Service ranges: inside 198.18.0.0/15, reserved for benchmarking (RFC 2544) and never
/// routed on real networks, so they cannot collide with anything the machine reaches.
pub const DEFAULT_CLUSTER_CIDR: &str = "198.18.0.0/16";
pub const DEFAULT_POD_CIDR: &str = "198.18.0.0/24";
pub const DEFAULT_SERVICE_CIDR: &str = "198.19.0.0/16";
/// How long stopping the node waits for its pods' containers.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The local cluster to join (started by `skein dev up` or tests/cluster/up.sh).
    #[arg(long, default_value = cluster::DEFAULT_CLUSTER)]
    pub cluster: String,
    /// Node name. Default: `<cluster>-node`.
    #[arg(long)]
    pub name: Option<String>,
    /// This node's pod range (a /24 or so of the cluster CIDR); its first address is the node's.
    #[arg(long, default_value = DEFAULT_POD_CIDR)]
    pub pod_cidr: Ipv4Cidr,
    /// All pods of the cluster (kube-proxy's --cluster-cidr).
    #[arg(long, default_value = DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: Ipv4Cidr,
    /// The cluster's Service range (the apiserver's --service-cluster-ip-range).
    #[arg(long, default_value = DEFAULT_SERVICE_CIDR)]
    pub service_cidr: Ipv4Cidr,
    /// First back-off after a container crash; doubles per crash, at most 5 minutes.
    #[arg(long, default_value = "10s")]
    pub crash_backoff: crate::api::duration::Duration,
    /// Also relay these ports of the machine's loopback to the node's address, for pods to
    /// reach host services (e.g. a control plane run outside the cluster).
    #[arg(long = "expose-host-port", value_name = "PORT")]
    pub expose_host_ports: Vec<u16>,
    /// Skein source checkout holding `tests/cluster/` (to build kube-proxy, CoreDNS and the
    /// streaming server of the kubelet API).
    /// Default: the working directory or the nearest one above it that is a checkout.
    #[arg(long, env = "SKEIN_SOURCE_DIR")]
    pub source_dir: Option<PathBuf>,
}

impl NodeArgs {
    pub fn node_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-node", self.cluster))
    }
}

/// The node's state directory inside its cluster's.
pub fn state_dir(cluster: &str, node: &str) -> PathBuf {
    cluster::state_dir(cluster).join("nodes").join(node)
}

/// The node agent's PID file, where `tests/cluster/down.sh` finds it.
pub fn pid_file(cluster: &str, node: &str) -> PathBuf {
    cluster::state_dir(cluster)
        .join("pids")
        .join(format!("node-{node}"))
}

/// Runs the node until SIGTERM/SIGINT.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    require_root()?;
    let node_name = args.node_name();
    let cluster_dir = cluster::state_dir(&args.cluster);
    let kubeconfig = cluster_dir.join("kubeconfig");
    if !kubeconfig.exists() {
        bail!(
            "local cluster {:?} is not running (no {}): start it with `skein dev up` or `tests/cluster/up.sh {}`",
            args.cluster,
            kubeconfig.display(),
            args.cluster
        );
    }
    let state = state_dir(&args.cluster, &node_name);
    std::fs::create_dir_all(state.join("logs"))
        .with_context(|| format!("creating {}", state.display()))?;
    let _lock = lock_node(&state, &node_name)?;
    let pid_path = pid_file(&args.cluster, &node_name);
    std::fs::write(&pid_path, std::process::id().to_string())
        .with_context(|| format!("writing {}", pid_path.display()))?;

    let result = serve(&args, &node_name, &kubeconfig, &state).await;
    let _ = std::fs::remove_file(&pid_path);
    result
}

fn require_root() -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("skein dev node runs only on Linux (it uses network and mount namespaces)");
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "skein dev node must run as root: it creates network namespaces, veth pairs and iptables rules inside them"
        );
    }
    Ok(())
}

/// One agent per node: a second one would run every container twice.
fn lock_node(state: &Path, node: &str) -> anyhow::Result<File> {
    let path = state.join("agent.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on an open file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another skein dev node agent is already running node {node:?} ({} is locked)",
            path.display()
        );
    }
    Ok(file)
}

async fn serve(
    args: &NodeArgs,
    node_name: &str,
    kubeconfig: &Path,
    state: &Path,
) -> anyhow::Result<()> {
    let client = cluster::client(kubeconfig).await?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the local apiserver")?;
    let api_port = apiserver_port(kubeconfig)?;
    let source_dir = cluster::source_dir(args.source_dir.as_deref())?;
    let bin_dir = cluster::bin_dir(&source_dir, &[BuildGroup::Node])?;

    let network = NodeNetwork {
        netns: Netns::named(format!("{}.{node_name}", args.cluster)),
        pod_cidr: args.pod_cidr,
        cluster_cidr: args.cluster_cidr,
        service_cidr: args.service_cidr,
    };
    let net = network.clone();
    tokio::task::spawn_blocking(move || net.ensure())
        .await?
        .context("creating the node's network namespace and bridge")?;
    let node_ip = network.node_ip();
    std::fs::write(state.join("netns"), &network.netns.name)?;

    // The apiserver, for kube-proxy and CoreDNS (their kubeconfig says 127.0.0.1) and for pods
    // (the `kubernetes` Service points at the node address); plus requested host ports.
    let loopback = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let node_addr = |port| SocketAddr::V4(SocketAddrV4::new(node_ip, port));
    let mut relays = vec![
        relay::start(&network.netns, loopback(api_port), loopback(api_port)).await?,
        relay::start(&network.netns, node_addr(api_port), loopback(api_port)).await?,
    ];
    for port in &args.expose_host_ports {
        relays.push(relay::start(&network.netns, node_addr(*port), loopback(*port)).await?);
    }

    let dns_ip = args.service_cidr.nth_host(10);
    addons::publish(&client, node_name, node_ip, dns_ip, api_port)
        .await
        .context("publishing the DNS Service and the apiserver endpoint")?;
    let corefile_path = state.join("Corefile");
    std::fs::write(
        &corefile_path,
        addons::corefile(node_ip, kubeconfig, &args.cluster),
    )?;
    let skein = std::env::current_exe().context("finding the skein binary")?;
    let streams_socket = state.join(kubelet_api::STREAMS_SOCKET);
    let daemon = |name: &'static str, program: &str, daemon_args: Vec<String>| addons::Daemon {
        name,
        program: bin_dir.join(program),
        args: daemon_args,
        netns: network.netns.clone(),
        hostname: node_name.to_owned(),
        log: state.join("logs").join(format!("{name}.log")),
        pid_file: state.join(format!("{name}.pid")),
    };
    let daemons = vec![
        daemon(
            "kube-proxy",
            "kube-proxy",
            addons::kube_proxy_args(kubeconfig, node_name, &args.cluster_cidr.to_string()),
        )
        .start(),
        daemon(
            "coredns",
            "coredns",
            vec![
                "-conf".to_owned(),
                corefile_path.to_string_lossy().into_owned(),
            ],
        )
        .start(),
        // The kubelet API's exec, attach and port-forward, which run `skein dev exec` and
        // `skein dev connect` of this very binary.
        daemon(
            "kubelet-streams",
            "skein-kubelet-streams",
            vec![
                "--socket".to_owned(),
                streams_socket.to_string_lossy().into_owned(),
                "--skein".to_owned(),
                skein.to_string_lossy().into_owned(),
                "--cluster".to_owned(),
                args.cluster.clone(),
            ],
        )
        .start(),
    ];

    let identity = NodeIdentity {
        name: node_name.to_owned(),
        pod_cidr: args.pod_cidr,
        node_ip,
        allocatable: Allocatable::of_machine(),
        kubernetes_version: version.git_version.clone(),
        started: Timestamp::now(),
    };
    let node_uid = registration::register(&client, &identity)
        .await
        .context("registering the Node")?;
    let heartbeat = tokio::spawn(registration::heartbeat(
        client.clone(),
        identity.clone(),
        node_uid,
    ));

    let (services, services_writer) = reflector::store::<Service>();
    let services_task = tokio::spawn(
        reflector(
            services_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .applied_objects()
        .for_each(|_| async {}),
    );
    services
        .wait_until_ready()
        .await
        .context("listing Services")?;

    // The apiserver's way to pods, Services and this node, if its cluster was started with one,
    // and the kubelet API it calls there.
    let cluster_dir = cluster::state_dir(&args.cluster);
    let egress = egress::start(&cluster_dir, network.netns.clone(), services.clone());
    let kubelet_api = kubelet_api::start(
        &network.netns,
        node_ip.into(),
        &cluster_dir.join("pki"),
        client.clone(),
        &args.cluster,
        node_name,
        streams_socket,
    )
    .await
    .context("starting the kubelet API")?;

    let ctx = Arc::new(NodeContext {
        client: client.clone(),
        node_name: node_name.to_owned(),
        network: network.clone(),
        dns: Dns {
            nameserver: dns_ip,
            cluster_domain: addons::CLUSTER_DOMAIN.to_owned(),
        },
        state_dir: state.to_owned(),
        image: ImageCache::new(
            skein,
            PathBuf::from("/run/skein-dev-node").join(format!("{}-{node_name}", args.cluster)),
        ),
        backoff_base: args.crash_backoff.as_std(),
        allocatable: identity.allocatable,
        host_path: std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        services,
        pod_ips: Mutex::new(context::PodIps {
            used: sandbox::used_ips(state),
            last: None,
        }),
    });
    tracing::info!(node = node_name, %node_ip, pod_cidr = %args.pod_cidr, "node ready");

    let outcome = dispatch_pods(ctx.clone(), crate::signals::shutdown()).await;
    tracing::info!("node stopped its pods");
    heartbeat.abort();
    services_task.abort();
    for task in daemons
        .into_iter()
        .chain(relays)
        .chain(egress)
        .chain([kubelet_api])
    {
        task.abort();
        let _ = task.await;
    }
    if let Err(err) = registration::post_status(&client, &identity, false).await {
        tracing::warn!(error = %err, "marking the node not ready");
    }
    let net = network.clone();
    tokio::task::spawn_blocking(move || net.delete()).await??;
    ctx.remove_mount_points();
    ctx.image.remove();
    outcome
}

/// The apiserver port from the kubeconfig's `server: https://127.0.0.1:PORT`.
fn apiserver_port(kubeconfig: &Path) -> anyhow::Result<u16> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|port| port.trim().parse().ok())
        .with_context(|| {
            format!(
                "{} has no `server: https://127.0.0.1:PORT`",
                kubeconfig.display()
            )
        })
}

/// A pod worker as the dispatcher sees it.
struct Worker {
    pod: watch::Sender<Arc<Pod>>,
    stop: watch::Sender<Option<Stop>>,
    task: tokio::task::JoinHandle<()>,
}

/// Follows the pods bound to this node and keeps one worker per pod UID, until `shutdown`;
/// then stops every pod (keeping their sandbox records) and waits for them.
async fn dispatch_pods(
    ctx: Arc<NodeContext>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher(api, config).boxed();
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut listed: Vec<String> = Vec::new();
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            event = events.next() => {
                let Some(event) = event else { break Ok(()) };
                match event {
                    Ok(watcher::Event::Init) => listed.clear(),
                    Ok(watcher::Event::InitApply(pod)) => {
                        listed.extend(pod.uid());
                        on_pod(&ctx, &mut workers, &done_tx, pod);
                    }
                    Ok(watcher::Event::InitDone) => {
                        remove_orphans(&ctx, &listed, &workers).await;
                    }
                    Ok(watcher::Event::Apply(pod)) => on_pod(&ctx, &mut workers, &done_tx, pod),
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(worker) = pod.uid().and_then(|uid| workers.get(&uid)) {
                            let _ = worker.stop.send(Some(Stop::Delete { grace: Duration::ZERO }));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "watching pods; retrying");
                    }
                }
            }
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
        }
    };
    tracing::info!(pods = workers.len(), "node stopping");
    for worker in workers.values() {
        let _ = worker.stop.send(Some(Stop::NodeShutdown));
    }
    for (_, worker) in workers {
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, worker.task)
            .await
            .is_err()
        {
            tracing::warn!("a pod did not stop in time");
        }
    }
    result
}

fn on_pod(
    ctx: &Arc<NodeContext>,
    workers: &mut BTreeMap<String, Worker>,
    done: &mpsc::UnboundedSender<String>,
    pod: Pod,
) {
    let Some(uid) = pod.uid() else { return };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let grace = pod::grace_seconds(&pod);
    if let Some(worker) = workers.get(&uid) {
        worker.pod.send_replace(Arc::new(pod));
        if deleting && worker.stop.borrow().is_none() {
            let _ = worker.stop.send(Some(Stop::Delete { grace }));
        }
        return;
    }
    let terminal = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let has_sandbox = sandbox::pods_dir(&ctx.state_dir).join(&uid).exists();
    if deleting && !has_sandbox {
        // Nothing runs here for it (deleted while the node was down): just release it.
        tokio::spawn(release_without_sandbox(ctx.clone(), pod));
        return;
    }
    if terminal && !has_sandbox && !deleting {
        return;
    }
    let (pod_tx, pod_rx) = watch::channel(Arc::new(pod));
    let initial_stop = deleting.then_some(Stop::Delete { grace });
    let (stop_tx, stop_rx) = watch::channel(initial_stop);
    let done = done.clone();
    let ctx = ctx.clone();
    let worker_uid = uid.clone();
    let task = tokio::spawn(async move {
        pod::run(ctx, pod_rx, stop_rx).await;
        let _ = done.send(worker_uid);
    });
    workers.insert(
        uid,
        Worker {
            pod: pod_tx,
            stop: stop_tx,
            task,
        },
    );
}

async fn release_without_sandbox(ctx: Arc<NodeContext>, pod: Pod) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(err) = api.delete(&pod.name_any(), &params).await {
        tracing::debug!(pod = %pod.name_any(), error = %err, "releasing a pod deleted while the node was down");
    }
}

/// Sandboxes an earlier run left for pods that no longer exist (or moved elsewhere).
async fn remove_orphans(
    ctx: &Arc<NodeContext>,
    listed: &[String],
    workers: &BTreeMap<String, Worker>,
) {
    for sandbox in sandbox::recorded(&ctx.state_dir) {
        let uid = sandbox.record.uid.clone();
        if listed.contains(&uid) || workers.contains_key(&uid) {
            continue;
        }
        tracing::info!(pod = %format!("{}/{}", sandbox.record.namespace, sandbox.record.name), "removing the sandbox of a pod that is gone");
        let ip = sandbox.record.ip;
        match tokio::task::spawn_blocking(move || sandbox.destroy()).await {
            Ok(Ok(())) => {
                if let Some(ip) = ip {
                    ctx.release_ip(ip);
                }
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "removing an orphaned sandbox"),
            Err(err) => tracing::warn!(error = %err, "orphan cleanup task failed"),
        }
    }
}
