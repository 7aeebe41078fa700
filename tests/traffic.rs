//! The mesh working end to end (the control-plane issue): `skein dev up` on a cluster of its own
//! (`skein-test-traffic`) runs the meshed demo — frontend → middleware → backend v1/v2, every
//! pod with its sidecar — and a user's RouteRules, EgressRules and TrafficPolicies change what
//! real requests do, through the real control plane, its configuration stream and the proxies.
//!
//! Requests are sent from inside the frontend pod (`skein dev exec … curl`), so they leave
//! through the frontend's sidecar exactly as the application's own calls do. The tests share
//! the demo namespace, so they take turns (`TURN`) and remove their rules when done.
//! Needs root, iproute2 and iptables (tests never skip).

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use skein::api::{EgressRule, RouteRule, TrafficPolicy};
use support::node::{eventually, exec_ok, pod_ready};

const CLUSTER: &str = "skein-test-traffic";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
const DEMO: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time changes the demo's routing.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Brings the meshed demo up once per test binary (idempotent, so a running one is reused).
fn demo_up() {
    static UP: OnceLock<()> = OnceLock::new();
    UP.get_or_init(|| {
        support::use_cluster(CLUSTER);
        let out = Command::new(SKEIN)
            .args(["dev", "up", "--name", CLUSTER])
            .env("SKEIN_SOURCE_DIR", support::source_dir())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("running skein dev up");
        assert!(
            out.status.success(),
            "skein dev up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

struct Demo {
    client: Client,
    /// Pod names by app label.
    pods: BTreeMap<String, String>,
}

impl Demo {
    async fn new() -> Self {
        demo_up();
        let client = support::client().await;
        let list = Api::<Pod>::namespaced(client.clone(), DEMO)
            .list(&ListParams::default())
            .await
            .expect("listing the demo's pods");
        let pods = list
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| Some((p.labels().get("app")?.clone(), p.name_any())))
            .collect();
        Self { client, pods }
    }

    fn pod(&self, app: &str) -> &str {
        self.pods
            .get(app)
            .unwrap_or_else(|| panic!("no Ready {app} pod in {:?}", self.pods))
    }

    /// Runs a shell command in the frontend pod's network namespace; returns stdout.
    fn run_in_frontend(&self, script: &str) -> String {
        exec_ok(
            DEMO,
            self.pod("frontend"),
            Some("frontend"),
            &["sh", "-c", script],
        )
    }

    /// `count` requests to `url` from the frontend pod: one `STATUS VERSION` line each, VERSION
    /// being the `x-demo-version` the answering backend set (empty for a proxy's own answer).
    fn requests(&self, count: usize, url: &str, headers: &[&str]) -> Vec<(u16, String)> {
        let headers: String = headers.iter().map(|h| format!(" -H '{h}'")).collect();
        let script = format!(
            "for i in $(seq {count}); do curl -s -o /dev/null --max-time 10{headers} \
             -w '%{{http_code}} %header{{x-demo-version}}\\n' {url}; done"
        );
        self.run_in_frontend(&script)
            .lines()
            .map(|line| {
                let (status, version) = line.split_once(' ').unwrap_or((line, ""));
                (status.parse().unwrap_or(0), version.trim().to_owned())
            })
            .collect()
    }

    /// The Prometheus text of a demo pod's sidecar (admin port 16000, inside the pod).
    fn proxy_metrics(&self, app: &str) -> String {
        exec_ok(
            DEMO,
            self.pod(app),
            Some(app),
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:16000/metrics",
            ],
        )
    }

    async fn apply<K>(&self, object: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let object: K = serde_json::from_value(object).expect("a valid object");
        Api::<K>::namespaced(self.client.clone(), DEMO)
            .patch(
                &object.name_any(),
                &PatchParams::apply("skein-test").force(),
                &Patch::Apply(&object),
            )
            .await
            .expect("applying the object")
    }

    async fn delete<K>(&self, name: &str)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let _ = Api::<K>::namespaced(self.client.clone(), DEMO)
            .delete(name, &DeleteParams::default())
            .await;
    }

    /// Waits until the RouteRule's status reports `Accepted` with `status` and returns its
    /// reason and message.
    async fn route_rule_accepted(&self, name: &str, status: &str) -> (String, String) {
        let api: Api<RouteRule> = Api::namespaced(self.client.clone(), DEMO);
        eventually(
            &format!("RouteRule {name} to report Accepted={status}"),
            WAIT,
            || async {
                let rule = api.get_opt(name).await.ok()??;
                let st = rule.status.as_ref()?;
                if st.observed_generation != rule.metadata.generation {
                    return None;
                }
                let c = st.condition("Accepted")?;
                (c.status == status).then(|| (c.reason.clone(), c.message.clone()))
            },
        )
        .await
    }
}

fn versions(replies: &[(u16, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (status, version) in replies {
        assert_eq!(*status, 200, "every request succeeds: {replies:?}");
        *counts.entry(version.clone()).or_default() += 1;
    }
    counts
}

/// The sum of a counter over the series whose labels contain every `label="value"` given.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_route_rule_splits_by_weight_routes_by_header_and_an_invalid_one_changes_nothing() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;

    // Without a rule both versions answer.
    let before = versions(&demo.requests(60, "http://backend/", &[]));
    assert!(before.len() == 2, "v1 and v2 both answer: {before:?}");

    demo.apply::<RouteRule>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": "backend-canary", "namespace": DEMO},
        "spec": {"service": "backend", "http": [
            {"name": "canary", "match": [{"headers": [{"name": "x-canary", "exact": "1"}]}],
             "route": [{"subset": {"version": "v2"}, "weight": 100}]},
            {"name": "split", "route": [
                {"subset": {"version": "v1"}, "weight": 90},
                {"subset": {"version": "v2"}, "weight": 10}]}
        ]}
    }))
    .await;
    let (reason, _) = demo.route_rule_accepted("backend-canary", "True").await;
    assert_eq!(reason, "Accepted");

    // x-canary: 1 -> v2 only (once the proxies have the rule).
    eventually("x-canary requests to reach v2 only", WAIT, || async {
        let canary = versions(&demo.requests(20, "http://backend/", &["x-canary: 1"]));
        (canary.keys().collect::<Vec<_>>() == ["v2"]).then_some(())
    })
    .await;
    let canary = versions(&demo.requests(50, "http://backend/", &["x-canary: 1"]));
    assert_eq!(canary.get("v2"), Some(&50), "{canary:?}");

    // 90/10: with 400 requests, v2's share is within 10% +- 5 points (p < 1e-4 to fail by
    // chance: a binomial with n=400, p=0.1 has sd 1.5 points).
    let split = versions(&demo.requests(400, "http://backend/", &[]));
    let v2 = *split.get("v2").unwrap_or(&0) as f64 / 400.0;
    assert!((0.05..=0.15).contains(&v2), "v2 share {v2} of {split:?}");

    // An invalid rule (weights adding to 70) is refused by the webhook ...
    let api: Api<RouteRule> = Api::namespaced(demo.client.clone(), DEMO);
    let bad: RouteRule = serde_json::from_value(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": "backend-bad", "namespace": DEMO},
        "spec": {"service": "backend", "http": [{"route": [
            {"subset": {"version": "v1"}, "weight": 50},
            {"subset": {"version": "v2"}, "weight": 20}]}]}
    }))
    .unwrap();
    let refused = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("the webhook refuses weights that do not add up to 100");
    assert!(refused.to_string().contains("100"), "{refused}");

    // ... and a valid second rule for the same Service is reported Conflicted (the older one
    // wins) and changes nothing.
    demo.apply::<RouteRule>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": "backend-later", "namespace": DEMO},
        "spec": {"service": "backend", "http": [{"route": [{"subset": {"version": "v1"}, "weight": 100}]}]}
    }))
    .await;
    let (reason, message) = demo.route_rule_accepted("backend-later", "False").await;
    assert_eq!(reason, "Conflicted", "{message}");
    assert!(message.contains("backend-canary"), "{message}");
    let canary = versions(&demo.requests(20, "http://backend/", &["x-canary: 1"]));
    assert_eq!(
        canary.get("v2"),
        Some(&20),
        "the older rule still wins: {canary:?}"
    );

    // proxy-status lists the demo's proxies, synced.
    let status = Command::new(SKEIN)
        .args(["proxy-status", "--cluster", CLUSTER])
        .output()
        .expect("running skein proxy-status");
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        table.contains(demo.pod("frontend")) && table.contains("SYNCED"),
        "{table}"
    );

    demo.delete::<RouteRule>("backend-later").await;
    demo.delete::<RouteRule>("backend-canary").await;
    eventually("both versions to answer again", WAIT, || async {
        (versions(&demo.requests(40, "http://backend/", &[])).len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_simple_retry_hides_a_flaky_backend_and_a_timeout_cuts_a_slow_one() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    let flaky = "x-demo-backend-fail-percent: 30";

    // Without retries, about 30% fail.
    let failing = demo.requests(100, "http://backend/", &[flaky]);
    let failed = failing.iter().filter(|(s, _)| *s != 200).count();
    assert!(
        failed >= 10,
        "the backend fails without retries: {failed}/100"
    );

    demo.apply::<RouteRule>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": "backend-retry", "namespace": DEMO},
        "spec": {"service": "backend", "http": [{
            "timeout": "500ms",
            "simpleRetry": {"attempts": 4, "retryOn": ["5xx"]}
        }]}
    }))
    .await;
    demo.route_rule_accepted("backend-retry", "True").await;
    let retries_before = counter(
        &demo.proxy_metrics("frontend"),
        "skein_proxy_retries_total",
        &["result=\"sent\""],
    );
    // Once the rule is in force, a slow backend is cut at the timeout: 504 from the proxy.
    eventually(
        "the route timeout to answer a slow backend",
        WAIT,
        || async {
            let slow = demo.requests(1, "http://backend/", &["x-demo-backend-latency-ms: 3000"]);
            (slow.first().map(|(s, _)| *s) == Some(504)).then_some(())
        },
    )
    .await;

    let replies = demo.requests(200, "http://backend/", &[flaky]);
    let failed = replies.iter().filter(|(s, _)| *s != 200).count();
    // Each request fails only if five tries in a row do (0.3^5 = 0.24%).
    assert!(
        failed <= 4,
        "retries hide the failures: {failed}/200 failed"
    );
    let retries = counter(
        &demo.proxy_metrics("frontend"),
        "skein_proxy_retries_total",
        &["result=\"sent\""],
    ) - retries_before;
    assert!(retries >= 20.0, "the frontend's proxy retried: {retries}");

    demo.delete::<RouteRule>("backend-retry").await;
}

#[tokio::test]
async fn an_egress_rule_opens_one_external_host_and_deleting_it_closes_it_again() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;

    // An "external" server: a pod outside the mesh (namespace not labelled, pod opted out),
    // reached by its IP, not through any Service.
    let external_ns = "traffic-external";
    let namespaces: Api<Namespace> = Api::all(demo.client.clone());
    let _ = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": external_ns}})).unwrap(),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(demo.client.clone(), external_ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "api", "labels": {"skein.dev/inject": "false"}},
        "spec": {"containers": [{
            "name": "api", "image": "ghcr.io/skein-mesh/skein:0.1.0",
            "args": ["demo-app", "--role", "external", "--version", "ext"],
            "ports": [{"containerPort": 8080}]
        }]}
    }))
    .unwrap();
    let _ = pods.create(&PostParams::default(), &pod).await;
    let ip = eventually("the external server to run", WAIT, || async {
        let pod = pods.get_opt("api").await.ok()??;
        pod.status?.pod_ip
    })
    .await;
    let url = format!("http://{ip}:8080/");
    let host = "Host: api.partner.example";
    eventually(
        "the external server to answer its own pod",
        WAIT,
        || async {
            let probe = [
                "curl",
                "-sf",
                "--max-time",
                "2",
                "http://127.0.0.1:8080/healthz",
            ];
            let out = support::node::exec(external_ns, "api", Some("api"), &probe);
            out.status.success().then_some(())
        },
    )
    .await;

    // Blocked, with an explanation.
    let body = demo.run_in_frontend(&format!("curl -s --max-time 10 -H '{host}' {url}"));
    assert!(
        body.contains("egress to api.partner.example blocked by Skein: no EgressRule allows it"),
        "{body}"
    );

    demo.apply::<EgressRule>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "EgressRule",
        "metadata": {"name": "partner", "namespace": DEMO},
        "spec": {"hosts": ["api.partner.example"], "ports": [{"port": 8080, "protocol": "http"}]}
    }))
    .await;
    eventually("the EgressRule to let requests out", WAIT, || async {
        let replies = demo.requests(1, &url, &[host]);
        (replies.first() == Some(&(200, "ext".to_owned()))).then_some(())
    })
    .await;
    // Another host at the same address stays blocked.
    let other = demo.requests(1, &url, &["Host: other.example"]);
    assert_eq!(other[0].0, 502, "{other:?}");

    demo.delete::<EgressRule>("partner").await;
    eventually("the host to be blocked again", WAIT, || async {
        (demo.requests(1, &url, &[host])[0].0 == 502).then_some(())
    })
    .await;
    let _ = namespaces
        .delete(external_ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn proxies_keep_their_configuration_while_the_control_plane_is_down_and_resync_after() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    demo.apply::<TrafficPolicy>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": "backend", "namespace": DEMO},
        "spec": {"service": "backend", "loadBalancer": "RoundRobin"}
    }))
    .await;
    demo.apply::<RouteRule>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": "backend-v1", "namespace": DEMO},
        "spec": {"service": "backend", "http": [{"route": [{"subset": {"version": "v1"}, "weight": 100}]}]}
    }))
    .await;
    eventually("all requests to reach v1", WAIT, || async {
        (versions(&demo.requests(20, "http://backend/", &[]))
            .keys()
            .collect::<Vec<_>>()
            == ["v1"])
        .then_some(())
    })
    .await;

    // The control plane goes away: traffic goes on with the last configuration.
    let pid_file = skein::dev::cluster::state_dir(CLUSTER).join("pids/skein-control-plane");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the control plane's pid file")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: a plain kill(2) of the process `skein dev up` started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let during = versions(&demo.requests(40, "http://backend/", &[]));
    assert_eq!(
        during.get("v1"),
        Some(&40),
        "the last configuration holds: {during:?}"
    );

    // A change made meanwhile reaches the proxies once the control plane is back.
    demo.delete::<RouteRule>("backend-v1").await;
    demo_restart();
    eventually(
        "the proxies to resync (both versions again)",
        WAIT,
        || async {
            (versions(&demo.requests(40, "http://backend/", &[])).len() == 2).then_some(())
        },
    )
    .await;
    demo.delete::<TrafficPolicy>("backend").await;
}

/// `skein dev up` again: restarts what is not running (here, the control plane).
fn demo_restart() {
    let out = Command::new(SKEIN)
        .args(["dev", "up", "--name", CLUSTER])
        .env("SKEIN_SOURCE_DIR", support::source_dir())
        .stdin(Stdio::null())
        .output()
        .expect("running skein dev up");
    assert!(
        out.status.success(),
        "skein dev up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn scaling_the_backend_updates_every_proxy_without_failing_a_request() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(demo.client.clone(), DEMO);
    let scale = |replicas: i32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch(
                    "backend-v1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": replicas}})),
                )
                .await
                .expect("scaling backend-v1");
        }
    };
    // Requests keep flowing from the frontend while the backend scales up and back down.
    let frontend = demo.pod("frontend").to_owned();
    let load = std::thread::spawn(move || {
        let script = "for i in $(seq 400); do curl -s -o /dev/null --max-time 10 \
                      -w '%{http_code} %header{x-skein-error}\\n' http://backend/; sleep 0.02; done";
        exec_ok(DEMO, &frontend, Some("frontend"), &["sh", "-c", script])
    });

    scale(3).await;
    eventually(
        "the frontend's proxy to know 4 backend endpoints",
        WAIT,
        || async { (backend_endpoints(&demo) == 4).then_some(()) },
    )
    .await;
    scale(1).await;
    eventually(
        "the frontend's proxy to know 2 backend endpoints again",
        WAIT,
        || async { (backend_endpoints(&demo) == 2).then_some(()) },
    )
    .await;

    let statuses = load.join().expect("the load thread");
    let failed: Vec<&str> = statuses.lines().filter(|s| !s.starts_with("200")).collect();
    assert_eq!(statuses.lines().count(), 400, "{statuses}");
    assert!(
        failed.is_empty(),
        "no request fails while endpoints change: {failed:?}"
    );
}

/// How many endpoints of `backend` (port 80) the frontend's proxy has now.
fn backend_endpoints(demo: &Demo) -> usize {
    let text = exec_ok(
        DEMO,
        demo.pod("frontend"),
        Some("frontend"),
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:16000/config",
        ],
    );
    let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    config["config"]["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            d["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("backend."))
        })
        .flat_map(|d| d["ports"].as_array().into_iter().flatten())
        .map(|p| p["endpoints"].as_array().map_or(0, Vec::len))
        .sum()
}
