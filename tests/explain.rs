//! Errors that explain themselves, on the real meshed demo (`skein dev up` on a cluster of its
//! own, `skein-test-explain`): a Service whose only pod never becomes Ready, called from the
//! frontend's pod through its real sidecar, gets the proxy's plain-words `no-endpoints` body
//! naming the Service and its pod counts; `skein explain` for the frontend (against the real
//! control plane, and the proxy's admin server through the apiserver's pod proxy) shows its
//! identity, mTLS mode, the destination with its route and endpoints, and the recent
//! `no-endpoints` error with what it means and what to do.
//! Needs root, iproute2 and iptables (tests never skip).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use skein::api::RouteRule;
use support::node::{eventually, pod_ready};

const CLUSTER: &str = "skein-test-explain";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
const DEMO: &str = "demo";
/// Where the never-Ready Service lives: not the demo's namespace, whose pods `dev up` checks.
const OTHER: &str = "explain-nowhere";
const WAIT: Duration = Duration::from_secs(120);

/// `skein ARGS --cluster CLUSTER`: its exit status, stdout and stderr.
fn skein(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(SKEIN)
        .args(args)
        .env("KUBECONFIG", support::kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("running skein");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `skein explain ARGS -n demo --cluster CLUSTER`, asserting success.
fn explain(args: &[&str]) -> String {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-n", DEMO, "--cluster", CLUSTER]);
    let (ok, stdout, stderr) = skein(&all);
    assert!(ok, "skein {all:?} failed: {stdout}{stderr}");
    stdout
}

/// `curl` from the frontend pod's app container, through its sidecar: `STATUS REASON` then the
/// body.
fn call_from(pod: &str, url: &str) -> String {
    let script =
        format!("curl -s --max-time 10 -w '\\n%{{http_code}} %header{{x-skein-error}}' {url}");
    let pod = format!("{DEMO}/{pod}");
    let (ok, stdout, stderr) = skein(&[
        "dev",
        "exec",
        "--cluster",
        CLUSTER,
        &pod,
        "-c",
        "frontend",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(ok, "curl from {pod}: {stdout}{stderr}");
    stdout
}

async fn apply<K>(client: &kube::Client, namespace: &str, object: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(object).expect("a valid object");
    let name = object.name_any();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply("skein-test").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|err| panic!("applying {name}: {err}"));
}

/// A Service whose one pod never becomes Ready (its readiness probe asks a port nobody serves),
/// with a RouteRule so the frontend has a route to show for it.
async fn never_ready_service(client: &kube::Client) {
    // An earlier run's namespace may still be going away.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually("an earlier run's namespace to be gone", WAIT, || async {
        matches!(namespaces.get_opt(OTHER).await, Ok(None)).then_some(())
    })
    .await;
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": OTHER, "labels": {"injection": "enabled"}}
    }))
    .expect("a Namespace");
    namespaces
        .patch(
            OTHER,
            &PatchParams::apply("skein-test").force(),
            &Patch::Apply(&namespace),
        )
        .await
        .expect("applying the namespace");
    apply::<Deployment>(
        client,
        OTHER,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "nowhere", "namespace": OTHER},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "nowhere"}},
                "template": {
                    "metadata": {"labels": {"app": "nowhere"}},
                    "spec": {"containers": [{
                        "name": "nowhere", "image": "ghcr.io/skein-mesh/skein:0.1.0",
                        "args": ["demo-app", "--role", "backend", "--version", "v1"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 9}, "periodSeconds": 2}
                    }]}
                }
            }
        }),
    )
    .await;
    apply::<Service>(client, OTHER, json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "nowhere", "namespace": OTHER},
        "spec": {"selector": {"app": "nowhere"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .await;
    apply::<RouteRule>(
        client,
        OTHER,
        json!({
            "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
            "metadata": {"name": "nowhere", "namespace": OTHER},
            "spec": {"service": "nowhere", "http": [{"name": "slow", "timeout": "2s"}]}
        }),
    )
    .await;
}

/// A Ready frontend pod's name.
async fn frontend(client: &kube::Client) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), DEMO);
    eventually("a Ready frontend pod", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("app=frontend"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .map(|p| p.name_any())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_error_says_why_and_explain_shows_what_applies() {
    support::demo_up(CLUSTER);
    let client = support::client().await;
    never_ready_service(&client).await;
    let pod = frontend(&client).await;

    // The frontend's proxy learns of the Service (a push away) and its not-ready pod (once the
    // pod exists and its probe has failed): then the answer names both counts.
    let expected = "no-endpoints: Service explain-nowhere/nowhere port 80 has no ready endpoints (1 pods, 0 ready)";
    let answer = eventually("the plain-words no-endpoints answer", WAIT, || async {
        let answer = call_from(&pod, "http://nowhere.explain-nowhere/orders?token=secret");
        answer.contains(expected).then_some(answer)
    })
    .await;
    assert!(answer.trim_end().ends_with("503 no-endpoints"), "{answer}");

    // explain, as JSON: the pod's proxy, its configuration, its recent error explained.
    let target = format!("pod/{pod}");
    let explained: Value =
        serde_json::from_str(&explain(&[&target, "-o", "json"])).expect("explain -o json is JSON");
    let me = &explained[0];
    assert_eq!(me["meshed"], true, "{me:#}");
    assert_eq!(
        me["identity"], "spiffe://cluster.local/ns/demo/sa/default",
        "{me:#}"
    );
    assert_eq!(me["proxies"].as_array().map(Vec::len), Some(1), "{me:#}");
    assert_eq!(me["problems"], json!([]), "{me:#}");
    let destinations = me["config"]["destinations"]
        .as_array()
        .expect("destinations");
    let nowhere = destinations
        .iter()
        .find(|d| d["name"] == "nowhere.explain-nowhere.svc.cluster.local")
        .unwrap_or_else(|| panic!("no nowhere destination: {me:#}"));
    assert_eq!(nowhere["ports"][0]["notReadyEndpoints"], 1, "{nowhere:#}");
    assert_eq!(nowhere["ports"][0]["endpoints"], json!([]), "{nowhere:#}");
    assert!(
        nowhere["routes"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["name"] == "slow" && r["timeout"] == "2s")),
        "{nowhere:#}"
    );
    let errors = me["recentErrors"]["errors"]
        .as_array()
        .expect("recent errors");
    let error = errors
        .iter()
        .rev()
        .find(|e| e["reason"] == "no-endpoints")
        .unwrap_or_else(|| panic!("no recent no-endpoints error: {me:#}"));
    assert_eq!(error["status"], 503, "{error:#}");
    assert_eq!(error["direction"], "outbound", "{error:#}");
    assert_eq!(error["method"], "GET", "{error:#}");
    assert_eq!(
        error["path"], "/orders",
        "the query is never kept: {error:#}"
    );
    assert_eq!(error["message"], expected, "{error:#}");
    let reasons = me["reasons"].as_array().expect("reasons");
    let meaning = reasons
        .iter()
        .find(|r| r["reason"] == "no-endpoints")
        .unwrap_or_else(|| panic!("no-endpoints is not explained: {me:#}"));
    assert_eq!(
        meaning["meaning"],
        skein::proxy::reasons::Reason::NoEndpoints.meaning()
    );

    // The same for people, by Deployment (each of its pods).
    let text = explain(&["deploy/frontend"]);
    for line in [
        format!("pod demo/{pod}"),
        "meshed: yes".to_owned(),
        "; in sync (configuration ".to_owned(),
        "inbound mTLS: ".to_owned(),
        "explain-nowhere/nowhere port 80 (".to_owned(),
        "0 ready, 1 not ready".to_owned(),
        "route \"slow\": every request; timeout 2s".to_owned(),
        "demo/backend port 80".to_owned(),
        format!("-> 503: {expected}"),
        "no-endpoints: the Service has no endpoint that can take the request".to_owned(),
        "what to do: check the Service's pods".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} in:\n{text}");
    }

    // A pod that does not exist is said so.
    let (ok, stdout, stderr) = skein(&[
        "explain",
        "pod/nobody-here",
        "-n",
        DEMO,
        "--cluster",
        CLUSTER,
    ]);
    assert!(!ok && stderr.contains("no pod"), "{stdout}{stderr}");

    // The never-Ready pod goes with its namespace, so the next `dev up` sees a healthy demo.
    Api::<Namespace>::all(client.clone())
        .delete(OTHER, &DeleteParams::default())
        .await
        .expect("deleting the test's namespace");
}
