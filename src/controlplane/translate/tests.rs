use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use super::*;
use crate::api::not_acting::{FIELDS_NOT_ACTING, REASON_ALL_FIELDS_ACT};
use crate::api::rule_status::{
    ACCEPTED, REASON_ACCEPTED, REASON_CONFLICTED, REASON_INVALID, REASON_NAMESPACES_LIMITED,
    REASON_NAMESPACES_NOT_ALLOWED, REASON_RESOLVED, REASON_SERVICE_NOT_FOUND, RESOLVED_REFS,
};
use crate::api::{Duration, EgressRuleSpec, RouteRuleSpec, TrafficPolicySpec};
use crate::proxy::config::Compiled;
use crate::proxy::config::types::{
    EgressProtocol, KeyMatch, LoadBalancer, OutlierDetection, Protocol, RequestMatch, RetryOn,
    Route, StringMatch, WeightedSubset,
};

// ---------------------------------------------------------------------------------------------
// fixtures

fn service(ns: &str, name: &str, ip: &str, ports: Value) -> Arc<Service> {
    service_with(
        ns,
        name,
        json!({"clusterIP": ip, "clusterIPs": [ip], "ports": ports}),
        json!({}),
    )
}

fn service_with(ns: &str, name: &str, spec: Value, annotations: Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "annotations": annotations},
            "spec": spec,
        }))
        .unwrap(),
    )
}

/// A slice of Service `svc` with `ports` (`[{name, port}]`) and `endpoints`.
fn slice(ns: &str, name: &str, svc: &str, ports: Value, endpoints: Value) -> Arc<EndpointSlice> {
    slice_typed(ns, name, svc, "IPv4", ports, endpoints)
}

fn slice_typed(
    ns: &str,
    name: &str,
    svc: &str,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> Arc<EndpointSlice> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": address_type,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

/// An endpoint for pod `pod` at `ip`.
fn ep(ip: &str, pod: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true},
           "targetRef": {"kind": "Pod", "name": pod}})
}

/// A pod of Deployment `deployment` (ReplicaSet `<deployment>-<hash>`) with `labels`.
fn deployment_pod(ns: &str, name: &str, deployment: &str, hash: &str, labels: Value) -> Arc<Pod> {
    let mut labels = labels;
    labels["pod-template-hash"] = json!(hash);
    pod_owned(
        ns,
        name,
        labels,
        "ReplicaSet",
        &format!("{deployment}-{hash}"),
    )
}

fn pod_owned(ns: &str, name: &str, labels: Value, kind: &str, owner: &str) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner,
                                     "uid": "u", "controller": true}]},
        }))
        .unwrap(),
    )
}

fn created(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap())
}

fn route_rule(ns: &str, name: &str, age: i64, spec: Value) -> Arc<RouteRule> {
    let spec: RouteRuleSpec = serde_json::from_value(spec).unwrap();
    let mut rule = RouteRule::new(name, spec);
    rule.metadata.namespace = Some(ns.to_owned());
    rule.metadata.generation = Some(3);
    rule.metadata.creation_timestamp = Some(created(-age));
    Arc::new(rule)
}

fn traffic_policy(ns: &str, name: &str, age: i64, spec: Value) -> Arc<TrafficPolicy> {
    let spec: TrafficPolicySpec = serde_json::from_value(spec).unwrap();
    let mut policy = TrafficPolicy::new(name, spec);
    policy.metadata.namespace = Some(ns.to_owned());
    policy.metadata.generation = Some(1);
    policy.metadata.creation_timestamp = Some(created(-age));
    Arc::new(policy)
}

fn egress_rule(ns: &str, name: &str, spec: Value) -> Arc<EgressRule> {
    let spec: EgressRuleSpec = serde_json::from_value(spec).unwrap();
    let mut rule = EgressRule::new(name, spec);
    rule.metadata.namespace = Some(ns.to_owned());
    rule.metadata.generation = Some(2);
    Arc::new(rule)
}

/// A mesh without traffic defaults, so routes show only what rules say.
fn bare_mesh() -> MeshConfigSpec {
    let mut mesh = MeshConfigSpec::default();
    mesh.traffic.retry.attempts = 0;
    mesh.traffic.timeout = None;
    mesh
}

#[derive(Default)]
struct World {
    mesh: MeshConfigSpec,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    pods: Vec<Arc<Pod>>,
    route_rules: Vec<Arc<RouteRule>>,
    egress_rules: Vec<Arc<EgressRule>>,
    traffic_policies: Vec<Arc<TrafficPolicy>>,
    access_policies: Vec<Arc<AccessPolicy>>,
    mtls_policies: Vec<Arc<MtlsPolicy>>,
}

impl World {
    fn bare() -> Self {
        World {
            mesh: bare_mesh(),
            ..World::default()
        }
    }

    /// Service `backend.demo` (10.96.0.10:80 `http`) with a v1 and a v2 pod.
    fn demo() -> Self {
        let mut world = World::bare();
        world.services.push(service(
            "demo",
            "backend",
            "10.96.0.10",
            json!([{"name": "http", "port": 80, "targetPort": 8080}]),
        ));
        world.slices.push(slice(
            "demo",
            "backend-abcde",
            "backend",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([
                ep("10.0.0.2", "backend-v2-7d9f-x1"),
                ep("10.0.0.1", "backend-v1-5c4b-y2")
            ]),
        ));
        world.pods.push(deployment_pod(
            "demo",
            "backend-v1-5c4b-y2",
            "backend-v1",
            "5c4b",
            json!({"app": "backend", "version": "v1"}),
        ));
        world.pods.push(deployment_pod(
            "demo",
            "backend-v2-7d9f-x1",
            "backend-v2",
            "7d9f",
            json!({"app": "backend", "version": "v2"}),
        ));
        world
    }

    fn build(&self) -> MeshView {
        MeshView::build(&Inputs {
            mesh: &self.mesh,
            services: &self.services,
            endpoint_slices: &self.slices,
            pods: &self.pods,
            route_rules: &self.route_rules,
            egress_rules: &self.egress_rules,
            traffic_policies: &self.traffic_policies,
            access_policies: &self.access_policies,
            mtls_policies: &self.mtls_policies,
            cluster_domain: "cluster.local",
            trust_bundle_pem: "",
        })
    }
}

/// The config of a proxy in `ns`, checked to be one the proxy accepts.
fn config_in(view: &MeshView, ns: &str) -> ProxyConfig {
    let config = view.proxy_config(ns, "client", None);
    if let Err(err) = Compiled::new(config.clone(), None) {
        panic!("the proxy refuses the generated config: {err}");
    }
    config
}

fn dest<'c>(config: &'c ProxyConfig, name: &str) -> &'c Destination {
    config
        .destinations
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no destination {name}"))
}

const BACKEND: &str = "backend.demo.svc.cluster.local";

fn report<'v>(view: &'v MeshView, kind: RuleKind, ns: &str, name: &str) -> &'v RuleReport {
    view.rule_reports()
        .iter()
        .find(|r| r.kind == kind && r.namespace == ns && r.name == name)
        .unwrap_or_else(|| panic!("no report for {kind} {ns}/{name}"))
}

/// (status, reason) of a condition.
fn cond(report: &RuleReport, type_: &str) -> (String, String) {
    let c = report
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone())
}

fn message(report: &RuleReport, type_: &str) -> String {
    report.condition(type_).unwrap().message.clone()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn s(value: &str) -> String {
    value.to_owned()
}

// ---------------------------------------------------------------------------------------------
// destinations and endpoints

#[test]
fn service_slices_and_pods_make_a_destination_with_labelled_endpoints() {
    let mut world = World::demo();
    // A StatefulSet pod, and one whose pod is not in the cache yet.
    world.slices.push(slice(
        "demo",
        "backend-fghij",
        "backend",
        json!([{"name": "http", "port": 8080}]),
        json!([ep("10.0.0.3", "db-0"), ep("10.0.0.4", "backend-new")]),
    ));
    world.pods.push(pod_owned(
        "demo",
        "db-0",
        json!({"app": "db"}),
        "StatefulSet",
        "db",
    ));
    let config = config_in(&world.build(), "other");
    let backend = dest(&config, BACKEND);
    assert_eq!(
        backend.addresses,
        vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(backend.ports.len(), 1);
    let port = &backend.ports[0];
    assert_eq!(port.port, 80);
    let addresses: Vec<SocketAddr> = port.endpoints.iter().map(|e| e.address).collect();
    assert_eq!(
        addresses,
        [
            "10.0.0.1:8080",
            "10.0.0.2:8080",
            "10.0.0.3:8080",
            "10.0.0.4:8080"
        ]
        .map(|a| a.parse::<SocketAddr>().unwrap()),
        "sorted by address"
    );
    let v1 = &port.endpoints[0];
    assert_eq!(
        v1.labels,
        labels(&[("app", "backend"), ("version", "v1")]),
        "pod-template-hash dropped"
    );
    assert_eq!(
        v1.workload,
        Some(Workload {
            name: s("backend-v1"),
            namespace: s("demo")
        })
    );
    assert_eq!(
        port.endpoints[1].workload.as_ref().unwrap().name,
        "backend-v2"
    );
    assert_eq!(port.endpoints[2].workload.as_ref().unwrap().name, "db");
    assert_eq!(
        port.endpoints[3].workload.as_ref().unwrap().name,
        "backend-new"
    );
    assert!(port.endpoints[3].labels.is_empty());
}

#[test]
fn meshed_endpoints_take_http1_over_http2_when_their_injector_said_so() {
    use crate::inject::patch::{FEATURES_ANNOTATION, STATUS_ANNOTATION};
    let mut world = World::demo();
    // v1 was injected by this build (features declared), v2 by an earlier one.
    let annotate = |pod: &mut Arc<Pod>, annotations: Value| {
        let pod = Arc::make_mut(pod);
        pod.metadata.annotations = serde_json::from_value(annotations).unwrap();
    };
    annotate(
        &mut world.pods[0],
        json!({STATUS_ANNOTATION: "{}", FEATURES_ANNOTATION: "http2-upgrade"}),
    );
    annotate(&mut world.pods[1], json!({STATUS_ANNOTATION: "{}"}));
    let endpoints = |world: &World| {
        let config = config_in(&world.build(), "other");
        dest(&config, BACKEND).ports[0]
            .endpoints
            .iter()
            .map(|e| (e.identity.is_some(), e.http2_upgrade))
            .collect::<Vec<_>>()
    };
    // (meshed over mTLS, takes HTTP/1 over HTTP/2) for 10.0.0.1 (v1) and 10.0.0.2 (v2).
    assert_eq!(endpoints(&world), [(true, true), (true, false)]);
    // Only over mTLS: plaintext to the same pod stays HTTP/1.
    world.mesh.mtls.mode = crate::api::meshconfig::MtlsMode::Disabled;
    assert_eq!(endpoints(&world), [(false, false), (false, false)]);
}

#[test]
fn endpoints_not_ready_and_unusable_slices_and_ports_are_left_out() {
    let mut world = World::bare();
    world.services.push(service(
        "demo",
        "dns",
        "10.96.0.53",
        json!([{"name": "dns", "port": 53, "protocol": "UDP"},
               {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
    ));
    world.slices.push(slice(
        "demo",
        "dns-1",
        "dns",
        json!([{"name": "dns", "port": 5353, "protocol": "UDP"},
               {"name": "dns-tcp", "port": 5353}]),
        json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "terminating": true}},
            {"addresses": ["10.0.0.3"], "conditions": {}},
            {"addresses": ["10.0.0.4"]},
        ]),
    ));
    world.slices.push(slice_typed(
        "demo",
        "dns-fqdn",
        "dns",
        "FQDN",
        json!([{"name": "dns-tcp", "port": 53}]),
        json!([{"addresses": ["ns.example.com"]}]),
    ));
    // Same name, other namespace: not this Service's.
    world.slices.push(slice(
        "elsewhere",
        "dns-1",
        "dns",
        json!([{"name": "dns-tcp", "port": 5353}]),
        json!([{"addresses": ["10.0.9.9"]}]),
    ));
    let config = config_in(&world.build(), "demo");
    let dns = dest(&config, "dns.demo.svc.cluster.local");
    assert_eq!(dns.ports.len(), 1, "UDP is not proxied");
    let addresses: Vec<String> = dns.ports[0]
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(
        addresses,
        ["10.0.0.1:5353", "10.0.0.3:5353", "10.0.0.4:5353"]
    );
    assert!(dns.ports[0].endpoints.iter().all(|e| e.workload.is_none()));
}

#[test]
fn terminating_endpoints_that_still_serve_are_kept_as_a_fallback() {
    let mut world = World::bare();
    world.services.push(service(
        "demo",
        "web",
        "10.96.0.20",
        json!([{"name": "http", "port": 80}]),
    ));
    world.slices.push(slice(
        "demo",
        "web-1",
        "web",
        json!([{"name": "http", "port": 8080}]),
        json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}},
            // Deleted, still serving (its app is held for the drain window).
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            // Deleted and no longer serving.
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": false, "terminating": true}},
            // Not ready, not terminating (failing its readiness probe).
            {"addresses": ["10.0.0.4"], "conditions": {"ready": false, "serving": false}},
            // Terminating, `serving` unknown (an older controller): `ready` decides.
            {"addresses": ["10.0.0.5"], "conditions": {"ready": false, "terminating": true}},
        ]),
    ));
    // (address, terminating) of each endpoint proxies get.
    let endpoints = |world: &World| -> Vec<(String, bool)> {
        let config = config_in(&world.build(), "demo");
        dest(&config, "web.demo.svc.cluster.local").ports[0]
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.terminating))
            .collect()
    };
    assert_eq!(
        endpoints(&world),
        [
            ("10.0.0.1:8080".to_owned(), false),
            ("10.0.0.2:8080".to_owned(), true)
        ]
    );
    // The three that cannot take requests are counted, for the proxies' messages.
    let config = config_in(&world.build(), "demo");
    assert_eq!(
        dest(&config, "web.demo.svc.cluster.local").ports[0].not_ready_endpoints,
        3
    );

    // A new pod got the address of one still being removed (listed in an earlier slice): the
    // serving one is what proxies get.
    world.slices.insert(
        0,
        slice(
            "demo",
            "web-0",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}}]),
        ),
    );
    world.slices.push(slice(
        "demo",
        "web-2",
        "web",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["10.0.0.2"], "conditions": {"ready": true}}]),
    ));
    assert_eq!(
        endpoints(&world),
        [
            ("10.0.0.1:8080".to_owned(), false),
            ("10.0.0.2:8080".to_owned(), false)
        ]
    );
}

#[test]
fn the_proxy_of_a_pod_being_deleted_is_told_to_drain() {
    let mut world = World::demo();
    let view = world.build();
    let before = view.proxy_config("demo", "backend-v2-7d9f-x1", None);
    assert!(!before.draining);
    let mut pod = (*world.pods[1]).clone();
    assert_eq!(pod.metadata.name.as_deref(), Some("backend-v2-7d9f-x1"));
    pod.metadata.deletion_timestamp = Some(created(0));
    world.pods[1] = Arc::new(pod);
    let view = world.build();
    let after = view.proxy_config("demo", "backend-v2-7d9f-x1", None);
    assert!(after.draining);
    assert_ne!(
        after.version, before.version,
        "a new version, so it is pushed"
    );
    assert!(
        !view
            .proxy_config("demo", "backend-v1-5c4b-y2", None)
            .draining
    );
}

#[test]
fn endpoint_ports_are_matched_by_port_name() {
    let mut world = World::bare();
    world.services.push(service(
        "demo",
        "web",
        "10.96.0.20",
        json!([{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]),
    ));
    world.slices.push(slice(
        "demo",
        "web-1",
        "web",
        json!([{"name": "metrics", "port": 9102}, {"name": "http", "port": 8080}]),
        json!([{"addresses": ["10.0.0.7"]}]),
    ));
    // A slice from before the metrics port existed contributes only to `http`.
    world.slices.push(slice(
        "demo",
        "web-2",
        "web",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["10.0.0.8"]}]),
    ));
    // An unnamed port: the Service's name is unset, the slice's empty.
    world.services.push(service(
        "demo",
        "single",
        "10.96.0.21",
        json!([{"port": 7000}]),
    ));
    world.slices.push(slice(
        "demo",
        "single-1",
        "single",
        json!([{"name": "", "port": 7001}]),
        json!([{"addresses": ["10.0.0.9"]}]),
    ));
    let config = config_in(&world.build(), "demo");
    let web = dest(&config, "web.demo.svc.cluster.local");
    let by_port: BTreeMap<u16, Vec<String>> = web
        .ports
        .iter()
        .map(|p| {
            let eps = p.endpoints.iter().map(|e| e.address.to_string()).collect();
            (p.port, eps)
        })
        .collect();
    assert_eq!(by_port[&80], ["10.0.0.7:8080", "10.0.0.8:8080"]);
    assert_eq!(by_port[&9090], ["10.0.0.7:9102"]);
    let single = dest(&config, "single.demo.svc.cluster.local");
    assert_eq!(
        single.ports[0].endpoints[0].address.to_string(),
        "10.0.0.9:7001"
    );
}

#[test]
fn port_protocols_from_app_protocol_names_and_opaque_ports() {
    let mut world = World::bare();
    world.services.push(service(
        "demo",
        "multi",
        "10.96.0.30",
        json!([
            {"name": "web", "port": 80, "appProtocol": "http"},
            {"name": "h2", "port": 81, "appProtocol": "kubernetes.io/h2c"},
            {"name": "api", "port": 82, "appProtocol": "grpc"},
            {"name": "raw", "port": 83, "appProtocol": "tcp"},
            {"name": "http-admin", "port": 84},
            {"name": "http2-x", "port": 85},
            {"name": "grpc-web", "port": 86},
            {"name": "tcp-db", "port": 87},
            {"name": "other", "port": 88},
            {"name": "tcp-b", "port": 89, "appProtocol": "http2"},
            {"name": "http-c", "port": 90, "appProtocol": "example.com/custom"},
            {"name": "http-d", "port": 91},
        ]),
    ));
    world.traffic_policies.push(traffic_policy(
        "demo",
        "multi",
        0,
        json!({"service": "multi", "opaquePorts": [91]}),
    ));
    let config = config_in(&world.build(), "demo");
    let protocols: BTreeMap<u16, Protocol> = dest(&config, "multi.demo.svc.cluster.local")
        .ports
        .iter()
        .map(|p| (p.port, p.protocol))
        .collect();
    use Protocol::*;
    assert_eq!(
        protocols,
        BTreeMap::from([
            (80, Http1),
            (81, Http2),
            (82, Grpc),
            (83, Opaque),
            (84, Http1),
            (85, Http2),
            (86, Grpc),
            (87, Opaque),
            (88, Detect),
            (89, Http2),
            (90, Http1),
            (91, Opaque),
        ])
    );
}

#[test]
fn headless_external_name_and_udp_only_services_get_no_destination() {
    let mut world = World::bare();
    world.services.push(service_with(
        "demo",
        "headless",
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        json!({}),
    ));
    world.services.push(service_with(
        "demo",
        "ext",
        json!({"type": "ExternalName", "externalName": "example.com"}),
        json!({}),
    ));
    world.services.push(service(
        "demo",
        "udp",
        "10.96.0.40",
        json!([{"port": 53, "protocol": "UDP"}]),
    ));
    world.route_rules.push(route_rule(
        "demo",
        "to-headless",
        0,
        json!({"service": "headless", "http": [{"timeout": "1s"}]}),
    ));
    let view = world.build();
    assert!(config_in(&view, "demo").destinations.is_empty());
    let r = report(&view, RuleKind::RouteRule, "demo", "to-headless");
    assert_eq!(cond(r, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    assert_eq!(
        cond(r, RESOLVED_REFS),
        (s("False"), s(REASON_SERVICE_NOT_FOUND))
    );
    assert!(
        message(r, RESOLVED_REFS).contains("headless"),
        "{}",
        message(r, RESOLVED_REFS)
    );
}

#[test]
fn dual_stack_services_get_both_addresses_and_ipv6_endpoints() {
    let mut world = World::bare();
    world.services.push(service_with(
        "demo",
        "dual",
        json!({"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50", "fd00::50"],
               "ports": [{"port": 80}]}),
        json!({}),
    ));
    world.slices.push(slice_typed(
        "demo",
        "dual-v6",
        "dual",
        "IPv6",
        json!([{"port": 8080}]),
        json!([{"addresses": ["fd00::1"]}]),
    ));
    let config = config_in(&world.build(), "demo");
    let dual = dest(&config, "dual.demo.svc.cluster.local");
    assert_eq!(dual.addresses.len(), 2);
    assert_eq!(
        dual.ports[0].endpoints[0].address.to_string(),
        "[fd00::1]:8080"
    );
}

#[test]
fn a_contested_cluster_ip_stays_with_the_first_destination_by_name() {
    // A stale watch cache can briefly hold two Services with one ClusterIP; the proxy would
    // refuse a config listing it twice.
    let mut world = World::bare();
    world
        .services
        .push(service("demo", "new", "10.96.0.60", json!([{"port": 80}])));
    world
        .services
        .push(service("demo", "gone", "10.96.0.60", json!([{"port": 80}])));
    let config = config_in(&world.build(), "demo");
    assert_eq!(
        dest(&config, "gone.demo.svc.cluster.local").addresses.len(),
        1
    );
    assert!(
        dest(&config, "new.demo.svc.cluster.local")
            .addresses
            .is_empty()
    );
    assert_eq!(dest(&config, "new.demo.svc.cluster.local").hosts[0], "new");
}

// ---------------------------------------------------------------------------------------------
// hosts and visibility

#[test]
fn the_short_host_is_only_for_proxies_of_the_services_namespace() {
    let view = World::demo().build();
    let own = config_in(&view, "demo");
    assert_eq!(
        dest(&own, BACKEND).hosts,
        ["backend", "backend.demo", "backend.demo.svc", BACKEND]
    );
    let other = config_in(&view, "shop");
    assert_eq!(
        dest(&other, BACKEND).hosts,
        ["backend.demo", "backend.demo.svc", BACKEND]
    );
    // Same content otherwise.
    let mut without_short = dest(&own, BACKEND).clone();
    without_short.hosts.remove(0);
    assert_eq!(&without_short, dest(&other, BACKEND));
}

#[test]
fn export_to_limits_which_namespaces_see_a_service() {
    let mut world = World::bare();
    let svc = |name: &str, ip: &str, export: Option<&str>| {
        let annotations = match export {
            Some(value) => json!({names::EXPORT_TO_ANNOTATION: value}),
            None => json!({}),
        };
        service_with(
            "team",
            name,
            json!({"clusterIP": ip, "ports": [{"port": 80}]}),
            annotations,
        )
    };
    world.services.push(svc("public", "10.96.1.1", None));
    world.services.push(svc("private", "10.96.1.2", Some(".")));
    world
        .services
        .push(svc("shared", "10.96.1.3", Some(" ., shop ")));
    world
        .services
        .push(svc("everyone", "10.96.1.4", Some("shop,*")));
    world.services.push(svc("empty", "10.96.1.5", Some("")));
    let view = world.build();
    let visible = |ns: &str| -> Vec<String> {
        config_in(&view, ns)
            .destinations
            .iter()
            .map(|d| d.name.split('.').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        visible("team"),
        ["empty", "everyone", "private", "public", "shared"]
    );
    assert_eq!(visible("shop"), ["empty", "everyone", "public", "shared"]);
    assert_eq!(visible("other"), ["empty", "everyone", "public"]);
}

// ---------------------------------------------------------------------------------------------
// routes

#[test]
fn route_rule_matches_and_weighted_split_are_translated_exactly() {
    let mut world = World::demo();
    world.route_rules.push(route_rule(
        "demo",
        "canary",
        0,
        json!({
            "service": "backend",
            "http": [
                {"name": "canary",
                 "match": [{"headers": [{"name": "x-canary", "exact": "1"}, {"name": "x-debug"}],
                            "path": {"prefix": "/api/"}, "method": "GET",
                            "query": [{"name": "v", "regex": "[0-9]+"}]},
                           {"path": {}}],
                 "route": [{"subset": {"version": "v2"}, "weight": 100}],
                 "headers": {"request": {"set": {"x-route": "canary"}, "remove": ["x-internal"]},
                             "response": {"add": {"x-served-by": "v2"}}}},
                {"route": [{"subset": {"version": "v1"}, "weight": 90},
                           {"subset": {"version": "v2"}, "weight": 10}],
                 "timeout": "3s",
                 "simpleRetry": {"attempts": 3, "perTryTimeout": "500ms",
                                 "retryOn": ["5xx", "connect-failure"],
                                 "retriableStatusCodes": [409]},
                 "fault": {"delay": {"percent": 5.0, "fixedDelay": "2s"},
                           "abort": {"percent": 1.5, "httpStatus": 503}},
                 "mirror": {"subset": {"version": "v3"}}},
            ],
        }),
    ));
    let view = world.build();
    let r = report(&view, RuleKind::RouteRule, "demo", "canary");
    assert_eq!(cond(r, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    assert_eq!(cond(r, RESOLVED_REFS), (s("True"), s(REASON_RESOLVED)));
    assert_eq!(r.generation, Some(3));
    assert_eq!(r.condition(ACCEPTED).unwrap().observed_generation, Some(3));

    let config = config_in(&view, "demo");
    let routes = &dest(&config, BACKEND).routes;
    assert_eq!(
        routes.len(),
        2,
        "the last route takes everything: no catch-all"
    );
    let canary = &routes[0];
    assert_eq!(
        canary.matches,
        vec![
            RequestMatch {
                path: Some(StringMatch::Prefix(s("/api/"))),
                method: Some(s("GET")),
                headers: vec![
                    KeyMatch {
                        name: s("x-canary"),
                        value: StringMatch::Exact(s("1"))
                    },
                    KeyMatch {
                        name: s("x-debug"),
                        value: StringMatch::Present
                    },
                ],
                query: vec![KeyMatch {
                    name: s("v"),
                    value: StringMatch::Regex(s("[0-9]+"))
                }],
            },
            RequestMatch::default(),
        ]
    );
    assert_eq!(
        canary.backends,
        vec![WeightedSubset {
            subset: labels(&[("version", "v2")]),
            weight: 100
        }]
    );
    assert_eq!(canary.request_headers.set, labels(&[("x-route", "canary")]));
    assert_eq!(canary.request_headers.remove, ["x-internal"]);
    assert_eq!(
        canary.response_headers.add,
        labels(&[("x-served-by", "v2")])
    );
    assert_eq!(
        (canary.timeout, canary.retry.is_none()),
        (None, true),
        "bare mesh: no defaults"
    );

    let split = &routes[1];
    assert_eq!(split.name, "");
    assert!(split.matches.is_empty());
    assert_eq!(
        split.backends,
        vec![
            WeightedSubset {
                subset: labels(&[("version", "v1")]),
                weight: 90
            },
            WeightedSubset {
                subset: labels(&[("version", "v2")]),
                weight: 10
            },
        ]
    );
    assert_eq!(split.timeout, Some(Duration::from_secs(3)));
    let retry = split.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        retry.retry_on,
        [
            RetryOn::FiveXx,
            RetryOn::ConnectFailure,
            RetryOn::RetriableStatusCodes
        ]
    );
    assert_eq!(retry.retriable_status_codes, [409]);
    // Back-off and budget: the proxy's defaults.
    assert_eq!(retry.base_backoff, Duration::from_millis(25));
    assert_eq!(retry.max_backoff, Duration::from_millis(250));
    let fault = split.fault.as_ref().unwrap();
    assert_eq!(
        fault.delay.as_ref().unwrap().duration,
        Duration::from_secs(2)
    );
    assert_eq!(fault.delay.as_ref().unwrap().percent, 5.0);
    assert_eq!(fault.abort.as_ref().unwrap().status, 503);
    assert_eq!(fault.abort.as_ref().unwrap().percent, 1.5);
    let mirror = split.mirror.as_ref().unwrap();
    assert_eq!(
        (mirror.percent, &mirror.subset),
        (100.0, &labels(&[("version", "v3")]))
    );
}

#[test]
fn mesh_default_retry_and_timeout_apply_where_rules_set_none() {
    let mut world = World::demo();
    world.mesh = MeshConfigSpec::default();
    world.mesh.traffic.timeout = Some(Duration::from_secs(15));
    world.services.push(service(
        "demo",
        "plain",
        "10.96.0.11",
        json!([{"port": 80}]),
    ));
    world.route_rules.push(route_rule(
        "demo",
        "backend",
        0,
        json!({"service": "backend.demo", "http": [
            {"match": [{"path": {"exact": "/slow"}}], "timeout": "60s"},
            {"match": [{"path": {"exact": "/once"}}], "simpleRetry": {"attempts": 0}},
            {"match": [{"path": {"exact": "/retry"}}], "simpleRetry": {"attempts": 1}},
        ]}),
    ));
    let config = config_in(&world.build(), "demo");
    let mesh_retry = |route: &Route| {
        let retry = route.retry.as_ref().expect("a retry policy");
        (retry.attempts, retry.retry_on.clone())
    };
    let mesh_default = (
        2,
        vec![
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Unavailable,
        ],
    );

    let routes = &dest(&config, BACKEND).routes;
    assert_eq!(
        routes.len(),
        4,
        "rule routes, then the catch-all: {routes:#?}"
    );
    assert_eq!(routes[0].timeout, Some(Duration::from_secs(60)));
    assert_eq!(mesh_retry(&routes[0]), mesh_default);
    assert_eq!(routes[1].timeout, Some(Duration::from_secs(15)));
    assert!(routes[1].retry.is_none(), "attempts: 0 turns retries off");
    assert_eq!(
        mesh_retry(&routes[2]),
        (
            1,
            vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Unavailable,
                RetryOn::Cancelled
            ]
        ),
        "an empty retryOn is the API's documented default"
    );
    assert_eq!(routes[3].name, "default");
    assert!(routes[3].matches.is_empty());
    assert_eq!(routes[3].timeout, Some(Duration::from_secs(15)));
    assert_eq!(mesh_retry(&routes[3]), mesh_default);

    let plain = &dest(&config, "plain.demo.svc.cluster.local").routes;
    assert_eq!(plain.len(), 1, "one catch-all route without a RouteRule");
    assert_eq!(plain[0], routes[3]);

    // Without defaults, a destination without rules has no routes.
    world.mesh = bare_mesh();
    world.route_rules.clear();
    let config = config_in(&world.build(), "demo");
    assert!(config.destinations.iter().all(|d| d.routes.is_empty()));
}

#[test]
fn conflicts_go_to_the_oldest_rule_whatever_the_input_order() {
    let mut world = World::demo();
    let rule = |name: &str, age: i64, version: &str| {
        route_rule(
            "demo",
            name,
            age,
            json!({"service": "backend", "http": [
                {"route": [{"subset": {"version": version}, "weight": 100}]}]}),
        )
    };
    let rules = [
        rule("young", 10, "v1"),
        rule("a-oldest", 100, "v2"),
        rule("b-tied", 100, "v1"),
        // Another namespace naming the same Service.
        route_rule(
            "shop",
            "cross",
            50,
            json!({"service": "backend.demo", "http": [{"timeout": "1s"}]}),
        ),
    ];
    let orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]];
    let mut outcomes = Vec::new();
    for order in orders {
        world.route_rules = order.iter().map(|&i| rules[i].clone()).collect();
        let view = world.build();
        outcomes.push((
            view.rule_reports().to_vec(),
            view.proxy_config("demo", "p", None),
        ));
    }
    assert!(
        outcomes.windows(2).all(|w| w[0] == w[1]),
        "order must not matter"
    );

    let (reports, config) = &outcomes[0];
    let winner = reports.iter().find(|r| r.name == "a-oldest").unwrap();
    assert_eq!(cond(winner, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    // A rule of another namespace does not compete with the Service's own (it applies to its
    // own namespace's callers only), however old it is.
    let cross = reports.iter().find(|r| r.name == "cross").unwrap();
    assert_eq!(cond(cross, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    for loser in ["young", "b-tied"] {
        let r = reports.iter().find(|r| r.name == loser).unwrap();
        assert_eq!(
            cond(r, ACCEPTED),
            (s("False"), s(REASON_CONFLICTED)),
            "{loser}"
        );
        assert_eq!(
            message(r, ACCEPTED),
            "RouteRule demo/a-oldest already routes backend.demo; this one is ignored"
        );
        assert_eq!(cond(r, RESOLVED_REFS), (s("True"), s(REASON_RESOLVED)));
    }
    assert_eq!(
        dest(config, BACKEND).routes[0].backends[0].subset,
        labels(&[("version", "v2")])
    );
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["a-oldest", "b-tied", "young", "cross"],
        "sorted by namespace, name"
    );
}

#[test]
fn traffic_policy_sets_balancing_limits_and_outlier_detection_and_conflicts() {
    let mut world = World::demo();
    world.traffic_policies.push(traffic_policy(
        "demo",
        "old",
        60,
        json!({"service": "backend", "loadBalancer": "RoundRobin",
               "connectionPool": {"maxConnections": 10, "maxPendingRequests": 100},
               "outlierDetection": {"baseEjectionTime": "1m"}, "mtlsMode": "Strict"}),
    ));
    world.traffic_policies.push(traffic_policy(
        "demo",
        "new",
        1,
        json!({"service": "backend", "loadBalancer": "LeastRequest"}),
    ));
    let view = world.build();
    let config = config_in(&view, "demo");
    let backend = dest(&config, BACKEND);
    assert_eq!(backend.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(backend.limits.max_connections, Some(10));
    assert_eq!(backend.limits.max_pending_requests, Some(100));
    assert_eq!(
        backend.outlier_detection,
        Some(OutlierDetection {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 10,
        })
    );
    let old = report(&view, RuleKind::TrafficPolicy, "demo", "old");
    assert_eq!(cond(old, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    let new = report(&view, RuleKind::TrafficPolicy, "demo", "new");
    assert_eq!(
        message(new, ACCEPTED),
        "TrafficPolicy demo/old already applies to backend.demo; this one is ignored"
    );
    // Every field of the policy acts, mtlsMode included.
    assert_eq!(
        cond(old, FIELDS_NOT_ACTING),
        (s("False"), s(REASON_ALL_FIELDS_ACT))
    );
    assert_eq!(
        cond(new, FIELDS_NOT_ACTING),
        (s("False"), s(REASON_ALL_FIELDS_ACT))
    );
}

#[test]
fn invalid_rules_are_reported_with_field_paths_and_not_applied() {
    let mut world = World::demo();
    // Older than the valid rule: were it valid, it would win.
    world.route_rules.push(route_rule(
        "demo",
        "broken",
        100,
        json!({"service": "backend", "http": [
            {"route": [{"subset": {"version": "v2"}, "weight": 100}]},
            {"match": [{"path": {"regex": "a)|(b"}, "headers": [{"name": "bad header"}]}],
             "route": [{"weight": 60}, {"weight": 30}],
             "headers": {"request": {"set": {"Host": "x", "x-ok": "line\nbreak"}}}},
        ]}),
    ));
    world.route_rules.push(route_rule(
        "demo",
        "good",
        1,
        json!({"service": "backend", "http": [{"route": [{"subset": {"version": "v1"}, "weight": 100}]}]}),
    ));
    let view = world.build();
    let broken = report(&view, RuleKind::RouteRule, "demo", "broken");
    assert_eq!(cond(broken, ACCEPTED), (s("False"), s(REASON_INVALID)));
    let text = message(broken, ACCEPTED);
    for expected in [
        "spec.http[1].match[0].path.regex: invalid regex: ",
        "spec.http[1].match[0].headers[0].name: \"bad header\" is not a valid header name",
        "spec.http[1].route: weights add up to 90, not 100",
        "spec.http[1].headers.request.set[Host]: Host cannot be edited",
        "spec.http[1].headers.request.set[x-ok]: the value is not a valid header value",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from {text:?}"
        );
    }
    assert!(!text.contains("spec.http[0]"), "{text}");
    let good = report(&view, RuleKind::RouteRule, "demo", "good");
    assert_eq!(cond(good, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    let config = config_in(&view, "demo");
    assert_eq!(
        dest(&config, BACKEND).routes[0].backends[0].subset,
        labels(&[("version", "v1")])
    );

    // Alone, the broken rule leaves the destination as if it did not exist.
    world.route_rules.remove(1);
    let config = config_in(&world.build(), "demo");
    assert!(dest(&config, BACKEND).routes.is_empty());
}

#[test]
fn a_rule_for_a_missing_service_is_accepted_and_applies_once_it_appears() {
    let mut world = World::bare();
    world.route_rules.push(route_rule(
        "demo",
        "early",
        0,
        json!({"service": "backend", "http": [{"timeout": "2s"}]}),
    ));
    world.traffic_policies.push(traffic_policy(
        "demo",
        "early",
        0,
        json!({"service": "backend", "loadBalancer": "RoundRobin"}),
    ));
    let view = world.build();
    for kind in [RuleKind::RouteRule, RuleKind::TrafficPolicy] {
        let r = report(&view, kind, "demo", "early");
        assert_eq!(cond(r, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
        assert_eq!(
            cond(r, RESOLVED_REFS),
            (s("False"), s(REASON_SERVICE_NOT_FOUND))
        );
        assert_eq!(
            message(r, RESOLVED_REFS),
            "Service backend.demo does not exist; the rule applies once it does"
        );
    }

    let demo = World::demo();
    world.services = demo.services;
    let view = world.build();
    let r = report(&view, RuleKind::RouteRule, "demo", "early");
    assert_eq!(cond(r, RESOLVED_REFS), (s("True"), s(REASON_RESOLVED)));
    let config = config_in(&view, "demo");
    let backend = dest(&config, BACKEND);
    assert_eq!(backend.routes[0].timeout, Some(Duration::from_secs(2)));
    assert_eq!(backend.load_balancer, LoadBalancer::RoundRobin);
}

// ---------------------------------------------------------------------------------------------
// egress

#[test]
fn egress_rules_apply_to_the_namespaces_they_name() {
    let mut world = World::bare();
    world.egress_rules.push(egress_rule(
        "shop",
        "payments",
        json!({"hosts": ["api.payments.example", "*.cdn.example"],
               "ports": [{"port": 443, "protocol": "tls"}, {"port": 80}]}),
    ));
    world.egress_rules.push(egress_rule(
        "skein-system",
        "everyone",
        json!({"hosts": ["time.example"], "namespaces": ["*"]}),
    ));
    world.egress_rules.push(egress_rule(
        "skein-system",
        "listed",
        json!({"hosts": ["10.1.2.3"], "ports": [{"port": 5432, "protocol": "tcp"}],
               "namespaces": ["billing", "shop"]}),
    ));
    world.egress_rules.push(egress_rule(
        "ops",
        "invalid",
        json!({"hosts": ["10.1.2.4"], "ports": [{"port": 80, "protocol": "http"}],
               "namespaces": ["*"]}),
    ));
    let view = world.build();
    let hosts = |ns: &str| -> Vec<(String, Vec<u16>, EgressProtocol)> {
        config_in(&view, ns)
            .egress
            .into_iter()
            .map(|e| (e.host, e.ports, e.protocol))
            .collect()
    };
    assert_eq!(
        hosts("shop"),
        [
            (s("api.payments.example"), vec![443], EgressProtocol::Tls),
            (s("api.payments.example"), vec![80], EgressProtocol::Any),
            (s("*.cdn.example"), vec![443], EgressProtocol::Tls),
            (s("*.cdn.example"), vec![80], EgressProtocol::Any),
            (s("time.example"), vec![], EgressProtocol::Any),
            (s("10.1.2.3"), vec![5432], EgressProtocol::Tcp),
        ]
    );
    assert_eq!(
        hosts("billing"),
        [
            (s("time.example"), vec![], EgressProtocol::Any),
            (s("10.1.2.3"), vec![5432], EgressProtocol::Tcp),
        ]
    );
    assert_eq!(
        hosts("other"),
        [(s("time.example"), vec![], EgressProtocol::Any)]
    );

    let invalid = report(&view, RuleKind::EgressRule, "ops", "invalid");
    assert_eq!(cond(invalid, ACCEPTED), (s("False"), s(REASON_INVALID)));
    assert!(
        message(invalid, ACCEPTED).starts_with(
            "spec.hosts[0]: \"10.1.2.4\": an IP address can only be allowed with protocol tcp or any"
        ),
        "{}",
        message(invalid, ACCEPTED)
    );
    assert!(
        invalid.condition(RESOLVED_REFS).is_none(),
        "egress rules name no Service"
    );
    let ok = report(&view, RuleKind::EgressRule, "shop", "payments");
    assert_eq!(cond(ok, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    assert_eq!(message(ok, ACCEPTED), "applies to pods in namespace shop");
    let everyone = report(&view, RuleKind::EgressRule, "skein-system", "everyone");
    assert_eq!(
        message(everyone, ACCEPTED),
        "applies to pods in every namespace"
    );
    let listed = report(&view, RuleKind::EgressRule, "skein-system", "listed");
    assert_eq!(
        message(listed, ACCEPTED),
        "applies to pods in namespaces billing, shop"
    );
}

/// Only the mesh namespace opens egress for other namespaces: elsewhere a rule naming `*` or
/// other namespaces (accepted before the namespace model, or applied with the webhook down)
/// applies to its own namespace only, or nowhere, and its status says so.
#[test]
fn egress_rules_outside_the_mesh_namespace_apply_to_their_own_namespace_only() {
    let mut world = World::bare();
    world.egress_rules.push(egress_rule(
        "shop",
        "everyone",
        json!({"hosts": ["time.example"], "namespaces": ["*"]}),
    ));
    world.egress_rules.push(egress_rule(
        "shop",
        "with-billing",
        json!({"hosts": ["db.example"], "namespaces": ["shop", "billing"]}),
    ));
    world.egress_rules.push(egress_rule(
        "shop",
        "for-billing",
        json!({"hosts": ["ledger.example"], "namespaces": ["billing"]}),
    ));
    let view = world.build();
    let hosts = |ns: &str| -> Vec<String> {
        config_in(&view, ns)
            .egress
            .into_iter()
            .map(|e| e.host)
            .collect()
    };
    assert_eq!(hosts("shop"), ["time.example", "db.example"]);
    assert!(hosts("billing").is_empty(), "{:?}", hosts("billing"));
    assert!(hosts("other").is_empty(), "{:?}", hosts("other"));

    let everyone = report(&view, RuleKind::EgressRule, "shop", "everyone");
    assert_eq!(
        cond(everyone, ACCEPTED),
        (s("True"), s(REASON_NAMESPACES_LIMITED))
    );
    assert_eq!(
        message(everyone, ACCEPTED),
        "only EgressRules in skein-system may apply to other namespaces, so spec.namespaces \
         [\"*\"] is ignored: the rule applies to pods in namespace shop only"
    );
    let with_billing = report(&view, RuleKind::EgressRule, "shop", "with-billing");
    assert_eq!(
        cond(with_billing, ACCEPTED),
        (s("True"), s(REASON_NAMESPACES_LIMITED))
    );
    assert!(
        message(with_billing, ACCEPTED).contains("[\"billing\"] is ignored"),
        "{}",
        message(with_billing, ACCEPTED)
    );
    let for_billing = report(&view, RuleKind::EgressRule, "shop", "for-billing");
    assert_eq!(
        cond(for_billing, ACCEPTED),
        (s("False"), s(REASON_NAMESPACES_NOT_ALLOWED))
    );
    assert!(
        message(for_billing, ACCEPTED)
            .ends_with("and the rule does not name its own namespace shop: it applies to no pod"),
        "{}",
        message(for_billing, ACCEPTED)
    );
}

// ---------------------------------------------------------------------------------------------
// producer and consumer rules

/// `backend.demo` with a producer rule (demo, routes to v1) and, unless `consumer` is false,
/// an older consumer rule from `shop` (routes to v2, aborts every request, edits headers).
fn producer_and_consumer(consumer: bool) -> World {
    let mut world = World::demo();
    world.route_rules.push(route_rule(
        "demo",
        "own",
        10,
        json!({"service": "backend", "http": [
            {"route": [{"subset": {"version": "v1"}, "weight": 100}]}]}),
    ));
    if consumer {
        world.route_rules.push(route_rule(
            "shop",
            "hijack",
            100,
            json!({"service": "backend.demo", "http": [{
                "route": [{"subset": {"version": "v2"}, "weight": 100}],
                "fault": {"abort": {"percent": 100.0, "httpStatus": 503}},
                "headers": {"request": {"set": {"x-from": "shop"}}}}]}),
        ));
    }
    world
}

fn subset_of(config: &ProxyConfig) -> BTreeMap<String, String> {
    dest(config, BACKEND).routes[0].backends[0].subset.clone()
}

#[test]
fn a_consumer_rule_applies_to_its_own_namespaces_callers_only() {
    let view = producer_and_consumer(true).build();
    // Callers in shop: their own rule, before demo's.
    let shop = config_in(&view, "shop");
    let route = &dest(&shop, BACKEND).routes[0];
    assert_eq!(route.backends[0].subset, labels(&[("version", "v2")]));
    assert_eq!(
        route
            .fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .map(|a| a.status),
        Some(503)
    );
    assert_eq!(
        route.request_headers.set.get("x-from").map(String::as_str),
        Some("shop")
    );
    // Everyone else: demo's own rule, the older rule of shop notwithstanding.
    for caller in ["demo", "other"] {
        let config = config_in(&view, caller);
        assert_eq!(subset_of(&config), labels(&[("version", "v1")]), "{caller}");
        let route = &dest(&config, BACKEND).routes[0];
        assert!(
            route.fault.is_none() && route.request_headers.set.is_empty(),
            "{caller}"
        );
    }

    let own = report(&view, RuleKind::RouteRule, "demo", "own");
    assert_eq!(cond(own, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    assert!(
        message(own, ACCEPTED)
            .starts_with("producer rule: applies to all callers of Service backend.demo"),
        "{}",
        message(own, ACCEPTED)
    );
    let hijack = report(&view, RuleKind::RouteRule, "shop", "hijack");
    assert_eq!(cond(hijack, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    assert_eq!(
        message(hijack, ACCEPTED),
        "consumer rule: applies to callers in namespace shop only, for whom it takes precedence \
         over namespace demo's own rule for Service backend.demo"
    );
    assert_eq!(cond(hijack, RESOLVED_REFS), (s("True"), s(REASON_RESOLVED)));
}

/// The per-caller variant changes only the versions of the consumer namespace's proxies: the
/// others keep theirs (no needless push), and the consumer's follows its rule.
#[test]
fn a_consumer_rule_changes_only_its_namespaces_versions() {
    let without = producer_and_consumer(false).build();
    let with = producer_and_consumer(true).build();
    for caller in ["demo", "other"] {
        assert_eq!(
            with.proxy_config(caller, "p", None),
            without.proxy_config(caller, "p", None),
            "{caller}"
        );
    }
    let shop = with.proxy_config("shop", "p", None);
    assert_ne!(
        shop.version,
        without.proxy_config("shop", "p", None).version
    );
    assert_eq!(
        shop,
        producer_and_consumer(true)
            .build()
            .proxy_config("shop", "p", None)
    );

    // An endpoint more reaches the consumer's variant too (and changes its version).
    let mut more = producer_and_consumer(true);
    more.slices.push(slice(
        "demo",
        "backend-more",
        "backend",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["10.0.0.99"]}]),
    ));
    let after = more.build().proxy_config("shop", "p", None);
    assert_ne!(after.version, shop.version);
    assert_eq!(dest(&after, BACKEND).ports[0].endpoints.len(), 3);
}

/// A rule created in another namespace before the Service (and before the Service's own rule)
/// does not claim it: the Service's namespace and everyone else get the producer's view.
#[test]
fn a_rule_in_another_namespace_cannot_claim_a_service_before_it_exists() {
    let mut world = World::bare();
    world.route_rules.push(route_rule(
        "shop",
        "early",
        1000,
        json!({"service": "backend.demo", "http": [{
            "fault": {"abort": {"percent": 100.0, "httpStatus": 503}}}]}),
    ));
    let view = world.build();
    let early = report(&view, RuleKind::RouteRule, "shop", "early");
    assert_eq!(cond(early, ACCEPTED), (s("True"), s(REASON_ACCEPTED)));
    assert!(
        message(early, ACCEPTED)
            .starts_with("consumer rule: applies to callers in namespace shop only")
    );
    assert_eq!(
        cond(early, RESOLVED_REFS),
        (s("False"), s(REASON_SERVICE_NOT_FOUND))
    );

    // The Service appears, without a rule of its own, then with one.
    let demo = World::demo();
    world.services = demo.services;
    world.slices = demo.slices;
    world.pods = demo.pods;
    let view = world.build();
    for caller in ["demo", "other"] {
        assert!(
            dest(&config_in(&view, caller), BACKEND).routes.is_empty(),
            "{caller}"
        );
    }
    assert!(
        dest(&config_in(&view, "shop"), BACKEND).routes[0]
            .fault
            .is_some()
    );
    world.route_rules.push(route_rule(
        "demo",
        "own",
        1,
        json!({"service": "backend", "http": [{"timeout": "2s"}]}),
    ));
    let view = world.build();
    assert_eq!(
        cond(report(&view, RuleKind::RouteRule, "demo", "own"), ACCEPTED),
        (s("True"), s(REASON_ACCEPTED))
    );
    for caller in ["demo", "other"] {
        let config = config_in(&view, caller);
        let route = &dest(&config, BACKEND).routes[0];
        assert_eq!(route.timeout, Some(Duration::from_secs(2)), "{caller}");
        assert!(route.fault.is_none(), "{caller}");
    }
}

#[test]
fn consumer_rules_compete_only_within_their_namespace() {
    let mut world = producer_and_consumer(true);
    world.route_rules.push(route_rule(
        "shop",
        "younger",
        50,
        json!({"service": "backend.demo", "http": [{"timeout": "1s"}]}),
    ));
    world.route_rules.push(route_rule(
        "billing",
        "mine",
        5,
        json!({"service": "backend.demo", "http": [{"timeout": "3s"}]}),
    ));
    let view = world.build();
    let younger = report(&view, RuleKind::RouteRule, "shop", "younger");
    assert_eq!(cond(younger, ACCEPTED), (s("False"), s(REASON_CONFLICTED)));
    assert_eq!(
        message(younger, ACCEPTED),
        "RouteRule shop/hijack already routes backend.demo for callers in namespace shop; this \
         one is ignored"
    );
    assert_eq!(
        cond(
            report(&view, RuleKind::RouteRule, "shop", "hijack"),
            ACCEPTED
        )
        .0,
        "True"
    );
    assert_eq!(
        cond(
            report(&view, RuleKind::RouteRule, "billing", "mine"),
            ACCEPTED
        )
        .0,
        "True"
    );
    assert_eq!(
        cond(report(&view, RuleKind::RouteRule, "demo", "own"), ACCEPTED).0,
        "True"
    );
    assert_eq!(
        subset_of(&config_in(&view, "shop")),
        labels(&[("version", "v2")])
    );
    assert_eq!(
        dest(&config_in(&view, "billing"), BACKEND).routes[0].timeout,
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        subset_of(&config_in(&view, "other")),
        labels(&[("version", "v1")])
    );
}

#[test]
fn a_consumer_traffic_policy_shapes_its_namespaces_calls_only() {
    let mut world = World::demo();
    world.traffic_policies.push(traffic_policy(
        "demo",
        "own",
        1,
        json!({"service": "backend", "loadBalancer": "LeastRequest"}),
    ));
    world.traffic_policies.push(traffic_policy(
        "shop",
        "mine",
        100,
        json!({"service": "backend.demo", "loadBalancer": "RoundRobin",
               "connectionPool": {"maxConnections": 1}}),
    ));
    let view = world.build();
    let shop = config_in(&view, "shop");
    assert_eq!(dest(&shop, BACKEND).load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(dest(&shop, BACKEND).limits.max_connections, Some(1));
    for caller in ["demo", "other"] {
        let config = config_in(&view, caller);
        assert_eq!(
            dest(&config, BACKEND).load_balancer,
            LoadBalancer::LeastRequest,
            "{caller}"
        );
        assert_eq!(
            dest(&config, BACKEND).limits.max_connections,
            None,
            "{caller}"
        );
    }
    let mine = report(&view, RuleKind::TrafficPolicy, "shop", "mine");
    assert!(
        message(mine, ACCEPTED)
            .starts_with("consumer rule: applies to callers in namespace shop only")
    );
}

/// A consumer rule for a Service hidden from its namespace (`skein.dev/export-to`) reaches no
/// caller, and says so.
#[test]
fn a_consumer_rule_for_a_service_not_exported_to_it_says_so() {
    let mut world = World::bare();
    world.services.push(service_with(
        "demo",
        "backend",
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
               "ports": [{"name": "http", "port": 80}]}),
        json!({"skein.dev/export-to": "."}),
    ));
    world.route_rules.push(route_rule(
        "shop",
        "mine",
        1,
        json!({"service": "backend.demo", "http": [{"timeout": "1s"}]}),
    ));
    let view = world.build();
    let mine = report(&view, RuleKind::RouteRule, "shop", "mine");
    assert_eq!(
        cond(mine, RESOLVED_REFS),
        (s("False"), s(REASON_SERVICE_NOT_FOUND))
    );
    assert_eq!(
        message(mine, RESOLVED_REFS),
        "Service backend.demo is not exported to namespace shop (skein.dev/export-to), so this \
         consumer rule reaches no caller"
    );
    assert!(config_in(&view, "shop").destinations.is_empty());
}

// ---------------------------------------------------------------------------------------------
// the proxy's own fields, versions

#[test]
fn proxy_fields_come_from_its_pod_and_the_mesh() {
    let mut world = World::demo();
    world.mesh.traffic.outbound_traffic_policy = MeshOutboundPolicy::AllowAny;
    let view = world.build();
    let config = view.proxy_config("demo", "backend-v1-5c4b-y2", None);
    assert_eq!(
        config.workload,
        Workload {
            name: s("backend-v1"),
            namespace: s("demo")
        }
    );
    assert_eq!(
        config.outbound_traffic_policy,
        OutboundTrafficPolicy::AllowAny
    );
    assert_eq!(config.opaque_ports, ProxyConfig::default().opaque_ports);
    assert_eq!(config.detect_timeout, ProxyConfig::default().detect_timeout);
    // Not in the pod cache: the endpoint at its IP names it, else the pod name does.
    let by_ip = view.proxy_config("demo", "unknown", Some("10.0.0.2".parse().unwrap()));
    assert_eq!(by_ip.workload.name, "backend-v2");
    let by_name = view.proxy_config("demo", "unknown", Some("10.9.9.9".parse().unwrap()));
    assert_eq!(by_name.workload.name, "unknown");
}

#[test]
fn versions_are_stable_and_follow_the_content() {
    let world = World::demo();
    let first = world.build().proxy_config("demo", "p", None);
    let again = world.build().proxy_config("demo", "p", None);
    assert_eq!(first, again);
    assert_eq!(first.version.len(), 16);

    // Input order does not matter.
    let mut shuffled = World::demo();
    shuffled.pods.reverse();
    shuffled.slices.reverse();
    assert_eq!(shuffled.build().proxy_config("demo", "p", None), first);

    // Another namespace sees other hosts: another version.
    assert_ne!(
        world.build().proxy_config("shop", "p", None).version,
        first.version
    );

    // One endpoint more.
    let mut changed = World::demo();
    changed.slices.push(slice(
        "demo",
        "backend-more",
        "backend",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["10.0.0.99"]}]),
    ));
    let after = changed.build().proxy_config("demo", "p", None);
    assert_ne!(after.version, first.version);

    // An endpoint turning unready.
    let mut unready = World::demo();
    unready.slices[0] = slice(
        "demo",
        "backend-abcde",
        "backend",
        json!([{"name": "http", "port": 8080}]),
        json!([ep("10.0.0.1", "backend-v1-5c4b-y2"),
               {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}]),
    );
    assert_ne!(
        unready.build().proxy_config("demo", "p", None).version,
        first.version
    );
}

#[test]
fn a_thousand_services_with_ten_thousand_endpoints() {
    let mut world = World {
        mesh: MeshConfigSpec::default(),
        ..World::default()
    };
    for i in 0..1000u32 {
        let ns = format!("ns{}", i % 20);
        let name = format!("svc{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        world.services.push(service(
            &ns,
            &name,
            &ip,
            json!([{"name": "http", "port": 80}]),
        ));
        let endpoints: Vec<Value> = (0..10u32)
            .map(|j| {
                let n = i * 10 + j;
                let pod = format!("{name}-abc-{j}");
                world.pods.push(deployment_pod(
                    &ns,
                    &pod,
                    &name,
                    "abc",
                    json!({"app": name}),
                ));
                ep(
                    &format!("10.{}.{}.{}", n / 65536 + 1, n / 256 % 256, n % 256),
                    &pod,
                )
            })
            .collect();
        world.slices.push(slice(
            &ns,
            &format!("{name}-1"),
            &name,
            json!([{"name": "http", "port": 8080}]),
            Value::Array(endpoints),
        ));
    }
    let view = world.build();
    let config = config_in(&view, "ns3");
    assert_eq!(config.destinations.len(), 1000);
    let endpoints: usize = config
        .destinations
        .iter()
        .flat_map(|d| &d.ports)
        .map(|p| p.endpoints.len())
        .sum();
    assert_eq!(endpoints, 10_000);
    let short_hosts = config
        .destinations
        .iter()
        .filter(|d| d.hosts.len() == 4)
        .count();
    assert_eq!(short_hosts, 50, "services of ns3 only");
    assert!(
        config.destinations.iter().all(|d| d.routes.len() == 1),
        "mesh default route"
    );
    let some = dest(&config, "svc7.ns7.svc.cluster.local");
    assert_eq!(
        some.ports[0].endpoints[0].workload.as_ref().unwrap().name,
        "svc7"
    );
    for ns in 0..100 {
        let _ = view.proxy_config(&format!("ns{}", ns % 20), "p", None);
    }
}

// ---------------------------------------------------------------------------------------------
// validation on its own (what a webhook runs)

fn rr(spec: Value) -> Vec<String> {
    validate_route_rule(&serde_json::from_value(spec).unwrap())
}

#[test]
fn validate_route_rule_accepts_a_good_rule() {
    assert_eq!(
        rr(json!({"service": "backend.demo", "http": [
            {"match": [{"path": {"regex": "/v[0-9]+/.*"}, "headers": [{"name": "X-Canary"}],
                        "query": [{"name": "q", "prefix": "a"}]}],
             "route": [{"weight": 50}, {"subset": {"version": "v2"}, "weight": 50}],
             "simpleRetry": {"attempts": 10, "retriableStatusCodes": [409]},
             "headers": {"request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]}}},
            {"route": []}]})),
        Vec::<String>::new()
    );
}

#[test]
fn validate_route_rule_reports_each_problem_with_its_path() {
    let problems = rr(json!({"service": "a.b.c", "http": [
        {"match": [{"path": {"exact": "/", "prefix": "/"}, "method": "GE T",
                    "query": [{"name": "", "regex": "("}]}],
         "route": [{"weight": 100}, {"weight": 1}],
         "simpleRetry": {"attempts": 11, "retriableStatusCodes": [99]},
         "fault": {"delay": {"percent": 101.0, "fixedDelay": "1s"},
                   "abort": {"percent": 1.0, "httpStatus": 100}},
         "mirror": {"subset": {}, "percent": -1.0},
         "headers": {"response": {"set": {"X-A": "1", "x-a": "2"},
                                  "remove": ["transfer-encoding"]}}}]}));
    let expected = [
        "spec.service: \"a.b.c\" is not NAME or NAME.NAMESPACE (lowercase DNS labels)",
        "spec.http[0].match[0].path: set at most one of exact, prefix and regex",
        "spec.http[0].match[0].method: \"GE T\" is not an HTTP method",
        "spec.http[0].match[0].query[0].name: must not be empty",
        "spec.http[0].match[0].query[0].regex: invalid regex: unclosed group",
        "spec.http[0].route: weights add up to 101, not 100",
        "spec.http[0].simpleRetry.attempts: 11 is more than 10",
        "spec.http[0].simpleRetry.retriableStatusCodes[0]: 99 is not an HTTP status (100-599)",
        "spec.http[0].fault.delay.percent: 101 is not a percentage between 0 and 100",
        "spec.http[0].fault.abort.httpStatus: 100 is not between 200 and 599",
        "spec.http[0].mirror.percent: -1 is not a percentage between 0 and 100",
        "spec.http[0].headers.response.set[x-a]: the header is set more than once (names are case-insensitive)",
        "spec.http[0].headers.response.remove[0]: transfer-encoding cannot be edited: the proxy manages it per connection",
    ];
    assert_eq!(problems, expected);
}

#[test]
fn validate_route_rule_uses_the_proxys_regex_semantics() {
    let regex = |pattern: &str| {
        rr(json!({"service": "s", "http": [
        {"match": [{"headers": [{"name": "h", "regex": pattern}]}]}]}))
    };
    // Valid only once wrapped, with another meaning: refused, as the proxy refuses it.
    assert_eq!(regex("a)|(b").len(), 1);
    assert_eq!(regex("a\\").len(), 1);
    // A trailing verbose-mode comment is fine (the proxy ends it with a newline).
    assert!(regex("(?x) a # comment").is_empty());
    assert!(regex("[a-z]+|[0-9]+").is_empty());
}

#[test]
fn validate_traffic_policy_and_egress_rule() {
    let tp = |spec: Value| validate_traffic_policy(&serde_json::from_value(spec).unwrap());
    assert!(tp(json!({"service": "backend", "opaquePorts": [5432]})).is_empty());
    assert_eq!(
        tp(
            json!({"service": "Backend", "connectionPool": {"maxConnections": 0},
                  "outlierDetection": {"consecutiveFailures": 0, "maxEjectionPercent": 101},
                  "opaquePorts": [0]})
        ),
        [
            "spec.service: \"Backend\" is not NAME or NAME.NAMESPACE (lowercase DNS labels)",
            "spec.connectionPool.maxConnections: must be at least 1",
            "spec.outlierDetection.consecutiveFailures: must be at least 1",
            "spec.outlierDetection.maxEjectionPercent: 101 is more than 100",
            "spec.opaquePorts[0]: 0 is not a port",
        ]
    );

    let er = |spec: Value| validate_egress_rule(&serde_json::from_value(spec).unwrap());
    assert!(
        er(
            json!({"hosts": ["api.example.com", "*.example.org", "10.0.0.1"],
                  "ports": [{"port": 443}], "namespaces": ["*", "shop"]})
        )
        .is_empty()
    );
    assert_eq!(
        er(
            json!({"hosts": ["a.*.example", "api.example.com:443", "1.2.3.4"],
                  "ports": [{"port": 0}, {"port": 443, "protocol": "tls"}],
                  "namespaces": ["Shop"]})
        ),
        [
            "spec.ports[0].port: 0 is not a port",
            "spec.hosts[0]: \"a.*.example\": a wildcard must be a single leading `*.`",
            "spec.hosts[1]: \"api.example.com:443\": the host must not carry a port; list it in `ports`",
            "spec.hosts[2]: \"1.2.3.4\": an IP address can only be allowed with protocol tcp or any (spec.ports[1] has protocol tls)",
            "spec.namespaces[0]: \"Shop\" is neither a namespace name nor *",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// access policies

fn access_policy(ns: &str, name: &str, spec: Value) -> Arc<AccessPolicy> {
    let spec: crate::api::AccessPolicySpec = serde_json::from_value(spec).unwrap();
    let mut policy = AccessPolicy::new(name, spec);
    policy.metadata.namespace = Some(ns.to_owned());
    policy.metadata.generation = Some(4);
    Arc::new(policy)
}

#[test]
fn access_policies_go_to_the_proxies_of_the_pods_they_select() {
    let mut world = World::demo();
    world.mesh.mtls.trust_domain = s("example.org");
    world.access_policies = vec![
        access_policy(
            "demo",
            "v2-only",
            json!({"selector": {"matchLabels": {"version": "v2"}}, "action": "Allow",
                   "rules": [{"from": [{"serviceAccounts": ["frontend"]}]}]}),
        ),
        access_policy(
            "demo",
            "deny-admin",
            json!({"action": "Deny", "rules": [{"to": [{"paths": [{"prefix": "/admin"}]}]}]}),
        ),
        access_policy("shop", "elsewhere", json!({"action": "Audit"})),
        access_policy(
            "demo",
            "nobody",
            json!({"selector": {"matchLabels": {"app": "gone"}}, "action": "Deny"}),
        ),
        access_policy(
            "demo",
            "broken",
            json!({"action": "Deny", "rules": [{"to": [{"ports": [0]}]}]}),
        ),
    ];
    let view = world.build();
    let names = |pod: &str| -> Vec<String> {
        let config = view.proxy_config("demo", pod, None);
        Compiled::new(config.clone(), None).expect("the proxy takes it");
        config.access_policies.into_iter().map(|p| p.name).collect()
    };
    assert_eq!(names("backend-v1-5c4b-y2"), ["demo/deny-admin"]);
    assert_eq!(
        names("backend-v2-7d9f-x1"),
        ["demo/deny-admin", "demo/v2-only"]
    );
    // Not in the cache yet: only what applies to every pod of the namespace.
    assert_eq!(names("unknown"), ["demo/deny-admin"]);
    let v2 = view.proxy_config("demo", "backend-v2-7d9f-x1", None);
    let allow = v2
        .access_policies
        .iter()
        .find(|p| p.name == "demo/v2-only")
        .unwrap();
    assert_eq!(
        allow.rules[0].from[0].identities,
        ["spiffe://example.org/ns/demo/sa/frontend"]
    );

    // Status: accepted, and how many pods the selector matches.
    let report_of = |name| report(&view, RuleKind::AccessPolicy, "demo", name);
    assert_eq!(
        cond(report_of("v2-only"), ACCEPTED),
        (s("True"), s(REASON_ACCEPTED))
    );
    assert_eq!(
        cond(report_of("v2-only"), RESOLVED_REFS),
        (s("True"), s(REASON_RESOLVED))
    );
    assert!(message(report_of("deny-admin"), RESOLVED_REFS).contains("2 pod(s)"));
    assert_eq!(
        cond(report_of("nobody"), RESOLVED_REFS),
        (
            s("False"),
            s(crate::api::rule_status::REASON_NO_PODS_SELECTED)
        )
    );
    assert_eq!(
        cond(report_of("broken"), ACCEPTED),
        (s("False"), s(REASON_INVALID))
    );
    assert!(message(report_of("broken"), ACCEPTED).contains("spec.rules[0].to[0].ports[0]"));
    // Identities match the peer's mTLS identity: every field acts.
    assert_eq!(
        cond(report_of("v2-only"), FIELDS_NOT_ACTING),
        (s("False"), s(REASON_ALL_FIELDS_ACT))
    );
    assert_eq!(
        cond(report_of("deny-admin"), FIELDS_NOT_ACTING),
        (s("False"), s(REASON_ALL_FIELDS_ACT))
    );

    // A policy changes the version of the proxies it selects, and only theirs.
    let before = World::demo().build();
    let v1_before = before
        .proxy_config("demo", "backend-v1-5c4b-y2", None)
        .version;
    let mut only_v2 = World::demo();
    only_v2.access_policies = vec![world.access_policies[0].clone()];
    let after = only_v2.build();
    assert_eq!(
        after
            .proxy_config("demo", "backend-v1-5c4b-y2", None)
            .version,
        v1_before
    );
    assert_ne!(
        after
            .proxy_config("demo", "backend-v2-7d9f-x1", None)
            .version,
        before
            .proxy_config("demo", "backend-v2-7d9f-x1", None)
            .version
    );
}
