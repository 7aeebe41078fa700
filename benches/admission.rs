//! Admission latency of sidecar injection, printed as percentiles:
//!
//! 1. the handler's own time (parse the AdmissionReview, decide, inject, diff, serialize) for a
//!    realistic pod, in process;
//! 2. pod creation through the real kube-apiserver, with and without the webhook, interleaved
//!    one for one so both see the same machine noise; the difference is what injection adds.
//!
//! Run: `cargo bench --bench admission` (starts or reuses the local `skein-test` cluster).
//! Goals: handler p99 < 1 ms; added end-to-end p99 < 10 ms.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use skein::api::MeshConfigSpec;
use skein::api::meshconfig::FailurePolicy;
use skein::inject::InjectConfig;
use skein::inject::webhook;
use support::TestContext;
use support::control_plane::{ControlPlane, label_namespace, register_webhook};

/// Sample counts for `cargo bench`; `cargo test --all-targets` runs this file too, without
/// `--bench`, and then a short smoke run keeps the benchmark itself from rotting.
const HANDLER_ITERATIONS: (usize, usize) = (20_000, 100);
const POD_CREATIONS: (usize, usize) = (1_000, 5);

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let pick = |(bench, smoke): (usize, usize)| if full { bench } else { smoke };
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("installing the rustls provider");
    handler_time(pick(HANDLER_ITERATIONS));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(end_to_end(pick(POD_CREATIONS)));
}

/// A pod as a Deployment would create it: labels, annotations, probes, env, volumes.
fn realistic_pod() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8c6b5-",
            "labels": {"app.kubernetes.io/name": "checkout", "app.kubernetes.io/version": "2.4.1", "pod-template-hash": "7d9f8c6b5"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-26T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7d9f8c6b5", "uid": "6f1c2b3a-0000-4000-8000-000000000000", "controller": true}]
        },
        "spec": {
            "serviceAccountName": "checkout",
            "containers": [{
                "name": "checkout",
                "image": "example.com/shop/checkout:2.4.1",
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "DB_HOST", "value": "postgres.shop.svc"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/checkout"}]
            }],
            "volumes": [{"name": "config", "configMap": {"name": "checkout"}}]
        }
    })
}

/// The MeshConfig defaults on a cluster with native sidecars, as the control plane would see
/// them (its stream over TLS, so each proxy carries the trust bundle).
fn inject_config() -> InjectConfig {
    let ca =
        skein::pki::Ca::generate("bench-ca", std::time::Duration::from_secs(3600)).expect("a CA");
    InjectConfig {
        mesh: MeshConfigSpec::default(),
        xds_address: "skein-control-plane.skein-system.svc:9090".to_owned(),
        xds_trust_bundle_pem: Some(ca.pem.cert_pem),
        native_sidecars_supported: true,
        sleep_hooks_supported: true,
    }
}

fn handler_time(iterations: usize) {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7c1f9d2e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": realistic_pod(),
            "dryRun": false
        }
    });
    let body = serde_json::to_vec(&review).expect("serializing the review");
    let cfg = inject_config();
    let labels = [("injection".to_owned(), "enabled".to_owned())].into();
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let request = webhook::parse_review(&body).expect("a valid review");
        let (response, _) = webhook::respond(&request, &cfg, Some(&labels));
        let out = serde_json::to_vec(&response.into_review()).expect("serializing the answer");
        samples.push(started.elapsed());
        std::hint::black_box(out);
    }
    println!(
        "handler (parse + decide + inject + diff + serialize), {iterations} reviews of a {} byte body:",
        body.len()
    );
    println!("  {}", Percentiles::of(&mut samples));
}

async fn end_to_end(creations: usize) {
    let ctx = TestContext::new().await;
    let control_plane = ControlPlane::start().await;
    let meshed = ctx.namespace.clone();
    let plain = ctx.unique_name("plain");
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    let plain_ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": plain, "labels": ctx.owner_labels()}}))
            .unwrap();
    namespaces
        .create(&PostParams::default(), &plain_ns)
        .await
        .expect("creating the plain namespace");
    label_namespace(&ctx, &meshed, "injection", "enabled").await;
    let (url, ca) = (
        control_plane.webhook_url(),
        control_plane.ca.cert_pem.clone(),
    );
    register_webhook(&ctx, "bench", &url, &ca, FailurePolicy::Fail, &[&meshed]).await;

    let mut pod: Pod = serde_json::from_value(realistic_pod()).unwrap();
    // The namespaces are fresh: only their `default` service account exists.
    pod.spec.get_or_insert_default().service_account_name = None;
    let create = |namespace: String| {
        let api = Api::<Pod>::namespaced(ctx.client.clone(), &namespace);
        let pod = pod.clone();
        async move {
            let started = Instant::now();
            let created = api
                .create(&PostParams::default(), &pod)
                .await
                .expect("creating a pod");
            (started.elapsed(), created)
        }
    };
    // Warm up connections and caches on both paths.
    for _ in 0..20 {
        create(plain.clone()).await;
        create(meshed.clone()).await;
    }
    // The pod the webhook produces, created directly: separates the cost of the webhook call
    // from the cost of storing a bigger pod.
    let pre_injected =
        skein::inject::patch::inject(&pod, &inject_config()).expect("injecting the pod");
    let create_pre_injected = || {
        let api = Api::<Pod>::namespaced(ctx.client.clone(), &plain);
        let pod = pre_injected.clone();
        async move {
            let started = Instant::now();
            api.create(&PostParams::default(), &pod)
                .await
                .expect("creating a pod");
            started.elapsed()
        }
    };
    let (mut without, mut with, mut pre) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..creations {
        let (elapsed, _) = create(plain.clone()).await;
        without.push(elapsed);
        pre.push(create_pre_injected().await);
        let (elapsed, created) = create(meshed.clone()).await;
        assert!(
            created
                .spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten())
                .any(|c| c.name == "skein-proxy"),
            "the benchmark's meshed pods must really be injected"
        );
        with.push(elapsed);
    }
    let without = Percentiles::of(&mut without);
    let pre = Percentiles::of(&mut pre);
    let with = Percentiles::of(&mut with);
    println!("pod creation through kube-apiserver, {creations} each, interleaved:");
    println!("  plain pod, no webhook:          {without}");
    println!("  pre-injected pod, no webhook:   {pre}");
    println!("  plain pod through the webhook:  {with}");
    let added = |label: &str, base: &Percentiles, other: &Percentiles| {
        println!(
            "  {label}: p50 {:+.2} ms, p99 {:+.2} ms (ratio p50 {:.2}x, p99 {:.2}x)",
            ms(other.p50) - ms(base.p50),
            ms(other.p99) - ms(base.p99),
            ms(other.p50) / ms(base.p50),
            ms(other.p99) / ms(base.p99),
        )
    };
    added("added by injection, end to end", &without, &with);
    added("  of which the webhook call     ", &pre, &with);
    added("  of which storing a bigger pod ", &without, &pre);
    for namespace in [&meshed, &plain] {
        let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
    }
}

struct Percentiles {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
