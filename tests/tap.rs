//! `skein tap` and `skein top` on the real meshed demo (`skein dev up` on a cluster of its own,
//! `skein-test-tap`): real requests flow loadgen → frontend → middleware → backend over mTLS;
//! the real control plane starts taps on the real proxies over their tap streams, and the
//! events come back through `/debug/tap`. Pods that cannot be tapped are named with why.
//! Needs root, iproute2 and iptables (tests never skip).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::dashboard::Dashboard;
use support::demo_load::{DEMO, load, loadgen, remove_loadgen, stop};
use support::node::eventually;

const CLUSTER: &str = "skein-test-tap";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
const WAIT: Duration = Duration::from_secs(120);
/// Longest one `skein tap --max N` may take while traffic flows.
const ONE_TAP: &str = "30";

/// `skein ARGS --cluster CLUSTER` (killed after ONE_TAP seconds): success, stdout, stderr.
fn skein(args: &[&str]) -> (bool, String, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--cluster", CLUSTER]);
    skein_with(support::kubeconfig(), &all)
}

/// `skein ARGS` with `kubeconfig` (killed after ONE_TAP seconds): success, stdout, stderr.
fn skein_with(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .args([ONE_TAP, SKEIN])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("running skein");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `skein tap ARGS -o json --max N`: the events, when it ended by itself.
fn events(args: &[&str], max: u32) -> Option<Vec<Value>> {
    let max = max.to_string();
    let mut all = vec!["tap"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-n", DEMO, "-o", "json", "--max", &max]);
    let (ok, out, err) = skein(&all);
    if !ok {
        eprintln!("skein {all:?}: {err}");
        return None;
    }
    out.lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
        .map(|line| line.get("event").cloned())
        .collect()
}

/// Taps until `done` holds for the events of one run; returns them.
async fn tap_until(what: &str, args: &[&str], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually(what, WAIT, || async {
        events(args, 40).filter(|events| done(events))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_show_the_demo_traffic_and_name_what_cannot_be_tapped() {
    support::demo_up(CLUSTER);
    let client = support::client().await;
    let pod = loadgen(&client).await;
    let traffic = load(CLUSTER, &pod, 3000, 0, "/tapped/1");
    let other = load(CLUSTER, &pod, 3000, 0, "/other");

    // Both directions through the frontend's proxy, each side's mTLS identity proven.
    let identity = "spiffe://cluster.local/ns/demo/sa/default";
    let events = tap_until(
        "inbound and outbound events of the frontend",
        &["deploy/frontend"],
        |events| {
            let has = |direction: &str| events.iter().any(|e| e["direction"] == direction);
            has("inbound") && has("outbound")
        },
    )
    .await;
    let inbound = events
        .iter()
        .find(|e| e["direction"] == "inbound" && e["source"]["workload"] == "loadgen")
        .unwrap_or_else(|| panic!("no request from the loadgen: {events:#?}"));
    assert_eq!(inbound["tls"], true, "{inbound:#}");
    assert_eq!(inbound["source"]["identity"], identity, "{inbound:#}");
    assert_eq!(
        inbound["destination"]["workload"], "frontend",
        "{inbound:#}"
    );
    assert_eq!(inbound["method"], "GET", "{inbound:#}");
    assert_eq!(inbound["status"], 200, "{inbound:#}");
    assert!(
        inbound["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("demo/frontend-"))
    );
    assert!(inbound["latencyMs"].as_f64().is_some());
    let outbound = events
        .iter()
        .find(|e| e["direction"] == "outbound")
        .expect("an outbound event");
    assert_eq!(
        outbound["destination"]["workload"], "middleware",
        "{outbound:#}"
    );
    assert_eq!(
        outbound["destination"]["identity"], identity,
        "{outbound:#}"
    );
    assert_eq!(outbound["tls"], true, "{outbound:#}");

    // Filters act: only calls to the middleware; only the tapped path.
    let to = events_or_panic(&["deploy/frontend", "--to", "svc/middleware"]);
    assert!(
        to.iter()
            .all(|e| e["direction"] == "outbound" && e["destination"]["workload"] == "middleware"),
        "{to:#?}"
    );
    let path = events_or_panic(&["deploy/frontend", "--path", "/tapped"]);
    assert!(
        path.iter()
            .all(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/tapped"))),
        "{path:#?}"
    );

    // The table people read, and `skein top` with the demo's paths.
    let (ok, table, err) = skein(&["tap", "deploy/frontend", "-n", DEMO, "--max", "5"]);
    assert!(ok, "{err}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("in  loadgen -> frontend  GET ")),
        "{table}"
    );
    assert!(err.contains("tapping 1 pod(s): demo/frontend-"), "{err}");
    let (ok, top, err) = skein(&[
        "top",
        "deploy/frontend",
        "-n",
        DEMO,
        "--once",
        "--duration",
        "5s",
    ]);
    assert!(ok, "{err}");
    assert!(top.starts_with("DIRECTION"), "{top}");
    for path in ["/tapped/1", "/other"] {
        assert!(
            top.lines()
                .any(|l| l.starts_with("inbound") && l.contains(path)),
            "{path} in:\n{top}"
        );
    }
    tap_api_is_authorised_by_rbac(&client).await;
    stop(traffic);
    stop(other);

    // A pod without the proxy (opted out) and one created before its namespace was labelled.
    let pods: Api<Pod> = Api::namespaced(client.clone(), DEMO);
    let bare = |name: &str, namespace: &str, opt_out: bool| -> Pod {
        let annotations = if opt_out {
            json!({"skein.dev/inject": "false"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "ghcr.io/skein-mesh/skein:0.1.0", "args": ["demo-app", "--role", "backend"]}]}
        }))
        .expect("a pod")
    };
    pods.create(&PostParams::default(), &bare("tap-unmeshed", DEMO, true))
        .await
        .expect("creating the unmeshed pod");
    let (ok, _, err) = skein(&["tap", "pod/tap-unmeshed", "-n", DEMO]);
    assert!(!ok, "nothing to tap: {err}");
    assert!(
        err.contains("demo/tap-unmeshed: cannot tap: not meshed (no skein-proxy container)"),
        "{err}"
    );

    let late = "tap-late";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(late, &DeleteParams::default()).await;
    eventually("the old namespace gone", WAIT, || async {
        matches!(namespaces.get_opt(late).await, Ok(None)).then_some(())
    })
    .await;
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": late}})).expect("a namespace");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("creating the namespace");
    let early = Api::<Pod>::namespaced(client.clone(), late)
        .create(&PostParams::default(), &bare("early", late, false))
        .await
        .expect("creating the early pod");
    // Creation and managedFields times are in whole seconds: label it in a later second.
    let created = early
        .metadata
        .creation_timestamp
        .expect("a creation time")
        .0;
    eventually("a second after the pod's creation", WAIT, || async {
        let now = k8s_openapi::jiff::Timestamp::now();
        (now.as_second() > created.as_second()).then_some(())
    })
    .await;
    namespaces
        .patch(
            late,
            &PatchParams::apply("skein-test-tap"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": late, "labels": {"injection": "enabled"}}
            })),
        )
        .await
        .expect("labelling the namespace");
    let (ok, _, err) = skein(&["tap", "pod/early", "-n", late]);
    assert!(!ok, "nothing to tap: {err}");
    assert!(
        err.contains(
            "tap-late/early: cannot tap: created before its namespace was labelled injection=enabled: restart it"
        ),
        "{err}"
    );

    let _ = pods.delete("tap-unmeshed", &DeleteParams::default()).await;
    let _ = namespaces.delete(late, &DeleteParams::default()).await;
    remove_loadgen(&client).await;
}

/// The test's kubeconfig, impersonating `user` (the admin may impersonate anyone).
fn kubeconfig_as(user: &str, dir: &Path) -> PathBuf {
    let mut config = kube::config::Kubeconfig::read_from(support::kubeconfig())
        .expect("reading the test kubeconfig");
    for named in &mut config.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(user.to_owned());
        }
    }
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&config).expect("a kubeconfig"))
        .expect("writing the kubeconfig");
    path
}

/// Tapping through the apiserver: a user without the `skein-tap` role is refused with the
/// binding to ask for; with it bound in the namespace, the events stream; a caller that is not
/// the apiserver cannot claim a user by sending the front proxy's headers itself.
async fn tap_api_is_authorised_by_rbac(client: &kube::Client) {
    let services: Api<APIService> = Api::all(client.clone());
    eventually("the tap API available", WAIT, || async {
        let service = services.get_opt("v1alpha1.tap.skein.dev").await.ok()??;
        let conditions = service.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
            .then_some(())
    })
    .await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let jane = kubeconfig_as("jane", dir.path());
    let tap = [
        "tap",
        "deploy/frontend",
        "-n",
        DEMO,
        "--max",
        "3",
        "-o",
        "json",
    ];
    let (ok, _, err) = skein_with(&jane, &tap);
    assert!(!ok, "jane tapped without permission: {err}");
    assert!(
        err.contains("User \"jane\" cannot watch resource \"deployments/tap\"")
            && err.contains("the skein-tap ClusterRole grants it"),
        "{err}"
    );

    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "jane-tap", "namespace": DEMO},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "skein-tap"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"}],
    }))
    .expect("a RoleBinding");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), DEMO);
    let _ = bindings.delete("jane-tap", &DeleteParams::default()).await;
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding skein-tap to jane");
    let events: Vec<Value> = eventually("jane's tap through the apiserver", WAIT, || async {
        let (ok, out, err) = skein_with(&jane, &tap);
        if !ok {
            eprintln!("skein tap as jane: {err}");
            return None;
        }
        let events: Vec<Value> = out
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|line| line.get("event").cloned())
            .collect();
        (events.len() == 3).then_some(events)
    })
    .await;
    assert!(
        events.iter().all(|e| e["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("demo/frontend-"))),
        "{events:#?}"
    );
    // Still only where the binding is.
    let (ok, _, err) = skein_with(&jane, &["tap", "ns", "-n", "default", "--max", "1"]);
    assert!(
        !ok && err.contains("cannot watch resource \"tap\""),
        "{err}"
    );
    dashboard_is_authorised_by_rbac(client, &jane).await;

    // Straight to the control plane, claiming to be an admin: refused, the headers ignored.
    let meshconfig = Api::<skein::api::MeshConfig>::all(client.clone())
        .get(skein::api::names::ACTIVE_MESHCONFIG)
        .await
        .expect("the MeshConfig");
    let webhook = meshconfig
        .spec
        .control_plane
        .external
        .expect("skein dev up runs the control plane outside the cluster")
        .webhook_url;
    let base = webhook.trim_end_matches("/inject");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let forged = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .expect("a client")
        .get(format!(
            "{base}/apis/tap.skein.dev/v1alpha1/watch/namespaces/{DEMO}/deployments/frontend/tap"
        ))
        .header("X-Remote-User", "admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await
        .expect("asking the control plane");
    assert_eq!(forged.status(), 401);
    let body = forged.text().await.unwrap_or_default();
    assert!(
        body.contains("only the Kubernetes apiserver may call the tap API"),
        "{body}"
    );
    let _ = bindings.delete("jane-tap", &DeleteParams::default()).await;
}

/// The dashboard through the apiserver (`skein dashboard`, as jane, who may tap only `demo`):
/// refused with the role to ask for; with `skein-dashboard` bound, the page, its stats and its
/// tap view of `demo` are served, and its tap view of `default` is refused as jane's own tap is.
async fn dashboard_is_authorised_by_rbac(client: &kube::Client, jane: &Path) {
    let refused = Dashboard::start(jane)
        .err()
        .expect("jane opened the dashboard unbound");
    assert!(
        refused.contains("User \"jane\" cannot list resource \"dashboard\"")
            && refused.contains("--clusterrole skein-dashboard"),
        "{refused}"
    );
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "jane-dashboard"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "skein-dashboard"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"}],
    }))
    .expect("a ClusterRoleBinding");
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let _ = bindings
        .delete("jane-dashboard", &DeleteParams::default())
        .await;
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding skein-dashboard to jane");
    let dashboard = eventually("jane's dashboard", WAIT, || async {
        Dashboard::start(jane)
            .map_err(|err| eprintln!("skein dashboard as jane: {err}"))
            .ok()
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let get = |path: &str| {
        let request = http.get(format!("{}{path}", dashboard.url));
        async move {
            let answer = request.send().await.expect("asking the dashboard");
            let status = answer.status().as_u16();
            let content_type = answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (
                status,
                content_type,
                answer.text().await.unwrap_or_default(),
            )
        }
    };
    let (status, content_type, page) = get("").await;
    assert_eq!(status, 200, "{page}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.starts_with("<!doctype html>"), "{page}");
    let (status, _, stats) = get(&format!("/stats?namespace={DEMO}")).await;
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).expect("the stats as JSON");
    assert!(stats["workloads"].is_array(), "{stats:#}");
    let (status, _, lines) = get(&format!(
        "/tap?namespace={DEMO}&resource=deploy%2Ffrontend&max=2"
    ))
    .await;
    assert_eq!(status, 200, "{lines}");
    let events = lines
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("event").is_some())
        .count();
    assert_eq!(events, 2, "{lines}");
    let (status, _, refusal) = get("/tap?namespace=default&resource=ns").await;
    assert_eq!(status, 403, "{refusal}");
    assert!(
        refusal.contains("may not watch tap in namespace default")
            && refusal.contains("--clusterrole skein-tap"),
        "{refusal}"
    );
    // Only the dashboard is passed on, and only to a browser that asked for this host.
    let (status, _, _) = get("/../api/v1/namespaces/kube-system/secrets").await;
    assert_eq!(status, 404);
    let rebound = http
        .get(&dashboard.url)
        .header("host", "attacker.example")
        .send()
        .await
        .expect("asking the dashboard");
    assert_eq!(rebound.status(), 403);
    drop(dashboard);
    let _ = bindings
        .delete("jane-dashboard", &DeleteParams::default())
        .await;
}

fn events_or_panic(args: &[&str]) -> Vec<Value> {
    let events = events(args, 10).unwrap_or_else(|| panic!("skein tap {args:?} failed"));
    assert!(!events.is_empty(), "{args:?}: no events");
    events
}
