//! The injection webhook end to end: a real kube-apiserver calls a real `skein control-plane`
//! over TLS, and the pods it stores are what a user would see with `kubectl get pod -o yaml`.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use kube::api::{Api, ListParams, PostParams};
use kube::core::ObjectMeta;
use serde_json::json;
use skein::api::meshconfig::FailurePolicy;
use skein::api::names;
use support::TestContext;
use support::control_plane::{
    ControlPlane, free_port, label_namespace, register_webhook as register,
};

/// A test namespace labelled for injection, served by its own control plane.
async fn meshed_namespace() -> (TestContext, ControlPlane) {
    let ctx = TestContext::new().await;
    let control_plane = ControlPlane::start().await;
    label_namespace(&ctx, &ctx.namespace, "injection", "enabled").await;
    let (url, ca) = (
        control_plane.webhook_url(),
        control_plane.ca.cert_pem.clone(),
    );
    register(
        &ctx,
        "injector",
        &url,
        &ca,
        FailurePolicy::Fail,
        &[&ctx.namespace],
    )
    .await;
    (ctx, control_plane)
}

/// A second namespace owned by the same test (deleted with the test's cluster-scoped objects).
async fn extra_namespace(ctx: &TestContext, suffix: &str) -> String {
    let name = ctx.unique_name(suffix);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(ctx.owner_labels()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(ctx.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    name
}

fn app_pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app.kubernetes.io/name".to_owned(), name.to_owned())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("example.com/shop/app:1.0".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_label(mut pod: Pod, key: &str, value: &str) -> Pod {
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert(key.to_owned(), value.to_owned());
    pod
}

fn with_annotation(mut pod: Pod, key: &str, value: &str) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(key.to_owned(), value.to_owned());
    pod
}

async fn create(ctx: &TestContext, namespace: &str, pod: &Pod) -> Result<Pod, kube::Error> {
    Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .create(&PostParams::default(), pod)
        .await
}

fn init_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

/// Injected as on Kubernetes 1.37: skein-init, then the proxy as a native sidecar.
fn assert_injected(pod: &Pod) {
    let inits = init_names(pod);
    assert_eq!(
        inits.get(..2),
        Some(
            &[
                names::INIT_CONTAINER.to_owned(),
                names::PROXY_CONTAINER.to_owned()
            ][..]
        ),
        "not injected: init containers {inits:?}"
    );
    let proxy = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[1];
    assert_eq!(
        proxy.restart_policy.as_deref(),
        Some("Always"),
        "the proxy must be a native sidecar"
    );
    assert!(!container_names(pod).contains(&names::PROXY_CONTAINER.to_owned()));
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("kubectl.kubernetes.io/default-container")
            .map(String::as_str),
        Some("app")
    );
}

fn assert_untouched(pod: &Pod) {
    let all: Vec<String> = init_names(pod)
        .into_iter()
        .chain(container_names(pod))
        .collect();
    assert!(
        !all.iter().any(|n| n.starts_with("skein-")),
        "expected no Skein containers, got {all:?}"
    );
}

#[tokio::test]
async fn pods_in_a_labelled_namespace_are_injected_and_others_are_not() {
    let ctx = TestContext::new().await;
    let control_plane = ControlPlane::start().await;
    let meshed = ctx.namespace.clone();
    let plain = extra_namespace(&ctx, "plain").await;
    label_namespace(&ctx, &meshed, "injection", "enabled").await;
    register(
        &ctx,
        "injector",
        &control_plane.webhook_url(),
        &control_plane.ca.cert_pem,
        FailurePolicy::Fail,
        &[&meshed, &plain],
    )
    .await;

    // Injected, with generateName, and with the user's own init container kept after ours.
    let stored = create(&ctx, &meshed, &app_pod("web")).await.unwrap();
    assert_injected(&stored);
    let mut generated = app_pod("ignored");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("worker-".to_owned());
    assert_injected(&create(&ctx, &meshed, &generated).await.unwrap());
    let mut with_init = app_pod("migrate");
    with_init.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: "db-migrate".to_owned(),
        image: Some("example.com/shop/migrate:1".to_owned()),
        ..Default::default()
    }]);
    let stored_with_init = create(&ctx, &meshed, &with_init).await.unwrap();
    assert_injected(&stored_with_init);
    assert_eq!(
        init_names(&stored_with_init)[2],
        "db-migrate",
        "the user's init containers run inside the mesh"
    );

    // Opted out in a labelled namespace; hostNetwork; unlabelled namespace; opted in there.
    assert_untouched(
        &create(
            &ctx,
            &meshed,
            &with_label(app_pod("opt-out"), names::INJECT_POD_KEY, "false"),
        )
        .await
        .unwrap(),
    );
    let mut host = app_pod("host");
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert_untouched(&create(&ctx, &meshed, &host).await.unwrap());
    assert_untouched(&create(&ctx, &plain, &app_pod("plain")).await.unwrap());
    assert_injected(
        &create(
            &ctx,
            &plain,
            &with_label(app_pod("opt-in"), names::INJECT_POD_KEY, "true"),
        )
        .await
        .unwrap(),
    );

    // Re-creating an already injected pod spec changes nothing: no second proxy.
    let mut again = stored.clone();
    again.metadata = ObjectMeta {
        name: Some("web-again".to_owned()),
        labels: stored.metadata.labels.clone(),
        annotations: stored.metadata.annotations.clone(),
        ..Default::default()
    };
    let again_stored = create(&ctx, &meshed, &again).await.unwrap();
    assert_eq!(init_names(&again_stored), init_names(&stored));
    assert_eq!(container_names(&again_stored), container_names(&stored));

    // The webhook counted what it did.
    let response = control_plane
        .http()
        .get(control_plane.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        skein::telemetry::METRICS_CONTENT_TYPE
    );
    let metrics = response.text().await.unwrap();
    // web, worker-*, migrate and opt-in. The opted-out pod never reached the webhook (its
    // objectSelector excludes it); re-created and reinvoked pods count as already injected.
    assert!(
        metrics.contains(r#"skein_injection_decisions_total{outcome="injected",reason=""} 4"#),
        "metrics: {metrics}"
    );
    assert!(
        metrics.contains(r#"outcome="skipped",reason="already_injected""#),
        "metrics: {metrics}"
    );
    assert!(
        metrics.contains(r#"outcome="skipped",reason="host_network""#),
        "metrics: {metrics}"
    );
}

#[tokio::test]
async fn deployment_pods_made_by_the_controller_manager_are_injected() {
    let (ctx, _control_plane) = meshed_namespace().await;

    let template = app_pod("shop");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "shop"}},
            "template": {"metadata": template.metadata, "spec": template.spec}
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ctx.namespace);
    let by_app = ListParams::default().labels("app.kubernetes.io/name=shop");
    let deadline = Instant::now() + Duration::from_secs(60);
    let made = loop {
        let list = pods.list(&by_app).await.unwrap().items;
        if list.len() == 2 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "the ReplicaSet made {} of 2 pods in 60s",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for pod in &made {
        assert_injected(pod);
    }
}

#[tokio::test]
async fn dry_run_and_bad_annotations() {
    let (ctx, _control_plane) = meshed_namespace().await;
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ctx.namespace);

    // A server-side dry run shows the injected pod and stores nothing.
    let dry = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &app_pod("dry"),
        )
        .await
        .unwrap();
    assert_injected(&dry);
    assert!(
        pods.get_opt("dry").await.unwrap().is_none(),
        "a dry run stored a pod"
    );

    // A malformed override is refused, naming the annotation and the value.
    let bad = with_annotation(
        app_pod("bad"),
        "traffic.skein.dev/exclude-inbound-ports",
        "http",
    );
    match create(&ctx, &ctx.namespace, &bad).await {
        Err(kube::Error::Api(status)) => {
            assert!(
                status
                    .message
                    .contains("traffic.skein.dev/exclude-inbound-ports")
                    && status.message.contains("http"),
                "denial does not name the annotation and value: {}",
                status.message
            );
        }
        other => panic!("a pod with a malformed annotation was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_webhook_fails_open_or_closed_as_configured() {
    let ctx = TestContext::new().await;
    let open = ctx.namespace.clone();
    let closed = extra_namespace(&ctx, "closed").await;
    for ns in [&open, &closed] {
        label_namespace(&ctx, ns, "injection", "enabled").await;
    }
    // Nothing listens on this port; the CA is irrelevant.
    let dead = format!("https://127.0.0.1:{}/inject", free_port());
    let ca = skein::pki::Ca::generate("unused", Duration::from_secs(60)).unwrap();
    register(
        &ctx,
        "fails-open",
        &dead,
        &ca.pem.cert_pem,
        FailurePolicy::Ignore,
        &[&open],
    )
    .await;
    register(
        &ctx,
        "fails-closed",
        &dead,
        &ca.pem.cert_pem,
        FailurePolicy::Fail,
        &[&closed],
    )
    .await;

    assert_untouched(
        &create(&ctx, &open, &app_pod("fails-open"))
            .await
            .expect("Ignore must let the pod in"),
    );
    match create(&ctx, &closed, &app_pod("fails-closed")).await {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("failed calling webhook"),
            "unexpected refusal: {}",
            status.message
        ),
        other => panic!("Fail must refuse the pod while the webhook is down, got {other:?}"),
    }
}

fn admission_review(
    kind: (&str, &str, &str),
    namespace: &str,
    object: serde_json::Value,
) -> serde_json::Value {
    let (group, version, kind) = kind;
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7c1f9d2e-0000-4000-8000-000000000001",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": object,
            "dryRun": false
        }
    })
}

/// Garbage in gets a clear answer out, never a crash: the server keeps serving.
#[tokio::test]
async fn malformed_admission_requests_get_clear_errors_and_the_server_keeps_serving() {
    let ctx = TestContext::new().await;
    let control_plane = ControlPlane::start().await;
    label_namespace(&ctx, &ctx.namespace, "injection", "enabled").await;
    let http = control_plane.http();
    let post = |body: Vec<u8>| {
        http.post(control_plane.webhook_url())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let pod_json = serde_json::to_value(app_pod("direct")).unwrap();

    let response = post(b"this is not json".to_vec()).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("not an AdmissionReview")
    );

    let mut old_version = admission_review(("", "v1", "Pod"), &ctx.namespace, pod_json.clone());
    old_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let response = post(serde_json::to_vec(&old_version).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("admission.k8s.io/v1beta1")
    );

    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    assert_eq!(
        post(serde_json::to_vec(&no_request).unwrap())
            .await
            .unwrap()
            .status(),
        400
    );

    // Answered reviews: (review, allowed, text the answer must contain).
    let deployment =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
    let no_containers = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "empty"}, "spec": {"containers": []}});
    let not_a_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "odd"}, "spec": {"containers": "many"}});
    let bad_annotation = serde_json::to_value(with_annotation(
        app_pod("bad"),
        "skein.dev/proxy-memory",
        "lots",
    ))
    .unwrap();
    let cases = [
        (
            admission_review(("apps", "v1", "Deployment"), &ctx.namespace, deployment),
            true,
            "only mutates pods",
        ),
        (
            admission_review(("", "v1", "Pod"), &ctx.namespace, no_containers),
            false,
            "container",
        ),
        (
            admission_review(("", "v1", "Pod"), &ctx.namespace, not_a_pod),
            false,
            "not a valid Pod",
        ),
        (
            admission_review(("", "v1", "Pod"), &ctx.namespace, bad_annotation),
            false,
            "skein.dev/proxy-memory",
        ),
    ];
    for (review, allowed, expected) in cases {
        let response = post(serde_json::to_vec(&review).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        let answer = &answer["response"];
        assert_eq!(
            answer["uid"], review["request"]["uid"],
            "the uid must be echoed"
        );
        assert_eq!(answer["allowed"], json!(allowed), "{answer}");
        assert!(
            answer["patch"].is_null(),
            "nothing may be patched here: {answer}"
        );
        assert!(
            answer.to_string().contains(expected),
            "{expected:?} missing from {answer}"
        );
    }

    // Over the limit: 413 before the body is read. HTTP/1.1 then closes the connection, so a
    // client still sending may see the close instead of the status; either way nothing is parsed.
    let too_big = vec![b' '; 5 * 1024 * 1024];
    match post(too_big).await {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(err) => assert!(err.is_request(), "unexpected failure: {err}"),
    }

    // Still serving, and still injecting (a fresh client: the oversized request's connection
    // is gone).
    let http = control_plane.http();
    assert_eq!(
        http.get(control_plane.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let review = admission_review(("", "v1", "Pod"), &ctx.namespace, pod_json);
    let answer: serde_json::Value = http
        .post(control_plane.webhook_url())
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&review).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["allowed"], json!(true));
    assert_eq!(answer["response"]["patchType"], json!("JSONPatch"));
}

/// A renewed certificate is served without a restart.
#[tokio::test]
async fn a_replaced_serving_certificate_is_picked_up_without_a_restart() {
    let _ctx = TestContext::new().await;
    let control_plane = ControlPlane::start().await;
    let new_ca =
        skein::pki::Ca::generate("skein-test-rotated-ca", Duration::from_secs(3600)).unwrap();
    let new_cert = new_ca
        .issue_serving(&["127.0.0.1"], Duration::from_secs(3600))
        .unwrap();
    let trusts_new = ControlPlane::client_trusting(&new_ca.pem.cert_pem);
    assert!(
        trusts_new
            .get(control_plane.url("/healthz"))
            .send()
            .await
            .is_err(),
        "the new CA must not verify the old certificate"
    );
    control_plane.replace_cert(&new_cert);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A fresh client each time: no pooled connection from before the swap.
        if ControlPlane::client_trusting(&new_ca.pem.cert_pem)
            .get(control_plane.url("/healthz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 20s:\n{}",
            control_plane.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `skein.dev/proxy-image` picks the image `skein-init` runs as root with NET_ADMIN: only the
/// mesh's own image (or one the MeshConfig's `proxy.allowedImages` lists) is accepted, and both
/// injected containers run under the runtime's default seccomp filter.
#[tokio::test]
async fn only_allowed_proxy_images_and_both_containers_under_runtime_default_seccomp() {
    let (ctx, _control_plane) = meshed_namespace().await;

    let hostile = with_annotation(
        app_pod("hostile"),
        "skein.dev/proxy-image",
        "evil.example/root:latest",
    );
    match create(&ctx, &ctx.namespace, &hostile).await {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains(
                "annotation skein.dev/proxy-image: \"evil.example/root:latest\" is not an allowed proxy image"
            ) && status.message.contains("proxy.allowedImages"),
            "the denial does not say which image is refused and how to allow one: {}",
            status.message
        ),
        other => panic!("a pod asking for a foreign proxy image was not refused: {other:?}"),
    }

    // The mesh's own image may be named explicitly.
    let own = format!("{}:{}", names::DEFAULT_IMAGE, names::SKEIN_VERSION);
    let pinned = with_annotation(app_pod("pinned"), "skein.dev/proxy-image", &own);
    let pod = create(&ctx, &ctx.namespace, &pinned)
        .await
        .expect("a pod naming the mesh's own image is admitted");
    assert_injected(&pod);
    for container in &pod.spec.as_ref().unwrap().init_containers.clone().unwrap()[..2] {
        assert_eq!(container.image.as_deref(), Some(own.as_str()));
        let profile = container
            .security_context
            .as_ref()
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .map(|profile| profile.type_.as_str());
        assert_eq!(
            profile,
            Some("RuntimeDefault"),
            "{} has no RuntimeDefault seccomp profile",
            container.name
        );
    }
}
