//! What the control plane watches to configure proxies: Services, EndpointSlices, Pods, the
//! active MeshConfig and the traffic CRDs, each in a reflector store. Every change marks the
//! index dirty; a rebuild task turns a burst of changes into one new [`MeshView`] (the pure
//! translation), which the push server streams to proxies and the status writer reports on.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::push::{ConfigSource, ProxyIdentity};
use super::translate::{Inputs, MeshView, RuleKind};
use crate::api::{
    AccessPolicy, EgressRule, MeshConfig, MtlsPolicy, RouteRule, RuleStatus, TrafficPolicy, names,
};
use crate::inject::patch::STATUS_ANNOTATION;
use crate::proxy::config::types::ProxyConfig;

/// A change waits this long for more changes before the view is rebuilt ...
const SETTLE: Duration = Duration::from_millis(50);
/// ... but never longer than this after the first one, so a steady trickle still gets through.
const MAX_DELAY: Duration = Duration::from_millis(250);

/// The reflector stores.
#[derive(Clone)]
struct Stores {
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    meshconfigs: Store<MeshConfig>,
    route_rules: Store<RouteRule>,
    egress_rules: Store<EgressRule>,
    traffic_policies: Store<TrafficPolicy>,
    access_policies: Store<AccessPolicy>,
    mtls_policies: Store<MtlsPolicy>,
    /// From the mesh CA ([`crate::controlplane::identity::CaStore::bundle`]).
    trust_bundle: watch::Receiver<String>,
}

/// The current view of the mesh and its change counter.
#[derive(Clone)]
pub struct Index {
    stores: Stores,
    view: Arc<RwLock<Arc<MeshView>>>,
    changes: watch::Receiver<u64>,
    cluster_domain: String,
}

impl Index {
    /// Starts the watches (spawned) and resolves once every store holds a full list and the
    /// first view is built, so no proxy is ever sent a half-known mesh.
    pub async fn start(
        client: Client,
        cluster_domain: String,
        trust_bundle: watch::Receiver<String>,
    ) -> Self {
        let (dirty_tx, dirty_rx) = watch::channel(());
        let dirty = Arc::new(dirty_tx);
        tokio::spawn(mark_dirty_on_change(trust_bundle.clone(), dirty.clone()));

        let (services, services_w) = reflector::store();
        let (endpoint_slices, slices_w) = reflector::store();
        let (pods, pods_w) = reflector::store();
        let (meshconfigs, meshconfigs_w) = reflector::store();
        let (route_rules, route_rules_w) = reflector::store();
        let (egress_rules, egress_rules_w) = reflector::store();
        let (traffic_policies, traffic_policies_w) = reflector::store();
        let (access_policies, access_policies_w) = reflector::store();
        let (mtls_policies, mtls_policies_w) = reflector::store();
        let all = watcher::Config::default();
        let only_active = watcher::Config::default()
            .fields(&format!("metadata.name={}", names::ACTIVE_MESHCONFIG));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            all.clone(),
            services_w,
            dirty.clone(),
            "services",
            keep,
        ));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            all.clone(),
            slices_w,
            dirty.clone(),
            "endpointslices",
            keep,
        ));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            all.clone(),
            pods_w,
            dirty.clone(),
            "pods",
            slim_pod,
        ));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            only_active,
            meshconfigs_w,
            dirty.clone(),
            "meshconfigs",
            keep,
        ));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            all.clone(),
            route_rules_w,
            dirty.clone(),
            "routerules",
            keep,
        ));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            all.clone(),
            egress_rules_w,
            dirty.clone(),
            "egressrules",
            keep,
        ));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            all.clone(),
            traffic_policies_w,
            dirty.clone(),
            "trafficpolicies",
            keep,
        ));
        tokio::spawn(watch_into(
            Api::all(client.clone()),
            all.clone(),
            access_policies_w,
            dirty.clone(),
            "accesspolicies",
            keep,
        ));
        tokio::spawn(watch_into(
            Api::all(client),
            all,
            mtls_policies_w,
            dirty,
            "mtlspolicies",
            keep,
        ));

        let stores = Stores {
            services,
            endpoint_slices,
            pods,
            meshconfigs,
            route_rules,
            egress_rules,
            traffic_policies,
            access_policies,
            mtls_policies,
            trust_bundle,
        };
        stores.wait_until_ready().await;
        let (changes_tx, changes) = watch::channel(0);
        let index = Self {
            view: Arc::new(RwLock::new(Arc::new(stores.build(&cluster_domain)))),
            stores,
            changes,
            cluster_domain,
        };
        tokio::spawn(index.clone().rebuild_loop(dirty_rx, changes_tx));
        index
    }

    /// The current view.
    pub fn view(&self) -> Arc<MeshView> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a Service `name.namespace` exists (for the validating webhook's warnings).
    pub fn has_service(&self, namespace: &str, name: &str) -> bool {
        self.stores
            .services
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// Whether pod `namespace/name` is in the cache.
    pub fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.stores
            .pods
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// The status a traffic rule has in the cache now.
    pub fn rule_status(&self, kind: RuleKind, namespace: &str, name: &str) -> Option<RuleStatus> {
        fn status_in<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<RuleStatus>
        where
            K: kube::Resource + Clone + HasRuleStatus,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            store
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|rule| rule.rule_status().cloned())
        }
        let s = &self.stores;
        match kind {
            RuleKind::RouteRule => status_in(&s.route_rules, namespace, name),
            RuleKind::EgressRule => status_in(&s.egress_rules, namespace, name),
            RuleKind::TrafficPolicy => status_in(&s.traffic_policies, namespace, name),
            RuleKind::AccessPolicy => status_in(&s.access_policies, namespace, name),
            RuleKind::MtlsPolicy => status_in(&s.mtls_policies, namespace, name),
        }
    }

    /// Rebuilds the view from the stores; returns how long it took.
    fn rebuild(&self) -> Duration {
        let started = Instant::now();
        let view = self.stores.build(&self.cluster_domain);
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        started.elapsed()
    }

    async fn rebuild_loop(self, mut dirty: watch::Receiver<()>, changes: watch::Sender<u64>) {
        // The first view was built by `start`, after the lists: only later changes matter.
        dirty.mark_unchanged();
        while dirty.changed().await.is_ok() {
            let first = Instant::now();
            loop {
                let remaining = MAX_DELAY.saturating_sub(first.elapsed());
                if remaining.is_zero() {
                    break;
                }
                match tokio::time::timeout(SETTLE.min(remaining), dirty.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => break,
                }
            }
            dirty.mark_unchanged();
            let took = self.rebuild();
            tracing::debug!(?took, "mesh view rebuilt");
            changes.send_modify(|n| *n += 1);
        }
    }
}

/// Rebuilds the view when the trust bundle changes (a CA rotation's step).
async fn mark_dirty_on_change(
    mut trust_bundle: watch::Receiver<String>,
    dirty: Arc<watch::Sender<()>>,
) {
    while trust_bundle.changed().await.is_ok() {
        dirty.send_replace(());
    }
}

impl Stores {
    /// The pure translation of everything the stores hold now.
    fn build(&self, cluster_domain: &str) -> MeshView {
        let mesh = self
            .meshconfigs
            .get(&ObjectRef::new(names::ACTIVE_MESHCONFIG))
            .map(|mc| mc.spec.clone())
            .unwrap_or_default();
        // A copy: a borrow would hold the channel's lock for the whole build.
        let trust_bundle_pem = self.trust_bundle.borrow().clone();
        MeshView::build(&Inputs {
            mesh: &mesh,
            services: &self.services.state(),
            endpoint_slices: &self.endpoint_slices.state(),
            pods: &self.pods.state(),
            route_rules: &self.route_rules.state(),
            egress_rules: &self.egress_rules.state(),
            traffic_policies: &self.traffic_policies.state(),
            access_policies: &self.access_policies.state(),
            mtls_policies: &self.mtls_policies.state(),
            cluster_domain,
            trust_bundle_pem: &trust_bundle_pem,
        })
    }

    async fn wait_until_ready(&self) {
        let _ = future::join_all([
            Box::pin(self.services.wait_until_ready())
                as std::pin::Pin<Box<dyn Future<Output = _> + Send>>,
            Box::pin(self.endpoint_slices.wait_until_ready()),
            Box::pin(self.pods.wait_until_ready()),
            Box::pin(self.meshconfigs.wait_until_ready()),
            Box::pin(self.route_rules.wait_until_ready()),
            Box::pin(self.egress_rules.wait_until_ready()),
            Box::pin(self.traffic_policies.wait_until_ready()),
            Box::pin(self.access_policies.wait_until_ready()),
            Box::pin(self.mtls_policies.wait_until_ready()),
        ])
        .await;
        tracing::info!("service, endpoint, pod and traffic-rule caches are synced");
    }
}

impl ConfigSource for Index {
    fn config_for(&self, proxy: &ProxyIdentity) -> ProxyConfig {
        self.view()
            .proxy_config(&proxy.namespace, &proxy.pod, proxy.ip)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

/// Watches `api` into `writer`, passing each object through `slim` first (to keep only what
/// the translation reads), and marks the index dirty on every change.
async fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    dirty: Arc<watch::Sender<()>>,
    what: &'static str,
    slim: fn(&mut K),
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .for_each(|event| {
            match event {
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => {
                    dirty.send_replace(());
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "watching {what}"),
            }
            future::ready(())
        })
        .await;
}

/// The traffic rules, which share one status type.
trait HasRuleStatus {
    fn rule_status(&self) -> Option<&RuleStatus>;
}

impl HasRuleStatus for RouteRule {
    fn rule_status(&self) -> Option<&RuleStatus> {
        self.status.as_ref()
    }
}

impl HasRuleStatus for EgressRule {
    fn rule_status(&self) -> Option<&RuleStatus> {
        self.status.as_ref()
    }
}

impl HasRuleStatus for AccessPolicy {
    fn rule_status(&self) -> Option<&RuleStatus> {
        self.status.as_ref()
    }
}

impl HasRuleStatus for MtlsPolicy {
    fn rule_status(&self) -> Option<&RuleStatus> {
        self.status.as_ref()
    }
}

impl HasRuleStatus for TrafficPolicy {
    fn rule_status(&self) -> Option<&RuleStatus> {
        self.status.as_ref()
    }
}

/// Objects kept as they come.
fn keep<K>(_: &mut K) {}

/// A pod as the translation needs it: labels, owners, whether it is meshed, its service account,
/// IPs, node and its containers' ports and probes (the mTLS translation lets the kubelet's
/// probes in under Strict). The rest (other annotations, the rest of the spec, container
/// statuses) is most of a pod's size and would only cost memory.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = pod.metadata.annotations.take().and_then(|mut all| {
        let status = all.remove(STATUS_ANNOTATION)?;
        Some([(STATUS_ANNOTATION.to_owned(), status)].into())
    });
    let spec = pod.spec.take().unwrap_or_default();
    pod.spec = Some(PodSpec {
        service_account_name: spec.service_account_name,
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                liveness_probe: c.liveness_probe,
                readiness_probe: c.readiness_probe,
                startup_probe: c.startup_probe,
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        host_ip: s.host_ip,
        phase: s.phase,
        ..PodStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mTLS translation reads the injection annotation, the probes and the node's IP: the
    /// slimmed pod must keep them.
    #[test]
    fn a_slim_pod_keeps_what_the_translation_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "demo", "labels": {"app": "web"},
                         "annotations": {STATUS_ANNOTATION: "{}", "big": "x"}},
            "spec": {
                "serviceAccountName": "web",
                "nodeName": "node-1",
                "containers": [{
                    "name": "web", "image": "web:1", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}
                }]
            },
            "status": {"hostIP": "10.0.0.1", "podIP": "10.1.0.5", "phase": "Running",
                       "containerStatuses": [{"name": "web", "image": "web:1", "imageID": "",
                                              "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        slim_pod(&mut pod);
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [STATUS_ANNOTATION]);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        assert_eq!(spec.node_name, None);
        let container = &spec.containers[0];
        assert!(container.readiness_probe.is_some() && container.ports.is_some());
        assert_eq!(
            (container.image.as_ref(), container.env.as_ref()),
            (None, None)
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(status.container_statuses, None);
    }
}
