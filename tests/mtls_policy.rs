//! MtlsPolicy end to end (issue 13): `skein dev up` on a cluster of its own
//! (`skein-test-mtlspol`) runs the meshed demo, and MtlsPolicies change which demo pods accept
//! plaintext from a pod outside the mesh, through the real webhook, control plane, configuration
//! stream and proxies.
//!
//! Plaintext from outside is what a server-side mode decides on its own, so these tests need no
//! workload certificates. The kubelet's probes reach the apps through the proxies and must keep
//! passing under Strict. Needs root, iproute2 and iptables.

mod support;

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use skein::api::MtlsPolicy;
use support::node::{eventually, exec, exec_ok, pod_ready};

const CLUSTER: &str = "skein-test-mtlspol";
const DEMO: &str = "demo";
/// A namespace without injection, and a pod opted out too: a client outside the mesh.
const OUTSIDE: &str = "mtlspol-outside";
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time changes the demo's policies.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Demo {
    client: Client,
    /// Ready demo pods by app: name and IP.
    pods: Vec<(String, String, String)>,
}

impl Demo {
    async fn new() -> Self {
        support::demo_up(CLUSTER);
        let client = support::client().await;
        let pods = Api::<Pod>::namespaced(client.clone(), DEMO)
            .list(&ListParams::default())
            .await
            .expect("listing the demo's pods")
            .items
            .into_iter()
            .filter(pod_ready)
            .filter_map(|p| {
                let app = p.labels().get("app")?.clone();
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((app, p.name_any(), ip))
            })
            .collect();
        let demo = Self { client, pods };
        demo.outside_client().await;
        demo
    }

    /// The first Ready pod of `app`: (name, IP).
    fn pod(&self, app: &str) -> (&str, &str) {
        self.pods
            .iter()
            .find(|(a, _, _)| a == app)
            .map(|(_, name, ip)| (name.as_str(), ip.as_str()))
            .unwrap_or_else(|| panic!("a Ready {app} pod in {:?}", self.pods))
    }

    /// A pod outside the mesh (its namespace is not labelled for injection and it opts out).
    async fn outside_client(&self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": OUTSIDE}})).unwrap(),
            )
            .await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), OUTSIDE);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "client", "labels": {"skein.dev/inject": "false"}},
            "spec": {"containers": [{
                "name": "client", "image": "ghcr.io/skein-mesh/skein:0.1.0",
                "args": ["demo-app", "--role", "external", "--version", "ext"],
                "ports": [{"containerPort": 8080}]
            }]}
        }))
        .unwrap();
        let _ = pods.create(&PostParams::default(), &pod).await;
        eventually("the outside client to run", WAIT, || async {
            let pod = pods.get_opt("client").await.ok()??;
            pod_ready(&pod).then_some(())
        })
        .await;
    }

    /// A plaintext GET from outside the mesh to `app`'s pod, port 8080.
    fn plaintext_from_outside(&self, app: &str) -> Output {
        let url = format!("http://{}:8080/", self.pod(app).1);
        exec(
            OUTSIDE,
            "client",
            Some("client"),
            &["curl", "-sf", "-o", "/dev/null", "--max-time", "5", &url],
        )
    }

    /// `app`'s proxy's counter, summed over the series with every label.
    fn counter(&self, app: &str, name: &str, labels: &[&str]) -> f64 {
        let metrics = exec_ok(
            DEMO,
            self.pod(app).0,
            Some(app),
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:16000/metrics",
            ],
        );
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn api(&self) -> Api<MtlsPolicy> {
        Api::namespaced(self.client.clone(), DEMO)
    }

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        let object: MtlsPolicy = serde_json::from_value(json!({
            "apiVersion": "skein.dev/v1alpha1", "kind": "MtlsPolicy",
            "metadata": {"name": name, "namespace": DEMO},
            "spec": spec,
        }))
        .expect("a valid MtlsPolicy");
        self.api()
            .patch(
                name,
                &PatchParams::apply("skein-test").force(),
                &Patch::Apply(&object),
            )
            .await
            .expect("applying the MtlsPolicy");
        // Creation times have a one-second resolution: keep the order the test means.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    async fn delete(&self, name: &str) {
        let _ = self.api().delete(name, &DeleteParams::default()).await;
    }

    /// Waits until the policy's current generation reports `type_` with `status`; returns
    /// (reason, message).
    async fn condition(&self, name: &str, type_: &str, status: &str) -> (String, String) {
        let api = self.api();
        eventually(
            &format!("MtlsPolicy {name} to report {type_}={status}"),
            WAIT,
            || async {
                let policy = api.get_opt(name).await.ok()??;
                let st = policy.status.as_ref()?;
                if st.observed_generation != policy.metadata.generation {
                    return None;
                }
                let c = st.condition(type_)?;
                (c.status == status).then(|| (c.reason.clone(), c.message.clone()))
            },
        )
        .await
    }
}

#[tokio::test]
async fn a_workload_policy_beats_the_namespace_one_and_status_says_whom_each_applies_to() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    assert!(
        demo.plaintext_from_outside("backend").status.success(),
        "Permissive (the mesh's mode) lets plaintext in"
    );

    demo.apply("namespace-strict", json!({"mode": "Strict"}))
        .await;
    demo.apply(
        "backend-permissive",
        json!({"selector": {"matchLabels": {"app": "backend"}}, "mode": "Permissive"}),
    )
    .await;
    // A younger copy of the selector never applies.
    demo.apply(
        "backend-twin",
        json!({"selector": {"matchLabels": {"app": "backend"}}, "mode": "Disabled"}),
    )
    .await;

    let before = demo.counter(
        "middleware",
        "skein_proxy_tcp_connections_rejected_total",
        &["direction=\"inbound\"", "reason=\"plaintext_refused\""],
    );
    eventually(
        "plaintext to the middleware (namespace: Strict) to be refused",
        WAIT,
        || async { (!demo.plaintext_from_outside("middleware").status.success()).then_some(()) },
    )
    .await;
    for _ in 0..3 {
        assert!(
            demo.plaintext_from_outside("backend").status.success(),
            "the backend's workload policy (Permissive) beats the namespace's Strict"
        );
    }
    let after = demo.counter(
        "middleware",
        "skein_proxy_tcp_connections_rejected_total",
        &["direction=\"inbound\"", "reason=\"plaintext_refused\""],
    );
    assert!(after > before, "refusals are counted: {before} -> {after}");

    let (reason, message) = demo
        .condition("backend-permissive", "ResolvedRefs", "True")
        .await;
    assert!(message.contains("matches 2 pod(s)"), "{reason}: {message}");
    demo.condition("namespace-strict", "Accepted", "True").await;
    let (_, message) = demo
        .condition("namespace-strict", "ResolvedRefs", "True")
        .await;
    assert!(message.contains("pod(s)"), "{message}");
    let (reason, message) = demo.condition("backend-twin", "Accepted", "False").await;
    assert_eq!(reason, "Conflicted", "{message}");
    assert!(
        message.contains("MtlsPolicy demo/backend-permissive has the same selector"),
        "{message}"
    );

    // The kubelet's probes (plaintext from the node) still pass under Strict: the middleware
    // stays Ready through several readiness periods (2 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let middleware = Api::<Pod>::namespaced(demo.client.clone(), DEMO)
        .get(demo.pod("middleware").0)
        .await
        .expect("the middleware pod");
    assert!(
        pod_ready(&middleware),
        "the probes failed under Strict: {:?}",
        middleware.status
    );

    for name in ["backend-twin", "backend-permissive", "namespace-strict"] {
        demo.delete(name).await;
    }
    eventually(
        "plaintext to the middleware to pass again",
        WAIT,
        || async {
            demo.plaintext_from_outside("middleware")
                .status
                .success()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_port_entry_beats_the_policys_mode_and_the_webhook_refuses_a_policy_that_sets_nothing() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    let bad: MtlsPolicy = serde_json::from_value(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "MtlsPolicy",
        "metadata": {"name": "bad", "namespace": DEMO},
        "spec": {"selector": {"matchLabels": {"app": "frontend!"}}}
    }))
    .unwrap();
    let refused = demo
        .api()
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("the webhook refuses it")
        .to_string();
    for want in [
        "MtlsPolicy demo/bad is invalid",
        "spec: sets nothing",
        "\"frontend!\" is not a label value",
    ] {
        assert!(refused.contains(want), "{want:?} not in {refused}");
    }

    // Strict everywhere on the frontend but its app port, which stays open.
    demo.apply(
        "frontend",
        json!({"selector": {"matchLabels": {"app": "frontend"}}, "mode": "Strict",
               "ports": [{"port": 8080, "mode": "Permissive"}]}),
    )
    .await;
    demo.condition("frontend", "Accepted", "True").await;
    // Give the proxy time to get it: nothing would change, which is the point.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(demo.plaintext_from_outside("frontend").status.success());
    // Now the port entry says Strict: refused.
    demo.apply(
        "frontend",
        json!({"selector": {"matchLabels": {"app": "frontend"}}, "mode": "Permissive",
               "ports": [{"port": 8080, "mode": "Strict"}]}),
    )
    .await;
    eventually("the port entry to refuse plaintext", WAIT, || async {
        (!demo.plaintext_from_outside("frontend").status.success()).then_some(())
    })
    .await;
    demo.delete("frontend").await;
    eventually("plaintext to the frontend to pass again", WAIT, || async {
        demo.plaintext_from_outside("frontend")
            .status
            .success()
            .then_some(())
    })
    .await;
}
