//! Mutual TLS in the proxies' configuration: which endpoints callers reach over mTLS (and as
//! whom), and which inbound connections each proxy requires it for.
//!
//! - A pod is meshed when the injector gave it its proxy (the `skein.dev/injection-status`
//!   annotation); its identity is its service account's:
//!   `spiffe://<mtls.trustDomain>/ns/<namespace>/sa/<serviceAccountName or default>`.
//! - Server side: MeshConfig `mtls.mode` (`Permissive` by default), overridden per namespace,
//!   workload and port by MtlsPolicies ([`crate::api::mtls_policy`]). For port N of pod P the
//!   first set of: the workload policy's entry for N, its `mode`, the namespace policy's entry
//!   for N, its `mode`, MeshConfig `mtls.mode`.
//! - Which policy: the namespace policy is the oldest (`creationTimestamp`, then name) valid
//!   policy of P's namespace without a selector; the others without one report `Conflicted`. The
//!   workload policy is the oldest valid policy whose non-empty selector matches P, decided per
//!   pod: a policy two selectors overlap on keeps the pods only it selects. One that loses every
//!   pod it selects (always so for a younger copy of another's selector) reports `Conflicted`
//!   naming the winners; one that loses some says so in `ResolvedRefs`.
//! - An endpoint carries its identity, so callers originate mTLS to it, when its pod is meshed,
//!   its port's mode is not `Disabled`, and the caller's TrafficPolicy for the Service does not
//!   set `mtlsMode: Disabled`.
//! - Under `Strict` the kubelet's probes still come in as plaintext: each proxy is told its
//!   node's address (`status.hostIP`) and the ports (and HTTP paths) of its containers' probes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::access::{labels_of, selector_matches, validate_match_labels};
use super::endpoints::PodIndex;
use super::status::{self, Acceptance, Resolution, RuleKind, RuleMeta, RuleReport};
use crate::api::MeshConfigSpec;
use crate::api::meshconfig::MtlsMode;
use crate::api::mtls_policy::{MtlsPolicy, MtlsPolicySpec};
use crate::api::not_acting::NotActing;
use crate::identity::SpiffeId;
use crate::inject::patch::{FEATURES_ANNOTATION, PROXY_FEATURE_HTTP2_UPGRADE, STATUS_ANNOTATION};
use crate::proxy::config::types::{InboundMtls, ProbePort};

/// The mesh-wide settings the translation needs, with the accepted MtlsPolicies.
#[derive(Clone, Debug)]
pub(super) struct MeshMtls {
    pub trust_domain: String,
    pub mode: MtlsMode,
    /// Accepted policies by namespace.
    policies: HashMap<String, NamespacePolicies>,
}

/// One namespace's accepted MtlsPolicies.
#[derive(Clone, Debug, Default)]
struct NamespacePolicies {
    /// The oldest without a selector.
    namespace_wide: Option<PreparedMtlsPolicy>,
    /// With a selector, oldest first: the first that selects a pod is its workload policy.
    workloads: Vec<PreparedMtlsPolicy>,
}

/// An accepted MtlsPolicy as the translation applies it.
#[derive(Clone, Debug)]
struct PreparedMtlsPolicy {
    name: String,
    match_labels: BTreeMap<String, String>,
    mode: Option<MtlsMode>,
    ports: BTreeMap<u16, MtlsMode>,
}

impl PreparedMtlsPolicy {
    fn new(name: &str, spec: &MtlsPolicySpec) -> Self {
        Self {
            name: name.to_owned(),
            match_labels: policy_labels(spec),
            mode: spec.mode,
            ports: spec.ports.iter().map(|p| (p.port, p.mode)).collect(),
        }
    }

    /// What the policy says about `port`: its entry, else its mode.
    fn mode_for(&self, port: u16) -> Option<MtlsMode> {
        self.ports.get(&port).copied().or(self.mode)
    }
}

/// The policies that apply to one pod, the more specific first.
struct Applicable<'a>([Option<&'a PreparedMtlsPolicy>; 2]);

impl Applicable<'_> {
    fn iter(&self) -> impl Iterator<Item = &PreparedMtlsPolicy> {
        self.0.iter().flatten().copied()
    }
}

impl MeshMtls {
    /// The mesh-wide settings alone, as if no MtlsPolicy existed.
    pub fn from_mesh(mesh: &MeshConfigSpec) -> Self {
        Self {
            trust_domain: mesh.mtls.trust_domain.clone(),
            mode: mesh.mtls.mode,
            policies: HashMap::new(),
        }
    }

    /// The mesh-wide settings with the valid MtlsPolicies, and every policy's report.
    pub fn build(
        mesh: &MeshConfigSpec,
        policies: &[Arc<MtlsPolicy>],
        pods: &PodIndex,
    ) -> (Self, Vec<RuleReport>) {
        let mut mesh_mtls = Self::from_mesh(mesh);
        let mut reports = Vec::new();
        let mut valid: BTreeMap<String, Vec<(RuleMeta, PreparedMtlsPolicy)>> = BTreeMap::new();
        for policy in policies {
            let meta = RuleMeta::new(
                RuleKind::MtlsPolicy,
                &policy.metadata,
                policy.spec.fields_not_acting(),
            );
            let problems = validate_mtls_policy(&policy.spec);
            if problems.is_empty() {
                let prepared = PreparedMtlsPolicy::new(&meta.name, &policy.spec);
                valid
                    .entry(meta.namespace.clone())
                    .or_default()
                    .push((meta, prepared));
            } else {
                let labels = policy_labels(&policy.spec);
                let selected = pods
                    .in_namespace(&meta.namespace)
                    .filter(|pod| selector_matches(&labels, &labels_of(pod)))
                    .count();
                let resolution = selected_resolution(&meta.namespace, selected, selected, &[]);
                reports.push(status::report(
                    &meta,
                    &Acceptance::Invalid(problems),
                    Some(&resolution),
                ));
            }
        }
        for (namespace, mut candidates) in valid {
            candidates.sort_by(|a, b| a.0.precedence().cmp(&b.0.precedence()));
            let (accepted, namespace_reports) = decide_namespace(&namespace, candidates, pods);
            reports.extend(namespace_reports);
            mesh_mtls.policies.insert(namespace, accepted);
        }
        (mesh_mtls, reports)
    }

    /// The policies that apply to a pod of `namespace` with `labels`.
    fn applicable(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Applicable<'_> {
        let Some(policies) = self.policies.get(namespace) else {
            return Applicable([None, None]);
        };
        let workload = policies
            .workloads
            .iter()
            .find(|p| selector_matches(&p.match_labels, labels));
        Applicable([workload, policies.namespace_wide.as_ref()])
    }

    fn applicable_to(&self, pod: &Pod) -> Applicable<'_> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        self.applicable(namespace, &labels_of(pod))
    }

    /// The server-side mode of `pod`'s `port`.
    pub fn mode_for(&self, pod: &Pod, port: u16) -> MtlsMode {
        self.applicable_to(pod)
            .iter()
            .find_map(|p| p.mode_for(port))
            .unwrap_or(self.mode)
    }

    /// The identity callers must see when they reach `pod` on `port` with mTLS; `None`: they
    /// speak plaintext to it.
    pub fn endpoint_identity(
        &self,
        pod: &Pod,
        port: u16,
        client_mode: Option<MtlsMode>,
    ) -> Option<String> {
        if client_mode == Some(MtlsMode::Disabled) || self.mode_for(pod, port) == MtlsMode::Disabled
        {
            return None;
        }
        identity_of(pod, &self.trust_domain).map(|id| id.to_string())
    }

    /// The inbound side of the proxy of a pod of `namespace`. A pod not (yet) in the cache gets
    /// the namespace policy only; the push that follows its arrival brings the rest.
    pub fn inbound(&self, namespace: &str, pod: Option<&Pod>) -> InboundMtls {
        let labels = pod.map(labels_of).unwrap_or_default();
        let applicable = self.applicable(namespace, &labels);
        let effective = |port: Option<u16>| {
            applicable
                .iter()
                .find_map(|p| port.map_or(p.mode, |port| p.mode_for(port)))
                .unwrap_or(self.mode)
        };
        let mode = effective(None);
        let port_modes = applicable
            .iter()
            .flat_map(|p| p.ports.keys().copied())
            .filter_map(|port| {
                let port_mode = effective(Some(port));
                (port_mode != mode).then_some((port, port_mode))
            })
            .collect();
        let Some(pod) = pod else {
            return InboundMtls {
                mode,
                port_modes,
                ..InboundMtls::default()
            };
        };
        InboundMtls {
            mode,
            port_modes,
            probes: probe_ports(pod),
            node_ip: pod
                .status
                .as_ref()
                .and_then(|status| status.host_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
        }
    }
}

fn policy_labels(spec: &MtlsPolicySpec) -> BTreeMap<String, String> {
    spec.selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default()
}

/// Every problem of a policy, with its field path; empty when it is valid.
pub fn validate_mtls_policy(spec: &MtlsPolicySpec) -> Vec<String> {
    let mut problems = validate_match_labels(&policy_labels(spec));
    if spec.mode.is_none() && spec.ports.is_empty() {
        problems.push(
            "spec: sets nothing (set `mode`, `ports` or both; to inherit everything, delete the \
             policy)"
                .to_owned(),
        );
    }
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    for (i, entry) in spec.ports.iter().enumerate() {
        if entry.port == 0 {
            problems.push(format!("spec.ports[{i}].port: 0 is not a port"));
        } else if let Some(first) = seen.insert(entry.port, i) {
            problems.push(format!(
                "spec.ports[{i}].port: {} is already set by spec.ports[{first}]",
                entry.port
            ));
            seen.insert(entry.port, first);
        }
    }
    problems
}

/// One namespace's valid policies, oldest first → what applies, and their reports.
fn decide_namespace(
    namespace: &str,
    candidates: Vec<(RuleMeta, PreparedMtlsPolicy)>,
    pods: &PodIndex,
) -> (NamespacePolicies, Vec<RuleReport>) {
    let pod_labels: Vec<BTreeMap<String, String>> =
        pods.in_namespace(namespace).map(labels_of).collect();
    let title = |name: &str| format!("MtlsPolicy {namespace}/{name}");
    let mut accepted = NamespacePolicies::default();
    // Per workload policy (by its index in `accepted.workloads`): pods it applies to.
    let mut workload_metas = Vec::new();
    let mut reports = Vec::new();
    for (meta, policy) in candidates {
        if policy.match_labels.is_empty() {
            let acceptance = match &accepted.namespace_wide {
                Some(winner) => Acceptance::Conflicted(format!(
                    "{} already sets the mode of namespace {namespace}; this one is ignored",
                    title(&winner.name)
                )),
                None => {
                    accepted.namespace_wide = Some(policy);
                    Acceptance::Accepted(status::server_side_message(namespace))
                }
            };
            let resolution =
                selected_resolution(namespace, pod_labels.len(), pod_labels.len(), &[]);
            reports.push(status::report(&meta, &acceptance, Some(&resolution)));
            continue;
        }
        // A younger copy of a selector never applies to any pod: conflicted even with no pods.
        if let Some(twin) = accepted
            .workloads
            .iter()
            .find(|w| w.match_labels == policy.match_labels)
        {
            let selected = pod_labels
                .iter()
                .filter(|labels| selector_matches(&policy.match_labels, labels))
                .count();
            let acceptance = Acceptance::Conflicted(format!(
                "{} has the same selector and is older; this one is ignored",
                title(&twin.name)
            ));
            let resolution = selected_resolution(namespace, selected, selected, &[]);
            reports.push(status::report(&meta, &acceptance, Some(&resolution)));
            continue;
        }
        accepted.workloads.push(policy);
        workload_metas.push(meta);
    }
    // Per pod, the first (oldest) workload policy selecting it applies.
    let count = accepted.workloads.len();
    let mut applies = vec![0usize; count];
    let mut selected = vec![0usize; count];
    let mut taken_by: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); count];
    for labels in &pod_labels {
        let mut winner = None;
        for (i, policy) in accepted.workloads.iter().enumerate() {
            if !selector_matches(&policy.match_labels, labels) {
                continue;
            }
            selected[i] += 1;
            match winner {
                None => {
                    applies[i] += 1;
                    winner = Some(policy.name.as_str());
                }
                Some(name) => {
                    taken_by[i].insert(name);
                }
            }
        }
    }
    for (i, meta) in workload_metas.iter().enumerate() {
        let winners: Vec<String> = taken_by[i].iter().map(|name| title(name)).collect();
        let acceptance = if selected[i] > 0 && applies[i] == 0 {
            Acceptance::Conflicted(format!(
                "every pod this one selects follows the older {} instead; it would apply to pods \
                 no older policy selects (none now)",
                winners.join(", ")
            ))
        } else {
            Acceptance::Accepted(status::server_side_message(namespace))
        };
        let resolution = selected_resolution(namespace, selected[i], applies[i], &winners);
        reports.push(status::report(meta, &acceptance, Some(&resolution)));
    }
    (accepted, reports)
}

/// `ResolvedRefs` of a policy whose selector matches `selected` pods, `applies` of which it
/// decides (the others follow the older `winners`).
fn selected_resolution(
    namespace: &str,
    selected: usize,
    applies: usize,
    winners: &[String],
) -> Resolution {
    if selected == 0 {
        Resolution::NoPodsSelected(namespace.to_owned())
    } else if applies == selected || applies == 0 {
        Resolution::PodsSelected(selected)
    } else {
        Resolution::PodsShared {
            selected,
            applies,
            others: winners.join(", "),
        }
    }
}

/// A meshed pod's identity; `None` for a pod without Skein's proxy.
pub(super) fn identity_of(pod: &Pod, trust_domain: &str) -> Option<SpiffeId> {
    let meshed = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(STATUS_ANNOTATION));
    if !meshed {
        return None;
    }
    let namespace = pod.metadata.namespace.as_deref()?;
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    Some(SpiffeId::new(trust_domain, namespace, service_account))
}

/// Whether the pod's proxy takes HTTP/1 requests carried over HTTP/2, as its injector declared
/// ([`FEATURES_ANNOTATION`]): callers that reach it over mTLS then multiplex their HTTP/1 requests
/// on one connection. Pods injected before features were declared are reached as before.
pub(super) fn takes_http2_upgrade(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(FEATURES_ANNOTATION))
        .is_some_and(|features| {
            features
                .split(',')
                .any(|feature| feature.trim() == PROXY_FEATURE_HTTP2_UPGRADE)
        })
}

/// The ports (with their HTTP paths) the kubelet probes, over every container; sorted.
fn probe_ports(pod: &Pod) -> Vec<ProbePort> {
    let mut ports: Vec<ProbePort> = Vec::new();
    let containers = pod.spec.iter().flat_map(|spec| &spec.containers);
    for container in containers {
        for probe in [
            &container.liveness_probe,
            &container.readiness_probe,
            &container.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            let Some((port, path)) = probe_target(container, probe) else {
                continue;
            };
            let index = match ports.iter().position(|p| p.port == port) {
                Some(index) => index,
                None => {
                    ports.push(ProbePort {
                        port,
                        http_paths: Vec::new(),
                    });
                    ports.len() - 1
                }
            };
            if let Some(path) = path
                && !ports[index].http_paths.contains(&path)
            {
                ports[index].http_paths.push(path);
            }
        }
    }
    for port in &mut ports {
        port.http_paths.sort();
    }
    ports.sort_by_key(|p| p.port);
    ports
}

/// A probe's port and, for HTTP, its path (as the kubelet sends it: the path without query).
fn probe_target(container: &Container, probe: &Probe) -> Option<(u16, Option<String>)> {
    if let Some(http) = &probe.http_get {
        let path = http.path.as_deref().unwrap_or("/");
        let path = path.split('?').next().unwrap_or("/");
        return Some((resolve_port(container, &http.port)?, Some(path.to_owned())));
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Some((resolve_port(container, &tcp.port)?, None));
    }
    if let Some(grpc) = &probe.grpc {
        return Some((u16::try_from(grpc.port).ok()?, None));
    }
    None
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(number) => u16::try_from(*number).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotated: bool, sa: Option<&str>) -> Pod {
        let annotations = if annotated {
            serde_json::json!({STATUS_ANNOTATION: "{}"})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "demo", "annotations": annotations},
            "spec": {
                "serviceAccountName": sa,
                "containers": [{
                    "name": "web",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/ready?full=1", "port": "http"}},
                    "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
                    "startupProbe": {"tcpSocket": {"port": 9000}}
                }]
            },
            "status": {"hostIP": "10.0.0.1"}
        }))
        .unwrap()
    }

    fn mesh(mode: MtlsMode) -> MeshMtls {
        let mut spec = MeshConfigSpec::default();
        spec.mtls.trust_domain = "td".to_owned();
        spec.mtls.mode = mode;
        MeshMtls::from_mesh(&spec)
    }

    #[test]
    fn meshed_pods_are_reached_as_their_service_account_unless_disabled() {
        let permissive = mesh(MtlsMode::Permissive);
        assert_eq!(
            permissive.endpoint_identity(&pod(true, Some("web")), 8080, None),
            Some("spiffe://td/ns/demo/sa/web".to_owned())
        );
        assert_eq!(
            permissive.endpoint_identity(&pod(true, None), 8080, None),
            Some("spiffe://td/ns/demo/sa/default".to_owned())
        );
        // Not meshed: nobody would terminate the TLS.
        assert_eq!(
            permissive.endpoint_identity(&pod(false, Some("web")), 8080, None),
            None
        );
        // Disabled by the caller's TrafficPolicy, or on the server side.
        assert_eq!(
            permissive.endpoint_identity(&pod(true, Some("web")), 8080, Some(MtlsMode::Disabled)),
            None
        );
        assert_eq!(
            mesh(MtlsMode::Disabled).endpoint_identity(&pod(true, Some("web")), 8080, None),
            None
        );
    }

    #[test]
    fn only_a_declared_feature_lets_callers_carry_http1_over_http2() {
        let with = |features: Option<&str>| {
            let mut pod = pod(true, Some("web"));
            if let Some(features) = features {
                pod.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(FEATURES_ANNOTATION.to_owned(), features.to_owned());
            }
            takes_http2_upgrade(&pod)
        };
        assert!(with(Some("http2-upgrade")));
        assert!(with(Some("other, http2-upgrade")));
        // Injected before features were declared, or by a build declaring others.
        assert!(!with(None));
        assert!(!with(Some("http2-upgraded,other")));
    }

    #[test]
    fn the_inbound_side_knows_the_node_and_the_probes() {
        let inbound = mesh(MtlsMode::Strict).inbound("demo", Some(&pod(true, None)));
        assert_eq!(inbound.mode, MtlsMode::Strict);
        assert_eq!(inbound.node_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            inbound.probes,
            vec![
                ProbePort {
                    port: 8080,
                    http_paths: vec!["/live".to_owned(), "/ready".to_owned()],
                },
                ProbePort {
                    port: 9000,
                    http_paths: vec![],
                },
            ]
        );
    }

    // -----------------------------------------------------------------------------------------
    // MtlsPolicy

    use crate::api::rule_status::{ACCEPTED, REASON_CONFLICTED, REASON_INVALID, RESOLVED_REFS};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    use MtlsMode::{Disabled, Permissive, Strict};

    /// A policy created `age` seconds after the epoch (smaller: older).
    fn policy(ns: &str, name: &str, age: i64, spec: Value) -> Arc<MtlsPolicy> {
        let mut policy = MtlsPolicy::new(name, serde_json::from_value(spec).unwrap());
        policy.metadata.namespace = Some(ns.to_owned());
        policy.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(age).unwrap(),
        ));
        Arc::new(policy)
    }

    fn labelled(ns: &str, name: &str, app: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                             "annotations": {STATUS_ANNOTATION: "{}"}},
            }))
            .unwrap(),
        )
    }

    fn built(policies: &[Arc<MtlsPolicy>], pods: &[Arc<Pod>]) -> (MeshMtls, Vec<RuleReport>) {
        let mut spec = MeshConfigSpec::default();
        spec.mtls.trust_domain = "td".to_owned();
        spec.mtls.mode = Permissive;
        MeshMtls::build(&spec, policies, &PodIndex::new(pods))
    }

    fn condition<'r>(
        reports: &'r [RuleReport],
        name: &str,
        type_: &str,
    ) -> (&'r str, &'r str, &'r str) {
        let report = reports.iter().find(|r| r.name == name).unwrap();
        let c = report.condition(type_).unwrap();
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn the_most_specific_setting_decides_each_port() {
        let ns_strict = || {
            policy(
                "demo",
                "ns",
                1,
                json!({"mode": "Strict", "ports": [{"port": 9000, "mode": "Disabled"}]}),
            )
        };
        let db = |fields: Value| {
            let mut spec = json!({"selector": {"matchLabels": {"app": "db"}}});
            spec.as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            policy("demo", "db", 2, spec)
        };
        // (policies, app of the pod, port, want)
        let cases = vec![
            ("no policy: the mesh's mode", vec![], "db", 8080, Permissive),
            ("namespace mode", vec![ns_strict()], "db", 8080, Strict),
            (
                "namespace port entry",
                vec![ns_strict()],
                "db",
                9000,
                Disabled,
            ),
            (
                "workload mode beats the namespace's",
                vec![ns_strict(), db(json!({"mode": "Permissive"}))],
                "db",
                8080,
                Permissive,
            ),
            (
                "workload mode beats the namespace's port entry",
                vec![ns_strict(), db(json!({"mode": "Permissive"}))],
                "db",
                9000,
                Permissive,
            ),
            (
                "workload port entry beats its mode",
                vec![
                    ns_strict(),
                    db(json!({"mode": "Permissive", "ports": [{"port": 5432, "mode": "Strict"}]})),
                ],
                "db",
                5432,
                Strict,
            ),
            (
                "workload with ports only inherits the namespace's mode",
                vec![
                    ns_strict(),
                    db(json!({"ports": [{"port": 5432, "mode": "Disabled"}]})),
                ],
                "db",
                8080,
                Strict,
            ),
            (
                "... and its port entry",
                vec![
                    ns_strict(),
                    db(json!({"ports": [{"port": 5432, "mode": "Disabled"}]})),
                ],
                "db",
                9000,
                Disabled,
            ),
            (
                "... and sets its own",
                vec![
                    ns_strict(),
                    db(json!({"ports": [{"port": 5432, "mode": "Disabled"}]})),
                ],
                "db",
                5432,
                Disabled,
            ),
            (
                "another workload follows the namespace",
                vec![ns_strict(), db(json!({"mode": "Permissive"}))],
                "web",
                8080,
                Strict,
            ),
            (
                "a workload policy without a namespace one",
                vec![db(json!({"mode": "Disabled"}))],
                "db",
                8080,
                Disabled,
            ),
            (
                "... leaves the others on the mesh's mode",
                vec![db(json!({"mode": "Disabled"}))],
                "web",
                8080,
                Permissive,
            ),
            (
                "another namespace's policy does nothing",
                vec![policy("other", "ns", 1, json!({"mode": "Strict"}))],
                "db",
                8080,
                Permissive,
            ),
        ];
        for (what, policies, app, port, want) in cases {
            let pod = labelled("demo", "p", app);
            let (mtls, _) = built(&policies, std::slice::from_ref(&pod));
            assert_eq!(mtls.mode_for(&pod, port), want, "{what}");
            assert_eq!(
                mtls.inbound("demo", Some(&pod)).mode_for(port),
                want,
                "{what}: inbound"
            );
        }
    }

    #[test]
    fn the_inbound_side_lists_the_ports_that_differ_from_the_pods_mode() {
        let policies = [
            policy(
                "demo",
                "ns",
                1,
                json!({"mode": "Strict", "ports": [{"port": 9000, "mode": "Disabled"}, {"port": 8080, "mode": "Permissive"}]}),
            ),
            policy(
                "demo",
                "db",
                2,
                json!({"selector": {"matchLabels": {"app": "db"}}, "ports": [{"port": 5432, "mode": "Strict"}, {"port": 8080, "mode": "Strict"}]}),
            ),
        ];
        let pod = labelled("demo", "db-1", "db");
        let (mtls, _) = built(&policies, std::slice::from_ref(&pod));
        let inbound = mtls.inbound("demo", Some(&pod));
        assert_eq!(inbound.mode, Strict);
        assert_eq!(inbound.port_modes, BTreeMap::from([(9000, Disabled)]));
        // A pod not in the cache yet: the namespace's policy, which the workload one cannot
        // reach without labels.
        let unknown = mtls.inbound("demo", None);
        assert_eq!(unknown.mode, Strict);
        assert_eq!(
            unknown.port_modes,
            BTreeMap::from([(8080, Permissive), (9000, Disabled)])
        );
        assert_eq!(mtls.inbound("other", None).mode, Permissive);
    }

    #[test]
    fn callers_speak_plaintext_to_disabled_ports_only() {
        let policies = [policy(
            "demo",
            "db",
            1,
            json!({"selector": {"matchLabels": {"app": "db"}}, "mode": "Strict", "ports": [{"port": 9000, "mode": "Disabled"}]}),
        )];
        let pod = labelled("demo", "db-1", "db");
        let (mtls, _) = built(&policies, std::slice::from_ref(&pod));
        assert_eq!(
            mtls.endpoint_identity(&pod, 5432, None),
            Some("spiffe://td/ns/demo/sa/default".to_owned())
        );
        assert_eq!(mtls.endpoint_identity(&pod, 9000, None), None);
    }

    #[test]
    fn the_oldest_policy_wins_and_the_others_say_which() {
        let db = json!({"app": "db"});
        let policies = [
            policy("demo", "ns-old", 1, json!({"mode": "Strict"})),
            policy(
                "demo",
                "ns-new",
                2,
                json!({"selector": {}, "mode": "Disabled"}),
            ),
            policy(
                "demo",
                "db-old",
                3,
                json!({"selector": {"matchLabels": db}, "mode": "Permissive"}),
            ),
            policy(
                "demo",
                "db-twin",
                4,
                json!({"selector": {"matchLabels": db}, "mode": "Disabled"}),
            ),
            // Selects the db pods (taken by db-old) and the v2 web pod (only it).
            policy(
                "demo",
                "v2",
                5,
                json!({"selector": {"matchLabels": {"version": "v2"}}, "mode": "Disabled"}),
            ),
            // Selects only pods db-old has.
            policy(
                "demo",
                "db-v2",
                6,
                json!({"selector": {"matchLabels": {"app": "db", "version": "v2"}}, "mode": "Strict"}),
            ),
            policy(
                "demo",
                "nobody",
                7,
                json!({"selector": {"matchLabels": {"app": "none"}}, "mode": "Strict"}),
            ),
            policy(
                "demo",
                "broken",
                0,
                json!({"selector": {"matchLabels": {"app": "db"}}}),
            ),
        ];
        let with_version = |name: &str, app: &str, version: &str| {
            let mut pod = (*labelled("demo", name, app)).clone();
            pod.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("version".to_owned(), version.to_owned());
            Arc::new(pod)
        };
        let pods = [
            with_version("db-1", "db", "v1"),
            with_version("db-2", "db", "v2"),
            with_version("web-2", "web", "v2"),
        ];
        let (mtls, reports) = built(&policies, &pods);
        assert_eq!(
            mtls.mode_for(&pods[0], 80),
            Permissive,
            "db-old, not its twin"
        );
        assert_eq!(
            mtls.mode_for(&pods[1], 80),
            Permissive,
            "db-old, the oldest selecting it"
        );
        assert_eq!(
            mtls.mode_for(&pods[2], 80),
            Disabled,
            "v2 keeps the pod only it selects"
        );
        assert_eq!(
            mtls.inbound("demo", None).mode,
            Strict,
            "ns-old, not ns-new"
        );

        let cases = [
            ("ns-old", ACCEPTED, ("True", "Accepted", "")),
            (
                "ns-old",
                RESOLVED_REFS,
                ("True", "ResolvedRefs", "matches 3 pod(s)"),
            ),
            (
                "ns-new",
                ACCEPTED,
                (
                    "False",
                    REASON_CONFLICTED,
                    "MtlsPolicy demo/ns-old already sets the mode of namespace demo",
                ),
            ),
            ("db-old", ACCEPTED, ("True", "Accepted", "")),
            (
                "db-twin",
                ACCEPTED,
                (
                    "False",
                    REASON_CONFLICTED,
                    "MtlsPolicy demo/db-old has the same selector and is older",
                ),
            ),
            ("v2", ACCEPTED, ("True", "Accepted", "")),
            (
                "v2",
                RESOLVED_REFS,
                (
                    "True",
                    "ResolvedRefs",
                    "matches 2 pod(s); the policy applies to 1 of them, the older MtlsPolicy demo/db-old to the others",
                ),
            ),
            (
                "db-v2",
                ACCEPTED,
                (
                    "False",
                    REASON_CONFLICTED,
                    "every pod this one selects follows the older MtlsPolicy demo/db-old",
                ),
            ),
            ("nobody", ACCEPTED, ("True", "Accepted", "")),
            (
                "nobody",
                RESOLVED_REFS,
                ("False", "NoPodsSelected", "no pod in namespace demo"),
            ),
            (
                "broken",
                ACCEPTED,
                ("False", REASON_INVALID, "spec: sets nothing"),
            ),
        ];
        for (name, type_, (status, reason, message)) in cases {
            let got = condition(&reports, name, type_);
            assert_eq!((got.0, got.1), (status, reason), "{name} {type_}: {got:?}");
            assert!(got.2.contains(message), "{name} {type_}: {got:?}");
        }
        assert_eq!(reports.len(), policies.len());
    }

    #[test]
    fn malformed_policies_are_refused_with_their_field_paths() {
        let cases = [
            (json!({}), "spec: sets nothing"),
            (
                json!({"selector": {"matchLabels": {"app": "db"}}}),
                "spec: sets nothing",
            ),
            (
                json!({"ports": [{"port": 0, "mode": "Strict"}]}),
                "spec.ports[0].port: 0 is not a port",
            ),
            (
                json!({"mode": "Strict", "ports": [{"port": 80, "mode": "Disabled"}, {"port": 81, "mode": "Disabled"}, {"port": 80, "mode": "Permissive"}]}),
                "spec.ports[2].port: 80 is already set by spec.ports[0]",
            ),
            (
                json!({"mode": "Strict", "selector": {"matchLabels": {"-app": "db"}}}),
                "\"-app\" is not a label key",
            ),
            (
                json!({"mode": "Strict", "selector": {"matchLabels": {"Example.com/app": "db"}}}),
                "\"Example.com/app\" is not a label key",
            ),
            (
                json!({"mode": "Strict", "selector": {"matchLabels": {"": "db"}}}),
                "\"\" is not a label key",
            ),
            (
                json!({"mode": "Strict", "selector": {"matchLabels": {"app": "db!"}}}),
                "spec.selector.matchLabels.app: \"db!\" is not a label value",
            ),
        ];
        for (value, want) in cases {
            let problems = validate_mtls_policy(&serde_json::from_value(value.clone()).unwrap());
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{value}: want {want:?}, got {problems:?}"
            );
        }
        for value in [
            json!({"mode": "Disabled"}),
            json!({"ports": [{"port": 65535, "mode": "Strict"}]}),
            json!({"selector": {"matchLabels": {"app.kubernetes.io/name": "db", "tier": ""}}, "mode": "Strict"}),
        ] {
            let problems = validate_mtls_policy(&serde_json::from_value(value.clone()).unwrap());
            assert!(problems.is_empty(), "{value}: {problems:?}");
        }
    }
}
