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
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use skein::api::{EgressRule, MeshConfig, RouteRule, TrafficPolicy};
use support::node::{eventually, exec_ok, pod_ready};

const CLUSTER: &str = "skein-test-traffic";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
const DEMO: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time changes the demo's routing.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Demo {
    client: Client,
    /// Pod names by app label.
    pods: BTreeMap<String, String>,
}

impl Demo {
    async fn new() -> Self {
        support::demo_up(CLUSTER);
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

    let ip = external_server(&demo).await;
    let url = format!("http://{ip}:8080/");
    let host = "Host: api.partner.example";

    // Blocked, with an explanation.
    let body = demo.run_in_frontend(&format!("curl -s --max-time 10 -H '{host}' {url}"));
    assert!(
        body.contains("egress to api.partner.example blocked by Skein: no EgressRule allows it"),
        "{body}"
    );

    // The host by its address: a name would have to resolve to it in the client pod (traffic
    // allowed for a name goes only to that name's addresses; `tests/proxy_http.rs` covers names).
    demo.apply::<EgressRule>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "EgressRule",
        "metadata": {"name": "partner", "namespace": DEMO},
        "spec": {"hosts": [ip.to_string()], "ports": [{"port": 8080}]}
    }))
    .await;
    eventually("the EgressRule to let requests out", WAIT, || async {
        let replies = demo.requests(1, &url, &[]);
        (replies.first() == Some(&(200, "ext".to_owned()))).then_some(())
    })
    .await;
    // Another host at the same address stays blocked.
    let other = demo.requests(1, &url, &["Host: other.example"]);
    assert_eq!(other[0].0, 502, "{other:?}");

    demo.delete::<EgressRule>("partner").await;
    eventually("the host to be blocked again", WAIT, || async {
        (demo.requests(1, &url, &[])[0].0 == 502).then_some(())
    })
    .await;
}

/// The namespace of [`external_server`]: not labelled for injection.
const EXTERNAL: &str = "traffic-external";

/// A server outside the mesh (namespace not labelled, pod opted out), reached by its IP, not
/// through any Service; started once and kept (tests only send it requests, or send requests
/// from it). Returns its IP once it answers.
async fn external_server(demo: &Demo) -> std::net::IpAddr {
    let namespaces: Api<Namespace> = Api::all(demo.client.clone());
    let _ = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": EXTERNAL}})).unwrap(),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(demo.client.clone(), EXTERNAL);
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
        pod.status?.pod_ip?.parse().ok()
    })
    .await;
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
            let out = support::node::exec(EXTERNAL, "api", Some("api"), &probe);
            out.status.success().then_some(())
        },
    )
    .await;
    ip
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
    kill_control_plane();
    let during = versions(&demo.requests(40, "http://backend/", &[]));
    assert_eq!(
        during.get("v1"),
        Some(&40),
        "the last configuration holds: {during:?}"
    );

    // A change made meanwhile reaches the proxies once the control plane is back.
    demo.delete::<RouteRule>("backend-v1").await;
    // `skein dev up` again: restarts what is not running (here, the control plane).
    support::dev_up(CLUSTER);
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

/// One answer, as curl's `-w` [`Reply::FORMAT`] prints it.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// `x-demo-pod`: the backend pod that answered (empty for a proxy's own answer).
    pod: String,
    /// `x-skein-error`, when a proxy answered.
    error: String,
}

impl Reply {
    const FORMAT: &str = "%{http_code} %header{x-demo-pod} %header{x-skein-error}\\n";

    fn parse_all(out: &str) -> Vec<Reply> {
        out.lines()
            .map(|line| {
                let mut fields = line.splitn(3, ' ');
                let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let pod = fields.next().unwrap_or_default().trim().to_owned();
                let error = fields.next().unwrap_or_default().trim().to_owned();
                Reply { status, pod, error }
            })
            .collect()
    }
}

impl Demo {
    /// The demo's pods matching the label `selector` (None if the apiserver cannot be read).
    async fn pods_labelled(&self, selector: &str) -> Option<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), DEMO);
        let list = pods.list(&ListParams::default().labels(selector)).await;
        list.ok().map(|l| l.items)
    }

    /// `count` requests to `url` from the frontend pod, one after another.
    fn replies(&self, count: usize, url: &str) -> Vec<Reply> {
        let script = format!(
            "for i in $(seq {count}); do curl -s -o /dev/null --max-time 10 -w '{}' {url}; done",
            Reply::FORMAT
        );
        Reply::parse_all(&self.run_in_frontend(&script))
    }
}

/// Requests from inside the frontend pod to `url`, one after another (20 ms apart), from
/// [`Load::start`] until [`Load::stop`]: continuous load while the backend changes.
struct Load {
    /// The loop runs while this file does not exist (the pod's processes see the host's /tmp).
    stop_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    thread: Option<std::thread::JoinHandle<String>>,
}

impl Load {
    fn start(demo: &Demo, url: &str, headers: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let stop_file = dir.path().join("stop");
        let headers: String = headers.iter().map(|h| format!(" -H '{h}'")).collect();
        let script = format!(
            "while [ ! -e {stop} ]; do curl -s -o /dev/null --max-time 10{headers} -w '{format}' \
             {url}; sleep 0.02; done; true",
            stop = stop_file.display(),
            format = Reply::FORMAT,
        );
        let frontend = demo.pod("frontend").to_owned();
        let thread = std::thread::spawn(move || {
            exec_ok(DEMO, &frontend, Some("frontend"), &["sh", "-c", &script])
        });
        Self {
            stop_file,
            _dir: dir,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Reply> {
        std::fs::write(&self.stop_file, b"").expect("writing the stop file");
        let thread = self.thread.take().expect("stopped once");
        Reply::parse_all(&thread.join().expect("the load thread"))
    }
}

/// A test that fails before stopping its load still ends the loop in the pod (and waits for it,
/// so the stop file outlives the loop's last look at it).
impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, b"");
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Asserts no request failed; says how many retries the frontend's proxy sent meanwhile (the
/// requests they saved would have failed without them).
fn assert_none_failed(what: &str, replies: &[Reply], retries_before: f64, demo: &Demo) {
    let retries = backend_retries(demo) - retries_before;
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for reply in replies.iter().filter(|r| r.status != 200) {
        *failed
            .entry(format!(
                "{} {} (pod {:?})",
                reply.status, reply.error, reply.pod
            ))
            .or_default() += 1;
    }
    eprintln!(
        "{what}: {} requests, {} failed, {retries} retries sent by the frontend's proxy",
        replies.len(),
        failed.values().sum::<usize>()
    );
    assert!(replies.len() >= 20, "too few requests: {}", replies.len());
    if !failed.is_empty() {
        // Whether the caller's proxy answered them itself (it could not reach any endpoint) or
        // passed on an upstream's answer (the backend pod's own proxy, for its app).
        let metrics = demo.proxy_metrics("frontend");
        let local: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("skein_proxy_local_responses_total"))
            .collect();
        panic!("{what}: requests failed: {failed:?}\nthe frontend proxy's own answers: {local:#?}");
    }
}

/// Retries the frontend's proxy has sent to `backend`.
fn backend_retries(demo: &Demo) -> f64 {
    counter(
        &demo.proxy_metrics("frontend"),
        "skein_proxy_retries_total",
        &["destination_service=\"backend.", "result=\"sent\""],
    )
}

/// Waits until backend-v1 has exactly `replicas` pods, none terminating, and the frontend's
/// proxy knows exactly the backend's endpoints (`replicas` + backend-v2's one, none terminating).
async fn backend_settled(demo: &Demo, replicas: usize) {
    eventually(
        &format!("backend-v1 to settle at {replicas} pods, all known to the frontend's proxy"),
        Duration::from_secs(90),
        || async {
            let v1 = demo.pods_labelled("app=backend,version=v1").await?;
            let settled = v1.len() == replicas
                && v1
                    .iter()
                    .all(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none());
            (settled && backend_endpoints(demo) == (replicas + 1, 0)).then_some(())
        },
    )
    .await;
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
    backend_settled(&demo, 1).await;
    let retries = backend_retries(&demo);
    // Requests keep flowing from the frontend while the backend scales up and back down, three
    // times over: a race lost once in a while shows up here.
    let load = Load::start(&demo, "http://backend/", &[]);
    for _ in 0..3 {
        scale(3).await;
        backend_settled(&demo, 3).await;
        scale(1).await;
        backend_settled(&demo, 1).await;
    }
    assert_none_failed(
        "scaling backend-v1 1→3→1 three times",
        &load.stop(),
        retries,
        &demo,
    );
}

#[tokio::test]
async fn rolling_restarts_of_the_backend_fail_no_request() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    backend_settled(&demo, 1).await;
    let retries = backend_retries(&demo);
    let load = Load::start(&demo, "http://backend/", &[]);
    for deployment in ["backend-v1", "backend-v2", "backend-v1"] {
        restart_backend(&demo, deployment).await;
    }
    assert_none_failed(
        "three rolling restarts of the backend",
        &load.stop(),
        retries,
        &demo,
    );
}

/// What `kubectl rollout restart` does to one backend Deployment, waiting until its new pod is
/// Ready, its old one gone and both backends are endpoints again.
async fn restart_backend(demo: &Demo, deployment: &str) {
    let before: Vec<String> = demo
        .pods_labelled("app=backend")
        .await
        .expect("listing backend pods")
        .iter()
        .map(|p| p.name_any())
        .collect();
    support::demo_load::rollout_restart(&demo.client, DEMO, deployment).await;
    eventually(
        &format!("{deployment} to roll out and its old pod to be gone"),
        Duration::from_secs(90),
        || async {
            let backend = demo.pods_labelled("app=backend").await?;
            let replaced = backend.iter().filter(|p| !before.contains(&p.name_any()));
            let done = backend.len() == 2
                && replaced.count() == 1
                && backend.iter().all(pod_ready)
                && backend_endpoints(demo) == (2, 0);
            done.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn one_minute_certificates_renew_under_load_without_a_failed_request() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    backend_settled(&demo, 1).await;
    set_mesh_spec(&demo, json!({"mtls": {"workloadCertLifetime": "1m"}})).await;
    let _restore = RestoreMesh(json!({"mtls": {"workloadCertLifetime": "24h"}}));
    // New backend pods get one-minute certificates (renewed every 30-36 s); the other tiers
    // keep theirs, so mTLS crosses old and new certificates alike.
    for deployment in ["backend-v1", "backend-v2"] {
        restart_backend(&demo, deployment).await;
    }
    let demo = Demo::new().await;
    let renewals = |demo: &Demo| {
        counter(
            &demo.proxy_metrics("backend"),
            "skein_proxy_identity_renewals_total",
            &["result=\"succeeded\""],
        )
    };
    let metrics = demo.proxy_metrics("backend");
    let expiry = counter(&metrics, "skein_proxy_identity_cert_expiry_seconds", &[]);
    assert!(
        metrics.contains("\nskein_proxy_identity_cert_expiry_seconds ")
            && expiry > 0.0
            && expiry <= 60.0,
        "the backend holds a one-minute certificate: {expiry} s left\n{metrics}"
    );

    let retries = backend_retries(&demo);
    let before = renewals(&demo);
    // Three tiers: the frontend's Service, then middleware, then backend, every hop mTLS.
    let load = Load::start(&demo, "http://frontend/", &[]);
    tokio::time::sleep(Duration::from_secs(80)).await;
    let replies = load.stop();
    let renewed = renewals(&demo) - before;
    assert!(
        renewed >= 2.0,
        "the backend renewed {renewed} times in 80 s"
    );
    assert!(
        replies.len() > 100,
        "the load ran: {} replies",
        replies.len()
    );
    assert_none_failed(
        "two renewals of one-minute certificates",
        &replies,
        retries,
        &demo,
    );
}

/// The three steps of docs/ca-rotation.md under load, with step 3 taken too early on purpose:
/// the old root must stay trusted until the last certificate it signed expires, then go; and
/// proxies created before the rotation still reach the control plane afterwards.
#[tokio::test]
async fn the_mesh_ca_rotates_in_three_steps_under_load_without_a_failed_request() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    backend_settled(&demo, 1).await;
    set_mesh_spec(&demo, json!({"mtls": {"workloadCertLifetime": "1m"}})).await;
    let _restore = RestoreMesh(json!({"mtls": {"workloadCertLifetime": "24h"}}));
    // Every tier on one-minute certificates, so the old CA's last one expires within the test.
    restart_until_replaced(&demo, "frontend").await;
    restart_until_replaced(&demo, "middleware").await;
    // The new frontend pod is where requests (and the backend's endpoint checks) run from.
    let demo = Demo::new().await;
    for deployment in ["backend-v1", "backend-v2"] {
        restart_backend(&demo, deployment).await;
    }
    let demo = Demo::new().await;
    let roots = |demo: &Demo, app: &str| {
        counter(
            &demo.proxy_metrics(app),
            "skein_proxy_identity_trusted_roots",
            &[],
        )
    };
    let every_tier_trusts = |count: f64| {
        let demo = &demo;
        move || async move {
            TIERS
                .iter()
                .all(|app| roots(demo, app) == count)
                .then_some(())
        }
    };

    let secrets: Api<Secret> = Api::namespaced(demo.client.clone(), "skein-system");
    let old = secrets.get("skein-ca").await.expect("the mesh CA Secret");
    let field = |key: &str| {
        let bytes = old.data.as_ref().and_then(|d| d.get(key)).expect(key);
        String::from_utf8(bytes.0.clone()).expect("PEM")
    };
    let old_cert = field("tls.crt");
    let new = skein::pki::Ca::generate("skein-mesh-ca-next", Duration::from_secs(3650 * 86400))
        .expect("a new CA");
    let write_ca = |cert: &str, key: &str, bundle: &str| {
        let bytes = |text: &str| k8s_openapi::ByteString(text.as_bytes().to_vec());
        let data = json!({
            "tls.crt": bytes(cert), "tls.key": bytes(key), "ca.crt": bytes(bundle),
        });
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    "skein-ca",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": data})),
                )
                .await
                .expect("updating the CA Secret");
        }
    };
    eventually("every tier to trust one root", WAIT, every_tier_trusts(1.0)).await;

    let retries = backend_retries(&demo);
    let load = Load::start(&demo, "http://frontend/", &[]);
    // 1. Add the new root: pushed to every proxy at once.
    let both = format!("{old_cert}{}", new.pem.cert_pem);
    write_ca(&old_cert, &field("tls.key"), &both).await;
    eventually(
        "every tier to trust both roots",
        WAIT,
        every_tier_trusts(2.0),
    )
    .await;

    // 2. Sign with the new CA; every tier renews onto it.
    let before = renewals(&demo);
    write_ca(&new.pem.cert_pem, &new.pem.key_pem, &both).await;
    every_tier_renewed(&demo, &before, "from the new CA").await;

    // 3. Remove the old root as early as possible: certificates it signed are still valid, so
    // the control plane keeps it, and the MeshConfig says until when.
    write_ca(&new.pem.cert_pem, &new.pem.key_pem, &new.pem.cert_pem).await;
    let meshconfigs: Api<MeshConfig> = Api::all(demo.client.clone());
    let retained = eventually(
        "status.trust to show the old root retained",
        WAIT,
        || async {
            let mc = meshconfigs.get("default").await.ok()?;
            let trust = mc.status?.trust?;
            let root = trust.roots.into_iter().find(|r| r.source == "Retained")?;
            (trust.signing.contains("skein-mesh-ca-next")).then_some(root)
        },
    )
    .await;
    // Only until the old CA's last one-minute certificate (to a pod still running) expires;
    // the day-long ones of the pods restarted above died with their pods.
    let until = retained.retained_until.as_ref().map(|t| t.0);
    let soon = k8s_openapi::jiff::Timestamp::now() + Duration::from_secs(150);
    assert!(
        !retained.subject.contains("next") && until.is_some_and(|until| until < soon),
        "the old root is the retained one, for at most two minutes: {retained:?}"
    );
    assert!(
        TIERS.iter().all(|app| roots(&demo, app) == 2.0),
        "every proxy still trusts the old root"
    );
    // Once the old CA's last certificate has expired, it goes.
    eventually(
        "every tier to trust only the new root",
        Duration::from_secs(120),
        every_tier_trusts(1.0),
    )
    .await;

    // The pods were created trusting the old CA alone (their SKEIN_XDS_TRUST_BUNDLE_PEM), and
    // the control plane's stream certificate now comes from the new one: a restarted control
    // plane is reached with the pushed bundle, and certificates keep renewing over it.
    let before = renewals(&demo);
    kill_control_plane();
    support::dev_up(CLUSTER);
    every_tier_renewed(&demo, &before, "through the restarted control plane").await;
    let replies = load.stop();
    assert!(
        replies.len() > 100,
        "the load ran: {} replies",
        replies.len()
    );
    assert_none_failed("a CA rotation", &replies, retries, &demo);
}

/// The three tiers whose certificates the CA tests follow.
const TIERS: [&str; 3] = ["frontend", "middleware", "backend"];

/// Successful certificate renewals so far, per tier of [`TIERS`].
fn renewals(demo: &Demo) -> Vec<f64> {
    TIERS
        .iter()
        .map(|app| {
            counter(
                &demo.proxy_metrics(app),
                "skein_proxy_identity_renewals_total",
                &["result=\"succeeded\""],
            )
        })
        .collect()
}

/// Waits until every tier has renewed since `before` ([`renewals`]).
async fn every_tier_renewed(demo: &Demo, before: &[f64], how: &str) {
    eventually(
        &format!("every tier to renew {how}"),
        Duration::from_secs(90),
        || async {
            let now = renewals(demo);
            now.iter()
                .zip(before)
                .all(|(now, before)| now > before)
                .then_some(())
        },
    )
    .await;
}

/// SIGKILLs the control plane `skein dev up` started (`support::dev_up` starts it again).
fn kill_control_plane() {
    let pid_file = skein::dev::cluster::state_dir(CLUSTER).join("pids/skein-control-plane");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the control plane's pid file")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: a plain kill(2) of the process `skein dev up` started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Restarts the Deployment `app` (one replica) and waits until its only pod is a new, Ready one.
async fn restart_until_replaced(demo: &Demo, app: &str) {
    let before = demo.pod(app).to_owned();
    let out = support::kubectl()
        .args([
            "-n",
            DEMO,
            "rollout",
            "restart",
            &format!("deployment/{app}"),
        ])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        &format!("{app} to be replaced by a Ready pod"),
        Duration::from_secs(90),
        || async {
            let pods = demo.pods_labelled(&format!("app={app}")).await?;
            let replaced = pods.len() == 1 && pods[0].name_any() != before && pod_ready(&pods[0]);
            replaced.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_backend_keeps_serving_what_was_routed_to_it_until_callers_have_moved_away() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    backend_settled(&demo, 1).await;
    demo.apply::<RouteRule>(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": "backend-pinned", "namespace": DEMO},
        "spec": {"service": "backend", "http": [
            {"name": "v2", "match": [{"headers": [{"name": "x-to", "exact": "v2"}]}],
             "route": [{"subset": {"version": "v2"}, "weight": 100}]},
            {"name": "any", "route": [{"subset": {}, "weight": 100}]}
        ]}
    }))
    .await;
    demo.route_rule_accepted("backend-pinned", "True").await;
    let pods: Api<Pod> = Api::namespaced(demo.client.clone(), DEMO);
    let v2 = demo
        .pods_labelled("app=backend,version=v2")
        .await
        .expect("listing backend-v2");
    assert_eq!(v2.len(), 1, "one backend-v2 pod");
    let doomed = v2[0].name_any();
    let doomed_ip: std::net::IpAddr = v2[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .expect("the pod's IP");
    eventually("x-to: v2 to reach backend-v2", WAIT, || async {
        let replies = demo.requests(5, "http://backend/", &["x-to: v2"]);
        replies
            .iter()
            .all(|(s, v)| *s == 200 && v == "v2")
            .then_some(())
    })
    .await;

    let retries = backend_retries(&demo);
    let load = Load::start(&demo, "http://backend/", &[]);
    // Slow requests routed to the pod (the app answers after 3 s), in flight when it is deleted.
    let frontend = demo.pod("frontend").to_owned();
    let slow = std::thread::spawn(move || {
        let script = "for i in 1 2 3 4; do curl -s -o /dev/null --max-time 20 -H 'x-to: v2' \
                      -H 'x-demo-backend-latency-ms: 3000' \
                      -w '%{http_code} %header{x-demo-pod}\\n' http://backend/ & done; wait";
        exec_ok(DEMO, &frontend, Some("frontend"), &["sh", "-c", script])
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    pods.delete(
        &doomed,
        &DeleteParams {
            grace_period_seconds: Some(10),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("deleting backend-v2's pod");

    // The callers learn: the frontend's proxy marks the endpoint terminating while the pod
    // still serves (its app is held for the drain window).
    eventually(
        "the frontend's proxy to mark the deleted pod's endpoint terminating",
        Duration::from_secs(5),
        || async { (backend_endpoint_state(&demo, doomed_ip) == Some(true)).then_some(()) },
    )
    .await;
    let still_alive = pods
        .get_opt(&doomed)
        .await
        .expect("reading the pod")
        .is_some();
    assert!(still_alive, "the pod was gone before callers moved away");
    // From now on nothing new goes to it while other endpoints serve.
    let after = demo.replies(30, "http://backend/");
    assert!(
        after.iter().all(|r| r.status == 200 && r.pod != doomed),
        "new requests failed or still reached the deleted pod {doomed}: {after:?}"
    );

    let slow_replies = slow.join().expect("the slow requests' thread");
    let slow_replies: Vec<&str> = slow_replies.lines().collect();
    assert_eq!(slow_replies.len(), 4, "{slow_replies:?}");
    for reply in &slow_replies {
        assert_eq!(
            *reply,
            format!("200 {doomed}"),
            "an in-flight request to the deleted pod failed"
        );
    }
    assert_none_failed(
        "deleting backend-v2's pod with a 10 s grace period",
        &load.stop(),
        retries,
        &demo,
    );
    demo.delete::<RouteRule>("backend-pinned").await;
    // backend-v2 replaced, and the frontend's proxy knows it (the next test counts on both).
    backend_settled(&demo, 1).await;
}

/// The endpoints of `backend` (port 80) the frontend's proxy has now, as JSON.
fn backend_endpoint_list(demo: &Demo) -> Vec<serde_json::Value> {
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
        .flat_map(|p| p["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// How many endpoints of `backend` the frontend's proxy has: (serving, terminating).
fn backend_endpoints(demo: &Demo) -> (usize, usize) {
    let endpoints = backend_endpoint_list(demo);
    let terminating = endpoints
        .iter()
        .filter(|e| e["terminating"].as_bool() == Some(true))
        .count();
    (endpoints.len() - terminating, terminating)
}

/// Whether the frontend's proxy has the endpoint at `ip` as terminating (None: not at all).
fn backend_endpoint_state(demo: &Demo, ip: std::net::IpAddr) -> Option<bool> {
    backend_endpoint_list(demo)
        .iter()
        .find(|e| {
            e["address"]
                .as_str()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .is_some_and(|a| a.ip() == ip)
        })
        .map(|e| e["terminating"].as_bool() == Some(true))
}

/// The identity every demo pod has (they run as their namespace's default service account).
const DEMO_IDENTITY: &str = "spiffe://cluster.local/ns/demo/sa/default";

/// Captures what crosses `app`'s pod interface while `send` runs, and says whether `marker`
/// appeared in any packet: a raw socket on the pod's `eth0`, opened as root in the pod's network
/// namespace (`skein-pod-<uid>`, the node's name for it).
async fn marker_on_the_wire(demo: &Demo, app: &str, marker: &str, send: impl FnOnce()) -> bool {
    const SNIFF: &str = "import socket, sys, time\n\
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n\
        s.bind(('eth0', 0)); s.settimeout(0.2)\n\
        print('listening', flush=True)\n\
        end, seen = time.time() + float(sys.argv[1]), b''\n\
        while time.time() < end:\n\
        \x20   try: seen += s.recv(65535)\n\
        \x20   except socket.timeout: pass\n\
        print('FOUND' if sys.argv[2].encode() in seen else 'ABSENT', len(seen))\n";
    let uid = Api::<Pod>::namespaced(demo.client.clone(), DEMO)
        .get(demo.pod(app))
        .await
        .expect("the pod")
        .metadata
        .uid
        .expect("a uid");
    let netns = format!("skein-pod-{uid}");
    let marker = marker.to_owned();
    let capture = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns", "exec", &netns, "python3", "-c", SNIFF, "4", &marker,
            ])
            .output()
            .expect("running the capture")
    });
    // The capture is listening well within a second; the requests then take about one.
    std::thread::sleep(Duration::from_millis(1500));
    send();
    let out = capture.join().expect("the capture thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("listening"),
        "the capture did not start: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.contains("FOUND")
}

#[tokio::test]
async fn meshed_calls_are_mutual_tls_carrying_the_callers_identity() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    let marker = format!("x-skein-marker-{}", std::process::id());

    // Frontend → middleware, proxy to proxy: nothing of the request is readable on the wire.
    let plain_seen = marker_on_the_wire(&demo, "middleware", &marker, || {
        let replies = demo.requests(5, "http://middleware/", &[&format!("{marker}: 1")]);
        assert!(
            replies.iter().all(|(status, _)| *status == 200),
            "{replies:?}"
        );
    })
    .await;
    assert!(
        !plain_seen,
        "the marker header crossed the wire in plaintext"
    );

    // The same capture sees plaintext from a client outside the mesh (Permissive), so the
    // absence above means encryption, not a capture that sees nothing.
    let _ = external_server(&demo).await;
    let middleware_ip = pod_ip(&demo, "middleware").await;
    let seen = marker_on_the_wire(&demo, "middleware", &marker, || {
        let url = format!("http://{middleware_ip}:8080/");
        let out = support::node::exec(
            EXTERNAL,
            "api",
            Some("api"),
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "-H",
                &format!("{marker}: 1"),
                &url,
            ],
        );
        assert!(out.status.success(), "{out:?}");
    })
    .await;
    assert!(
        seen,
        "the capture saw no plaintext request from outside the mesh"
    );

    // The server's proxy counts who called, from the certificate: identity, workload, TLS.
    let metrics = demo.proxy_metrics("middleware");
    let by_identity = counter(
        &metrics,
        "skein_proxy_requests_total",
        &[
            "direction=\"inbound\"",
            &format!("source_principal=\"{DEMO_IDENTITY}\""),
            "source_workload=\"frontend\"",
            "tls=\"true\"",
        ],
    );
    assert!(by_identity >= 5.0, "{metrics}");
    let plaintext = counter(
        &metrics,
        "skein_proxy_requests_total",
        &[
            "direction=\"inbound\"",
            "source_principal=\"\"",
            "tls=\"false\"",
        ],
    );
    assert!(
        plaintext >= 1.0,
        "the outside client's request as plaintext: {metrics}"
    );
}

#[tokio::test]
async fn strict_refuses_plaintext_from_outside_the_mesh_while_meshed_calls_and_probes_work() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    let _ = external_server(&demo).await;
    let middleware_ip = pod_ip(&demo, "middleware").await;
    let from_outside = || {
        let url = format!("http://{middleware_ip}:8080/");
        support::node::exec(
            EXTERNAL,
            "api",
            Some("api"),
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                &url,
            ],
        )
    };
    assert!(
        from_outside().status.success(),
        "Permissive lets plaintext in"
    );

    set_mesh_spec(&demo, json!({"mtls": {"mode": "Strict"}})).await;
    // Whatever happens below, the other tests get their Permissive mesh back.
    let _restore = RestoreMesh(json!({"mtls": {"mode": "Permissive"}}));
    eventually(
        "plaintext from outside the mesh to be refused",
        WAIT,
        || async { (!from_outside().status.success()).then_some(()) },
    )
    .await;
    // Meshed callers go on, through all three tiers.
    let replies = demo.requests(10, "http://frontend/", &[]);
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "{replies:?}"
    );
    let refused = counter(
        &demo.proxy_metrics("middleware"),
        "skein_proxy_tcp_connections_rejected_total",
        &["direction=\"inbound\"", "reason=\"plaintext_refused\""],
    );
    assert!(refused >= 1.0, "refusals are counted");
    // The kubelet's probes (plaintext from the node) still pass: the pods stay Ready through
    // several readiness periods (2 s) and liveness periods (10 s, a failure restarts).
    let pods: Api<Pod> = Api::namespaced(demo.client.clone(), DEMO);
    let restarts = |pod: &Pod| -> i32 {
        pod.status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.restart_count)
            .sum()
    };
    let before = pods.get(demo.pod("middleware")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after = pods.get(demo.pod("middleware")).await.unwrap();
    assert!(
        pod_ready(&after),
        "the probes failed under Strict: {:?}",
        after.status
    );
    assert_eq!(
        restarts(&before),
        restarts(&after),
        "a liveness probe failed under Strict"
    );

    set_mesh_spec(&demo, json!({"mtls": {"mode": "Permissive"}})).await;
    eventually("plaintext to be accepted again", WAIT, || async {
        from_outside().status.success().then_some(())
    })
    .await;
}

async fn pod_ip(demo: &Demo, app: &str) -> std::net::IpAddr {
    let pod = Api::<Pod>::namespaced(demo.client.clone(), DEMO)
        .get(demo.pod(app))
        .await
        .expect("the pod");
    pod.status
        .and_then(|s| s.pod_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("a pod IP")
}

/// Merges this into the MeshConfig's spec when dropped (also when a test fails): what a test
/// changed mesh-wide, back as the other tests expect it.
struct RestoreMesh(serde_json::Value);

impl Drop for RestoreMesh {
    fn drop(&mut self) {
        let _ = support::kubectl()
            .args(["patch", "meshconfig", "default", "--type", "merge", "-p"])
            .arg(json!({"spec": self.0}).to_string())
            .output();
    }
}

/// Merges `spec` into the MeshConfig's (mesh-wide: callers restore it with [`RestoreMesh`]).
async fn set_mesh_spec(demo: &Demo, spec: serde_json::Value) {
    let meshconfigs: Api<MeshConfig> = Api::all(demo.client.clone());
    meshconfigs
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .expect("patching the MeshConfig");
}
