//! Federation state: what the operator knows about each remote cluster listed in
//! `MeshConfig.spec.federation.clusters`, and `skein federation create-secret`.
//!
//! # How a cluster is watched
//!
//! [`Federation::sync`] keeps one tokio task per listed cluster. Every probe interval (10 s) the
//! task:
//!
//! 1. reads the referenced Secret from the *local* cluster, only from the mesh namespace
//!    (`skein-system`: whoever may write Secrets there is a mesh administrator anyway, and the
//!    operator needs no Secret access elsewhere). A Secret elsewhere, or a missing Secret or
//!    key, is `SecretMissing`. The kubeconfig must parse, have a usable current context and be
//!    self-contained (data inlined, no exec plugin or auth provider: the operator must never run
//!    programs or read its own files on behalf of whoever can write that Secret), and its server
//!    must be safe to probe with the credentials in it (`https`, certificate verified, no
//!    `proxy-url`); otherwise it is `InvalidKubeconfig`. The remote client is rebuilt only when the kubeconfig bytes change,
//!    so editing the Secret (new credentials, new address) takes effect at the next probe;
//! 2. asks the remote apiserver for its version and lists the Services labelled
//!    `skein.dev/exported=true` in all namespaces. Each request is bounded by 5 s (connect, read
//!    and write timeouts on the client, plus an overall deadline), so a hung apiserver is
//!    `Unreachable` within one interval plus 5 s. 401/403 is `AuthFailed`; anything else
//!    (refused, timeout, TLS, 5xx) is `Unreachable`.
//!
//! A failed probe keeps the last known version, exported services and
//! `lastSuccessfulProbeTime`: the phase and message say they are stale.
//!
//! # Change notification
//!
//! [`Federation::status`] only changes when the receivers of [`Federation::subscribe`] are
//! notified. A probe result is published when it differs from the published status in anything
//! but `lastSuccessfulProbeTime`, or when the published probe time is older than
//! [`PROBE_TIME_REFRESH`]: the MeshConfig status is then rewritten on real changes plus once every
//! five minutes, instead of every 10 s, and its `lastSuccessfulProbeTime` is never more than five
//! minutes stale.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta};
use kube::config::{
    AuthInfo, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::{Client, Config};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::meshconfig::{
    ExportedService, FederationPhase, RemoteCluster, RemoteClusterStatus, SecretKeyRef,
};
use crate::api::names;
use crate::cli::CreateSecretArgs;

/// How often each remote cluster is probed.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Bound of every request of a probe (connect, read, write, and overall).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A published `lastSuccessfulProbeTime` older than this is refreshed even if nothing else
/// changed.
pub const PROBE_TIME_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Label (key and value) of the Services a remote cluster exports to the mesh.
pub const EXPORTED_LABEL_KEY: &str = "skein.dev/exported";
pub const EXPORTED_LABEL_VALUE: &str = "true";
/// Label of a kubeconfig Secret naming the remote cluster it reaches.
pub const REMOTE_CLUSTER_LABEL: &str = "skein.dev/remote-cluster";
const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";

/// Errors of create-secret and of probes. Each message is a whole one-liner (causes included and
/// not repeated as `source`, so `{:#}` does not print them twice); probe errors become the
/// status message.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    // --- skein federation create-secret
    #[error("the kubeconfig has no current context (select one with `kubectl config use-context`)")]
    NoCurrentContext,
    #[error("the current context {0:?} is not defined in the kubeconfig")]
    MissingContext(String),
    #[error("context {context:?} uses cluster {cluster:?}, which the kubeconfig does not define")]
    MissingCluster { context: String, cluster: String },
    #[error("context {context:?} has no user")]
    NoUser { context: String },
    #[error("context {context:?} uses user {user:?}, which the kubeconfig does not define")]
    MissingUser { context: String, user: String },
    #[error("cluster {cluster:?} has no server address; pass --server")]
    NoServer { cluster: String },
    #[error("reading {field} {path}: {error}")]
    ReadFile {
        field: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error(
        "user {user:?} authenticates with {mechanism}, which the operator cannot use; \
         use a context with a client certificate or a token (e.g. a ServiceAccount token)"
    )]
    UnsupportedAuth {
        user: String,
        mechanism: &'static str,
    },
    #[error("user {user:?} has neither a client certificate nor a token")]
    NoCredentials { user: String },
    #[error("encoding the kubeconfig: {0}")]
    Encode(serde_json::Error),
    #[error("encoding the Secret as YAML: {0}")]
    Yaml(crate::yaml::YamlError),

    // --- probing a remote cluster
    #[error("Secret {namespace}/{name} does not exist")]
    SecretNotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "Secret {namespace}/{name} is outside {allowed}: the operator reads federation \
         kubeconfigs only from {allowed}; create the Secret there and point kubeconfigSecretRef at it"
    )]
    SecretOutsideMeshNamespace {
        namespace: String,
        name: String,
        allowed: String,
    },
    #[error("the operator may not read Secret {namespace}/{name}: {reason}")]
    SecretForbidden {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("reading Secret {namespace}/{name} from the local cluster: {reason}")]
    ReadSecret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("the kubeconfig in Secret {secret} is invalid: {reason}")]
    InvalidKubeconfig { secret: String, reason: String },
    #[error("{what} at {server}: {reason}")]
    Remote {
        server: String,
        what: &'static str,
        phase: FederationPhase,
        reason: String,
    },
}

impl FederationError {
    /// The phase a probe that failed with this error reports. `None`: a local problem that says
    /// nothing about the remote cluster (the last status stands).
    fn phase(&self) -> Option<FederationPhase> {
        match self {
            Self::SecretNotFound { .. }
            | Self::SecretKeyMissing { .. }
            | Self::SecretForbidden { .. }
            | Self::SecretOutsideMeshNamespace { .. } => Some(FederationPhase::SecretMissing),
            Self::InvalidKubeconfig { .. } => Some(FederationPhase::InvalidKubeconfig),
            Self::Remote { phase, .. } => Some(*phase),
            Self::ReadSecret { .. } => None,
            // create-secret errors never come out of a probe; if one did, the kubeconfig is
            // what is wrong.
            _ => Some(FederationPhase::InvalidKubeconfig),
        }
    }
}

// =============================================================================================
// Federation: the per-cluster tasks and their published status

/// The federation state of one MeshConfig. Cheap to clone; all clones share the tasks, which
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct Federation {
    shared: Arc<Shared>,
}

struct Shared {
    local: Client,
    interval: Duration,
    /// The one namespace kubeconfig Secrets are read from.
    secret_namespace: String,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Cluster names in the order of the last sync.
    order: Vec<String>,
    entries: HashMap<String, Entry>,
    /// Identifies a task, so a replaced task that is still finishing cannot publish.
    next_generation: u64,
}

struct Entry {
    cluster: RemoteCluster,
    status: RemoteClusterStatus,
    generation: u64,
    task: Option<JoinHandle<()>>,
}

impl Entry {
    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for entry in state.entries.values_mut() {
            entry.stop();
        }
    }
}

impl Federation {
    /// Reads kubeconfig Secrets through `local` and probes every [`DEFAULT_PROBE_INTERVAL`].
    pub fn new(local: Client) -> Self {
        Self::with_interval(local, DEFAULT_PROBE_INTERVAL)
    }

    /// Like [`Federation::new`] with another probe interval (tests use a short one).
    pub fn with_interval(local: Client, interval: Duration) -> Self {
        Self::with_secret_namespace(local, interval, names::MESH_NAMESPACE)
    }

    /// Like [`Federation::with_interval`], reading kubeconfig Secrets from `secret_namespace`
    /// instead of the mesh namespace (tests give each their own namespace).
    pub fn with_secret_namespace(
        local: Client,
        interval: Duration,
        secret_namespace: &str,
    ) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                local,
                interval,
                secret_namespace: secret_namespace.to_owned(),
                state: Mutex::new(State::default()),
                changes,
            }),
        }
    }

    /// Called on every reconcile with the MeshConfig's clusters: starts a probe task per new
    /// entry, restarts a task whose Secret reference changed, stops tasks of removed entries.
    /// Idempotent and cheap when nothing changed. Must be called within a tokio runtime (the
    /// tasks are spawned on it). Of duplicate names, the first entry counts.
    pub fn sync(&self, clusters: &[RemoteCluster]) {
        let mut seen = HashSet::new();
        let wanted: Vec<&RemoteCluster> = clusters
            .iter()
            .filter(|cluster| {
                let first = seen.insert(cluster.name.as_str());
                if !first {
                    tracing::warn!(cluster = %cluster.name, "duplicate remote cluster name; using the first entry");
                }
                first
            })
            .collect();

        let mut state = self.shared.lock();
        let mut changed = false;
        state.entries.retain(|name, entry| {
            let keep = seen.contains(name.as_str());
            if !keep {
                tracing::info!(cluster = %name, "remote cluster removed; stopping its probe");
                entry.stop();
                changed = true;
            }
            keep
        });
        for &cluster in &wanted {
            match state.entries.get_mut(&cluster.name) {
                // Only the Secret reference matters to probing; other fields (the network) are
                // just kept current.
                Some(entry)
                    if entry.cluster.kubeconfig_secret_ref == cluster.kubeconfig_secret_ref =>
                {
                    entry.cluster.clone_from(cluster);
                }
                Some(_) => {
                    tracing::info!(cluster = %cluster.name, "kubeconfig Secret reference changed; restarting its probe");
                    self.start(&mut state, cluster);
                    changed = true;
                }
                None => {
                    tracing::info!(cluster = %cluster.name, "remote cluster added; starting its probe");
                    self.start(&mut state, cluster);
                    changed = true;
                }
            }
        }
        let order: Vec<String> = wanted.iter().map(|cluster| cluster.name.clone()).collect();
        if order != state.order {
            state.order = order;
            changed = true;
        }
        drop(state);
        if changed {
            self.shared.notify();
        }
    }

    /// Current status of every synced cluster, in the order given to the last sync.
    pub fn status(&self) -> Vec<RemoteClusterStatus> {
        let state = self.shared.lock();
        state
            .order
            .iter()
            .filter_map(|name| state.entries.get(name))
            .map(|entry| entry.status.clone())
            .collect()
    }

    /// A receiver that changes whenever any cluster's status changed (so the operator can
    /// rewrite the MeshConfig status), including clusters being added or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stops every task and forgets every cluster (operator shutdown, MeshConfig deleted). A
    /// later [`Federation::sync`] starts afresh.
    pub fn stop_all(&self) {
        self.sync(&[]);
    }

    /// (Re)starts the task of `cluster`, keeping what an earlier task learnt about it.
    fn start(&self, state: &mut State, cluster: &RemoteCluster) {
        let generation = state.next_generation;
        state.next_generation += 1;
        let previous = state.entries.remove(&cluster.name).map(|mut entry| {
            entry.stop();
            entry.status
        });
        let status = pending_status(&cluster.name, previous);
        let task = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Some(runtime.spawn(probe_loop(
                Arc::downgrade(&self.shared),
                self.shared.local.clone(),
                self.shared.secret_namespace.clone(),
                self.shared.interval,
                cluster.clone(),
                generation,
                status.clone(),
            ))),
            Err(err) => {
                tracing::error!(cluster = %cluster.name, error = %err, "cannot start the probe: no tokio runtime");
                None
            }
        };
        state.entries.insert(
            cluster.name.clone(),
            Entry {
                cluster: cluster.clone(),
                status,
                generation,
                task,
            },
        );
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should it ever, the state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Publishes a probe result if it is news. `false`: the task was replaced or removed and
    /// must stop.
    fn publish(&self, name: &str, generation: u64, next: RemoteClusterStatus) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(name) else {
            return false;
        };
        if entry.generation != generation {
            return false;
        }
        if !should_publish(&entry.status, &next, PROBE_TIME_REFRESH) {
            return true;
        }
        log_transition(&entry.status, &next);
        entry.status = next;
        drop(state);
        self.notify();
        true
    }
}

/// The status of a cluster not probed yet (by its current task), keeping what is known.
fn pending_status(name: &str, previous: Option<RemoteClusterStatus>) -> RemoteClusterStatus {
    let previous = previous.unwrap_or_default();
    RemoteClusterStatus {
        name: name.to_owned(),
        phase: FederationPhase::Pending,
        message: Some("waiting for the first probe".to_owned()),
        ..previous
    }
}

fn log_transition(old: &RemoteClusterStatus, new: &RemoteClusterStatus) {
    let message = new.message.as_deref().unwrap_or_default();
    if old.phase == new.phase {
        tracing::debug!(cluster = %new.name, phase = ?new.phase, message, "remote cluster status changed");
    } else if new.phase == FederationPhase::Connected {
        tracing::info!(cluster = %new.name, from = ?old.phase, message, "remote cluster connected");
    } else {
        tracing::warn!(cluster = %new.name, from = ?old.phase, phase = ?new.phase, message, "remote cluster not connected");
    }
}

/// Whether a probe result must be published: it differs in anything but the probe time, or
/// the published probe time is `refresh` old.
fn should_publish(
    published: &RemoteClusterStatus,
    next: &RemoteClusterStatus,
    refresh: Duration,
) -> bool {
    if !same_ignoring_probe_time(published, next) {
        return true;
    }
    match (
        &published.last_successful_probe_time,
        &next.last_successful_probe_time,
    ) {
        (Some(old), Some(new)) => {
            let age = new.0.duration_since(old.0);
            age.as_secs() >= i64::try_from(refresh.as_secs()).unwrap_or(i64::MAX)
        }
        (old, new) => old.is_some() != new.is_some(),
    }
}

fn same_ignoring_probe_time(a: &RemoteClusterStatus, b: &RemoteClusterStatus) -> bool {
    RemoteClusterStatus {
        last_successful_probe_time: None,
        ..a.clone()
    } == RemoteClusterStatus {
        last_successful_probe_time: None,
        ..b.clone()
    }
}

// =============================================================================================
// The per-cluster task

/// The remote client built from the last kubeconfig bytes seen (or why none could be), so it is
/// rebuilt, and its connections dropped, exactly when the Secret's kubeconfig changes.
type RemoteClientCache = Option<(Vec<u8>, Result<RemoteClient, String>)>;

#[derive(Clone)]
struct RemoteClient {
    client: Client,
    server: String,
}

async fn probe_loop(
    shared: Weak<Shared>,
    local: Client,
    secret_namespace: String,
    interval: Duration,
    cluster: RemoteCluster,
    generation: u64,
    mut current: RemoteClusterStatus,
) {
    let mut cache: RemoteClientCache = None;
    loop {
        let next = match probe(&local, &secret_namespace, &cluster, &mut cache).await {
            Ok((version, exported_services)) => {
                connected_status(&current, version, exported_services)
            }
            Err(err) => match err.phase() {
                Some(phase) => failed_status(&current, phase, err.to_string()),
                None => {
                    // A local hiccup says nothing about the remote cluster: keep its status
                    // (only a cluster never probed yet says why it still is not).
                    tracing::warn!(cluster = %cluster.name, error = %err, "probe skipped");
                    if current.phase == FederationPhase::Pending {
                        failed_status(&current, FederationPhase::Pending, err.to_string())
                    } else {
                        current.clone()
                    }
                }
            },
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.publish(&cluster.name, generation, next.clone()) {
            return;
        }
        drop(shared);
        current = next;
        tokio::time::sleep(interval).await;
    }
}

fn connected_status(
    current: &RemoteClusterStatus,
    version: String,
    exported_services: Vec<ExportedService>,
) -> RemoteClusterStatus {
    let count = exported_services.len();
    RemoteClusterStatus {
        name: current.name.clone(),
        phase: FederationPhase::Connected,
        message: Some(format!(
            "apiserver {version}, {count} exported service{}",
            if count == 1 { "" } else { "s" }
        )),
        last_successful_probe_time: Some(Time(Timestamp::now())),
        version: Some(version),
        exported_services,
    }
}

/// A failed probe: the phase and message change, what was last learnt stays.
fn failed_status(
    current: &RemoteClusterStatus,
    phase: FederationPhase,
    message: String,
) -> RemoteClusterStatus {
    RemoteClusterStatus {
        phase,
        message: Some(message),
        ..current.clone()
    }
}

/// One probe: the remote version and exported services, or why they cannot be had.
async fn probe(
    local: &Client,
    secret_namespace: &str,
    cluster: &RemoteCluster,
    cache: &mut RemoteClientCache,
) -> Result<(String, Vec<ExportedService>), FederationError> {
    let secret_ref = &cluster.kubeconfig_secret_ref;
    check_secret_namespace(secret_ref, secret_namespace)?;
    let secret = read_secret(local, secret_ref).await?;
    let bytes = kubeconfig_bytes(secret.as_ref(), secret_ref)?;
    let remote = remote_client(cache, bytes, secret_ref, &cluster.name).await?;
    probe_remote(&remote).await
}

/// Pure: refuses a kubeconfig Secret outside `allowed` (the mesh namespace), before any read.
fn check_secret_namespace(secret_ref: &SecretKeyRef, allowed: &str) -> Result<(), FederationError> {
    if secret_ref.namespace == allowed {
        return Ok(());
    }
    Err(FederationError::SecretOutsideMeshNamespace {
        namespace: secret_ref.namespace.clone(),
        name: secret_ref.name.clone(),
        allowed: allowed.to_owned(),
    })
}

async fn read_secret(
    local: &Client,
    secret_ref: &SecretKeyRef,
) -> Result<Option<Secret>, FederationError> {
    let api: Api<Secret> = Api::namespaced(local.clone(), &secret_ref.namespace);
    let result = tokio::time::timeout(PROBE_TIMEOUT, api.get_opt(&secret_ref.name)).await;
    let err = match result {
        Ok(Ok(secret)) => return Ok(secret),
        Ok(Err(err)) => err,
        Err(_) => {
            return Err(FederationError::ReadSecret {
                namespace: secret_ref.namespace.clone(),
                name: secret_ref.name.clone(),
                reason: format!("timed out after {PROBE_TIMEOUT:?}"),
            });
        }
    };
    // Forbidden is lasting (RBAC), unlike an unavailable local apiserver.
    let forbidden = matches!(&err, kube::Error::Api(status) if status.code == 403);
    let (namespace, name, reason) = (
        secret_ref.namespace.clone(),
        secret_ref.name.clone(),
        describe(&err),
    );
    Err(if forbidden {
        FederationError::SecretForbidden {
            namespace,
            name,
            reason,
        }
    } else {
        FederationError::ReadSecret {
            namespace,
            name,
            reason,
        }
    })
}

/// The kubeconfig bytes under the referenced key, or which of Secret and key is missing.
fn kubeconfig_bytes<'a>(
    secret: Option<&'a Secret>,
    secret_ref: &SecretKeyRef,
) -> Result<&'a [u8], FederationError> {
    let Some(secret) = secret else {
        return Err(FederationError::SecretNotFound {
            namespace: secret_ref.namespace.clone(),
            name: secret_ref.name.clone(),
        });
    };
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(&secret_ref.key))
        .map(|value| value.0.as_slice())
        .ok_or_else(|| FederationError::SecretKeyMissing {
            namespace: secret_ref.namespace.clone(),
            name: secret_ref.name.clone(),
            key: secret_ref.key.clone(),
        })
}

/// The client for `bytes`, built only when they differ from the last ones.
async fn remote_client(
    cache: &mut RemoteClientCache,
    bytes: &[u8],
    secret_ref: &SecretKeyRef,
    cluster: &str,
) -> Result<RemoteClient, FederationError> {
    let (seen, built) = match cache.take() {
        Some((seen, built)) if seen == bytes => (seen, built),
        previous => {
            if previous.is_some() {
                tracing::info!(
                    cluster,
                    "the kubeconfig changed; rebuilding the remote client"
                );
            }
            let built = match parse_kubeconfig(bytes) {
                Ok(kubeconfig) => build_client(kubeconfig).await,
                Err(reason) => Err(reason),
            };
            (bytes.to_vec(), built)
        }
    };
    let result = built.clone();
    *cache = Some((seen, built));
    result.map_err(|reason| FederationError::InvalidKubeconfig {
        secret: format!("{}/{}", secret_ref.namespace, secret_ref.name),
        reason,
    })
}

/// Parses a kubeconfig from a Secret and checks that its current context is self-contained.
fn parse_kubeconfig(bytes: &[u8]) -> Result<Kubeconfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|err| format!("not UTF-8: {err}"))?;
    // The YAML error goes on with a snippet of the input; a status message is one line.
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|err| {
        let text = err.to_string();
        text.lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    })?;
    let Some(context_name) = kubeconfig
        .current_context
        .as_deref()
        .filter(|name| !name.is_empty())
    else {
        return Err("it has no current context".to_owned());
    };
    // A context, cluster or user that does not exist is left to kube's loader to report.
    let Some(context) = kubeconfig
        .contexts
        .iter()
        .find(|named| named.name == context_name)
        .and_then(|named| named.context.as_ref())
    else {
        return Ok(kubeconfig);
    };
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|named| named.name == context.cluster)
        .and_then(|named| named.cluster.as_ref());
    let user = context.user.as_deref().and_then(|user_name| {
        kubeconfig
            .auth_infos
            .iter()
            .find(|named| named.name == user_name)
            .and_then(|named| named.auth_info.as_ref())
    });
    check_self_contained(cluster, user)?;
    if let Some(cluster) = cluster {
        check_server(cluster)?;
    }
    Ok(kubeconfig)
}

/// Rejects what would make the operator read its own files or run programs: whoever can write
/// the Secret could otherwise send, say, the operator's ServiceAccount token anywhere.
fn check_self_contained(
    cluster: Option<&kube::config::Cluster>,
    user: Option<&AuthInfo>,
) -> Result<(), String> {
    let file = |field: &str| format!("it refers to a file ({field}); inline it as {field}-data");
    if cluster.is_some_and(|cluster| cluster.certificate_authority.is_some()) {
        return Err(file("certificate-authority"));
    }
    let Some(user) = user else {
        return Ok(());
    };
    if user.client_certificate.is_some() {
        return Err(file("client-certificate"));
    }
    if user.client_key.is_some() {
        return Err(file("client-key"));
    }
    if user.token_file.is_some() {
        return Err("it refers to a token file (tokenFile); inline the token".to_owned());
    }
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(
            "its user has an exec plugin or auth provider, which the operator does not run"
                .to_owned(),
        );
    }
    Ok(())
}

/// Pure: the operator sends the kubeconfig's credentials to its server, and reports what it
/// answers, so whoever writes the Secret must not be able to aim it at a plain-text server, at
/// one whose certificate is not checked, or through a proxy of their choosing.
fn check_server(cluster: &kube::config::Cluster) -> Result<(), String> {
    if let Some(server) = cluster.server.as_deref() {
        let scheme = server.split_once("://").map(|(scheme, _)| scheme);
        if !scheme.is_some_and(|scheme| scheme.eq_ignore_ascii_case("https")) {
            return Err(format!(
                "its server {server:?} is not an https:// URL; the operator only talks TLS to remote apiservers"
            ));
        }
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(
            "it sets insecure-skip-tls-verify; give the server's CA as certificate-authority-data instead"
                .to_owned(),
        );
    }
    if let Some(proxy) = cluster.proxy_url.as_deref() {
        return Err(format!(
            "it sets proxy-url {proxy:?}; the operator connects to remote apiservers directly"
        ));
    }
    Ok(())
}

/// A client for the kubeconfig's current context whose every request is bounded.
async fn build_client(kubeconfig: Kubeconfig) -> Result<RemoteClient, String> {
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|err| err.to_string())?;
    // kube accepts CA data without any certificate in it; the TLS handshake would then fail
    // as if the server were wrong, so say what is actually wrong.
    if config.root_cert.as_ref().is_some_and(Vec::is_empty) {
        return Err("certificate-authority-data holds no PEM certificate".to_owned());
    }
    config.connect_timeout = Some(PROBE_TIMEOUT);
    config.read_timeout = Some(PROBE_TIMEOUT);
    config.write_timeout = Some(PROBE_TIMEOUT);
    // The read timeout then counts from the request, not from when a pooled connection idled.
    config.reset_reader_on_write = true;
    // A probe reports what it saw; the next probe is the retry.
    config.default_retry = false;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|err| describe(&err))?;
    Ok(RemoteClient { client, server })
}

async fn probe_remote(
    remote: &RemoteClient,
) -> Result<(String, Vec<ExportedService>), FederationError> {
    let version = bounded(
        remote,
        "reading the apiserver version",
        remote.client.apiserver_version(),
    )
    .await?;
    let services: Api<Service> = Api::all(remote.client.clone());
    let selector = format!("{EXPORTED_LABEL_KEY}={EXPORTED_LABEL_VALUE}");
    let list = bounded(
        remote,
        "listing exported Services",
        services.list(&ListParams::default().labels(&selector)),
    )
    .await?;
    Ok((version.git_version, exported_services(&list.items)))
}

/// Runs a remote request with the probe deadline, classifying its failure.
async fn bounded<T>(
    remote: &RemoteClient,
    what: &'static str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, FederationError> {
    let (phase, reason) = match tokio::time::timeout(PROBE_TIMEOUT, request).await {
        Ok(Ok(value)) => return Ok(value),
        // kube's connect/read deadline and ours are the same. Whichever fires, the message
        // must be the same, or a hung cluster's status would flip between two texts.
        Ok(Err(err)) if is_timeout(&err) => (
            FederationPhase::Unreachable,
            format!("timed out after {PROBE_TIMEOUT:?}"),
        ),
        Ok(Err(err)) => (classify(&err), describe(&err)),
        Err(_) => (
            FederationPhase::Unreachable,
            format!("timed out after {PROBE_TIMEOUT:?}"),
        ),
    };
    Err(FederationError::Remote {
        server: remote.server.clone(),
        what,
        phase,
        reason,
    })
}

/// The phase a failed remote request means.
fn classify(err: &kube::Error) -> FederationPhase {
    match err {
        kube::Error::Api(status) if matches!(status.code, 401 | 403) => FederationPhase::AuthFailed,
        // Credentials or TLS settings kube could not even load.
        kube::Error::Auth(_) | kube::Error::InferKubeconfig(_) | kube::Error::RustlsTls(_) => {
            FederationPhase::InvalidKubeconfig
        }
        // Refused, reset, timed out, TLS handshake, 5xx, ...
        _ => FederationPhase::Unreachable,
    }
}

/// Whether a kube connect/read/write timeout caused `err` (they surface as `TimedOut` I/O
/// errors somewhere down the source chain).
fn is_timeout(err: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A one-line description of a kube error with its causes (kube's own messages often stop at
/// "client error (Connect)" and keep the reason in the source chain). Also the CLI's.
pub fn describe(err: &kube::Error) -> String {
    if let kube::Error::Api(status) = err {
        return format!("{} {}: {}", status.code, status.reason, status.message);
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Exported Services by namespace and name, each with its ports sorted and deduplicated.
fn exported_services(services: &[Service]) -> Vec<ExportedService> {
    let mut exported: Vec<ExportedService> = services
        .iter()
        .filter_map(|service| {
            let mut ports: Vec<i32> = service
                .spec
                .as_ref()
                .and_then(|spec| spec.ports.as_ref())
                .map(|ports| ports.iter().map(|port| port.port).collect())
                .unwrap_or_default();
            ports.sort_unstable();
            ports.dedup();
            Some(ExportedService {
                namespace: service.metadata.namespace.clone()?,
                name: service.metadata.name.clone()?,
                ports,
            })
        })
        .collect();
    exported.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    exported
}

// =============================================================================================
// skein federation create-secret

/// Prints (YAML) a Secret holding a self-contained kubeconfig for the current (or `--context`)
/// context, to apply on the primary cluster.
pub async fn create_secret(args: &CreateSecretArgs) -> anyhow::Result<()> {
    let kubeconfig = args.kube.kubeconfig()?;
    let secret = kubeconfig_secret(&kubeconfig, args)?;
    let yaml = crate::yaml::to_string(&secret).map_err(FederationError::Yaml)?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .context("writing the Secret to stdout")?;
    Ok(())
}

/// The Secret `skein-remote-<name>` holding, under `args.key`, a kubeconfig with only the
/// current context of `kubeconfig`, every file it refers to inlined.
pub fn kubeconfig_secret(
    kubeconfig: &Kubeconfig,
    args: &CreateSecretArgs,
) -> Result<Secret, FederationError> {
    let minimal = minimal_kubeconfig(kubeconfig, &args.name, args.server.as_deref())?;
    let yaml = crate::yaml::to_string(&minimal).map_err(FederationError::Yaml)?;
    let labels = BTreeMap::from([
        (REMOTE_CLUSTER_LABEL.to_owned(), args.name.clone()),
        (PART_OF_LABEL.to_owned(), "skein".to_owned()),
    ]);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(format!("skein-remote-{}", args.name)),
            namespace: Some(args.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            args.key.clone(),
            ByteString(yaml.into_bytes()),
        )])),
        ..Default::default()
    })
}

/// One cluster, one user, one context, all named `name`, from the current context.
fn minimal_kubeconfig(
    source: &Kubeconfig,
    name: &str,
    server: Option<&str>,
) -> Result<Kubeconfig, FederationError> {
    let context_name = source
        .current_context
        .as_deref()
        .filter(|context| !context.is_empty())
        .ok_or(FederationError::NoCurrentContext)?;
    let context = source
        .contexts
        .iter()
        .find(|context| context.name == context_name)
        .and_then(|context| context.context.as_ref())
        .ok_or_else(|| FederationError::MissingContext(context_name.to_owned()))?;
    let cluster = source
        .clusters
        .iter()
        .find(|cluster| cluster.name == context.cluster)
        .and_then(|cluster| cluster.cluster.as_ref())
        .ok_or_else(|| FederationError::MissingCluster {
            context: context_name.to_owned(),
            cluster: context.cluster.clone(),
        })?;
    let user_name = context
        .user
        .as_deref()
        .ok_or_else(|| FederationError::NoUser {
            context: context_name.to_owned(),
        })?;
    let user = source
        .auth_infos
        .iter()
        .find(|user| user.name == user_name)
        .and_then(|user| user.auth_info.as_ref())
        .ok_or_else(|| FederationError::MissingUser {
            context: context_name.to_owned(),
            user: user_name.to_owned(),
        })?;

    let server = server
        .map(str::to_owned)
        .or_else(|| cluster.server.clone())
        .filter(|server| !server.is_empty())
        .ok_or_else(|| FederationError::NoServer {
            cluster: context.cluster.clone(),
        })?;
    let inlined_cluster = kube::config::Cluster {
        server: Some(server),
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        certificate_authority_data: inline_data(
            cluster.certificate_authority_data.as_deref(),
            cluster.certificate_authority.as_deref(),
            "certificate-authority",
        )?,
        tls_server_name: cluster.tls_server_name.clone(),
        ..Default::default()
    };

    Ok(Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        clusters: vec![NamedCluster {
            name: name.to_owned(),
            cluster: Some(inlined_cluster),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.to_owned(),
            auth_info: Some(inline_user(user_name, user)?),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: name.to_owned(),
            context: Some(Context {
                cluster: name.to_owned(),
                user: Some(name.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(name.to_owned()),
        ..Default::default()
    })
}

/// The user's credentials (token or client certificate), inlined.
fn inline_user(user_name: &str, user: &AuthInfo) -> Result<AuthInfo, FederationError> {
    let unsupported = |mechanism| FederationError::UnsupportedAuth {
        user: user_name.to_owned(),
        mechanism,
    };
    if user.exec.is_some() {
        return Err(unsupported("an exec credential plugin"));
    }
    if user.auth_provider.is_some() {
        return Err(unsupported("an auth provider"));
    }
    // kube keeps the token and the key in `secrecy` strings, which only serde reads and writes
    // without that crate: go through JSON, under the kubeconfig's own field names.
    let source = serde_json::to_value(user).map_err(FederationError::Encode)?;
    let field = |key: &str| source.get(key).and_then(Value::as_str);
    let mut inlined = serde_json::Map::new();
    let token = match (field("token"), &user.token_file) {
        (Some(token), _) => Some(token.to_owned()),
        (None, Some(path)) => Some(read_file("tokenFile", path)?.trim().to_owned()),
        (None, None) => None,
    };
    if let Some(token) = token {
        inlined.insert("token".to_owned(), token.into());
    }
    let certificate = inline_data(
        field("client-certificate-data"),
        user.client_certificate.as_deref(),
        "client-certificate",
    )?;
    let key = inline_data(
        field("client-key-data"),
        user.client_key.as_deref(),
        "client-key",
    )?;
    if let Some(certificate) = certificate {
        inlined.insert("client-certificate-data".to_owned(), certificate.into());
    }
    if let Some(key) = key {
        inlined.insert("client-key-data".to_owned(), key.into());
    }
    if inlined.is_empty() {
        return Err(FederationError::NoCredentials {
            user: user_name.to_owned(),
        });
    }
    serde_json::from_value(Value::Object(inlined)).map_err(FederationError::Encode)
}

/// `*-data` (base64) from the data already inline, else from the file it names.
fn inline_data(
    data: Option<&str>,
    path: Option<&str>,
    field: &'static str,
) -> Result<Option<String>, FederationError> {
    match (data, path) {
        (Some(data), _) => Ok(Some(data.to_owned())),
        (None, Some(path)) => Ok(Some(base64(read_file(field, path)?.as_bytes()))),
        (None, None) => Ok(None),
    }
}

fn read_file(field: &'static str, path: &str) -> Result<String, FederationError> {
    std::fs::read_to_string(path).map_err(|error| FederationError::ReadFile {
        field,
        path: path.to_owned(),
        error,
    })
}

/// Standard base64 with padding (RFC 4648), as kubeconfig `*-data` fields are.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::meshconfig::SecretKeyRef;
    use crate::pki::Ca;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn secret_ref() -> SecretKeyRef {
        SecretKeyRef {
            namespace: "skein-system".to_owned(),
            name: "skein-remote-east".to_owned(),
            key: "kubeconfig".to_owned(),
        }
    }

    fn remote(name: &str, secret: &str) -> RemoteCluster {
        RemoteCluster {
            name: name.to_owned(),
            kubeconfig_secret_ref: SecretKeyRef {
                name: secret.to_owned(),
                ..secret_ref()
            },
            network: None,
        }
    }

    /// Decodes base64 the way kube does: through k8s-openapi's `ByteString`.
    fn unbase64(text: &str) -> Vec<u8> {
        serde_json::from_value::<ByteString>(Value::String(text.to_owned()))
            .unwrap()
            .0
    }

    /// A CA and a client certificate, PEM.
    fn pems() -> (String, String, String) {
        let ca = Ca::generate("federation-test-ca", Duration::from_secs(3600)).unwrap();
        let client = ca
            .issue_serving(&["client"], Duration::from_secs(3600))
            .unwrap();
        (ca.pem.cert_pem.clone(), client.cert_pem, client.key_pem)
    }

    fn inline_kubeconfig(ca: &str, cert: &str, key: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            base64(ca.as_bytes()),
            base64(cert.as_bytes()),
            base64(key.as_bytes()),
        )
    }

    fn status(phase: FederationPhase, probe_secs: Option<i64>) -> RemoteClusterStatus {
        RemoteClusterStatus {
            name: "east".to_owned(),
            phase,
            message: Some("m".to_owned()),
            last_successful_probe_time: probe_secs
                .map(|secs| Time(Timestamp::from_second(secs).unwrap())),
            version: Some("v1.37.2".to_owned()),
            exported_services: vec![],
        }
    }

    #[test]
    fn base64_matches_the_standard_encoding() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        let every_byte: Vec<u8> = (0..=255).collect();
        assert_eq!(unbase64(&base64(&every_byte)), every_byte);
    }

    #[test]
    fn api_errors_401_and_403_are_auth_failures_the_rest_unreachable() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("no", "No")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert_eq!(classify(&api(401)), FederationPhase::AuthFailed);
        assert_eq!(classify(&api(403)), FederationPhase::AuthFailed);
        assert_eq!(classify(&api(503)), FederationPhase::Unreachable);
        let refused = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        assert_eq!(classify(&refused), FederationPhase::Unreachable);
        assert!(!is_timeout(&refused));
        let timed_out = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "deadline has elapsed",
        )));
        assert!(is_timeout(&timed_out));
        assert_eq!(classify(&timed_out), FederationPhase::Unreachable);
        assert!(describe(&refused).contains("connection refused"));
        assert_eq!(describe(&api(401)), "401 No: no");
    }

    #[test]
    fn a_missing_secret_or_key_is_secret_missing_and_named() {
        let secret_ref = secret_ref();
        let err = kubeconfig_bytes(None, &secret_ref).unwrap_err();
        assert_eq!(err.phase(), Some(FederationPhase::SecretMissing));
        assert!(
            err.to_string().contains("skein-system/skein-remote-east"),
            "{err}"
        );

        let mut secret = Secret {
            data: Some(BTreeMap::from([(
                "config".to_owned(),
                ByteString(b"x".to_vec()),
            )])),
            ..Default::default()
        };
        let err = kubeconfig_bytes(Some(&secret), &secret_ref).unwrap_err();
        assert_eq!(err.phase(), Some(FederationPhase::SecretMissing));
        let message = err.to_string();
        assert!(
            message.contains("skein-system/skein-remote-east"),
            "{message}"
        );
        assert!(message.contains("\"kubeconfig\""), "{message}");

        secret.data = Some(BTreeMap::from([(
            "kubeconfig".to_owned(),
            ByteString(b"x".to_vec()),
        )]));
        assert_eq!(kubeconfig_bytes(Some(&secret), &secret_ref).unwrap(), b"x");
    }

    #[test]
    fn unparsable_or_unusable_kubeconfigs_are_refused_with_the_reason() {
        assert!(parse_kubeconfig(b"garbage").is_err());
        let reason = parse_kubeconfig(b"clusters: [unclosed").unwrap_err();
        assert!(
            reason.contains("line 1") && !reason.contains('\n'),
            "{reason}"
        );
        assert!(
            parse_kubeconfig(&[0xff, 0xfe, 0x00])
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(
            parse_kubeconfig(b"")
                .unwrap_err()
                .contains("no current context")
        );

        let (ca, cert, key) = pems();
        let good = inline_kubeconfig(&ca, &cert, &key);
        assert!(parse_kubeconfig(good.as_bytes()).is_ok());

        // Anything that would make the operator read its own files or run programs.
        for (from, to, field) in [
            (
                "certificate-authority-data: ",
                "certificate-authority: /etc/ca.crt #",
                "certificate-authority",
            ),
            (
                "client-key-data: ",
                "client-key: /var/run/secrets/key #",
                "client-key",
            ),
            (
                "client-certificate-data: ",
                "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n    client-certificate-data: ",
                "tokenFile",
            ),
            (
                "client-certificate-data: ",
                "exec: {command: sh}\n    client-certificate-data: ",
                "exec",
            ),
        ] {
            let bad = good.replacen(from, to, 1);
            let reason = parse_kubeconfig(bad.as_bytes()).unwrap_err();
            assert!(reason.contains(field), "{field}: {reason}");
        }
        // Other contexts are not used, so their file references do not matter.
        let other = good.replace(
            "contexts:\n",
            "- name: v\n  user: {client-key: /k, client-certificate: /c}\ncontexts:\n",
        );
        assert!(parse_kubeconfig(other.as_bytes()).is_ok(), "{other}");
    }

    #[test]
    fn only_https_servers_with_verified_certificates_and_no_proxy_are_probed() {
        let (ca, cert, key) = pems();
        let good = inline_kubeconfig(&ca, &cert, &key);
        for (from, to, expected) in [
            (
                "server: https://127.0.0.1:6443",
                "server: http://127.0.0.1:6443",
                "its server \"http://127.0.0.1:6443\" is not an https:// URL",
            ),
            (
                "server: https://127.0.0.1:6443",
                "server: 127.0.0.1:6443",
                "its server \"127.0.0.1:6443\" is not an https:// URL",
            ),
            (
                "server: https://127.0.0.1:6443",
                "server: unix:///var/run/docker.sock",
                "is not an https:// URL",
            ),
            (
                "server: https://127.0.0.1:6443",
                "server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true",
                "it sets insecure-skip-tls-verify",
            ),
            (
                "server: https://127.0.0.1:6443",
                "server: https://127.0.0.1:6443\n    proxy-url: http://169.254.169.254:80",
                "it sets proxy-url \"http://169.254.169.254:80\"",
            ),
        ] {
            let bad = good.replacen(from, to, 1);
            assert_ne!(bad, good, "{from} not found");
            let reason = parse_kubeconfig(bad.as_bytes()).unwrap_err();
            assert!(reason.contains(expected), "{to}: {reason}");
        }
        // Explicitly verified, and the scheme in capitals, are fine.
        for fine in [
            good.replacen(
                "server: https://127.0.0.1:6443",
                "server: HTTPS://127.0.0.1:6443\n    insecure-skip-tls-verify: false",
                1,
            ),
            good.clone(),
        ] {
            assert!(parse_kubeconfig(fine.as_bytes()).is_ok(), "{fine}");
        }
    }

    #[test]
    fn kubeconfig_secrets_are_read_only_from_the_mesh_namespace() {
        let mut secret_ref = secret_ref();
        assert!(check_secret_namespace(&secret_ref, "skein-system").is_ok());
        secret_ref.namespace = "team-a".to_owned();
        let err = check_secret_namespace(&secret_ref, "skein-system").unwrap_err();
        assert_eq!(err.phase(), Some(FederationPhase::SecretMissing));
        assert_eq!(
            err.to_string(),
            "Secret team-a/skein-remote-east is outside skein-system: the operator reads \
             federation kubeconfigs only from skein-system; create the Secret there and point \
             kubeconfigSecretRef at it"
        );
    }

    #[tokio::test]
    async fn bad_pem_makes_the_kubeconfig_invalid() {
        let (ca, cert, key) = pems();
        let build = |text: String| async move {
            build_client(parse_kubeconfig(text.as_bytes()).unwrap()).await
        };
        let remote = build(inline_kubeconfig(&ca, &cert, &key)).await.unwrap();
        assert_eq!(remote.server, "https://127.0.0.1:6443/");
        assert!(
            build(inline_kubeconfig("not a certificate", &cert, &key))
                .await
                .is_err()
        );
        assert!(
            build(inline_kubeconfig(&ca, "not a certificate", &key))
                .await
                .is_err()
        );
        assert!(
            build(inline_kubeconfig(&ca, &cert, "not a key"))
                .await
                .is_err()
        );
        let no_context =
            inline_kubeconfig(&ca, &cert, &key).replace("current-context: x", "current-context: y");
        assert!(build(no_context).await.is_err());
    }

    #[test]
    fn the_probe_time_alone_is_news_only_when_stale() {
        let refresh = Duration::from_secs(300);
        let published = status(FederationPhase::Connected, Some(1_000));
        assert!(!should_publish(
            &published,
            &status(FederationPhase::Connected, Some(1_010)),
            refresh
        ));
        assert!(should_publish(
            &published,
            &status(FederationPhase::Connected, Some(1_300)),
            refresh
        ));
        assert!(should_publish(
            &published,
            &status(FederationPhase::Unreachable, Some(1_000)),
            refresh
        ));
        assert!(should_publish(
            &status(FederationPhase::Pending, None),
            &published,
            refresh
        ));
        let mut other_message = published.clone();
        other_message.message = Some("other".to_owned());
        assert!(should_publish(&published, &other_message, refresh));
        assert!(!should_publish(&published, &published, refresh));
    }

    #[test]
    fn exported_services_are_sorted_with_sorted_unique_ports() {
        let service = |namespace: &str, name: &str, ports: &[i32]| Service {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|&port| ServicePort {
                            port,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        };
        let exported = exported_services(&[
            service("b", "web", &[8080, 80, 80]),
            service("a", "z", &[]),
            service("a", "api", &[9090]),
        ]);
        let summary: Vec<(&str, &str, &[i32])> = exported
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str(), s.ports.as_slice()))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", "api", &[9090][..]),
                ("a", "z", &[]),
                ("b", "web", &[80, 8080])
            ]
        );
    }

    #[test]
    fn create_secret_inlines_the_current_context_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pems();
        for (file, text) in [("ca.crt", &ca), ("client.crt", &cert), ("client.key", &key)] {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let path = |file: &str| dir.path().join(file).display().to_string();
        let source = Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n\
             - {{name: here, cluster: {{server: 'https://127.0.0.1:6443', certificate-authority: '{}'}}}}\n\
             - {{name: elsewhere, cluster: {{server: 'https://10.0.0.1'}}}}\n\
             users:\n\
             - {{name: admin, user: {{client-certificate: '{}', client-key: '{}'}}}}\n\
             - {{name: sso, user: {{exec: {{command: login}}}}}}\n\
             contexts:\n\
             - {{name: mine, context: {{cluster: here, user: admin, namespace: dev}}}}\n\
             - {{name: theirs, context: {{cluster: elsewhere, user: sso}}}}\n\
             current-context: mine\n",
            path("ca.crt"),
            path("client.crt"),
            path("client.key"),
        ))
        .unwrap();
        let args = CreateSecretArgs {
            name: "east".to_owned(),
            namespace: "skein-system".to_owned(),
            key: "config".to_owned(),
            server: Some("https://east.example:6443".to_owned()),
            kube: Default::default(),
        };
        let secret = kubeconfig_secret(&source, &args).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("skein-remote-east"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("skein-system"));
        let labels = secret.metadata.labels.clone().unwrap();
        assert_eq!(labels[REMOTE_CLUSTER_LABEL], "east");
        assert_eq!(labels["app.kubernetes.io/part-of"], "skein");

        let data = secret.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["config"]);
        let bytes = &data["config"].0;
        let inlined = parse_kubeconfig(bytes).expect("the kubeconfig is self-contained");
        assert_eq!(inlined.current_context.as_deref(), Some("east"));
        assert_eq!(inlined.clusters.len(), 1);
        assert_eq!(inlined.auth_infos.len(), 1);
        assert_eq!(inlined.contexts.len(), 1);
        let cluster = inlined.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://east.example:6443"));
        assert_eq!(
            unbase64(cluster.certificate_authority_data.as_deref().unwrap()),
            ca.as_bytes()
        );
        let user = serde_json::to_value(inlined.auth_infos[0].auth_info.as_ref().unwrap()).unwrap();
        assert_eq!(
            unbase64(user["client-certificate-data"].as_str().unwrap()),
            cert.as_bytes()
        );
        assert_eq!(
            unbase64(user["client-key-data"].as_str().unwrap()),
            key.as_bytes()
        );

        // The Secret prints as YAML that reads back the same.
        let yaml = crate::yaml::to_string(&secret).unwrap();
        assert!(yaml.contains("kind: Secret"), "{yaml}");
        assert_eq!(crate::yaml::from_str::<Secret>(&yaml).unwrap(), secret);

        // Without --server the kubeconfig's own address is kept.
        let args = CreateSecretArgs {
            server: None,
            ..args
        };
        let secret = kubeconfig_secret(&source, &args).unwrap();
        let inlined = parse_kubeconfig(&secret.data.unwrap()["config"].0).unwrap();
        let cluster = inlined.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));

        // Errors are one-liners naming the culprit.
        let mut theirs = source.clone();
        theirs.current_context = Some("theirs".to_owned());
        let err = kubeconfig_secret(&theirs, &args).unwrap_err();
        assert!(
            matches!(err, FederationError::UnsupportedAuth { .. }),
            "{err}"
        );
        let mut none = source.clone();
        none.current_context = None;
        assert!(matches!(
            kubeconfig_secret(&none, &args),
            Err(FederationError::NoCurrentContext)
        ));
        std::fs::remove_file(dir.path().join("client.key")).unwrap();
        let err = kubeconfig_secret(&source, &args).unwrap_err().to_string();
        assert!(
            err.contains("client-key") && err.contains(&path("client.key")),
            "{err}"
        );
    }

    fn dead_local_client() -> Client {
        Client::try_from(Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap()
    }

    // The tasks of a current-thread runtime only run when the test awaits, so between two
    // awaits the state is exactly what `sync` left.
    #[tokio::test]
    async fn sync_starts_restarts_and_stops_tasks_and_notifies_on_changes() {
        let federation = Federation::with_interval(dead_local_client(), Duration::from_secs(3600));
        let mut changes = federation.subscribe();
        let names = |federation: &Federation| -> Vec<String> {
            federation.status().into_iter().map(|s| s.name).collect()
        };
        let generation =
            |federation: &Federation, name: &str| federation.shared.lock().entries[name].generation;

        federation.sync(&[
            remote("a", "sa"),
            remote("b", "sb"),
            remote("a", "duplicate"),
        ]);
        assert_eq!(names(&federation), ["a", "b"]);
        assert!(
            federation
                .status()
                .iter()
                .all(|s| s.phase == FederationPhase::Pending)
        );
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let (a, b) = (generation(&federation, "a"), generation(&federation, "b"));

        // Nothing changed, or only the network: no restart, no notification.
        let mut on_network = remote("a", "sa");
        on_network.network = Some("west".to_owned());
        federation.sync(&[on_network, remote("b", "sb")]);
        assert!(!changes.has_changed().unwrap());
        assert_eq!(generation(&federation, "a"), a);

        // The order follows the last sync; a changed Secret reference restarts the task.
        federation.sync(&[remote("b", "sb2"), remote("a", "sa")]);
        assert_eq!(names(&federation), ["b", "a"]);
        assert!(changes.has_changed().unwrap());
        assert_ne!(generation(&federation, "b"), b);
        assert_eq!(generation(&federation, "a"), a);
        // The replaced task can no longer publish.
        assert!(
            !federation
                .shared
                .publish("b", b, status(FederationPhase::Connected, None))
        );

        federation.sync(&[remote("a", "sa")]);
        assert_eq!(names(&federation), ["a"]);
        federation.stop_all();
        assert!(federation.status().is_empty());
        assert!(federation.shared.lock().entries.is_empty());
    }

    #[tokio::test]
    async fn a_local_failure_is_reported_while_pending() {
        let federation = Federation::with_interval(dead_local_client(), Duration::from_secs(3600));
        let mut changes = federation.subscribe();
        federation.sync(&[remote("a", "sa")]);
        changes.mark_unchanged();
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .unwrap()
            .unwrap();
        let status = federation.status();
        assert_eq!(status[0].phase, FederationPhase::Pending);
        let message = status[0].message.as_deref().unwrap();
        assert!(message.contains("skein-system/sa"), "{message}");
    }
}
