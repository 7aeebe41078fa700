//! The pure translation from what the control plane watches (Services, EndpointSlices, Pods,
//! RouteRules, EgressRules, TrafficPolicies, AccessPolicies, MtlsPolicies, the MeshConfig) to
//! each proxy's [`ProxyConfig`], plus the status every rule should report. No I/O: the caller feeds snapshots of its watch
//! caches in [`Inputs`], calls [`MeshView::build`] once per batch of changes, then
//! [`MeshView::proxy_config`] for every connected proxy.
//!
//! # Services → destinations
//!
//! - One [`Destination`] per Service with a ClusterIP, named `svc.ns.svc.<clusterDomain>`, with
//!   the ClusterIPs (both families) as `addresses` and `svc.ns`, `svc.ns.svc` and
//!   `svc.ns.svc.<clusterDomain>` as `hosts`. A proxy in the Service's own namespace also gets
//!   the bare `svc`, the one name that means different Services in different namespaces (as in
//!   DNS search paths); that host is added per proxy, everything else is prepared once.
//! - Headless Services (`clusterIP: None`) and ExternalName Services are skipped for now: they
//!   have no virtual IP to capture, and clients reach their pods or external names directly (so
//!   under `RegistryOnly` those need an EgressRule or a ClusterIP Service). Services without a
//!   TCP port are skipped too, since a destination needs at least one port.
//! - One port per TCP Service port (UDP and SCTP are not proxied). Its protocol comes from
//!   `appProtocol` (`http`, `http2` / `kubernetes.io/h2c`, `grpc`, `tcp`, `tls` / `https`), else
//!   from the port name's Istio-style prefix (`http-web`, `http2-`, `grpc-`, `tcp-`, `tls-`,
//!   `https-`), else `Detect`; a TrafficPolicy's `opaquePorts` make ports `Opaque` whatever the
//!   rest says.
//! - Endpoints come from the EndpointSlices labelled `kubernetes.io/service-name` in the
//!   Service's namespace (IPv4 and IPv6; FQDN slices are skipped): every address of every
//!   endpoint that is serving (its `serving` condition, else `ready`, is not `false`), on the
//!   slice port whose `name` equals the Service port's (unset and empty are the same name).
//!   Terminating endpoints that still serve are marked `terminating`: proxies use them only when
//!   no other endpoint is left, as kube-proxy does, so a pod being deleted keeps answering the
//!   callers that have nowhere else to go while the others move away. An address listed twice
//!   keeps its serving entry over a terminating one (a new pod may get a departing pod's IP).
//!   An endpoint carries the labels of its Pod (minus `pod-template-hash`, which differs per
//!   rollout and would split subsets) and its workload: the Deployment for ReplicaSet-owned
//!   pods, else the owning controller, else the pod.
//!
//! # Visibility (per proxy)
//!
//! The Service annotation `skein.dev/export-to` ([`names::EXPORT_TO_ANNOTATION`]) lists the
//! namespaces whose proxies see the destination, comma-separated: `.` is the Service's own
//! namespace, `*` all of them; absent or empty means all. Another namespace's proxy does not get
//! the destination at all (so under `RegistryOnly` it cannot reach it through the mesh).
//!
//! The proxy of a pod being deleted (`deletionTimestamp` set) gets `draining: true`: it tells its
//! inbound clients to go elsewhere (`Connection: close`, GOAWAY) while still serving them; the
//! same push tells its callers the endpoint is terminating (`docs/termination.md`).
//!
//! # Rules
//!
//! - A RouteRule's `http` routes become the destination's routes, field by field. Routes (and
//!   requests no route takes, through a catch-all route appended after them) without `timeout`
//!   or `simpleRetry` get the MeshConfig's `traffic.timeout` and `traffic.retry`. A destination
//!   without a RouteRule gets one catch-all route with those defaults, or no route when there
//!   are none.
//! - A TrafficPolicy sets the destination's load balancer, limits, outlier detection and opaque
//!   ports; `mtlsMode: Disabled` makes its callers speak plaintext to the Service's endpoints
//!   (see [`mtls`]). A rule with a field nothing acts on reports `FieldsNotActing=True`
//!   ([`crate::api::not_acting`]).
//! - Producer and consumer rules (`docs/rules-across-namespaces.md`): a RouteRule or
//!   TrafficPolicy in the Service's namespace applies to every caller; one in another namespace
//!   applies only to the proxies of its own namespace, for which it replaces the producer's
//!   (one destination variant per such namespace, picked in [`MeshView::proxy_config`]).
//! - An EgressRule adds one egress entry per host and port to the proxies of the namespaces it
//!   applies to: its own; only a rule in `skein-system` may name others (`spec.namespaces`, `*`
//!   for all). Elsewhere those are ignored and the status says so ([`egress`]).
//! - Several RouteRules (or several TrafficPolicies) of one namespace for one Service: the
//!   oldest (`creationTimestamp`, then name) wins and the others report `Accepted=False`,
//!   reason `Conflicted`. Invalid rules ([`validate_route_rule`] and
//!   friends, which a webhook can run too) report `Accepted=False`, reason `Invalid`, and take no
//!   part: neither in the configuration nor in conflicts. A rule naming a Service that does not
//!   exist is accepted with `ResolvedRefs=False` (`ServiceNotFound`) and applies once it appears.
//!
//! # Access policies
//!
//! Each AccessPolicy goes to the proxies of the pods it selects ([`access`]: its namespace,
//! labels including `selector.matchLabels`), service accounts spelt as SPIFFE IDs in the mesh's
//! trust domain. Invalid ones ([`validate_access_policy`]) report `Accepted=False` and reach no
//! proxy; `ResolvedRefs` says how many pods the selector matches (`False`, `NoPodsSelected`,
//! for none). A proxy whose pod is not in the cache yet gets only the policies without a
//! selector until it is.
//!
//! # mTLS modes
//!
//! MtlsPolicies override MeshConfig `mtls.mode` per namespace, workload and port ([`mtls`] has
//! the precedence and which of several policies applies); they set the inbound mode of the
//! proxies of the pods they select, and whether callers originate mTLS to those pods' ports
//! (not to a `Disabled` one). They report like AccessPolicies, plus `Conflicted` for a policy
//! an older one overrides on every pod it selects.
//!
//! # Versions
//!
//! Every configuration carries a `version`: a 64-bit FNV-1a hash (hex) of its content, so an
//! unchanged mesh gives an unchanged version in every process and a proxy can skip a no-op
//! update. Each destination's hash is computed once per build; a proxy's version combines those
//! with its own fields, so `proxy_config` never serializes the whole mesh.

mod access;
mod egress;
mod endpoints;
mod mtls;
mod policy;
mod routes;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use crate::api::meshconfig::OutboundTrafficPolicy as MeshOutboundPolicy;
use crate::api::not_acting::NotActing;
use crate::api::{
    AccessPolicy, EgressRule, MeshConfigSpec, MtlsPolicy, RouteRule, TrafficPolicy, names,
};
use crate::proxy::config::types::{
    Destination, EgressAllow, OutboundTrafficPolicy, ProxyConfig, Workload,
};

pub use access::validate_access_policy;
pub use egress::{egress_scope_problems, validate_egress_rule};
pub use mtls::validate_mtls_policy;
pub use policy::validate_traffic_policy;
pub use routes::validate_route_rule;
pub use status::{RuleKind, RuleReport, TRANSITION_TIME_PLACEHOLDER};

use status::{Acceptance, Candidate, Resolution, RuleMeta, ServiceKey};

/// Everything the control plane watches, as plain snapshots (the reflectors' stores, cloned
/// Arcs).
pub struct Inputs<'a> {
    /// The active MeshConfig's spec (its defaults when there is none).
    pub mesh: &'a MeshConfigSpec,
    pub services: &'a [Arc<Service>],
    pub endpoint_slices: &'a [Arc<EndpointSlice>],
    pub pods: &'a [Arc<Pod>],
    pub route_rules: &'a [Arc<RouteRule>],
    pub egress_rules: &'a [Arc<EgressRule>],
    pub traffic_policies: &'a [Arc<TrafficPolicy>],
    pub access_policies: &'a [Arc<AccessPolicy>],
    pub mtls_policies: &'a [Arc<MtlsPolicy>],
    /// `cluster.local` in most clusters.
    pub cluster_domain: &'a str,
    /// The CA certificates every proxy trusts (PEM; empty before the mesh CA is read).
    pub trust_bundle_pem: &'a str,
}

/// The mesh as proxies see it, computed once per change and shared by every proxy.
pub struct MeshView {
    /// Sorted by destination name.
    destinations: Vec<PreparedDestination>,
    /// Accepted EgressRules, sorted by namespace and name.
    egress: Vec<egress::PreparedEgress>,
    pods: endpoints::PodIndex,
    mtls: mtls::MeshMtls,
    outbound_traffic_policy: OutboundTrafficPolicy,
    /// Accepted AccessPolicies, sorted by namespace and name.
    access_policies: Vec<access::PreparedAccessPolicy>,
    /// Sorted by kind, namespace and name.
    reports: Vec<RuleReport>,
    trust_bundle_pem: String,
}

/// A destination as every proxy that sees it gets it, short host aside.
struct PreparedDestination {
    namespace: String,
    /// The Service's name: the short host for proxies of its namespace.
    service: String,
    export_to: ExportTo,
    destination: Destination,
    /// Hash of `destination`, for proxies' versions.
    hash: u64,
    /// What callers in namespaces with a consumer rule (RouteRule or TrafficPolicy) for the
    /// Service get instead of `destination`, by namespace.
    for_callers: BTreeMap<String, Variant>,
}

/// A destination as the callers of one namespace get it, with its hash.
struct Variant {
    destination: Destination,
    hash: u64,
}

impl Variant {
    fn new(destination: Destination) -> Self {
        Self {
            hash: hash_json(&destination),
            destination,
        }
    }
}

impl PreparedDestination {
    /// The destination and its hash for a caller in `namespace`.
    fn for_caller(&self, namespace: &str) -> (&Destination, u64) {
        match self.for_callers.get(namespace) {
            Some(variant) => (&variant.destination, variant.hash),
            None => (&self.destination, self.hash),
        }
    }
}

/// Which namespaces' proxies see a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ExportTo {
    All,
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    /// Parses the `skein.dev/export-to` annotation of a Service in `namespace`.
    fn parse(annotation: Option<&str>, namespace: &str) -> Self {
        let mut namespaces = BTreeSet::new();
        for entry in annotation.unwrap_or("").split(',').map(str::trim) {
            match entry {
                "" => {}
                "*" => return ExportTo::All,
                "." => {
                    namespaces.insert(namespace.to_owned());
                }
                other => {
                    namespaces.insert(other.to_owned());
                }
            }
        }
        // An empty value is treated like no annotation (as Istio's exportTo does), so a stray
        // empty annotation does not make a Service vanish from the mesh.
        if namespaces.is_empty() {
            ExportTo::All
        } else {
            ExportTo::Namespaces(namespaces)
        }
    }

    fn includes(&self, namespace: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(namespaces) => namespaces.contains(namespace),
        }
    }
}

impl MeshView {
    pub fn build(inputs: &Inputs) -> MeshView {
        let defaults = routes::Defaults::from_mesh(&inputs.mesh.traffic);
        let pods = endpoints::PodIndex::new(inputs.pods);
        let slices = endpoints::SliceIndex::new(inputs.endpoint_slices);
        // MtlsPolicies first: they decide which endpoints callers reach over mTLS.
        let (mesh_mtls, mut reports) =
            mtls::MeshMtls::build(inputs.mesh, inputs.mtls_policies, &pods);

        // Which Services exist at all (whatever their type), for ResolvedRefs.
        let existing: HashMap<(&str, &str), &Service> = inputs
            .services
            .iter()
            .filter_map(|svc| {
                let meta = &svc.metadata;
                Some((
                    (meta.namespace.as_deref()?, meta.name.as_deref()?),
                    svc.as_ref(),
                ))
            })
            .collect();

        // TrafficPolicies first: they shape the destinations (opaque ports, balancing).
        let policies = status::decide(
            inputs.traffic_policies.iter().map(|tp| {
                let meta = RuleMeta::new(
                    RuleKind::TrafficPolicy,
                    &tp.metadata,
                    tp.spec.fields_not_acting(),
                );
                let problems = validate_traffic_policy(&tp.spec);
                Candidate {
                    target: status::parse_service_ref(&tp.spec.service, &meta.namespace),
                    meta,
                    translated: if problems.is_empty() {
                        Ok(policy::translate(&tp.spec))
                    } else {
                        Err(problems)
                    },
                }
            }),
            "already applies to",
        );
        let rules = status::decide(
            inputs.route_rules.iter().map(|rr| {
                let meta = RuleMeta::new(
                    RuleKind::RouteRule,
                    &rr.metadata,
                    rr.spec.fields_not_acting(),
                );
                let problems = validate_route_rule(&rr.spec);
                Candidate {
                    target: status::parse_service_ref(&rr.spec.service, &meta.namespace),
                    meta,
                    translated: if problems.is_empty() {
                        routes::translate(&rr.spec, &defaults)
                    } else {
                        Err(problems)
                    },
                }
            }),
            "already routes",
        );

        let mut destinations: Vec<PreparedDestination> = inputs
            .services
            .iter()
            .filter_map(|svc| {
                let namespace = svc.metadata.namespace.as_deref()?;
                let name = svc.metadata.name.as_deref()?;
                let key = ServiceKey::new(namespace, name);
                let policy = policies.winners.get(&key);
                let routes = rules.winners.get(&key);
                // What callers in `caller` get (None: the producer's view, for everyone else).
                let build = |caller: Option<&str>| -> Option<Destination> {
                    let mut destination = endpoints::destination(
                        svc,
                        &slices,
                        &pods,
                        inputs.cluster_domain,
                        policy.and_then(|p| p.pick(caller)),
                        &mesh_mtls,
                    )?;
                    destination.routes = match routes.and_then(|r| r.pick(caller)) {
                        Some(routes) => routes.clone(),
                        None => defaults.catch_all().into_iter().collect(),
                    };
                    Some(destination)
                };
                let destination = build(None)?;
                let export_to = ExportTo::parse(
                    svc.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(names::EXPORT_TO_ANNOTATION))
                        .map(String::as_str),
                    namespace,
                );
                // Consumer rules: one variant per namespace with its own rule, for its
                // callers only (and only if the Service is exported to them at all).
                let consumer_namespaces: BTreeSet<&String> = policy
                    .into_iter()
                    .flat_map(|p| p.consumers.keys())
                    .chain(routes.into_iter().flat_map(|r| r.consumers.keys()))
                    .filter(|caller| export_to.includes(caller))
                    .collect();
                let for_callers = consumer_namespaces
                    .into_iter()
                    .filter_map(|caller| {
                        let variant = build(Some(caller))?;
                        Some((caller.clone(), Variant::new(variant)))
                    })
                    .collect();
                Some(PreparedDestination {
                    namespace: namespace.to_owned(),
                    service: name.to_owned(),
                    export_to,
                    hash: hash_json(&destination),
                    destination,
                    for_callers,
                })
            })
            .collect();
        destinations.sort_by(|a, b| a.destination.name.cmp(&b.destination.name));
        keep_distinct(&mut destinations);
        let routable: HashMap<ServiceKey, &ExportTo> = destinations
            .iter()
            .map(|d| (ServiceKey::new(&d.namespace, &d.service), &d.export_to))
            .collect();

        // ResolvedRefs: whether the named Service exists and has a destination.
        let resolve = |rule_namespace: &str, target: &Result<ServiceKey, String>| -> Resolution {
            match target {
                Err(problem) => Resolution::BadReference(problem.clone()),
                Ok(key) => match routable.get(key) {
                    // A consumer rule for a Service its namespace's proxies do not see.
                    Some(export_to) if !export_to.includes(rule_namespace) => {
                        Resolution::NotExported(key.clone(), rule_namespace.to_owned())
                    }
                    Some(_) => Resolution::Found(key.clone()),
                    None => match existing.get(&(key.namespace.as_str(), key.name.as_str())) {
                        Some(svc) => {
                            Resolution::NotRoutable(key.clone(), endpoints::why_skipped(svc))
                        }
                        None => Resolution::NotFound(key.clone()),
                    },
                },
            }
        };
        for decided in [policies.decided, rules.decided] {
            for (meta, target, acceptance) in decided {
                let resolution = resolve(&meta.namespace, &target);
                reports.push(status::report(&meta, &acceptance, Some(&resolution)));
            }
        }

        let mut egress = Vec::new();
        for rule in inputs.egress_rules {
            let meta = RuleMeta::new(
                RuleKind::EgressRule,
                &rule.metadata,
                rule.spec.fields_not_acting(),
            );
            let problems = validate_egress_rule(&rule.spec);
            let acceptance = if problems.is_empty() {
                let (prepared, acceptance) = egress::prepare(&meta.namespace, &rule.spec);
                if let Some(prepared) = prepared {
                    egress.push(((meta.namespace.clone(), meta.name.clone()), prepared));
                }
                acceptance
            } else {
                Acceptance::Invalid(problems)
            };
            reports.push(status::report(&meta, &acceptance, None));
        }
        egress.sort_by(|a, b| a.0.cmp(&b.0));

        let mut access_policies = Vec::new();
        for policy in inputs.access_policies {
            let meta = RuleMeta::new(
                RuleKind::AccessPolicy,
                &policy.metadata,
                policy.spec.fields_not_acting(),
            );
            let match_labels = access::match_labels(&policy.spec);
            let selected = pods
                .in_namespace(&meta.namespace)
                .filter(|pod| access::selector_matches(&match_labels, &access::labels_of(pod)))
                .count();
            let resolution = if selected == 0 {
                Resolution::NoPodsSelected(meta.namespace.clone())
            } else {
                Resolution::PodsSelected(selected)
            };
            let problems = validate_access_policy(&policy.spec);
            let acceptance = if problems.is_empty() {
                let translated = access::translate(
                    &meta.namespace,
                    &meta.name,
                    &policy.spec,
                    &inputs.mesh.mtls.trust_domain,
                );
                access_policies.push(access::PreparedAccessPolicy {
                    namespace: meta.namespace.clone(),
                    match_labels,
                    hash: hash_json(&translated),
                    policy: translated,
                });
                Acceptance::Accepted(status::server_side_message(&meta.namespace))
            } else {
                Acceptance::Invalid(problems)
            };
            reports.push(status::report(&meta, &acceptance, Some(&resolution)));
        }
        access_policies.sort_by(|a, b| a.policy.name.cmp(&b.policy.name));

        reports
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        MeshView {
            destinations,
            egress: egress.into_iter().map(|(_, e)| e).collect(),
            pods,
            mtls: mesh_mtls,
            outbound_traffic_policy: match inputs.mesh.traffic.outbound_traffic_policy {
                MeshOutboundPolicy::RegistryOnly => OutboundTrafficPolicy::RegistryOnly,
                MeshOutboundPolicy::AllowAny => OutboundTrafficPolicy::AllowAny,
            },
            access_policies,
            reports,
            trust_bundle_pem: inputs.trust_bundle_pem.to_owned(),
        }
    }

    /// The configuration of the proxy of pod `namespace/pod` (IP optional); `version` is a
    /// stable hash of the content so an unchanged mesh gives an unchanged version.
    ///
    /// `ip` is only used to name the proxy's workload when the pod is not (yet) in the pod
    /// cache: an endpoint at that address in the same namespace names it.
    pub fn proxy_config(&self, namespace: &str, pod: &str, ip: Option<IpAddr>) -> ProxyConfig {
        let mut hash = Fnv::new();
        let destinations: Vec<Destination> = self
            .destinations
            .iter()
            .filter(|d| d.export_to.includes(namespace))
            .map(|d| {
                let (destination, destination_hash) = d.for_caller(namespace);
                hash.write(&destination_hash.to_le_bytes());
                let mut destination = destination.clone();
                if d.namespace == namespace {
                    destination.hosts.insert(0, d.service.clone());
                    hash.write(b"+short");
                }
                hash.write(b";");
                destination
            })
            .collect();
        let egress: Vec<EgressAllow> = self
            .egress
            .iter()
            .filter(|e| e.applies_to(namespace))
            .flat_map(|e| {
                hash.write(&e.hash.to_le_bytes());
                e.entries.iter().cloned()
            })
            .collect();
        // A pod not (yet) in the cache gets only the namespace-wide policies; the push that
        // follows its arrival brings the rest.
        let pod_labels = self
            .pods
            .get(namespace, pod)
            .map(access::labels_of)
            .unwrap_or_default();
        let access_policies: Vec<_> = self
            .access_policies
            .iter()
            .filter(|p| p.selects(namespace, &pod_labels))
            .map(|p| {
                hash.write(&p.hash.to_le_bytes());
                p.policy.clone()
            })
            .collect();
        let mut config = ProxyConfig {
            workload: self.proxy_workload(namespace, pod, ip),
            outbound_traffic_policy: self.outbound_traffic_policy,
            draining: self.pods.get(namespace, pod).is_some_and(is_terminating),
            inbound_mtls: self.mtls.inbound(namespace, self.pods.get(namespace, pod)),
            trust_bundle_pem: self.trust_bundle_pem.clone(),
            ..ProxyConfig::default()
        };
        hash.write(&json_bytes(&(
            &config.workload,
            config.outbound_traffic_policy,
            &config.opaque_ports,
            config.detect_timeout,
            config.draining,
            &config.inbound_mtls,
            &config.trust_bundle_pem,
        )));
        config.version = format!("{:016x}", hash.finish());
        config.destinations = destinations;
        config.egress = egress;
        config.access_policies = access_policies;
        config
    }

    /// What the control plane should write into each rule's status, sorted by kind, namespace
    /// and name.
    pub fn rule_reports(&self) -> &[RuleReport] {
        &self.reports
    }

    fn proxy_workload(&self, namespace: &str, pod: &str, ip: Option<IpAddr>) -> Workload {
        if let Some(found) = self.pods.get(namespace, pod) {
            return endpoints::workload_of(found, namespace);
        }
        // Rare (a proxy connecting before the pod cache has its pod), so a scan is fine.
        let by_endpoint = ip.and_then(|ip| {
            self.destinations
                .iter()
                .flat_map(|d| &d.destination.ports)
                .flat_map(|p| &p.endpoints)
                .filter(|e| e.address.ip() == ip)
                .filter_map(|e| e.workload.as_ref())
                .find(|w| w.namespace == namespace)
                .cloned()
        });
        by_endpoint.unwrap_or_else(|| Workload {
            name: pod.to_owned(),
            namespace: namespace.to_owned(),
        })
    }
}

/// A pod being deleted: its proxy drains (callers learn of it through the EndpointSlice's
/// `terminating` condition at about the same time).
fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The proxy refuses a whole configuration in which two destinations share a name or a
/// virtual IP. Neither happens in a consistent cluster, but watch caches are only eventually
/// consistent (a Service recreated under another name can briefly hold its old ClusterIP
/// twice), so the first destination by name keeps what is contested rather than every proxy
/// losing every update. Expects `destinations` sorted by name.
fn keep_distinct(destinations: &mut Vec<PreparedDestination>) {
    destinations.dedup_by(|later, earlier| later.destination.name == earlier.destination.name);
    let mut seen = HashSet::new();
    for prepared in destinations.iter_mut() {
        let before = prepared.destination.addresses.len();
        prepared
            .destination
            .addresses
            .retain(|ip| seen.insert(ip.to_canonical()));
        if prepared.destination.addresses.len() != before {
            prepared.hash = hash_json(&prepared.destination);
            for variant in prepared.for_callers.values_mut() {
                variant.destination.addresses = prepared.destination.addresses.clone();
                variant.hash = hash_json(&variant.destination);
            }
        }
    }
}

/// 64-bit FNV-1a: tiny, and the same in every process and build (unlike `DefaultHasher`, whose
/// algorithm may change between Rust releases, which would make every proxy reload after a
/// control-plane upgrade).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The JSON encoding of plain config data; these types have string keys only, so encoding
/// cannot fail, and if it ever did the hash would merely be less precise.
fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn hash_json<T: Serialize>(value: &T) -> u64 {
    let mut hash = Fnv::new();
    hash.write(&json_bytes(value));
    hash.finish()
}
