//! What the control plane knows about the cluster: the active MeshConfig and every namespace's
//! labels, kept current by watches, plus the facts fixed at start (cluster version).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::api::meshconfig::{ControlPlaneMode, MeshConfigSpec, MtlsSpec, TracingSpec};
use crate::api::{MeshConfig, names};
use crate::inject::InjectConfig;

/// Native sidecars (`restartPolicy: Always` init containers) exist from Kubernetes 1.29 on.
const NATIVE_SIDECAR_MINOR: u32 = 29;
/// `preStop: {sleep: ...}` hooks are on by default from Kubernetes 1.30 (beta; GA in 1.34).
const SLEEP_HOOK_MINOR: u32 = 30;

#[derive(Clone)]
pub struct ClusterState {
    client: Client,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    meshconfigs: Store<MeshConfig>,
    synced: Arc<AtomicBool>,
    /// `--xds-address`; a MeshConfig in External mode overrides it.
    xds_address: String,
    native_sidecars_supported: bool,
    sleep_hooks_supported: bool,
}

impl ClusterState {
    /// Starts the watches. The returned future drives them and must be polled (spawned) for as
    /// long as the state is used.
    pub async fn start(
        client: Client,
        xds_address: String,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), kube::Error> {
        let version = client.apiserver_version().await?;
        let native_sidecars_supported =
            at_least(&version.major, &version.minor, NATIVE_SIDECAR_MINOR);
        let sleep_hooks_supported = at_least(&version.major, &version.minor, SLEEP_HOOK_MINOR);
        tracing::info!(version = %version.git_version, native_sidecars_supported, sleep_hooks_supported, "connected to the apiserver");

        let (namespaces, ns_writer) = reflector::store();
        let ns_stream = reflector::reflector(
            ns_writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            ),
        );
        let (meshconfigs, mc_writer) = reflector::store();
        let only_active = watcher::Config::default()
            .fields(&format!("metadata.name={}", names::ACTIVE_MESHCONFIG));
        let mc_stream = reflector::reflector(
            mc_writer,
            watcher(Api::<MeshConfig>::all(client.clone()), only_active),
        );
        let state = Self {
            client,
            namespaces,
            meshconfigs,
            synced: Arc::new(AtomicBool::new(false)),
            xds_address,
            native_sidecars_supported,
            sleep_hooks_supported,
        };

        let watches = future::join(
            drive(ns_stream, "namespaces"),
            drive(mc_stream, "meshconfigs"),
        );
        let readiness = {
            let state = state.clone();
            async move {
                let both = future::join(
                    state.namespaces.wait_until_ready(),
                    state.meshconfigs.wait_until_ready(),
                );
                if let (Ok(()), Ok(())) = both.await {
                    state.synced.store(true, Ordering::Release);
                    tracing::info!("namespace and MeshConfig caches are synced");
                }
            }
        };
        let run = async move {
            future::join(watches, readiness).await;
        };
        Ok((state, run))
    }

    /// Ready once both caches hold a full list: before that, namespace labels may be missing.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The active MeshConfig's spec (the defaults when there is none).
    fn mesh(&self) -> MeshConfigSpec {
        self.meshconfigs
            .get(&ObjectRef::new(names::ACTIVE_MESHCONFIG))
            .map(|mc| mc.spec.clone())
            .unwrap_or_default()
    }

    /// The workload-certificate settings (trust domain, lifetime) of the active MeshConfig.
    pub fn mtls(&self) -> MtlsSpec {
        self.mesh().mtls
    }

    /// The tracing settings of the active MeshConfig (the dashboard's links to the tracing UI).
    pub fn tracing(&self) -> TracingSpec {
        self.mesh().tracing
    }

    /// The injector's settings from the active MeshConfig (its defaults when there is none).
    pub fn inject_config(&self) -> InjectConfig {
        let mesh = self.mesh();
        let xds_address = match (&mesh.control_plane.mode, &mesh.control_plane.external) {
            (ControlPlaneMode::External, Some(external)) => external.xds_address.clone(),
            _ => self.xds_address.clone(),
        };
        InjectConfig {
            mesh,
            xds_address,
            xds_trust_bundle_pem: None,
            native_sidecars_supported: self.native_sidecars_supported,
            sleep_hooks_supported: self.sleep_hooks_supported,
        }
    }

    /// The labels of `namespace`: from the cache, or from the apiserver when the namespace is
    /// newer than the cache (a namespace created a moment before its first pod).
    pub async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, kube::Error> {
        if let Some(ns) = self.namespaces.get(&ObjectRef::new(namespace)) {
            return Ok(ns.labels().clone());
        }
        let ns = Api::<Namespace>::all(self.client.clone())
            .get_metadata(namespace)
            .await?;
        Ok(ns.labels().clone())
    }
}

/// Runs a reflector stream to its end, logging (and backing off from) watch errors.
async fn drive<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    what: &str,
) {
    stream
        .default_backoff()
        .for_each(|event| {
            if let Err(err) = event {
                tracing::warn!(error = %err, "watching {what}");
            }
            future::ready(())
        })
        .await;
}

/// Whether `major`/`minor`, as the apiserver reports them (`"1"`, `"37"`, sometimes `"37+"`),
/// is 1.`wanted_minor` or later.
fn at_least(major: &str, minor: &str, wanted_minor: u32) -> bool {
    let number = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= wanted_minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_1_29_sleep_hooks_from_1_30() {
        let native = |major, minor| at_least(major, minor, NATIVE_SIDECAR_MINOR);
        assert!(native("1", "37"));
        assert!(native("1", "29+"));
        assert!(!native("1", "28"));
        assert!(native("2", "0"));
        assert!(!native("", ""));
        assert!(!at_least("1", "29", SLEEP_HOOK_MINOR));
        assert!(at_least("1", "30", SLEEP_HOOK_MINOR));
    }
}
