//! MeshConfig against a real kube-apiserver: the CRD installs, defaults are applied by the
//! server, status is writable, and invalid objects are refused with messages naming the field.

mod support;

use std::io::Write;
use std::process::Stdio;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use skein::api::meshconfig::{ComponentStatus, MeshConfigSpec, TrustStatus, TrustedRootStatus};
use skein::api::{MeshConfig, MeshConfigStatus, crds, names};
use support::TestContext;

/// A MeshConfig as a user would write it: raw JSON, so nothing is defaulted on our side.
fn meshconfig_json(ctx: &TestContext, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "skein.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": name, "labels": ctx.owner_labels()},
        "spec": spec,
    })
}

fn raw_api(ctx: &TestContext) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<MeshConfig>(&());
    Api::all_with(ctx.client.clone(), &resource)
}

async fn create_raw(
    ctx: &TestContext,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(meshconfig_json(ctx, name, spec)).unwrap();
    raw_api(ctx).create(&PostParams::default(), &object).await
}

/// JSON does not distinguish `1` from `1.0`; the apiserver writes the former.
fn numbers_as_f64(value: Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_f64(v)))
                .collect(),
        ),
        other => other,
    }
}

#[tokio::test]
async fn every_crd_is_established_and_discoverable() {
    let ctx = TestContext::new().await;
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    for crd in crds::all() {
        let live = api.get(&crd.name_any()).await.unwrap();
        let established = live
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{} is not Established", crd.name_any());
    }

    // What a user sees: `kubectl get mc` resolves the short name to MeshConfig.
    let output = support::kubectl()
        .args(["api-resources", "--api-group", names::GROUP])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl api-resources failed: {output:?}"
    );
    let row = listing
        .lines()
        .find(|l| l.starts_with("meshconfigs"))
        .unwrap_or_else(|| panic!("{listing}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1], "mc", "short name in {row:?}");
    assert!(
        row.contains("false") && row.ends_with("MeshConfig"),
        "cluster-scoped MeshConfig in {row:?}"
    );
}

#[tokio::test]
async fn an_empty_spec_is_stored_with_every_documented_default() {
    let ctx = TestContext::new().await;
    let name = ctx.unique_name("defaults");
    let created = create_raw(&ctx, &name, json!({})).await.unwrap();

    // The apiserver, not our client, filled these in: compare the raw stored spec with the
    // defaults the Rust types document.
    let stored_spec = numbers_as_f64(created.data["spec"].clone());
    let expected = numbers_as_f64(serde_json::to_value(MeshConfigSpec::default()).unwrap());
    assert_eq!(
        stored_spec, expected,
        "server-side defaults differ from MeshConfigSpec::default()"
    );

    let typed = Api::<MeshConfig>::all(ctx.client.clone())
        .get(&name)
        .await
        .unwrap();
    assert_eq!(typed.spec, MeshConfigSpec::default());
    assert_eq!(typed.spec.effective_version(), names::SKEIN_VERSION);

    // No spec at all is the same as an empty one.
    let mut bare = meshconfig_json(&ctx, &ctx.unique_name("bare"), json!({}));
    bare.as_object_mut().unwrap().remove("spec");
    let bare: DynamicObject = serde_json::from_value(bare).unwrap();
    let stored = raw_api(&ctx)
        .create(&PostParams::default(), &bare)
        .await
        .unwrap();
    assert_eq!(numbers_as_f64(stored.data["spec"].clone()), expected);
}

#[tokio::test]
async fn a_full_spec_and_its_status_round_trip() {
    let ctx = TestContext::new().await;
    let name = ctx.unique_name("full");
    let spec = json!({
        "version": "9.9.9",
        "image": "registry.example/skein",
        "injection": {
            "namespaceLabel": {"key": "mesh", "value": "on"},
            "excludedNamespaces": ["kube-system"],
            "failurePolicy": "Ignore",
            "timeoutSeconds": 10
        },
        "proxy": {
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            "logLevel": "debug",
            "uid": 1500,
            "ports": {"inbound": 7006, "outbound": 7001, "admin": 7000},
            "holdApplicationUntilProxyStarts": false,
            "nativeSidecar": "Disabled",
            "drainWindow": "20s"
        },
        "traffic": {
            "outboundTrafficPolicy": "AllowAny",
            "retry": {"attempts": 3, "perTryTimeout": "250ms", "retryOn": ["5xx", "reset"]},
            "timeout": "15s"
        },
        "mtls": {"mode": "Strict", "trustDomain": "prod.example", "workloadCertLifetime": "1h"},
        "tracing": {"zipkinEndpoint": "http://zipkin.tracing:9411/api/v2/spans", "otlpEndpoint": "http://jaeger.tracing:4318/v1/traces", "samplingPercentage": 12.5},
        "controlPlane": {
            "mode": "External",
            "external": {"webhookUrl": "https://127.0.0.1:9443/inject", "xdsAddress": "127.0.0.1:9090"},
            "replicas": 2
        },
        "federation": {"clusters": [
            {"name": "east", "kubeconfigSecretRef": {"namespace": "skein-system", "name": "east"}, "network": "net-east"},
            {"name": "west", "kubeconfigSecretRef": {"namespace": "skein-system", "name": "west", "key": "config"}}
        ]}
    });
    create_raw(&ctx, &name, spec.clone()).await.unwrap();

    let api = Api::<MeshConfig>::all(ctx.client.clone());
    let stored = api.get(&name).await.unwrap();
    let mut expected: MeshConfigSpec = serde_json::from_value(spec).unwrap();
    // The only field the user left out here has a schema default.
    expected.federation.clusters[0].kubeconfig_secret_ref.key = "kubeconfig".to_owned();
    assert_eq!(stored.spec, expected);
    assert_eq!(stored.spec.effective_version(), "9.9.9");

    // The status subresource accepts the shape the operator will write.
    let status = MeshConfigStatus {
        observed_generation: stored.meta().generation,
        version: Some("9.9.9".to_owned()),
        conditions: vec![Condition {
            type_: "Ready".to_owned(),
            status: "False".to_owned(),
            reason: "NotActive".to_owned(),
            message: format!(
                "only the MeshConfig named {} is active",
                names::ACTIVE_MESHCONFIG
            ),
            // The apiserver stores whole seconds.
            last_transition_time: Time(
                Timestamp::from_second(Timestamp::now().as_second()).unwrap(),
            ),
            observed_generation: stored.meta().generation,
        }],
        components: vec![ComponentStatus {
            name: "control-plane".to_owned(),
            ready: false,
            version: Some("9.9.9".to_owned()),
            message: Some("waiting".to_owned()),
        }],
        federation: vec![],
        trust: Some(TrustStatus {
            signing: "CN=next".to_owned(),
            roots: vec![TrustedRootStatus {
                subject: "CN=old".to_owned(),
                sha256: "ab".repeat(32),
                not_after: Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap()),
                source: "Retained".to_owned(),
                retained_until: Some(Time(
                    Timestamp::from_second(Timestamp::now().as_second()).unwrap(),
                )),
            }],
        }),
    };
    let patch = json!({"apiVersion": "skein.dev/v1alpha1", "kind": "MeshConfig", "status": status});
    api.patch_status(
        &name,
        &PatchParams::apply("skein-test").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let with_status = api.get_status(&name).await.unwrap();
    assert_eq!(with_status.status, Some(status));
    assert_eq!(
        with_status.spec, expected,
        "writing status must not touch spec"
    );
}

/// Each case: a spec, and the pieces the apiserver's error must contain (the field path first).
fn invalid_cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        (
            "unknown failure policy",
            json!({"injection": {"failurePolicy": "Sometimes"}}),
            vec![
                "spec.injection.failurePolicy",
                "Unsupported value",
                "\"Fail\"",
            ],
        ),
        (
            "drain window above 300s",
            json!({"proxy": {"drainWindow": "10m"}}),
            vec!["spec.proxy.drainWindow", "must be at most 300s"],
        ),
        (
            "sampling above 100",
            json!({"tracing": {"samplingPercentage": 500}}),
            vec![
                "spec.tracing.samplingPercentage",
                "less than or equal to 100",
            ],
        ),
        (
            "External mode without addresses",
            json!({"controlPlane": {"mode": "External"}}),
            vec![
                "spec.controlPlane.external",
                "required when mode is External",
            ],
        ),
        (
            "External mode without xdsAddress",
            json!({"controlPlane": {"mode": "External", "external": {"webhookUrl": "https://127.0.0.1:9443/inject"}}}),
            vec!["spec.controlPlane.external.xdsAddress", "Required value"],
        ),
        (
            "https tracing endpoint (proxies export over plain HTTP)",
            json!({"tracing": {"otlpEndpoint": "https://collector:4318/v1/traces"}}),
            vec!["spec.tracing.otlpEndpoint", "must be an http:// URL"],
        ),
        (
            "tracing endpoint that is no URL",
            json!({"tracing": {"zipkinEndpoint": "zipkin:9411"}}),
            vec!["spec.tracing.zipkinEndpoint", "must be an http:// URL"],
        ),
        (
            "plain-http webhook URL",
            json!({"controlPlane": {"mode": "External", "external": {"webhookUrl": "http://127.0.0.1/inject", "xdsAddress": "127.0.0.1:9090"}}}),
            vec![
                "spec.controlPlane.external.webhookUrl",
                "must be an https URL",
            ],
        ),
        (
            "duplicate cluster names",
            json!({"federation": {"clusters": [
                {"name": "east", "kubeconfigSecretRef": {"namespace": "a", "name": "b"}},
                {"name": "east", "kubeconfigSecretRef": {"namespace": "a", "name": "c"}}
            ]}}),
            vec!["spec.federation.clusters[1]", "Duplicate value"],
        ),
        (
            "port 0",
            json!({"proxy": {"ports": {"inbound": 0}}}),
            vec!["spec.proxy.ports.inbound", "greater than or equal to 1"],
        ),
        (
            "port above 65535",
            json!({"proxy": {"ports": {"admin": 70000}}}),
            vec!["spec.proxy.ports.admin", "less than or equal to 65535"],
        ),
        (
            "inbound and outbound on one port",
            json!({"proxy": {"ports": {"inbound": 8000, "outbound": 8000}}}),
            vec!["spec.proxy.ports", "must all differ"],
        ),
        (
            "garbage duration",
            json!({"mtls": {"workloadCertLifetime": "soon"}}),
            vec!["spec.mtls.workloadCertLifetime"],
        ),
        (
            "garbage quantity",
            json!({"proxy": {"resources": {"requests": {"cpu": "lots"}}}}),
            vec!["spec.proxy.resources.requests.cpu", "must be a quantity"],
        ),
        (
            "webhook timeout above 30s",
            json!({"injection": {"timeoutSeconds": 31}}),
            vec!["spec.injection.timeoutSeconds", "less than or equal to 30"],
        ),
        (
            "cluster name that is not a DNS label",
            json!({"federation": {"clusters": [{"name": "East_1", "kubeconfigSecretRef": {"namespace": "a", "name": "b"}}]}}),
            vec!["spec.federation.clusters[0].name"],
        ),
    ]
}

#[tokio::test]
async fn invalid_meshconfigs_are_rejected_with_the_field_named() {
    let ctx = TestContext::new().await;
    for (index, (case, spec, expected)) in invalid_cases().into_iter().enumerate() {
        let name = ctx.unique_name(&format!("invalid-{index}"));
        match create_raw(&ctx, &name, spec).await {
            Ok(_) => panic!("{case}: the apiserver accepted an invalid MeshConfig"),
            Err(kube::Error::Api(status)) => {
                assert!(
                    status.is_invalid(),
                    "{case}: expected 422 Invalid, got {status:?}"
                );
                for piece in expected {
                    let message = &status.message;
                    assert!(
                        message.contains(piece),
                        "{case}: {piece:?} missing from the error: {message}"
                    );
                }
            }
            Err(other) => panic!("{case}: unexpected error {other}"),
        }
    }
}

/// The user's path: `kubectl apply -f crds/`, the sample MeshConfig, and an invalid one.
#[tokio::test]
async fn kubectl_applies_the_committed_crds_and_the_sample_and_explains_a_bad_one() {
    let _ctx = TestContext::new().await;
    let apply = |args: &[&str]| {
        let output = support::kubectl()
            .args(args)
            .current_dir(support::source_dir())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, out) = apply(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        names::FIELD_MANAGER,
        "-f",
        "crds/",
    ]);
    assert!(ok, "kubectl apply -f crds/ failed: {out}");
    // Server-side dry run: full validation and defaulting, without touching the real `default`.
    let (ok, out) = apply(&[
        "apply",
        "--dry-run=server",
        "-f",
        "config/samples/meshconfig.yaml",
    ]);
    assert!(ok, "the sample MeshConfig was refused: {out}");
    assert!(out.contains("meshconfig.skein.dev/default"), "{out}");

    let mut child = support::kubectl()
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: skein.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec:\n  tracing: {samplingPercentage: 500}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "kubectl accepted samplingPercentage: 500"
    );
    assert!(
        stderr.contains("spec.tracing.samplingPercentage") && stderr.contains("100"),
        "kubectl's error does not name the field: {stderr}"
    );
}
