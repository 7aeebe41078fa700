//! `skein dev node` against a real cluster (its own, `skein-test-node`): pods scheduled by the
//! real kube-scheduler run as processes in real network namespaces, Services work through the
//! real kube-proxy and CoreDNS, the real webhook injects pods whose `skein-init` and
//! `skein-proxy` really run, and the real kubectl's exec and port-forward reach them through
//! the apiserver and the node's kubelet API. Needs root, iproute2 and iptables (tests never
//! skip).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use skein::api::meshconfig::FailurePolicy;
use support::TestContext;
use support::control_plane::{ControlPlane, label_namespace, register_webhook};
use support::node::{
    AGENT, IMAGE, eventually, exec, exec_ok, logs, pod_ready, ready_node, wait_ready,
};

const CLUSTER: &str = "skein-test-node";
const WAIT: Duration = Duration::from_secs(90);

async fn context() -> TestContext {
    // The apiserver reaches the node's kubelet API, as `kubectl exec` and `port-forward` need.
    support::use_cluster_through_node(CLUSTER);
    let ctx = TestContext::new().await;
    ready_node(&ctx.client).await;
    ctx
}

/// A `skein demo-app` container spec.
fn demo_container(name: &str, role: &str) -> serde_json::Value {
    json!({
        "name": name,
        "image": IMAGE,
        "args": ["demo-app", "--role", role],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
    })
}

async fn create_pod(client: &Client, namespace: &str, pod: serde_json::Value) -> Pod {
    let pod: Pod = serde_json::from_value(pod).expect("a valid pod");
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .expect("creating the pod")
}

async fn create_service(client: &Client, namespace: &str, name: &str, app: &str) -> Service {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service)
        .await
        .expect("creating the service")
}

async fn create_deployment(client: &Client, namespace: &str, name: &str, replicas: i32) {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [demo_container(name, name)]},
            },
        },
    });
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(deployment).unwrap();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating the deployment");
}

/// The Ready pods of `app`, once there are `count` of them.
async fn ready_pods(client: &Client, namespace: &str, app: &str, count: usize) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually(&format!("{count} Ready pods of {app}"), WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .ok()?;
        let ready: Vec<Pod> = list.items.into_iter().filter(pod_ready).collect();
        (ready.len() == count).then_some(ready)
    })
    .await
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a pod IP")
}

/// POSTs to `path` of the demo app in `pod`, from inside the pod (its admin endpoints, such as
/// `/admin/unready`, are how a test changes its behaviour).
fn post_to_demo_app(namespace: &str, pod: &str, path: &str) {
    let url = format!("http://127.0.0.1:8080{path}");
    exec_ok(
        namespace,
        pod,
        None,
        &["curl", "-sS", "-m", "5", "-X", "POST", &url],
    );
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Addresses of the Service's endpoints, with their `ready` condition.
async fn endpoints(client: &Client, namespace: &str, service: &str) -> BTreeMap<String, bool> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("listing EndpointSlices");
    list.items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            e.addresses.iter().map(move |a| (a.clone(), ready))
        })
        .collect()
}

#[tokio::test]
async fn deployment_pods_run_and_reach_a_service_by_name_and_by_cluster_ip() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_deployment(&ctx.client, ns, "backend", 2).await;
    let service = create_service(&ctx.client, ns, "backend", "backend").await;
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "client", "labels": {"app": "client"}}, "spec": {"containers": [demo_container("client", "client")]}}),
    )
    .await;

    let backends = ready_pods(&ctx.client, ns, "backend", 2).await;
    let cidr: skein::dev::node::network::Ipv4Cidr =
        skein::dev::node::DEFAULT_POD_CIDR.parse().unwrap();
    for pod in &backends {
        let ip: std::net::Ipv4Addr = pod_ip(pod).parse().unwrap();
        assert!(cidr.contains(ip), "{ip} outside the node's pod CIDR");
        assert_eq!(
            pod.status.as_ref().unwrap().host_ip.as_deref(),
            Some("198.18.0.1")
        );
    }
    wait_ready(&ctx.client, ns, "client").await;

    // By name, through CoreDNS and kube-proxy. kube-proxy programs a new Service's rules after
    // the endpoints are ready (its sync period is 1 s), so the first request may need a retry.
    let by_name = format!("http://backend.{ns}.svc.cluster.local/");
    let answer = eventually("kube-proxy to program the Service", WAIT, || async {
        let out = exec(ns, "client", None, &["curl", "-sS", "-m", "5", &by_name]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert_eq!(json_of(&answer)["role"], "backend", "{answer}");
    // The short name, through the pod's DNS search path.
    let answer = exec_ok(
        ns,
        "client",
        None,
        &["curl", "-sS", "-m", "5", "http://backend/"],
    );
    assert_eq!(json_of(&answer)["role"], "backend", "{answer}");
    // By ClusterIP; kube-proxy spreads connections, so both backends answer sooner or later.
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = exec_ok(
            ns,
            "client",
            None,
            &["curl", "-sS", "-m", "5", &format!("http://{cluster_ip}/")],
        );
        seen.insert(
            json_of(&answer)["pod"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        if seen.len() == 2 {
            break;
        }
    }
    let names: std::collections::BTreeSet<String> = backends.iter().map(|p| p.name_any()).collect();
    assert_eq!(seen, names, "both backends answer through the ClusterIP");
    // The kubelet-style environment: downward API and Service variables.
    let env = exec_ok(ns, "client", None, &["env"]);
    assert!(env.contains("POD_NAME=client\n"), "{env}");
    assert!(
        env.contains(&format!("BACKEND_SERVICE_HOST={cluster_ip}\n")),
        "{env}"
    );
    assert!(
        env.contains("KUBERNETES_SERVICE_HOST=198.19.0.1\n"),
        "{env}"
    );
}

#[tokio::test]
async fn an_injected_pod_runs_skein_init_then_its_proxy_and_traffic_crosses_the_proxy() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    let control_plane = ControlPlane::start().await;
    register_webhook(
        &ctx,
        "node-inject",
        &control_plane.webhook_url(),
        &control_plane.ca.cert_pem,
        FailurePolicy::Fail,
        &[ns],
    )
    .await;
    label_namespace(&ctx, ns, "injection", "enabled").await;

    let created = eventually("the webhook to admit the pod", WAIT, || async {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "labels": {"app": "web"},
                         "annotations": {"skein.dev/proxy-log-level": "debug"}},
            "spec": {"containers": [demo_container("web", "backend")]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .create(&PostParams::default(), &pod)
            .await
            .ok()
    })
    .await;
    let init_args = created
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0]
        .args
        .clone()
        .unwrap();
    let pod = wait_ready(&ctx.client, ns, "web").await;

    // skein-init ran to completion before the proxy started, and the proxy is up and ready.
    let status = pod.status.clone().unwrap();
    let inits = status.init_container_statuses.unwrap();
    assert_eq!(inits[0].name, "skein-init");
    let init_done = inits[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .expect("skein-init terminated");
    assert_eq!(init_done.exit_code, 0, "{init_done:?}");
    assert_eq!(inits[1].name, "skein-proxy");
    let proxy_running = inits[1]
        .state
        .as_ref()
        .unwrap()
        .running
        .clone()
        .expect("skein-proxy running");
    assert!(init_done.finished_at.unwrap().0 <= proxy_running.started_at.unwrap().0);
    assert!(inits[1].ready && inits[1].started == Some(true));

    // The proxy runs as the proxy UID; the app as the image's user.
    let uid = exec_ok(ns, "web", Some("skein-proxy"), &["id", "-u"]);
    assert_eq!(uid.trim(), "2170");
    let app_uid = exec_ok(ns, "web", Some("web"), &["id", "-u"]);
    assert_ne!(app_uid.trim(), "2170");

    // The capture rules skein-init was given are the ones in the pod's namespace.
    let netns = format!("skein-pod-{}", pod.uid().unwrap());
    let saved = std::process::Command::new("ip")
        .args(["netns", "exec", &netns, "iptables-save", "-t", "nat"])
        .output()
        .expect("iptables-save");
    let saved = String::from_utf8_lossy(&saved.stdout);
    let planned = std::process::Command::new(support::node::SKEIN)
        .arg("init")
        .args(&init_args[1..])
        .arg("--dry-run")
        .output()
        .expect("skein init --dry-run");
    let planned = String::from_utf8_lossy(&planned.stdout);
    let planned_chains: Vec<&str> = planned
        .lines()
        .filter(|l| l.starts_with(":SKEIN"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(!planned_chains.is_empty(), "{planned}");
    for chain in &planned_chains {
        assert!(
            saved.contains(chain),
            "{chain} missing from the pod's rules:\n{saved}"
        );
    }
    assert!(saved.contains("--uid-owner 2170"), "{saved}");

    // Inbound traffic from another pod reaches the app through the proxy.
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "client", "labels": {"skein.dev/inject": "false"}},
               "spec": {"containers": [demo_container("client", "client")]}}),
    )
    .await;
    wait_ready(&ctx.client, ns, "client").await;
    let answer = exec_ok(
        ns,
        "client",
        None,
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            &format!("http://{}:8080/", pod_ip(&pod)),
        ],
    );
    assert_eq!(json_of(&answer)["pod"], "web", "{answer}");
    let metrics = exec_ok(
        ns,
        "web",
        Some("skein-proxy"),
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            "-D",
            "-",
            "http://127.0.0.1:16000/metrics",
        ],
    );
    assert!(
        metrics.to_ascii_lowercase().contains(&format!(
            "content-type: {}\r\n",
            skein::telemetry::METRICS_CONTENT_TYPE
        )),
        "{metrics}"
    );
    // The request crossed the proxy as HTTP: counted with its status.
    let inbound: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("skein_proxy_requests_total{direction=\"inbound\"")
                && l.contains("status_code=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        inbound >= 1.0,
        "no inbound request through the proxy:\n{metrics}"
    );
    // The pod asked for a debug proxy (the mesh default is info): the proxy logged that
    // request's connection at debug level.
    let log = logs(ns, "web", "skein-proxy");
    assert!(
        log.lines()
            .any(|l| l.contains(" DEBUG ") && l.contains("accepted") && l.contains("inbound")),
        "no debug line for the inbound connection in the proxy's log:\n{log}"
    );
    drop(control_plane);
}

#[tokio::test]
async fn a_failing_readiness_probe_takes_the_pod_out_of_its_endpoint_slice() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_deployment(&ctx.client, ns, "api", 1).await;
    create_service(&ctx.client, ns, "api", "api").await;
    let pod = ready_pods(&ctx.client, ns, "api", 1).await.remove(0);
    let (name, ip) = (pod.name_any(), pod_ip(&pod));
    eventually("the endpoint to be ready", WAIT, || async {
        (endpoints(&ctx.client, ns, "api").await.get(&ip) == Some(&true)).then_some(())
    })
    .await;

    post_to_demo_app(ns, &name, "/admin/unready");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    eventually("the pod to turn not Ready", WAIT, || async {
        let pod = pods.get(&name).await.ok()?;
        (!pod_ready(&pod)).then_some(())
    })
    .await;
    eventually("the endpoint to leave the ready set", WAIT, || async {
        (endpoints(&ctx.client, ns, "api").await.get(&ip) != Some(&true)).then_some(())
    })
    .await;

    post_to_demo_app(ns, &name, "/admin/ready");
    wait_ready(&ctx.client, ns, &name).await;
    eventually("the endpoint to be ready again", WAIT, || async {
        (endpoints(&ctx.client, ns, "api").await.get(&ip) == Some(&true)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_crashing_container_restarts_with_back_off() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "crash"}, "spec": {"containers": [
            {"name": "app", "image": IMAGE, "args": ["demo-app", "--listen", "not-an-address"]}
        ]}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    // The waiting state between restarts is brief with the tests' 1 s back-off; remember it.
    let saw_back_off = std::sync::atomic::AtomicBool::new(false);
    let status = eventually("two restarts after back-off", WAIT, || async {
        let pod = pods.get("crash").await.ok()?;
        let status = pod.status?.container_statuses?.remove(0);
        let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
        if waiting.and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff") {
            saw_back_off.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let saw = saw_back_off.load(std::sync::atomic::Ordering::Relaxed);
        (status.restart_count >= 2 && saw).then_some(status)
    })
    .await;
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .expect("a last termination");
    // An unparsable flag: the command line parser's usage error.
    assert_eq!(last.exit_code, 2, "{last:?}");
    assert_eq!(last.reason.as_deref(), Some("Error"));
}

#[tokio::test]
async fn a_deleted_pod_is_terminated_gracefully_and_leaves_nothing_behind() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    // One that exits on SIGTERM, one that ignores it (killed after its 2 s grace period).
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "polite"}, "spec": {"containers": [demo_container("app", "backend")]}}),
    )
    .await;
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "stubborn"}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "app", "image": IMAGE,
                            "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"]}]
        }}),
    )
    .await;
    let polite = wait_ready(&ctx.client, ns, "polite").await;
    let stubborn = wait_ready(&ctx.client, ns, "stubborn").await;

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pod in [&polite, &stubborn] {
        let name = pod.name_any();
        let netns = format!("/run/netns/skein-pod-{}", pod.uid().unwrap());
        assert!(std::path::Path::new(&netns).exists());
        pods.delete(&name, &DeleteParams::default()).await.unwrap();
        eventually(&format!("{name} to be gone"), WAIT, || async {
            matches!(pods.get_opt(&name).await, Ok(None)).then_some(())
        })
        .await;
        assert!(
            !std::path::Path::new(&netns).exists(),
            "{netns} left behind"
        );
    }
    let log = support::node::agent_log();
    let exited = |name: &str| {
        log.lines()
            .rfind(|l| l.contains("container exited") && l.contains(&format!("pod={ns}/{name} ")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(
        exited("polite").contains("exit_code=0"),
        "SIGTERM handled: {}",
        exited("polite")
    );
    assert!(
        exited("stubborn").contains("exit_code=137"),
        "SIGKILL after the grace period: {}",
        exited("stubborn")
    );
}

/// What a kubelet does for a deleted pod with a `preStop` hook (the injector gives meshed apps
/// one, to hold them for the drain window): the hook runs first, the pod stays Ready meanwhile,
/// so the real EndpointSlice controller marks its endpoint serving and terminating; only then
/// does the app get SIGTERM.
#[tokio::test]
async fn a_deleted_pod_runs_its_pre_stop_hook_first_and_serves_meanwhile() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_service(&ctx.client, ns, "held", "held").await;
    let mut container = demo_container("app", "backend");
    container["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 8}}});
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "held", "labels": {"app": "held"}},
               "spec": {"containers": [container]}}),
    )
    .await;
    let pod = wait_ready(&ctx.client, ns, "held").await;
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the pod's IP");
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let conditions = || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=held"))
            .await
            .ok()?;
        list.items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .find(|e| e.addresses.contains(&ip))
            .and_then(|e| e.conditions.clone())
    };
    eventually("the endpoint to be ready", WAIT, || async {
        (conditions().await?.ready == Some(true)).then_some(())
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    eventually(
        "the endpoint to be serving and terminating",
        WAIT,
        || async {
            let c = conditions().await?;
            (c.serving == Some(true) && c.terminating == Some(true) && c.ready == Some(false))
                .then_some(())
        },
    )
    .await;
    let during = pods.get("held").await.expect("the pod, still there");
    assert!(
        pod_ready(&during),
        "Ready while its preStop hook runs: {:?}",
        during.status
    );
    eventually("the pod to be gone", WAIT, || async {
        matches!(pods.get_opt("held").await, Ok(None)).then_some(())
    })
    .await;

    let log = support::node::agent_log();
    let line = |what: &str| {
        log.lines()
            .position(|l| l.contains(what) && l.contains(&format!("pod={ns}/held ")))
            .unwrap_or_else(|| panic!("no {what:?} for {ns}/held in the agent log"))
    };
    assert!(
        line("preStop hook done") < line("container exited"),
        "the hook ran before the container was stopped"
    );
}

#[tokio::test]
async fn an_image_that_cannot_run_here_waits_with_image_not_runnable() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "nginx"}, "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let waiting = eventually("ImageNotRunnable", WAIT, || async {
        let pod = pods.get("nginx").await.ok()?;
        let waiting = pod.status?.container_statuses?.remove(0).state?.waiting?;
        (waiting.reason.as_deref() == Some("ImageNotRunnable")).then_some(waiting)
    })
    .await;
    assert!(waiting.message.unwrap_or_default().contains("nginx:1.27"));
    let pod = pods.get("nginx").await.unwrap();
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test]
async fn kubectl_exec_runs_in_the_container_and_passes_on_its_streams_terminal_and_exit_code() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "shell"}, "spec": {"containers": [demo_container("app", "backend")]}}),
    )
    .await;
    wait_ready(&ctx.client, ns, "shell").await;

    // The container's own hostname (its UTS namespace), both output streams, the exit code.
    let out = support::kubectl()
        .args(["exec", "-n", ns, "shell", "--", "sh", "-c"])
        .arg("cat /proc/sys/kernel/hostname; echo oops >&2; exit 3")
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl exec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "kubectl exec: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shell\n");
    assert!(stderr.contains("oops\n"), "{stderr}");

    // -i: stdin reaches the command, whose end of input ends it.
    let mut cat = support::kubectl()
        .args(["exec", "-i", "-n", ns, "shell", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl exec -i");
    let input = "first line\nsecond line\n";
    cat.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = cat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl exec -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), input);

    // -it: the command gets a terminal. kubectl asks for one only with stdin and from a
    // terminal of its own, which `script` (util-linux) gives it.
    let kubectl = support::bin_dir().join("kubectl");
    let out = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} exec -it -n {ns} shell -- sh -c 'tty; exit 4'",
            kubectl.display()
        ))
        .arg("/dev/null")
        .env("KUBECONFIG", support::kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl exec -it under script");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "kubectl exec -it: {shown}");
    assert!(shown.contains("/dev/pts/"), "no terminal: {shown}");
}

#[tokio::test]
async fn kubectl_port_forward_reaches_a_server_listening_only_on_the_pods_localhost() {
    let _agent = AGENT.read().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_pod(
        &ctx.client,
        ns,
        json!({"metadata": {"name": "local"}, "spec": {"containers": [{
            "name": "app",
            "image": IMAGE,
            "args": ["demo-app", "--listen", "127.0.0.1:8080"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        }]}}),
    )
    .await;
    let pod = wait_ready(&ctx.client, ns, "local").await;
    // Not on the pod's address, even from inside the pod.
    let direct = exec(
        ns,
        "local",
        None,
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            &format!("http://{}:8080/", pod_ip(&pod)),
        ],
    );
    assert!(!direct.status.success(), "the app answers on the pod IP");

    // Local port 0: kubectl picks a free one and prints it.
    let mut forward = support::kubectl()
        .args(["port-forward", "-n", ns, "pod/local", ":8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl port-forward");
    let stdout = forward.stdout.take().unwrap();
    // The reader stays open for kubectl's later lines (a closed stdout would kill it).
    let (port, _lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.strip_prefix("Forwarding from 127.0.0.1:")?
                .split_whitespace()
                .next()?
                .parse::<u16>()
                .ok()
        });
        (port, lines)
    })
    .await
    .unwrap();
    let Some(port) = port else {
        let _ = forward.kill();
        let out = forward.wait_with_output().unwrap();
        panic!(
            "kubectl port-forward ended: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The whole body is read before kubectl is stopped: `get` returns at the
    // headers, and killing the forward mid-body would cut the answer short.
    let answer = async {
        reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await?
            .error_for_status()?
            .text()
            .await
    }
    .await;
    let _ = forward.kill();
    let out = forward.wait_with_output().unwrap();
    let body = answer.unwrap_or_else(|err| {
        panic!(
            "GET through the port-forward: {err}; kubectl: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(json_of(&body)["pod"], "local", "{body}");
}

/// The processes whose network namespace is `netns`.
fn processes_in(netns: &str) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(format!("/run/netns/{netns}")) else {
        return Vec::new();
    };
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

#[tokio::test]
async fn a_killed_and_restarted_agent_adopts_its_pods_without_duplicates() {
    let _agent = AGENT.write().await;
    let ctx = context().await;
    let ns = ctx.namespace.as_str();
    create_deployment(&ctx.client, ns, "steady", 2).await;
    let before = ready_pods(&ctx.client, ns, "steady", 2).await;
    let processes_before: BTreeMap<String, Vec<u32>> = before
        .iter()
        .map(|p| {
            (
                p.name_any(),
                processes_in(&format!("skein-pod-{}", p.uid().unwrap())),
            )
        })
        .collect();
    for (name, pids) in &processes_before {
        assert_eq!(pids.len(), 1, "{name}: {pids:?}");
    }

    support::node::stop_agent(libc::SIGKILL);
    support::node::start_agent();
    ready_node(&ctx.client).await;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pod in &before {
        let name = pod.name_any();
        let after = eventually(&format!("{name} restarted and Ready"), WAIT, || async {
            let p = pods.get(&name).await.ok()?;
            let restarts = p.status.as_ref()?.container_statuses.as_ref()?[0].restart_count;
            (pod_ready(&p) && restarts == 1).then_some(p)
        })
        .await;
        assert_eq!(pod_ip(&after), pod_ip(pod), "{name} kept its IP");
        let now = processes_in(&format!("skein-pod-{}", pod.uid().unwrap()));
        assert_eq!(
            now.len(),
            1,
            "{name}: exactly one container process, got {now:?}"
        );
        assert!(
            !processes_before[&name].contains(&now[0]),
            "{name}: the old process was replaced"
        );
    }
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 2, "no duplicate pods");
}
