//! Shared support for integration tests: a real local cluster (started or reused through
//! `tests/cluster/up.sh`), Skein's CRDs installed, a namespace per test, and the component logs
//! printed when a test fails.
//!
//! Tests never skip: without a cluster they fail and say how to start one.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod control_plane;
pub mod dashboard;
pub mod demo_load;
pub mod identity;
pub mod netns;
pub mod node;
pub mod pods;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use skein::api::{MeshConfig, crds};
use skein::dev::cluster;

/// Polls `probe` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_or(what, timeout, String::new, probe).await
}

/// [`eventually`], adding what `context` says (a component's log) to the failure.
pub async fn eventually_or<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    context: impl Fn() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}{}",
            context()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
/// `skein`, with the `skein-proxy` that `skein proxy` execs beside it, where any user can run
/// both: hard links (copies across file systems) in a directory of the system's temp dir, named
/// after the target directory. The test binaries sit in cargo's target directory, which may be
/// under a home only root enters (CI's is ~/.cache): `setpriv` still execs `skein` there, as it
/// holds its capabilities until the exec, but `skein proxy`, by then the proxy UID, could not
/// exec `skein-proxy` and would run the proxy itself.
pub fn skein_for_any_user() -> &'static str {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::PermissionsExt;

    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let skein = Path::new(env!("CARGO_BIN_EXE_skein"));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        skein.parent().hash(&mut hasher);
        let dir = std::env::temp_dir().join(format!("skein-test-bin-{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|err| panic!("opening {} to every user: {err}", dir.display()));
        for (name, source) in [
            ("skein", env!("CARGO_BIN_EXE_skein")),
            ("skein-proxy", env!("CARGO_BIN_EXE_skein-proxy")),
        ] {
            // Staged under a name of this process, then renamed over the old one: test
            // processes starting at once each install a whole binary, never a partial one.
            let staged = dir.join(format!(".{name}.{}", std::process::id()));
            let _ = std::fs::remove_file(&staged);
            if std::fs::hard_link(source, &staged).is_err() {
                std::fs::copy(source, &staged).unwrap_or_else(|err| {
                    panic!("copying {source} to {}: {err}", staged.display())
                });
            }
            std::fs::rename(&staged, dir.join(name))
                .unwrap_or_else(|err| panic!("installing {name} in {}: {err}", dir.display()));
            // A rename onto a link to the same file does nothing and leaves the staged name.
            let _ = std::fs::remove_file(&staged);
        }
        dir.join("skein").display().to_string()
    })
}

/// The cluster integration tests use, separate from the `skein dev up` one.
pub const TEST_CLUSTER: &str = "skein-test";
/// Label on everything a test creates, valued with the test's namespace, so cleanup finds
/// cluster-scoped objects too.
pub const TEST_OWNER_LABEL: &str = "skein.dev/test-owner";

pub fn source_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

static CLUSTER: OnceLock<&'static str> = OnceLock::new();

/// Makes this test binary use its own local cluster instead of [`TEST_CLUSTER`] (for tests that
/// would disturb others, e.g. by running a node). Call before anything else touches the cluster.
pub fn use_cluster(name: &'static str) {
    let chosen = *CLUSTER.get_or_init(|| name);
    assert_eq!(
        chosen, name,
        "this test binary already uses cluster {chosen}"
    );
}

/// How the apiserver of this test binary's cluster reaches pods and Services.
static NETWORK: OnceLock<cluster::ApiserverNetwork> = OnceLock::new();

/// [`use_cluster`], with the apiserver reaching the node's pods and Services as on a real
/// cluster (webhooks behind Services, the kubelet API): what the Helm chart's InCluster mode
/// needs. The test binary runs the node agent.
pub fn use_cluster_through_node(name: &'static str) {
    use_cluster(name);
    NETWORK.get_or_init(|| cluster::ApiserverNetwork::ThroughNode);
}

/// The local cluster this test binary uses.
pub fn cluster_name() -> &'static str {
    CLUSTER.get_or_init(|| TEST_CLUSTER)
}

/// Admin kubeconfig of the test cluster: for the shared `skein-test` cluster
/// `SKEIN_TEST_KUBECONFIG` if set, else the local cluster (or the one chosen with
/// [`use_cluster`]), started on first use.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        let name = cluster_name();
        // The override stands for the shared cluster only; a test binary with its own cluster
        // (its node agent runs there) must not be pointed elsewhere.
        if name == TEST_CLUSTER
            && let Some(path) = std::env::var_os("SKEIN_TEST_KUBECONFIG")
        {
            return PathBuf::from(path);
        }
        cluster::ensure_up(
            source_dir(),
            name,
            *NETWORK.get_or_init(|| cluster::ApiserverNetwork::LoopbackOnly),
        )
        .unwrap_or_else(|err| {
            panic!(
                "integration tests need a real cluster and could not start one: {err}\n\
                 Start it yourself with `tests/cluster/up.sh {name}` (see README.md), \
                 or point SKEIN_TEST_KUBECONFIG at a kubeconfig."
            )
        })
    })
}

/// Directory holding the kube-built tools (`kubectl`, ...) of the local cluster.
pub fn bin_dir() -> &'static Path {
    static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();
    BIN_DIR.get_or_init(|| {
        cluster::bin_dir(source_dir(), cluster::BuildGroup::ALL)
            .unwrap_or_else(|err| panic!("building the local cluster's binaries: {err}"))
    })
}

/// `kubectl` (the version built with the cluster) pointed at the test cluster.
pub fn kubectl() -> Command {
    let mut command = Command::new(bin_dir().join("kubectl"));
    command.env("KUBECONFIG", kubeconfig());
    command
}

/// A client for the test cluster, with Skein's CRDs installed and Established.
pub async fn client() -> Client {
    let client = cluster::client(kubeconfig())
        .await
        .expect("building a client for the test cluster");
    crds::install(&client)
        .await
        .expect("installing the Skein CRDs");
    client
}

/// One test's own namespace. Dropping it deletes the namespace and every cluster-scoped object
/// labelled with [`TEST_OWNER_LABEL`] = its name; if the test is failing, it first prints the
/// tail of each control-plane component's log.
pub struct TestContext {
    pub client: Client,
    pub namespace: String,
}

impl TestContext {
    pub async fn new() -> Self {
        let client = client().await;
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some("skein-test-".to_owned()),
                labels: Some([("skein.dev/test".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("creating the test namespace");
        let namespace = created
            .metadata
            .name
            .expect("the apiserver names generated namespaces");
        Self { client, namespace }
    }

    /// Labels marking an object as this test's, for cleanup.
    pub fn owner_labels(&self) -> std::collections::BTreeMap<String, String> {
        [(TEST_OWNER_LABEL.to_owned(), self.namespace.clone())].into()
    }

    /// A name unique to this test, for cluster-scoped objects.
    pub fn unique_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.namespace)
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_component_logs();
        }
        let namespace = self.namespace.clone();
        // Drop cannot be async: clean up on a thread with its own runtime, and a client of its
        // own (the test's client runs on the test's runtime, which is blocked right here).
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the cleanup runtime");
            runtime.block_on(async move {
                let client = match cluster::client(kubeconfig()).await {
                    Ok(client) => client,
                    Err(err) => return eprintln!("cleanup of {namespace}: {err}"),
                };
                let by_owner =
                    ListParams::default().labels(&format!("{TEST_OWNER_LABEL}={namespace}"));
                delete_owned::<MeshConfig>(&client, &by_owner).await;
                delete_owned::<MutatingWebhookConfiguration>(&client, &by_owner).await;
                delete_owned::<ValidatingWebhookConfiguration>(&client, &by_owner).await;
                // Namespaces have no deletecollection: the test's extra ones one by one.
                let namespaces = Api::<Namespace>::all(client.clone());
                if let Ok(extra) = namespaces.list_metadata(&by_owner).await {
                    for name in extra.items.into_iter().filter_map(|ns| ns.metadata.name) {
                        if let Err(err) = namespaces.delete(&name, &DeleteParams::default()).await {
                            eprintln!("cleanup: deleting namespace {name}: {err}");
                        }
                    }
                }
                if let Err(err) = Api::<Namespace>::all(client)
                    .delete(&namespace, &DeleteParams::default())
                    .await
                {
                    eprintln!("cleanup: deleting namespace {namespace}: {err}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Deletes the cluster-scoped objects of kind `K` that a test labelled as its own.
async fn delete_owned<K>(client: &Client, by_owner: &ListParams)
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if let Err(err) = Api::<K>::all(client.clone())
        .delete_collection(&DeleteParams::default(), by_owner)
        .await
    {
        eprintln!("cleanup: deleting {} objects: {err}", K::kind(&()));
    }
}

/// Prints the last lines of every local control-plane component's log (failing tests only).
pub fn print_component_logs() {
    let Some(logs) = kubeconfig().parent().map(|dir| dir.join("logs")) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&logs) else {
        eprintln!("(no component logs at {})", logs.display());
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        eprintln!("--- last {} lines of {}", tail.len(), path.display());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

/// Brings the meshed demo up on `name` with `skein dev up`, once per test binary (idempotent:
/// a running one is reused).
pub fn demo_up(name: &'static str) {
    static UP: OnceLock<()> = OnceLock::new();
    UP.get_or_init(|| {
        use_cluster(name);
        dev_up(name);
    });
}

/// Runs `skein dev up` on `name` (again: it restarts what is not running) and asserts it worked.
pub fn dev_up(name: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["dev", "up", "--cluster", name])
        .env("SKEIN_SOURCE_DIR", source_dir())
        .env("SKEIN_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running skein dev up");
    assert!(
        out.status.success(),
        "skein dev up failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
