//! Traffic through the `skein dev up` demo: a meshed load-generator Deployment in the demo
//! namespace, and requests sent from its pod (through its sidecar) to the frontend, which
//! passes them down the chain frontend → middleware → backend.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use super::node::{eventually, pod_ready};

pub const DEMO: &str = "demo";
const WAIT: Duration = Duration::from_secs(120);

/// `count` requests to the frontend at `path` from the loadgen pod, in the background; each
/// lets the backend fail `fail_percent`% of the time.
pub fn load(cluster: &str, pod: &str, count: u32, fail_percent: u32, path: &str) -> Child {
    let script = format!(
        "for i in $(seq {count}); do curl -s -o /dev/null --max-time 5 \
         -H 'x-demo-backend-fail-percent: {fail_percent}' http://frontend{path}; sleep 0.1; done"
    );
    Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["dev", "exec", "--cluster", cluster])
        .arg(format!("{DEMO}/{pod}"))
        .args(["-c", "loadgen", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("running skein dev exec")
}

/// Waits for a load to end (the loop in the pod ends with its count).
pub fn finish(mut child: Child) {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("waiting for the load").is_none() {
        assert!(Instant::now() < deadline, "the load did not end");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops a load now.
pub fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A meshed client Deployment (the demo app, idle; requests are sent from its pod): the
/// frontend's inbound view sees them, as it would a browser's through an ingress. Returns its
/// Ready pod's name.
pub async fn loadgen(client: &kube::Client) -> String {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), DEMO);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "loadgen", "namespace": DEMO},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "loadgen"}},
            "template": {
                "metadata": {"labels": {"app": "loadgen"}},
                "spec": {"containers": [{
                    "name": "loadgen", "image": "ghcr.io/skein-mesh/skein:0.1.0",
                    "args": ["demo-app", "--role", "frontend", "--version", "load", "--next", "http://frontend"],
                    "ports": [{"name": "http", "containerPort": 8080}]
                }]}
            }
        }
    }))
    .expect("a Deployment");
    deployments
        .patch(
            "loadgen",
            &PatchParams::apply("skein-test").force(),
            &Patch::Apply(&deployment),
        )
        .await
        .expect("applying the loadgen Deployment");
    // A Service too: proxies name a client's workload from the endpoints they know.
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "loadgen", "namespace": DEMO},
        "spec": {"selector": {"app": "loadgen"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .expect("a Service");
    Api::<Service>::namespaced(client.clone(), DEMO)
        .patch(
            "loadgen",
            &PatchParams::apply("skein-test").force(),
            &Patch::Apply(&service),
        )
        .await
        .expect("applying the loadgen Service");
    let pods: Api<Pod> = Api::namespaced(client.clone(), DEMO);
    eventually("a Ready, meshed loadgen pod", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("app=loadgen"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .find(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .any(|c| c.name == "skein-proxy")
                })
            })
            .map(|p| p.name_any())
    })
    .await
}

/// Deletes the loadgen Deployment and Service.
pub async fn remove_loadgen(client: &kube::Client) {
    let _ = Api::<Deployment>::namespaced(client.clone(), DEMO)
        .delete("loadgen", &DeleteParams::default())
        .await;
    let _ = Api::<Service>::namespaced(client.clone(), DEMO)
        .delete("loadgen", &DeleteParams::default())
        .await;
}

/// What `kubectl rollout restart` does: a new value in the pod template's annotations, so the
/// Deployment replaces its pods. Waiting for them is the caller's.
pub async fn rollout_restart(client: &kube::Client, namespace: &str, deployment: &str) {
    // A new value each time, or nothing rolls.
    let restarted_at = k8s_openapi::jiff::Timestamp::now().to_string();
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch(
            deployment,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": restarted_at
            }}}}})),
        )
        .await
        .unwrap_or_else(|err| panic!("restarting {namespace}/{deployment}: {err}"));
}
