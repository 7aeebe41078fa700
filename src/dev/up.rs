//! `skein dev up` and `skein dev down`: the whole mesh and its demo on this machine.
//!
//! `up` is idempotent: each step reuses what is already there (a healthy cluster, running
//! background processes, applied objects) and waits for what it needs before moving on.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt};

use super::background::Background;
use super::cluster::{self, ApiserverNetwork, BuildGroup};
use super::{node, pod_failures, preflight};
use crate::api::{MeshConfig, crds, names};
use crate::cli::DevClusterArgs;

/// The sample MeshConfig and the demo application, relative to the source checkout.
const SAMPLE_MESHCONFIG: &str = "config/samples/meshconfig.yaml";
const DEMO_MANIFESTS: &str = "config/demo/demo-app.yaml";
/// The namespace the demo runs in, labelled for injection.
pub const DEMO_NAMESPACE: &str = "demo";
const WAIT: Duration = Duration::from_secs(180);

/// `skein dev up`.
pub async fn up(args: &DevClusterArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let source_dir = cluster::source_dir(args.source_dir.as_deref())?;
    let cluster_dir = cluster::state_dir(&args.name);
    // Before anything slow: what this machine lacks is one line, in seconds.
    preflight::check(&cluster_dir)?;
    // Only what `dev up` runs; the tests' tools are built by the test command.
    let bin_dir = cluster::bin_dir(&source_dir, &[BuildGroup::Cluster, BuildGroup::Node])?;
    let kubeconfig = cluster::ensure_up(&source_dir, &args.name, ApiserverNetwork::ThroughNode)?;
    let client = cluster::client(&kubeconfig).await?;
    crds::install(&client)
        .await
        .context("installing the Skein CRDs")?;
    let ports = LocalPorts::load_or_pick(&cluster_dir)?;
    let LocalPorts {
        webhook: webhook_port,
        operator_metrics: metrics_port,
        xds: xds_port,
        debug: debug_port,
    } = ports;
    let skein = std::env::current_exe().context("finding the skein binary")?;
    let kubeconfig_env = vec![(
        "KUBECONFIG".to_owned(),
        kubeconfig.to_string_lossy().into_owned(),
    )];

    // The node: pods run from here on.
    let node_name = format!("{}-node", args.name);
    let node_agent = Background {
        name: format!("node-{node_name}"),
        program: skein.clone(),
        args: vec![
            "dev".into(),
            "node".into(),
            "--cluster".into(),
            args.name.clone(),
            "--name".into(),
            node_name.clone(),
            "--expose-host-port".into(),
            xds_port.to_string(),
            "--source-dir".into(),
            source_dir.to_string_lossy().into_owned(),
        ],
        env: Vec::new(),
    };
    announce("node", node_agent.ensure(&cluster_dir)?);
    let nodes: Api<Node> = Api::all(client.clone());
    let node_log = node_agent.log_file(&cluster_dir).display().to_string();
    wait_for("the node to be Ready", node_log.clone(), || async {
        node_agent.still_running(&cluster_dir)?;
        let node = nodes.get_opt(&node_name).await.ok().flatten();
        Ok(node.filter(node_ready).map(|_| ()))
    })
    .await?;

    // The operator installs the mesh; the control plane runs here (External mode).
    let operator = Background {
        name: "skein-operator".to_owned(),
        program: skein.clone(),
        args: vec![
            "operator".into(),
            "--lease-namespace".into(),
            "default".into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
        ],
        env: kubeconfig_env.clone(),
    };
    announce("operator", operator.ensure(&cluster_dir)?);
    let node_ip = node::DEFAULT_POD_CIDR
        .parse::<node::network::Ipv4Cidr>()
        .map(|cidr| cidr.gateway())
        .context("the default pod CIDR")?;
    let mesh = apply_meshconfig(
        &client,
        &source_dir.join(SAMPLE_MESHCONFIG),
        &format!("https://127.0.0.1:{webhook_port}/inject"),
        &format!("{node_ip}:{xds_port}"),
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), names::MESH_NAMESPACE);
    let operator_log = operator.log_file(&cluster_dir).display().to_string();
    wait_for(
        "the operator to write the webhook certificate",
        operator_log.clone(),
        || async {
            operator.still_running(&cluster_dir)?;
            Ok(secrets
                .get_opt("skein-webhook-tls")
                .await
                .ok()
                .flatten()
                .map(|_| ()))
        },
    )
    .await?;
    let control_plane = Background {
        name: "skein-control-plane".to_owned(),
        program: skein.clone(),
        args: vec![
            "control-plane".into(),
            "--tls-secret".into(),
            format!("{}/skein-webhook-tls", names::MESH_NAMESPACE),
            "--webhook-addr".into(),
            format!("127.0.0.1:{webhook_port}"),
            // Pods reach it at the node's address, which the node relays to this host port.
            "--xds-addr".into(),
            format!("127.0.0.1:{xds_port}"),
            // Over TLS, with a certificate for the address pods dial.
            "--xds-tls".into(),
            "--xds-address".into(),
            format!("{node_ip}:{xds_port}"),
            "--debug-addr".into(),
            format!("127.0.0.1:{debug_port}"),
            // Outside the pod network, it reaches the proxies' metrics through the apiserver.
            "--stats-scrape".into(),
            "apiserver".into(),
        ],
        env: kubeconfig_env,
    };
    announce("control plane", control_plane.ensure(&cluster_dir)?);
    let meshconfigs: Api<MeshConfig> = Api::all(client.clone());
    let both_logs = format!(
        "{operator_log} and {}",
        control_plane.log_file(&cluster_dir).display()
    );
    wait_for("the MeshConfig to be Ready", both_logs, || async {
        operator.still_running(&cluster_dir)?;
        control_plane.still_running(&cluster_dir)?;
        let ready = meshconfigs
            .get_opt(&mesh)
            .await
            .ok()
            .flatten()
            .and_then(|mc| mc.status)
            .is_some_and(|status| {
                status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
        Ok(ready.then_some(()))
    })
    .await?;

    // The demo, meshed.
    ensure_demo_namespace(&client).await?;
    apply_manifests(&client, &source_dir.join(DEMO_MANIFESTS), DEMO_NAMESPACE).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let pods_and_node = format!("`kubectl -n {DEMO_NAMESPACE} get pods` and {node_log}");
    wait_for(
        "the demo's Deployments to be available",
        pods_and_node,
        || async {
            node_agent.still_running(&cluster_dir)?;
            control_plane.still_running(&cluster_dir)?;
            // A failing container fails the wait at once, with its own words.
            if let Ok(list) = pods.list(&Default::default()).await {
                explain_failures(&args.name, &list.items)?;
            }
            let list = deployments.list(&Default::default()).await.ok();
            Ok(list
                .filter(|l| !l.items.is_empty() && l.items.iter().all(deployment_available))
                .map(|_| ()))
        },
    )
    .await?;

    println!(
        "{}",
        next_steps(&NextSteps {
            cluster: &args.name,
            secs: started.elapsed().as_secs(),
            node: &node_name,
            kubeconfig: &kubeconfig,
            bin_dir: &bin_dir,
            skein: &skein_command(&skein),
            source_dir: &source_dir,
        })
    );
    Ok(())
}

/// What `up` prints at the end: every command in it works when pasted as printed.
struct NextSteps<'a> {
    cluster: &'a str,
    secs: u64,
    node: &'a str,
    kubeconfig: &'a Path,
    bin_dir: &'a Path,
    /// How to run this binary: `skein` if that is what the PATH finds, else its full path.
    skein: &'a str,
    source_dir: &'a Path,
}

fn next_steps(n: &NextSteps) -> String {
    let NextSteps {
        cluster,
        secs,
        node,
        skein,
        ..
    } = n;
    let kubeconfig = n.kubeconfig.display();
    let bin_dir = n.bin_dir.display();
    let rules = n.source_dir.join("config/samples/traffic-rules.yaml");
    let rules = rules.display();
    let ns = DEMO_NAMESPACE;
    let on_cluster = cluster_flag(cluster);
    let frontend =
        format!("$(kubectl -n {ns} get pod -l app=frontend -o name | head -n 1 | cut -d/ -f2)");
    format!(
        "\nSkein is up on local cluster `{cluster}` ({secs}s): node {node}, operator, control plane,\n\
         and the demo (frontend -> middleware -> backend v1/v2) in namespace `{ns}`, each pod\n\
         with its skein-proxy sidecar, configured by the control plane's stream. Steer traffic with\n\
         RouteRules, EgressRules and TrafficPolicies ({rules}).\n\n\
         Next:\n  \
         export KUBECONFIG={kubeconfig}\n  \
         export PATH={bin_dir}:$PATH   # a kubectl of the cluster's version\n  \
         kubectl -n {ns} get pods -o wide\n  \
         frontend={frontend}\n  \
         {skein} dev exec{on_cluster} {ns}/$frontend -c frontend -- curl -s http://frontend/   # the chain of versions\n  \
         {skein} dev exec{on_cluster} {ns}/$frontend -c skein-proxy -- curl -s localhost:16000/metrics\n  \
         {skein} dev logs{on_cluster} {ns}/$frontend -c skein-proxy\n  \
         kubectl -n {ns} apply -f {rules}   # x-canary: 1 -> v2; 90/10 split\n  \
         kubectl -n {ns} get routerules,egressrules,trafficpolicies\n  \
         {skein} proxy-status --cluster {cluster}\n  \
         {skein} stat deploy -n {ns} --cluster {cluster}   # each tier: PASS or FAIL, and why\n  \
         {skein} dashboard --cluster {cluster}   # the web dashboard's URL: tiers, service graph, proxies, rules\n  \
         {skein} top deploy/frontend -n {ns} --cluster {cluster} --once --duration 3s   # most-requested paths (live without --once)\n  \
         # {skein} tap deploy/frontend -n {ns} --cluster {cluster}   # live requests and responses, until Ctrl-C\n  \
         kubectl get meshconfig\n\n\
         Stop everything and delete its state with `{skein} dev down --cluster {cluster}`.\n"
    )
}

/// ` --cluster NAME` for `skein dev exec/logs`, or nothing for the default cluster, so the
/// common case reads short.
fn cluster_flag(cluster: &str) -> String {
    if cluster == cluster::DEFAULT_CLUSTER {
        String::new()
    } else {
        format!(" --cluster {cluster}")
    }
}

/// `skein` when the PATH finds this very binary, else its full path (e.g. after `cargo run`).
fn skein_command(current: &Path) -> String {
    let on_path = preflight::SearchPath::from_env().find("skein");
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    match on_path {
        Some(found) if same(&found, current) => "skein".to_owned(),
        _ => current.display().to_string(),
    }
}

/// Fails with every failing container of `pods`, each with the end of its log.
fn explain_failures(cluster: &str, pods: &[Pod]) -> anyhow::Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut report = Vec::new();
    for pod in pods {
        for failure in pod_failures::failing_containers(pod, now) {
            let mut entry = failure.to_string();
            if let Some(tail) = node::inspect::log_tail(cluster, pod, &failure.container, 10)
                .filter(|t| !t.is_empty())
            {
                entry.push_str(&format!(
                    "\n  the end of its log (`skein dev logs{} {} -c {}`):\n{}",
                    cluster_flag(cluster),
                    failure.pod,
                    failure.container,
                    super::indent(&tail)
                ));
            }
            report.push(entry);
        }
    }
    if report.is_empty() {
        return Ok(());
    }
    bail!("{}", report.join("\n"))
}

/// `skein dev down`: stops the node (its pods and namespaces), the background processes and
/// the cluster, and deletes the cluster's state.
pub fn down(args: &DevClusterArgs) -> anyhow::Result<()> {
    cluster::down(
        &cluster::source_dir(args.source_dir.as_deref())?,
        &args.name,
    )?;
    Ok(())
}

/// Loopback ports of the processes `up` runs outside the cluster, picked once per cluster and
/// kept in its state directory, so a second `up` (and the MeshConfig) finds the same ones.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct LocalPorts {
    webhook: u16,
    operator_metrics: u16,
    xds: u16,
    /// The control plane's debug server (`skein proxy-status`); 0 in files older than it.
    #[serde(default)]
    debug: u16,
}

impl LocalPorts {
    fn path(cluster_dir: &Path) -> PathBuf {
        cluster_dir.join("dev-ports.json")
    }

    fn load(cluster_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(cluster_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn load_or_pick(cluster_dir: &Path) -> anyhow::Result<Self> {
        let pick = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let ports = match Self::load(cluster_dir) {
            Some(ports) if ports.debug != 0 => return Ok(ports),
            Some(ports) => Self {
                debug: pick()?,
                ..ports
            },
            None => Self {
                webhook: pick()?,
                operator_metrics: pick()?,
                xds: pick()?,
                debug: pick()?,
            },
        };
        let path = Self::path(cluster_dir);
        std::fs::write(&path, serde_json::to_string(&ports)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(ports)
    }
}

/// The URL of the debug server of the control plane `skein dev up` runs for `cluster`.
pub fn control_plane_debug_url(cluster: &str) -> anyhow::Result<String> {
    let ports = LocalPorts::load(&cluster::state_dir(cluster))
        .filter(|p| p.debug != 0)
        .with_context(|| {
            format!("no control plane of `skein dev up --cluster {cluster}` known here: give --url")
        })?;
    Ok(format!("http://127.0.0.1:{}", ports.debug))
}

fn announce(what: &str, started: bool) {
    if started {
        eprintln!("dev up: started the {what}");
    } else {
        eprintln!("dev up: the {what} is already running");
    }
}

/// Polls `probe` until it returns `Ok(Some)`, for at most [`WAIT`]; an `Err` from it fails the
/// wait at once (something it waits on has failed for good). A timeout names `where_to_look`.
async fn wait_for<T, F, Fut>(what: &str, where_to_look: String, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    eprintln!("dev up: waiting for {what}");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for {what}: see {where_to_look}",
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn deployment_available(deployment: &Deployment) -> bool {
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    status.observed_generation == deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) == wanted
        && status.available_replicas.unwrap_or(0) == wanted
}

/// The sample MeshConfig, switched to External mode: the control plane runs on this machine.
async fn apply_meshconfig(
    client: &Client,
    path: &Path,
    webhook_url: &str,
    xds_address: &str,
) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut mesh: serde_json::Value =
        crate::yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    mesh["spec"]["controlPlane"] = serde_json::json!({
        "mode": "External",
        "external": {"webhookUrl": webhook_url, "xdsAddress": xds_address},
    });
    let mesh: MeshConfig = serde_json::from_value(mesh)
        .with_context(|| format!("{} is not a MeshConfig", path.display()))?;
    let name = mesh.name_any();
    Api::<MeshConfig>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(&mesh),
        )
        .await
        .with_context(|| format!("applying {}", path.display()))?;
    Ok(name)
}

async fn ensure_demo_namespace(client: &Client) -> anyhow::Result<()> {
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": DEMO_NAMESPACE,
            "labels": {names::INJECTION_LABEL_KEY: names::INJECTION_LABEL_VALUE},
        },
    }))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            DEMO_NAMESPACE,
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(&namespace),
        )
        .await
        .with_context(|| format!("creating namespace {DEMO_NAMESPACE}"))?;
    Ok(())
}

/// Server-side applies every document of a multi-document YAML file into `namespace`.
async fn apply_manifests(client: &Client, path: &Path, namespace: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let documents: Vec<serde_json::Value> =
        crate::yaml::documents(&text).with_context(|| format!("parsing {}", path.display()))?;
    for value in documents {
        let object: DynamicObject = serde_json::from_value(value).with_context(|| {
            format!("{}: a document is not a Kubernetes object", path.display())
        })?;
        let types = object
            .types
            .clone()
            .with_context(|| format!("{}: a document has no apiVersion/kind", path.display()))?;
        let gvk = GroupVersionKind::try_from(&types)
            .with_context(|| format!("{}: bad apiVersion {}", path.display(), types.api_version))?;
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        api.patch(
            &object.name_any(),
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {} {}", types.kind, object.name_any()))?;
    }
    Ok(())
}
