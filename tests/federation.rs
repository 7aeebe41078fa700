//! Federation against real apiservers: the primary test cluster holds the kubeconfig Secrets
//! (built by the real `skein federation create-secret`), a second local cluster
//! (`skein-test-remote`) is the remote one, and a third (`skein-test-flap`), owned by one test,
//! is stopped and resumed.
//!
//! Detection times are printed (`federation timing: ...`; run with `--nocapture` to see them).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServicePort, ServiceSpec};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use skein::api::meshconfig::{
    ExportedService, FederationPhase, RemoteCluster, RemoteClusterStatus, SecretKeyRef,
};
use skein::dev::cluster;
use skein::operator::federation::Federation;
use skein::pki::Ca;
use support::TestContext;

const REMOTE_CLUSTER: &str = "skein-test-remote";
const FLAP_CLUSTER: &str = "skein-test-flap";
/// The entry name every test uses; create-secret names the Secret after it.
const NAME: &str = "remote";
const SECRET: &str = "skein-remote-remote";
/// Short, so tests are fast; the flap test uses the production interval instead.
const TEST_INTERVAL: Duration = Duration::from_millis(500);
/// Bound of every wait.
const DEADLINE: Duration = Duration::from_secs(60);

/// Starts (or reuses) a local cluster and returns its admin kubeconfig.
async fn start_cluster(name: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || {
        cluster::ensure_up(
            support::source_dir(),
            name,
            cluster::ApiserverNetwork::LoopbackOnly,
        )
        .unwrap_or_else(|err| panic!("starting the {name} cluster: {err}"))
    })
    .await
    .unwrap()
}

/// The shared remote cluster, started once per test binary.
async fn remote_kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = KUBECONFIG.get() {
        return path;
    }
    let path = start_cluster(REMOTE_CLUSTER).await;
    KUBECONFIG.get_or_init(|| path)
}

/// The Secret `skein federation create-secret` prints for the kubeconfig at `kubeconfig`.
fn create_secret(kubeconfig: &Path, namespace: &str) -> Secret {
    let output = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["federation", "create-secret", "--name", NAME])
        .args(["--namespace", namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "create-secret failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    skein::yaml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap()
}

/// Creates or replaces the Secret on the primary cluster (server-side apply: keys this test
/// applied before and left out now are removed).
async fn apply_secret(ctx: &TestContext, secret: &Secret) {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = secret.metadata.name.as_deref().unwrap();
    api.patch(
        name,
        &PatchParams::apply("skein-federation-test").force(),
        &Patch::Apply(secret),
    )
    .await
    .unwrap();
}

/// `secret` with its data replaced by `key: value`.
fn with_data(secret: &Secret, key: &str, value: &[u8]) -> Secret {
    Secret {
        data: Some([(key.to_owned(), ByteString(value.to_vec()))].into()),
        ..secret.clone()
    }
}

fn entry(ctx: &TestContext, name: &str, secret: &str) -> RemoteCluster {
    RemoteCluster {
        name: name.to_owned(),
        kubeconfig_secret_ref: SecretKeyRef {
            namespace: ctx.namespace.clone(),
            name: secret.to_owned(),
            key: "kubeconfig".to_owned(),
        },
        network: None,
    }
}

/// Polls `status()` every 200 ms until the entry `name` satisfies `done`; returns it and how
/// long it took. Panics with the last status at the deadline.
async fn wait_for(
    federation: &Federation,
    name: &str,
    what: &str,
    done: impl Fn(&RemoteClusterStatus) -> bool,
) -> (RemoteClusterStatus, Duration) {
    let start = Instant::now();
    loop {
        let status = federation.status().into_iter().find(|s| s.name == name);
        if let Some(status) = status.filter(|status| done(status)) {
            let elapsed = start.elapsed();
            let message = status.message.as_deref().unwrap_or_default();
            eprintln!("federation timing: {what}: {elapsed:.1?} ({message})");
            return (status, elapsed);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}; status: {:#?}",
            federation.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn phase_is(phase: FederationPhase) -> impl Fn(&RemoteClusterStatus) -> bool {
    move |status| status.phase == phase
}

/// The Kubernetes version the local clusters are built at (`tests/cluster/versions.env`).
fn pinned_k8s_version() -> String {
    let env =
        std::fs::read_to_string(support::source_dir().join("tests/cluster/versions.env")).unwrap();
    env.lines()
        .find_map(|line| line.strip_prefix("K8S_VERSION="))
        .unwrap()
        .trim()
        .to_owned()
}

/// A namespace of the remote cluster, deleted on drop.
struct RemoteNamespace {
    name: String,
    kubeconfig: PathBuf,
}

impl RemoteNamespace {
    async fn new(remote: &Client, kubeconfig: &Path) -> Self {
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some("skein-federation-".to_owned()),
                labels: Some([("skein.dev/test".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = Api::<Namespace>::all(remote.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        Self {
            name: created.metadata.name.unwrap(),
            kubeconfig: kubeconfig.to_owned(),
        }
    }
}

impl Drop for RemoteNamespace {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        // Drop cannot be async, and the test's runtime is blocked right here.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let result = match cluster::client(&kubeconfig).await {
                    Ok(client) => Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(drop)
                        .map_err(|err| err.to_string()),
                    Err(err) => Err(err.to_string()),
                };
                if let Err(err) = result {
                    eprintln!("cleanup: deleting remote namespace {name}: {err}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn service(namespace: &str, name: &str, exported: bool, ports: &[i32]) -> Service {
    let labels = exported.then(|| [("skein.dev/exported".to_owned(), "true".to_owned())].into());
    Service {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels,
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|&port| ServicePort {
                        name: Some(format!("p{port}")),
                        port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test]
async fn a_remote_cluster_is_connected_with_its_version_and_exported_services() {
    let ctx = TestContext::new().await;
    let kubeconfig = remote_kubeconfig().await;
    let remote = cluster::client(kubeconfig).await.unwrap();
    let namespace = RemoteNamespace::new(&remote, kubeconfig).await;
    let services: Api<Service> = Api::namespaced(remote.clone(), &namespace.name);
    for service in [
        service(&namespace.name, "exported", true, &[8080, 80]),
        service(&namespace.name, "private", false, &[80]),
    ] {
        services
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
    }
    apply_secret(&ctx, &create_secret(kubeconfig, &ctx.namespace)).await;

    let federation =
        Federation::with_secret_namespace(ctx.client.clone(), TEST_INTERVAL, &ctx.namespace);
    federation.sync(&[entry(&ctx, NAME, SECRET)]);
    let (status, _) = wait_for(&federation, NAME, "added → Connected", |status| {
        status.phase == FederationPhase::Connected
            && status
                .exported_services
                .iter()
                .any(|s| s.namespace == namespace.name)
    })
    .await;

    let version = remote.apiserver_version().await.unwrap().git_version;
    assert_eq!(version, pinned_k8s_version());
    assert_eq!(status.version.as_deref(), Some(version.as_str()));
    assert!(status.last_successful_probe_time.is_some());
    let ours: Vec<&ExportedService> = status
        .exported_services
        .iter()
        .filter(|s| s.namespace == namespace.name)
        .collect();
    assert_eq!(
        ours,
        [&ExportedService {
            namespace: namespace.name.clone(),
            name: "exported".to_owned(),
            ports: vec![80, 8080],
        }]
    );
    federation.stop_all();
}

#[tokio::test]
async fn secret_problems_are_reported_and_a_fixed_secret_is_picked_up() {
    let ctx = TestContext::new().await;
    let good = create_secret(remote_kubeconfig().await, &ctx.namespace);
    apply_secret(&ctx, &good).await;
    let federation =
        Federation::with_secret_namespace(ctx.client.clone(), TEST_INTERVAL, &ctx.namespace);
    federation.sync(&[entry(&ctx, NAME, SECRET)]);
    wait_for(
        &federation,
        NAME,
        "added → Connected",
        phase_is(FederationPhase::Connected),
    )
    .await;
    let secret_name = format!("{}/{SECRET}", ctx.namespace);

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    secrets
        .delete(SECRET, &DeleteParams::default())
        .await
        .unwrap();
    let (status, _) = wait_for(
        &federation,
        NAME,
        "Secret deleted → SecretMissing",
        phase_is(FederationPhase::SecretMissing),
    )
    .await;
    let message = status.message.unwrap();
    assert!(message.contains(&secret_name), "{message}");
    // What was learnt while connected stays, marked stale by the phase.
    assert!(status.last_successful_probe_time.is_some());

    let kubeconfig = good.data.as_ref().unwrap()["kubeconfig"].0.clone();
    apply_secret(&ctx, &with_data(&good, "config", &kubeconfig)).await;
    let (status, _) = wait_for(
        &federation,
        NAME,
        "wrong key → SecretMissing naming the key",
        |status| {
            status.phase == FederationPhase::SecretMissing
                && status
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("has no key"))
        },
    )
    .await;
    let message = status.message.unwrap();
    assert!(
        message.contains("\"kubeconfig\"") && message.contains(&secret_name),
        "{message}"
    );

    apply_secret(
        &ctx,
        &with_data(&good, "kubeconfig", b"clusters: [not yaml"),
    )
    .await;
    let (status, _) = wait_for(
        &federation,
        NAME,
        "garbage → InvalidKubeconfig",
        phase_is(FederationPhase::InvalidKubeconfig),
    )
    .await;
    let message = status.message.unwrap();
    assert!(message.contains(&secret_name), "{message}");

    // The kubeconfig bytes changed again: the remote client is rebuilt from them.
    apply_secret(&ctx, &good).await;
    wait_for(
        &federation,
        NAME,
        "Secret fixed → Connected",
        phase_is(FederationPhase::Connected),
    )
    .await;
    federation.stop_all();
}

/// The kubeconfig of `secret` with `edit` applied to its (only) cluster.
fn with_cluster_edit(secret: &Secret, edit: impl FnOnce(&mut kube::config::Cluster)) -> Secret {
    let text = &secret.data.as_ref().unwrap()["kubeconfig"].0;
    let mut kubeconfig = Kubeconfig::from_yaml(std::str::from_utf8(text).unwrap()).unwrap();
    edit(kubeconfig.clusters[0].cluster.as_mut().unwrap());
    with_data(
        secret,
        "kubeconfig",
        &serde_json::to_vec(&kubeconfig).unwrap(),
    )
}

#[tokio::test]
async fn kubeconfigs_that_aim_the_operator_elsewhere_and_secrets_outside_the_mesh_namespace_are_refused()
 {
    let ctx = TestContext::new().await;
    let good = create_secret(remote_kubeconfig().await, &ctx.namespace);
    apply_secret(&ctx, &good).await;
    let secret_name = format!("{}/{SECRET}", ctx.namespace);

    // The operator's own settings read kubeconfig Secrets from skein-system only: a working
    // Secret in a tenant's namespace is never read.
    let mesh_only = Federation::with_interval(ctx.client.clone(), TEST_INTERVAL);
    mesh_only.sync(&[entry(&ctx, NAME, SECRET)]);
    let (status, _) = wait_for(
        &mesh_only,
        NAME,
        "Secret outside skein-system → SecretMissing",
        phase_is(FederationPhase::SecretMissing),
    )
    .await;
    let message = status.message.unwrap();
    assert!(
        message.contains(&format!("Secret {secret_name} is outside skein-system")),
        "{message}"
    );
    assert!(status.last_successful_probe_time.is_none());
    mesh_only.stop_all();

    // Where Secrets may be read (here the test's namespace), the server must be https, its
    // certificate verified and no proxy in between.
    let federation =
        Federation::with_secret_namespace(ctx.client.clone(), TEST_INTERVAL, &ctx.namespace);
    federation.sync(&[entry(&ctx, NAME, SECRET)]);
    wait_for(
        &federation,
        NAME,
        "added → Connected",
        phase_is(FederationPhase::Connected),
    )
    .await;
    let refused = |expected: &'static str| {
        move |status: &RemoteClusterStatus| {
            status.phase == FederationPhase::InvalidKubeconfig
                && status
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains(expected))
        }
    };
    let plain = with_cluster_edit(&good, |cluster| {
        let server = cluster.server.clone().unwrap();
        cluster.server = Some(server.replacen("https://", "http://", 1));
    });
    apply_secret(&ctx, &plain).await;
    let (status, _) = wait_for(
        &federation,
        NAME,
        "http:// server → InvalidKubeconfig",
        refused("is not an https:// URL"),
    )
    .await;
    assert!(
        status.message.unwrap().contains(&secret_name),
        "the message names the Secret"
    );
    let proxied = with_cluster_edit(&good, |cluster| {
        cluster.proxy_url = Some("http://127.0.0.1:3128".to_owned());
    });
    apply_secret(&ctx, &proxied).await;
    wait_for(
        &federation,
        NAME,
        "proxy-url → InvalidKubeconfig",
        refused("it sets proxy-url"),
    )
    .await;
    let unverified = with_cluster_edit(&good, |cluster| {
        cluster.certificate_authority_data = None;
        cluster.insecure_skip_tls_verify = Some(true);
    });
    apply_secret(&ctx, &unverified).await;
    wait_for(
        &federation,
        NAME,
        "insecure-skip-tls-verify → InvalidKubeconfig",
        refused("insecure-skip-tls-verify"),
    )
    .await;
    apply_secret(&ctx, &good).await;
    wait_for(
        &federation,
        NAME,
        "Secret fixed → Connected",
        phase_is(FederationPhase::Connected),
    )
    .await;
    federation.stop_all();
}

#[tokio::test]
async fn a_client_certificate_from_an_unrelated_ca_is_an_auth_failure() {
    let ctx = TestContext::new().await;
    let remote = Kubeconfig::read_from(remote_kubeconfig().await).unwrap();
    let cluster = remote.clusters[0].cluster.as_ref().unwrap();
    let server = cluster.server.as_deref().unwrap();
    let ca_file = cluster.certificate_authority.as_deref().unwrap();

    // The apiserver trusts only its own client CA; a certificate from any other is refused
    // (401), unlike no certificate at all (anonymous, which may read /version).
    let unrelated = Ca::generate("unrelated-ca", Duration::from_secs(3600)).unwrap();
    let client = unrelated
        .issue_serving(&["skein-federation-test"], Duration::from_secs(3600))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::write(&cert_file, &client.cert_pem).unwrap();
    std::fs::write(&key_file, &client.key_pem).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: r, cluster: {{server: '{server}', certificate-authority: '{ca_file}'}}}}]\n\
             users: [{{name: stranger, user: {{client-certificate: '{}', client-key: '{}'}}}}]\n\
             contexts: [{{name: r, context: {{cluster: r, user: stranger}}}}]\n\
             current-context: r\n",
            cert_file.display(),
            key_file.display(),
        ),
    )
    .unwrap();
    // create-secret inlines the three files.
    apply_secret(&ctx, &create_secret(&kubeconfig, &ctx.namespace)).await;

    let federation =
        Federation::with_secret_namespace(ctx.client.clone(), TEST_INTERVAL, &ctx.namespace);
    federation.sync(&[entry(&ctx, NAME, SECRET)]);
    let (status, _) = wait_for(
        &federation,
        NAME,
        "unrelated client certificate → AuthFailed",
        phase_is(FederationPhase::AuthFailed),
    )
    .await;
    let message = status.message.unwrap();
    assert!(message.contains("401"), "{message}");
    assert_eq!(status.last_successful_probe_time, None);
    federation.stop_all();
}

/// The flap cluster's apiserver, frozen with SIGSTOP.
///
/// Why not stop and restart the cluster: `down` deletes its state, so a restarted cluster has
/// new certificates and a new port, and the old Secret would point at a dead port: that tests
/// nothing about recovery. A stopped process keeps its listening socket: the kernel still
/// completes TCP handshakes, but nothing answers, which is the hung-apiserver case the probe
/// timeout exists for. SIGCONT resumes it, same port, same certificates.
struct FrozenApiserver {
    pid: String,
}

impl FrozenApiserver {
    fn freeze(kubeconfig: &Path) -> Self {
        // up.sh keeps the pids next to the kubeconfig: <state>/clusters/NAME/pids/.
        let pid_file = kubeconfig.parent().unwrap().join("pids/kube-apiserver");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_owned();
        signal("STOP", &pid);
        Self { pid }
    }
}

impl Drop for FrozenApiserver {
    fn drop(&mut self) {
        signal("CONT", &self.pid);
    }
}

fn signal(signal: &str, pid: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid)
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Stops the flap cluster (deleting its state) on drop, failing or not.
struct FlapCluster;

impl Drop for FlapCluster {
    fn drop(&mut self) {
        if let Err(err) = cluster::down(support::source_dir(), FLAP_CLUSTER) {
            eprintln!("stopping {FLAP_CLUSTER}: {err}");
        }
    }
}

#[tokio::test]
async fn a_frozen_apiserver_is_unreachable_within_a_minute_and_connected_once_resumed() {
    let ctx = TestContext::new().await;
    let kubeconfig = start_cluster(FLAP_CLUSTER).await;
    let _flap = FlapCluster;
    apply_secret(&ctx, &create_secret(&kubeconfig, &ctx.namespace)).await;

    // The production interval (10 s) and timeout (5 s): these are the times an operator sees.
    let federation = Federation::with_secret_namespace(
        ctx.client.clone(),
        skein::operator::federation::DEFAULT_PROBE_INTERVAL,
        &ctx.namespace,
    );
    federation.sync(&[entry(&ctx, NAME, SECRET)]);
    wait_for(
        &federation,
        NAME,
        "added → Connected",
        phase_is(FederationPhase::Connected),
    )
    .await;

    let frozen = FrozenApiserver::freeze(&kubeconfig);
    let (status, _) = wait_for(
        &federation,
        NAME,
        "apiserver SIGSTOP → Unreachable (10 s interval)",
        phase_is(FederationPhase::Unreachable),
    )
    .await;
    let message = status.message.unwrap();
    assert!(message.contains("timed out"), "{message}");
    assert!(status.last_successful_probe_time.is_some());

    drop(frozen);
    wait_for(
        &federation,
        NAME,
        "apiserver SIGCONT → Connected (10 s interval)",
        phase_is(FederationPhase::Connected),
    )
    .await;
    federation.stop_all();
}

#[tokio::test]
async fn removing_an_entry_removes_its_status() {
    let ctx = TestContext::new().await;
    let federation =
        Federation::with_secret_namespace(ctx.client.clone(), TEST_INTERVAL, &ctx.namespace);
    let mut changes = federation.subscribe();
    let (a, b) = (entry(&ctx, "a", "no-such-a"), entry(&ctx, "b", "no-such-b"));
    federation.sync(&[a.clone(), b.clone()]);
    for name in ["a", "b"] {
        wait_for(
            &federation,
            name,
            "nonexistent Secret → SecretMissing",
            phase_is(FederationPhase::SecretMissing),
        )
        .await;
    }
    let names = |federation: &Federation| -> Vec<String> {
        federation.status().into_iter().map(|s| s.name).collect()
    };
    assert_eq!(names(&federation), ["a", "b"]);

    changes.mark_unchanged();
    federation.sync(&[b]);
    assert!(changes.has_changed().unwrap());
    assert_eq!(names(&federation), ["b"]);
    federation.sync(&[]);
    assert!(federation.status().is_empty());
}
