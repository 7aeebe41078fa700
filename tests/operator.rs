//! `skein operator` against a real apiserver: install, readiness, drift, rollout, uninstall,
//! a broken CA Secret, leader election, and the full flow with an external control plane that
//! injects a real pod.
//!
//! The operator manages cluster-wide objects (the `default` MeshConfig, the webhook
//! configuration), so these tests use a cluster of their own (`skein-test-operator`) and run one
//! at a time.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use skein::api::{MeshConfig, crds, names};
use skein::dev::cluster;
use support::control_plane::free_port;
use support::eventually;

const CLUSTER: &str = "skein-test-operator";
/// The Lease lives in `default`: it exists before the operator creates `skein-system`.
const LEASE_NAMESPACE: &str = "default";
const WAIT: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kubeconfig() -> &'static PathBuf {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        cluster::ensure_up(
            support::source_dir(),
            CLUSTER,
            cluster::ApiserverNetwork::LoopbackOnly,
        )
        .unwrap_or_else(|err| panic!("starting the {CLUSTER} cluster: {err}"))
    })
}

async fn client() -> Client {
    let client = cluster::client(kubeconfig()).await.unwrap();
    crds::install(&client).await.unwrap();
    client
}

/// A running `skein operator`; killed on drop, its log printed if the test failed.
struct Operator {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start(identity: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).unwrap();
        let metrics_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args([
                "operator",
                "--identity",
                identity,
                "--lease-namespace",
                LEASE_NAMESPACE,
            ])
            .args([
                "--lease-duration",
                "4s",
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .env("KUBECONFIG", kubeconfig())
            .env("SKEIN_LOG", "info,skein=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting skein operator");
        Self {
            child,
            metrics_port,
            log,
            _dir: dir,
        }
    }

    /// The operator's `/metrics` text, served as every role serves it.
    async fn metrics(&self) -> String {
        // reqwest needs a process-wide rustls provider even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            skein::telemetry::METRICS_CONTENT_TYPE
        );
        response.text().await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- skein operator log:\n{}", self.log());
        }
    }
}

fn condition(mc: &MeshConfig, type_: &str) -> Option<(String, String, String)> {
    let condition = mc
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((
        condition.status.clone(),
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

async fn wait_condition(
    client: &Client,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> MeshConfig {
    let api = Api::<MeshConfig>::all(client.clone());
    eventually(
        &format!("{name}: {type_}={status} ({reason})"),
        WAIT,
        || async {
            let mc = api.get_opt(name).await.ok().flatten()?;
            let (s, r, _) = condition(&mc, type_)?;
            (s == status && r == reason).then_some(mc)
        },
    )
    .await
}

async fn apply_meshconfig(client: &Client, name: &str, spec: serde_json::Value) {
    let body = json!({"apiVersion": "skein.dev/v1alpha1", "kind": "MeshConfig", "metadata": {"name": name}, "spec": spec});
    Api::<MeshConfig>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("skein-test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

/// Deletes the MeshConfig and waits until the uninstall (its finalizer) has finished.
async fn delete_meshconfig(client: &Client, name: &str) {
    let api = Api::<MeshConfig>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(&format!("MeshConfig {name} to be gone"), WAIT, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

fn mesh_api<K>(client: &Client) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), names::MESH_NAMESPACE)
}

#[tokio::test]
async fn in_cluster_install_drift_rollout_bad_ca_and_uninstall() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let operator = Operator::start("operator-a");

    apply_meshconfig(&client, "default", json!({"controlPlane": {"replicas": 2}})).await;
    // No node runs pods in this cluster, so the control plane never becomes ready: installed,
    // but not Ready, and saying why.
    let mc = wait_condition(&client, "default", "Installed", "True", "Applied").await;
    let (ready, reason, message) = condition(&mc, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "ControlPlaneNotReady"),
        "{message}"
    );
    assert_eq!(
        mc.status.as_ref().unwrap().version.as_deref(),
        Some(names::SKEIN_VERSION)
    );

    let deployments = mesh_api::<Deployment>(&client);
    let deployment = deployments.get("skein-control-plane").await.unwrap();
    let container = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(format!("{}:{}", names::DEFAULT_IMAGE, names::SKEIN_VERSION).as_str())
    );
    assert_eq!(deployment.spec.replicas, Some(2));
    assert!(
        mesh_api::<PodDisruptionBudget>(&client)
            .get_opt("skein-control-plane")
            .await
            .unwrap()
            .is_some()
    );
    let service = mesh_api::<Service>(&client)
        .get("skein-control-plane")
        .await
        .unwrap();
    let ports: Vec<i32> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [443, 9090]);
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let webhook = webhooks.get("skein-sidecar-injector").await.unwrap();
    let ca = mesh_api::<Secret>(&client).get("skein-ca").await.unwrap();
    let ca_pem = ca.data.as_ref().unwrap()["tls.crt"].0.clone();
    for hook in webhook.webhooks.as_ref().unwrap() {
        assert_eq!(
            hook.client_config.ca_bundle.as_ref().unwrap().0,
            ca_pem,
            "caBundle is the mesh CA"
        );
        assert_eq!(
            hook.client_config.service.as_ref().unwrap().name,
            "skein-control-plane"
        );
    }

    // The identity issuer: an intermediate of the root in skein-ca, with the roots.
    let issuer_chains_to = |root_pem: Vec<u8>| {
        let client = client.clone();
        async move {
            let issuer = mesh_api::<Secret>(&client)
                .get_opt("skein-identity-issuer")
                .await
                .ok()??;
            let data = issuer.data?;
            let root = String::from_utf8(root_pem).ok()?;
            let chain = String::from_utf8(data.get("tls.crt")?.0.clone()).ok()?;
            let info = skein::pki::CertInfo::parse(&chain).ok()?;
            let chains = chain.ends_with(&root)
                && info.issuer == skein::pki::CertInfo::parse(&root).ok()?.subject
                && data.get("ca.crt")?.0 == root.as_bytes()
                && data.contains_key("tls.key");
            chains.then_some(())
        }
    };
    eventually("the identity issuer to chain to the mesh CA", WAIT, || {
        issuer_chains_to(ca_pem.clone())
    })
    .await;

    // Drift: deleted or edited objects come back.
    webhooks
        .delete("skein-sidecar-injector", &DeleteParams::default())
        .await
        .unwrap();
    let restored = Instant::now();
    eventually(
        "the webhook configuration to be restored",
        Duration::from_secs(20),
        || async { webhooks.get_opt("skein-sidecar-injector").await.ok()? },
    )
    .await;
    eprintln!(
        "webhook configuration restored {:?} after deletion",
        restored.elapsed()
    );
    deployments
        .patch(
            "skein-control-plane",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    eventually(
        "the replica count to be restored",
        Duration::from_secs(20),
        || async {
            let d = deployments.get("skein-control-plane").await.ok()?;
            (d.spec.replicas == Some(2)).then_some(())
        },
    )
    .await;

    // Rollout: a new version is a new image and a new settings hash on the pod template.
    let hash = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["skein.dev/settings-hash"]
            .clone()
    };
    let old_hash = hash(&deployments.get("skein-control-plane").await.unwrap());
    apply_meshconfig(
        &client,
        "default",
        json!({"controlPlane": {"replicas": 2}, "version": "9.9.9"}),
    )
    .await;
    let rolled = eventually("the 9.9.9 rollout", WAIT, || async {
        let d = deployments.get("skein-control-plane").await.ok()?;
        let image = d.spec.template.spec.as_ref()?.containers[0].image.clone()?;
        image.ends_with(":9.9.9").then_some(d)
    })
    .await;
    assert_ne!(
        hash(&rolled),
        old_hash,
        "the settings hash must change with the spec"
    );
    let mc = Api::<MeshConfig>::all(client.clone())
        .get("default")
        .await
        .unwrap();
    eventually("status.version 9.9.9", WAIT, || async {
        let mc = Api::<MeshConfig>::all(client.clone())
            .get("default")
            .await
            .ok()?;
        let status = mc.status?;
        (status.version.as_deref() == Some("9.9.9")
            && status.observed_generation == mc.metadata.generation)
            .then_some(())
    })
    .await;
    let _ = mc;

    // Only `default` is active.
    apply_meshconfig(&client, "staging", json!({})).await;
    let other = wait_condition(&client, "staging", "Ready", "False", "NotActive").await;
    assert!(condition(&other, "Ready").unwrap().2.contains("default"));
    delete_meshconfig(&client, "staging").await;

    // A CA Secret without a key: Degraded, saying exactly that; the rest stays as it was.
    let secrets = mesh_api::<Secret>(&client);
    secrets
        .delete("skein-ca", &DeleteParams::default())
        .await
        .unwrap();
    let broken: Secret = serde_json::from_value(json!({
        "metadata": {"name": "skein-ca"},
        "type": "Opaque",
        "data": {"tls.crt": k8s_openapi::ByteString(ca_pem.clone())}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &broken)
        .await
        .unwrap();
    // Nudge a reconcile (a spec change) rather than waiting for the periodic one.
    apply_meshconfig(
        &client,
        "default",
        json!({"controlPlane": {"replicas": 2}, "version": "9.9.8"}),
    )
    .await;
    let degraded = wait_condition(&client, "default", "Degraded", "True", "CASecretInvalid").await;
    assert_eq!(
        condition(&degraded, "Degraded").unwrap().2,
        "secret skein-system/skein-ca has no tls.key"
    );
    assert!(
        webhooks
            .get_opt("skein-sidecar-injector")
            .await
            .unwrap()
            .is_some(),
        "nothing was torn down"
    );
    secrets
        .delete("skein-ca", &DeleteParams::default())
        .await
        .unwrap();
    apply_meshconfig(
        &client,
        "default",
        json!({"controlPlane": {"replicas": 2}, "version": "9.9.7"}),
    )
    .await;
    wait_condition(&client, "default", "Degraded", "False", "AsExpected").await;
    // A new root (generated, as the broken one was deleted): a new issuer chaining to it.
    let new_ca = secrets.get("skein-ca").await.unwrap();
    let new_ca_pem = new_ca.data.as_ref().unwrap()["tls.crt"].0.clone();
    assert_ne!(new_ca_pem, ca_pem);
    eventually(
        "the identity issuer to chain to the new mesh CA",
        WAIT,
        || issuer_chains_to(new_ca_pem.clone()),
    )
    .await;

    // Uninstall: everything owned goes, the webhook first; the namespace and the CA stay.
    let order = record_deletions(&client);
    tokio::time::sleep(Duration::from_millis(500)).await; // let the watches start
    delete_meshconfig(&client, "default").await;
    assert!(
        webhooks
            .get_opt("skein-sidecar-injector")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        deployments
            .get_opt("skein-control-plane")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        mesh_api::<Service>(&client)
            .get_opt("skein-control-plane")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        mesh_api::<ConfigMap>(&client)
            .get_opt("skein-mesh-config")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt("skein-control-plane")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        secrets.get_opt("skein-ca").await.unwrap().is_some(),
        "the CA Secret is kept"
    );
    assert!(
        secrets
            .get_opt("skein-identity-issuer")
            .await
            .unwrap()
            .is_none(),
        "the identity issuer goes with the control plane"
    );
    let order = order.finish().await;
    assert_eq!(
        order.first().map(String::as_str),
        Some("MutatingWebhookConfiguration"),
        "the webhook configuration must be removed first: {order:?}"
    );
    assert!(order.contains(&"Deployment".to_owned()), "{order:?}");

    let metrics = operator.metrics().await;
    for metric in [
        "skein_operator_reconciles_total",
        "skein_operator_reconcile_errors_total",
        "skein_operator_reconcile_duration_seconds_count",
    ] {
        assert!(
            metrics.contains(metric),
            "{metric} missing from /metrics:\n{metrics}"
        );
    }
}

/// Records, in order, the kinds of Skein objects deleted while it runs.
struct DeletionRecorder {
    task: tokio::task::JoinHandle<()>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn record_deletions(client: &Client) -> DeletionRecorder {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let ours = || watcher::Config::default().labels("app.kubernetes.io/managed-by=skein-operator");
    let webhooks = watcher(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        ours(),
    )
    .filter_map(|event| async move {
        matches!(event, Ok(watcher::Event::Delete(_)))
            .then(|| "MutatingWebhookConfiguration".to_owned())
    });
    let deployments =
        watcher(mesh_api::<Deployment>(client), ours()).filter_map(|event| async move {
            matches!(event, Ok(watcher::Event::Delete(_))).then(|| "Deployment".to_owned())
        });
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut both = futures::stream::select(webhooks.boxed(), deployments.boxed());
        while let Some(kind) = both.next().await {
            record.lock().unwrap().push(kind);
        }
    });
    DeletionRecorder { task, seen }
}

impl DeletionRecorder {
    async fn finish(self) -> Vec<String> {
        // Let the last watch events arrive.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn external_mode_full_flow_injects_a_pod() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let _operator = Operator::start("operator-external");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/inject");
    let applied = Instant::now();
    apply_meshconfig(
        &client,
        "default",
        json!({"controlPlane": {"mode": "External", "external": {"webhookUrl": url, "xdsAddress": "127.0.0.1:9090"}}}),
    )
    .await;

    // The operator wrote the serving certificate; a control plane outside the cluster reads it.
    eventually("the webhook certificate Secret", WAIT, || async {
        mesh_api::<Secret>(&client)
            .get_opt("skein-webhook-tls")
            .await
            .ok()?
    })
    .await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut control_plane = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args([
            "control-plane",
            "--tls-secret",
            "skein-system/skein-webhook-tls",
        ])
        .args(["--webhook-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", kubeconfig())
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut control_plane);

    let ready = wait_condition(&client, "default", "Ready", "True", "ControlPlaneReady").await;
    eprintln!(
        "MeshConfig applied → Ready in {:?} (External mode)",
        applied.elapsed()
    );
    let component = &ready.status.as_ref().unwrap().components[0];
    assert!(component.ready, "{component:?}");
    assert!(
        mesh_api::<Deployment>(&client)
            .get_opt("skein-control-plane")
            .await
            .unwrap()
            .is_none()
    );

    // A labelled namespace: a new pod gets the proxy, through the webhook the operator registered.
    let namespace = format!("shop-{}", std::process::id());
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": namespace, "labels": {"injection": "enabled"}}}),
    )
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "example.com/web:1"}]}
    }))
    .unwrap();
    let created = eventually("a pod to be admitted", WAIT, || async {
        Api::<Pod>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &pod)
            .await
            .ok()
    })
    .await;
    let inits: Vec<String> = created
        .spec
        .unwrap()
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        &inits[..2],
        ["skein-init", "skein-proxy"],
        "the pod was not injected: {inits:?}"
    );

    drop(guard);
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::default())
        .await;
    delete_meshconfig(&client, "default").await;
    let _ = std::fs::read_to_string(log.path());
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn one_leader_and_failover_when_it_is_killed() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let leases = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE);
    let holder = || async {
        let lease = leases.get_opt("skein-operator").await.ok()??;
        lease.spec?.holder_identity
    };
    // A previous test's leader may still hold the lease until it expires.
    let mut first = Operator::start("leader-one");
    let leader = eventually("a leader", WAIT, || async {
        holder().await.filter(|h| h == "leader-one")
    })
    .await;
    let mut second = Operator::start("leader-two");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        holder().await.as_deref(),
        Some(leader.as_str()),
        "the standby must not take over a live lease"
    );
    assert!(
        !second.log().contains("leading"),
        "the standby must not act: {}",
        second.log()
    );

    // Kill the leader without a hand-over: the standby takes over once the lease expires.
    first.kill();
    let killed = Instant::now();
    eventually(
        "failover to leader-two",
        Duration::from_secs(20),
        || async { holder().await.filter(|h| h == "leader-two") },
    )
    .await;
    eprintln!("failover took {:?} (lease duration 4s)", killed.elapsed());
    // ... and acts: it installs the mesh.
    apply_meshconfig(&client, "default", json!({})).await;
    wait_condition(&client, "default", "Installed", "True", "Applied").await;
    delete_meshconfig(&client, "default").await;
    second.kill();
}

#[tokio::test]
async fn an_operator_killed_mid_install_converges_without_duplicates() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    {
        let _early = Operator::start("crashy");
        apply_meshconfig(&client, "default", json!({})).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    } // killed here, probably mid-install
    let _operator = Operator::start("crashy");
    wait_condition(&client, "default", "Installed", "True", "Applied").await;
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=skein-operator");
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ours)
        .await
        .unwrap();
    assert_eq!(webhooks.items.len(), 1, "one webhook configuration");
    let roles = Api::<ClusterRole>::all(client.clone())
        .list(&ours)
        .await
        .unwrap();
    assert_eq!(
        roles.items.iter().map(|r| r.name_any()).collect::<Vec<_>>(),
        ["skein-control-plane", "skein-dashboard", "skein-tap"]
    );
    let cas = mesh_api::<Secret>(&client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        cas.items
            .iter()
            .filter(|s| s.name_any() == "skein-ca")
            .count(),
        1
    );
    delete_meshconfig(&client, "default").await;
}

#[tokio::test]
async fn federation_state_is_reported_in_the_meshconfig_status() {
    use skein::api::meshconfig::FederationPhase;
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let _operator = Operator::start("operator-federation");
    let clusters = json!({"clusters": [{"name": "east", "kubeconfigSecretRef": {"namespace": "skein-system", "name": "no-such-secret"}}]});
    apply_meshconfig(&client, "default", json!({"federation": clusters})).await;
    let api = Api::<MeshConfig>::all(client.clone());
    let east = eventually("federation status for east", WAIT, || async {
        let status = api.get("default").await.ok()?.status?;
        status
            .federation
            .into_iter()
            .find(|c| c.name == "east" && c.phase == FederationPhase::SecretMissing)
    })
    .await;
    assert!(
        east.message
            .unwrap_or_default()
            .contains("skein-system/no-such-secret")
    );
    // Removing the entry removes its status.
    apply_meshconfig(&client, "default", json!({"federation": {"clusters": []}})).await;
    eventually("the east entry to disappear", WAIT, || async {
        let status = api.get("default").await.ok()?.status?;
        status.federation.is_empty().then_some(())
    })
    .await;
    delete_meshconfig(&client, "default").await;
}

/// A fake node run by kwok: pods scheduled to it are reported Running and Ready (no container
/// runs). Enough to see the operator's Ready condition follow the control plane's pods.
struct FakeNode {
    kwok: Option<Child>,
    name: String,
}

impl FakeNode {
    async fn start(client: &Client, name: &str) -> Self {
        use k8s_openapi::api::core::v1::Node;
        let stages = support::bin_dir().join("../kwok-stages");
        let kwok = Command::new(support::bin_dir().join("kwok"))
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args([
                "--manage-nodes-with-annotation-selector",
                "kwok.x-k8s.io/node=fake",
            ])
            .args(["--cidr", "198.18.250.0/24", "--node-ip", "198.18.250.1"])
            .arg("--config")
            .arg(stages.join("node/fast/node-initialize.yaml"))
            .arg("--config")
            .arg(stages.join("node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"))
            .arg("--config")
            .arg(stages.join("pod/fast/pod-ready.yaml"))
            .arg("--config")
            .arg(stages.join("pod/fast/pod-delete.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting kwok");
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {"type": "kwok"}},
            "status": {"allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                       "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"}}
        }))
        .unwrap();
        let nodes = Api::<Node>::all(client.clone());
        let _ = nodes.delete(name, &DeleteParams::default()).await;
        nodes.create(&PostParams::default(), &node).await.unwrap();
        Self {
            kwok: Some(kwok),
            name: name.to_owned(),
        }
    }

    /// Stops reporting pods ready (as if the node's kubelet died).
    fn stop(&mut self) {
        if let Some(mut kwok) = self.kwok.take() {
            let _ = kwok.kill();
            let _ = kwok.wait();
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop();
        let name = self.name.clone();
        // A client of its own: the test's client runs on the test's runtime, blocked right here.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = cluster::client(kubeconfig()).await.unwrap();
                let _ = Api::<k8s_openapi::api::core::v1::Node>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

#[tokio::test]
async fn in_cluster_ready_follows_the_control_plane_pods() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let mut node = FakeNode::start(&client, "skein-fake-node").await;
    let _operator = Operator::start("operator-ready");

    let applied = Instant::now();
    apply_meshconfig(&client, "default", json!({})).await;
    let ready = wait_condition(&client, "default", "Ready", "True", "ControlPlaneReady").await;
    eprintln!(
        "MeshConfig applied → Ready in {:?} (InCluster mode, kwok node)",
        applied.elapsed()
    );
    assert!(ready.status.unwrap().components[0].ready);
    wait_condition(&client, "default", "Progressing", "False", "Complete").await;

    // The node stops reporting, and the control-plane pod is replaced by one nobody runs.
    node.stop();
    let pods = mesh_api::<Pod>(&client);
    let by_app = ListParams::default().labels("app.kubernetes.io/name=skein-control-plane");
    for pod in pods.list(&by_app).await.unwrap() {
        pods.delete(
            &pod.name_any(),
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let not_ready =
        wait_condition(&client, "default", "Ready", "False", "ControlPlaneNotReady").await;
    let message = condition(&not_ready, "Ready").unwrap().2;
    assert!(message.contains("0 of 1"), "{message}");
    delete_meshconfig(&client, "default").await;
}

/// Started by hand with a Lease namespace that does not exist, the operator stops at once with
/// one line saying what to create, instead of retrying a raw `NotFound` forever.
#[tokio::test]
async fn a_missing_lease_namespace_stops_the_operator_with_one_line() {
    let _ = client().await;
    let output = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args([
            "operator",
            "--lease-namespace",
            "skein-test-no-such-namespace",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("running skein operator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "the lease namespace skein-test-no-such-namespace does not exist: create it (`kubectl create namespace skein-test-no-such-namespace`)"
        ),
        "{stderr}"
    );
}

/// A setting the schema accepts but nothing acts on yet is named in status rather than
/// silently ignored, without holding the install back; the condition clears when it goes.
#[tokio::test]
async fn a_setting_not_built_yet_is_named_in_the_status() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let _operator = Operator::start("operator-not-acting");

    // A remote cluster's `network` is not built yet; tracing and mTLS's mode act, so only the
    // first is named.
    apply_meshconfig(
        &client,
        "default",
        json!({"tracing": {"zipkinEndpoint": "http://zipkin.tracing:9411/api/v2/spans"},
        "mtls": {"mode": "Strict"},
        "federation": {"clusters": [{
            "name": "east",
            "kubeconfigSecretRef": {"namespace": "skein-system", "name": "east"},
            "network": "net-east",
        }]}}),
    )
    .await;
    let mc = wait_condition(
        &client,
        "default",
        "FieldsNotActing",
        "True",
        "NotImplemented",
    )
    .await;
    let message = condition(&mc, "FieldsNotActing").unwrap().2;
    assert!(
        message.contains("spec.federation.clusters[0].network (net-east)"),
        "{message}"
    );
    assert!(message.contains("not acted on yet"), "{message}");
    assert!(!message.contains("mtls"), "{message}");
    assert!(!message.contains("tracing"), "{message}");
    let (installed, _, _) = condition(&mc, "Installed").unwrap();
    assert_eq!(
        installed, "True",
        "the rest of the mesh is installed as usual"
    );

    // Back to the default (the apiserver defaults the field again): nothing to flag.
    apply_meshconfig(&client, "default", json!({})).await;
    let mc = wait_condition(
        &client,
        "default",
        "FieldsNotActing",
        "False",
        "AllFieldsAct",
    )
    .await;
    assert_eq!(
        serde_json::to_value(mc.spec.mtls.mode).unwrap(),
        "Permissive"
    );
    delete_meshconfig(&client, "default").await;
}
