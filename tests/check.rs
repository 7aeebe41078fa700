//! `skein check` as a user runs it, against a real apiserver (`skein-test-check`) with the mesh
//! installed the cheapest real way: the real `skein operator` and MeshConfig External mode with
//! real `skein control-plane` processes on this machine (as `skein dev up` runs them, without
//! its node and demo). Two control planes: one serves the webhook URL the MeshConfig names, the
//! other the configuration stream and the debug server, so the webhook and the control plane
//! can be stopped separately.
//!
//! First `--pre` on a cluster without the mesh, then a healthy install where every check passes;
//! then each fault is planted and exactly its check fails, and the report recovers once it is
//! undone. The cluster-wide MeshConfig `default` makes this one test, run on a cluster of its own.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skein::api::{MeshConfig, crds, names};
use support::control_plane::free_ports;

const CLUSTER: &str = "skein-test-check";
const WAIT: Duration = Duration::from_secs(90);
/// The namespace labelled for injection that the healthy install has (injection is tried there).
const MESHED: &str = "check-meshed";
/// The namespace labelled only after its pod was created.
const LATE: &str = "check-late";

/// A process killed on drop; its log printed if the test failed.
struct Process {
    name: &'static str,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Process {
    fn start(name: &'static str, args: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args(args)
            .env("KUBECONFIG", support::kubeconfig())
            .env("SKEIN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        Self { name, child, log }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- last lines of {}:", self.name);
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Ports of the two control planes: A serves the webhook, B the stream and the debug server.
struct Ports {
    webhook: u16,
    xds: u16,
    debug: u16,
    spare: [u16; 3],
}

impl Ports {
    fn pick() -> Self {
        let [webhook, xds, debug, a, b, c] = free_ports();
        Self {
            webhook,
            xds,
            debug,
            spare: [a, b, c],
        }
    }

    fn debug_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.debug)
    }

    fn webhook_plane(&self) -> Process {
        let [xds, debug, _] = self.spare;
        control_plane("control plane A (webhook)", self.webhook, xds, debug)
    }

    fn stream_plane(&self) -> Process {
        let [_, _, webhook] = self.spare;
        control_plane("control plane B (stream)", webhook, self.xds, self.debug)
    }
}

fn control_plane(name: &'static str, webhook: u16, xds: u16, debug: u16) -> Process {
    let addr = |port: u16| format!("127.0.0.1:{port}");
    Process::start(
        name,
        &[
            "control-plane",
            "--tls-secret",
            "skein-system/skein-webhook-tls",
            "--webhook-addr",
            &addr(webhook),
            "--xds-addr",
            &addr(xds),
            "--debug-addr",
            &addr(debug),
        ],
    )
}

fn operator() -> Process {
    // A fixed identity: a rerun resumes the Lease a killed run left instead of waiting it out.
    Process::start(
        "skein operator",
        &[
            "operator",
            "--identity",
            "check-operator",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )
}

/// One `skein check` run: its exit code and stdout.
fn skein_check(args: &[&str]) -> (i32, String) {
    let kubeconfig = support::kubeconfig().to_str().unwrap().to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["check", "--kubeconfig", &kubeconfig])
        .args(args)
        .env_remove("SKEIN_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running skein check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "skein check wrote to stderr: {stderr}"
    );
    (
        out.status.code().expect("skein check exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A `-o json` report: its exit code and each check's status by ID.
struct Report {
    code: i32,
    json: Value,
}

impl Report {
    fn statuses(&self) -> BTreeMap<String, String> {
        self.json["checks"]
            .as_array()
            .expect("a list of checks")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn check(&self, id: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id} in {:#}", self.json))
    }

    /// IDs of the checks with `status`.
    fn with(&self, status: &str) -> Vec<String> {
        self.statuses()
            .into_iter()
            .filter(|(_, s)| s == status)
            .map(|(id, _)| id)
            .collect()
    }
}

fn report(args: &[&str]) -> Report {
    let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
    let (code, stdout) = skein_check(&args);
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("skein check -o json printed no JSON ({err}):\n{stdout}"));
    assert_eq!(
        json["success"].as_bool(),
        Some(code == 0),
        "success and the exit code disagree: {json:#}"
    );
    Report { code, json }
}

/// Runs the check until every check passes; the last report otherwise.
async fn healthy(args: &[&str], what: &str) -> Report {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = report(args);
        if report.code == 0 && report.with("warning").is_empty() {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not healthy after {WAIT:?}: {:#}",
            report.json
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the check until `id` fails; asserts that only checks in `may_also_fail` fail beside it.
async fn fails(args: &[&str], id: &str, may_also_fail: &[&str]) -> Report {
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let report = report(args);
        if report.with("fail").iter().any(|f| f == id) {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never failed: {:#}",
            report.json
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(report.code, 1, "a failed check exits 1: {:#}", report.json);
    for failed in report.with("fail") {
        assert!(
            failed == id || may_also_fail.contains(&failed.as_str()),
            "{failed} failed beside {id}: {:#}",
            report.json
        );
    }
    let failed = report.check(id);
    assert!(
        !failed["message"].as_str().unwrap_or_default().is_empty()
            && !failed["hint"].as_str().unwrap_or_default().is_empty(),
        "a failure names its cause and its fix: {failed:#}"
    );
    report
}

async fn create_namespace(client: &Client, name: &str, labels: Value) {
    let api = Api::<Namespace>::all(client.clone());
    // A rerun after a failure finds it: start from a clean one.
    if api.get_opt(name).await.unwrap().is_some() {
        let _ = api.delete(name, &DeleteParams::default()).await;
        support::eventually(&format!("namespace {name} to be gone"), WAIT, || async {
            api.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    api.create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

async fn delete_meshconfig(client: &Client) {
    let api = Api::<MeshConfig>::all(client.clone());
    let _ = api
        .delete(names::ACTIVE_MESHCONFIG, &DeleteParams::default())
        .await;
    support::eventually(
        "the MeshConfig (and the install) to be gone",
        WAIT,
        || async {
            api.get_opt(names::ACTIVE_MESHCONFIG)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// A self-signed CA certificate that expired in 2021.
fn expired_ca() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "expired-test-ca");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn set_secret_data(client: &Client, name: &str, data: BTreeMap<String, ByteString>) {
    let secrets = Api::<Secret>::namespaced(client.clone(), names::MESH_NAMESPACE);
    let mut secret = secrets.get(name).await.unwrap();
    secret.data = Some(data);
    secrets
        .replace(name, &PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A workload certificate for the pod `token` is bound to, from the control plane at `xds`.
async fn certify(xds: &str, token: &str) {
    use skein::xds::identity::CertifyRequest;
    use skein::xds::identity::identity_client::IdentityClient;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut client = IdentityClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(CertifyRequest { csr_pem });
    skein::proxy::identity::authorize(&mut request, token).unwrap();
    client
        .certify(request)
        .await
        .expect("a workload certificate");
}

#[tokio::test]
async fn check_passes_on_a_healthy_mesh_and_names_each_planted_fault() {
    support::use_cluster(CLUSTER);
    let client = support::client().await;
    let kubeconfig: &Path = support::kubeconfig();
    let namespaces = Api::<Namespace>::all(client.clone());
    // The operator's Lease lives in skein-system, which must exist before it starts.
    if namespaces
        .get_opt(names::MESH_NAMESPACE)
        .await
        .unwrap()
        .is_none()
    {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": names::MESH_NAMESPACE}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    let mut operator = operator();
    // A failed earlier run may have left an install: uninstall it first.
    delete_meshconfig(&client).await;
    let _ = namespaces.delete(LATE, &DeleteParams::default()).await;

    // Before the install: the cluster can take it.
    let pre = report(&["--pre"]);
    assert_eq!(pre.code, 0, "{:#}", pre.json);
    assert_eq!(
        pre.statuses(),
        [
            ("install-permissions", "ok"),
            ("kubernetes-api", "ok"),
            ("kubernetes-version", "ok"),
            ("no-previous-install", "ok"),
        ]
        .map(|(id, s)| (id.to_owned(), s.to_owned()))
        .into()
    );

    // A user with no rights is told what it may not create (the admin impersonating them).
    let dir = tempfile::tempdir().unwrap();
    let nobody = dir.path().join("kubeconfig");
    let admin = std::fs::read_to_string(kubeconfig).unwrap();
    std::fs::write(
        &nobody,
        support::control_plane::impersonating(&admin, "skein-check-nobody"),
    )
    .unwrap();
    let (code, stdout) = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["check", "--pre", "-o", "json", "--kubeconfig"])
        .arg(&nobody)
        .env_remove("SKEIN_LOG")
        .output()
        .map(|out| (out.status.code(), out.stdout))
        .unwrap();
    let refused = Report {
        code: code.unwrap(),
        json: serde_json::from_slice(&stdout).unwrap(),
    };
    assert_eq!(refused.code, 1);
    let permissions = refused.check("install-permissions");
    assert_eq!(permissions["status"], "fail", "{:#}", refused.json);
    let message = permissions["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "you may not create customresourcedefinitions.apiextensions.k8s.io, namespaces,"
        ) && message.contains("deployments.apps in skein-system"),
        "{message}"
    );
    assert_eq!(refused.check("kubernetes-api")["status"], "ok");

    // The install: External mode, two control planes on this machine.
    let ports = Ports::pick();
    let webhook_url = format!("https://127.0.0.1:{}/inject", ports.webhook);
    let xds = format!("127.0.0.1:{}", ports.xds);
    let body = json!({"apiVersion": "skein.dev/v1alpha1", "kind": "MeshConfig",
        "metadata": {"name": names::ACTIVE_MESHCONFIG},
        "spec": {"controlPlane": {"mode": "External", "external": {"webhookUrl": webhook_url, "xdsAddress": xds}}}});
    Api::<MeshConfig>::all(client.clone())
        .patch(
            names::ACTIVE_MESHCONFIG,
            &PatchParams::apply("skein-check-test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), names::MESH_NAMESPACE);
    support::eventually("the webhook certificate Secret", WAIT, || async {
        secrets.get_opt("skein-webhook-tls").await.ok()?
    })
    .await;
    let mut plane_a = ports.webhook_plane();
    let mut plane_b = ports.stream_plane();
    create_namespace(&client, MESHED, json!({"injection": "enabled"})).await;

    // With the mesh installed, --pre names what is in the way.
    let pre = report(&["--pre"]);
    assert_eq!(pre.code, 1);
    assert_eq!(pre.with("fail"), ["no-previous-install"], "{:#}", pre.json);

    let url = ports.debug_url();
    let args = ["--url", url.as_str()];
    let all_ok = healthy(&args, "the fresh install").await;
    let ids: Vec<String> = all_ok.statuses().into_keys().collect();
    assert_eq!(
        ids,
        [
            "ca-certificate",
            "control-plane",
            "control-plane-stream",
            "crds",
            "injection",
            "kubernetes-api",
            "kubernetes-version",
            "meshconfig",
            "operator",
            "pods-injected",
            "proxies-synced",
            "proxy-certificates",
            "tap-api",
            "webhook-config",
            "webhook-reachable",
        ],
        "{:#}",
        all_ok.json
    );
    assert_eq!(all_ok.with("ok").len(), ids.len());

    // The table people read: grouped, one ✔ line per check, and the verdict.
    let (code, table) = skein_check(&args);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.starts_with(
            "kubernetes-api\n--------------\n✔ can reach the Kubernetes API [kubernetes-api]\n"
        ),
        "{table}"
    );
    assert!(
        table.contains("\nskein-webhook\n-------------\n"),
        "{table}"
    );
    assert!(
        table.contains("✔ a pod created in a labelled namespace gets the proxy [injection]\n"),
        "{table}"
    );
    assert!(table.ends_with("\nStatus check results are ✔\n"), "{table}");
    assert!(!table.contains('✖'), "{table}");

    // Fault: a pod created before its namespace was labelled.
    create_namespace(&client, LATE, json!({})).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "early"},
        "spec": {"containers": [{"name": "app", "image": "example.com/web:1"}]}
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), LATE);
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    // Timestamps have whole seconds: label in a later second than the pod's creation.
    let created_at = created.creation_timestamp().unwrap().0;
    support::eventually("the next second", WAIT, || async {
        (k8s_openapi::jiff::Timestamp::now().as_second() > created_at.as_second()).then_some(())
    })
    .await;
    namespaces
        .patch(
            LATE,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"injection": "enabled"}}})),
        )
        .await
        .unwrap();
    let late = fails(&args, "pods-injected", &[]).await;
    let check = late.check("pods-injected");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains("check-late/early: created before the namespace was labelled"),
        "{check:#}"
    );
    assert!(
        check["hint"]
            .as_str()
            .unwrap()
            .contains("kubectl -n check-late"),
        "{check:#}"
    );
    // The table shows the cause and the fix under the ✖ line.
    let (code, table) = skein_check(&args);
    assert_eq!(code, 1);
    assert!(
        table.contains("✖ every pod of a meshed namespace has the proxy [pods-injected]\n    1 pod(s) without the proxy: check-late/early: created before the namespace was labelled\n    fix: restart them: "),
        "{table}"
    );
    assert!(
        table.ends_with("\nStatus check results are ✖ (1 failed)\n"),
        "{table}"
    );
    // `-n` narrows the data-plane checks to one namespace.
    assert_eq!(report(&["--url", &url, "-n", MESHED]).code, 0);
    namespaces
        .delete(LATE, &DeleteParams::default())
        .await
        .unwrap();
    healthy(&args, "the late namespace deleted").await;

    // Fault: the webhook is down (the operator then also reports the control plane not Ready,
    // and the apiserver the tap API, served on the same port, unavailable).
    plane_a.stop();
    let down = fails(
        &args,
        "webhook-reachable",
        &["injection", "meshconfig", "tap-api"],
    )
    .await;
    assert!(
        down.check("webhook-reachable")["message"]
            .as_str()
            .unwrap()
            .contains(&webhook_url),
        "{:#}",
        down.json
    );
    let mut plane_a = ports.webhook_plane();
    healthy(&args, "the webhook restarted").await;

    // Fault: the control plane (stream and debug server) is down.
    plane_b.stop();
    let down = fails(&args, "control-plane", &["control-plane-stream"]).await;
    assert!(
        down.with("fail")
            .contains(&"control-plane-stream".to_owned()),
        "{:#}",
        down.json
    );
    assert_eq!(
        down.check("proxies-synced")["status"],
        "warning",
        "{:#}",
        down.json
    );
    let mut plane_b = ports.stream_plane();
    healthy(&args, "the control plane restarted").await;

    // Fault: the mesh CA has expired (the operator then reports the MeshConfig not Ready too).
    let original = secrets.get("skein-ca").await.unwrap().data.unwrap();
    let (cert, key) = expired_ca();
    set_secret_data(
        &client,
        "skein-ca",
        [
            ("tls.crt".to_owned(), ByteString(cert.into_bytes())),
            ("tls.key".to_owned(), ByteString(key.into_bytes())),
        ]
        .into(),
    )
    .await;
    // The tap API's caBundle is the CA: the apiserver may stop trusting it too.
    let expired = fails(&args, "ca-certificate", &["meshconfig", "tap-api"]).await;
    let message = expired.check("ca-certificate")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("expired-test-ca") && message.contains("expired at 2021-01-01"),
        "{message}"
    );
    set_secret_data(&client, "skein-ca", original).await;
    healthy(&args, "the CA restored").await;

    // Fault: a CRD is missing.
    let crd_api = Api::<CustomResourceDefinition>::all(client.clone());
    let egress = "egressrules.skein.dev";
    crd_api
        .delete(egress, &DeleteParams::default())
        .await
        .unwrap();
    support::eventually("the CRD to be gone", WAIT, || async {
        crd_api.get_opt(egress).await.ok()?.is_none().then_some(())
    })
    .await;
    let missing = fails(&args, "crds", &[]).await;
    assert_eq!(
        missing.check("crds")["message"],
        format!("missing: {egress}"),
        "{:#}",
        missing.json
    );
    crds::install(&client).await.unwrap();
    healthy(&args, "the CRDs reinstalled").await;

    // Fault: a stale proxy. A real stream client that takes the first push and never
    // acknowledges it, with a real certificate for its pod (so only the sync check can fail).
    let token = support::identity::pod_token(&client, MESHED, "stale").await;
    certify(&xds, &token).await;
    let stale = support::identity::open_stream(&xds, Some(&token), MESHED, "stale")
        .await
        .expect("the stale proxy's stream opens");
    let behind = fails(&args, "proxies-synced", &[]).await;
    let message = behind.check("proxies-synced")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with(
            "1 of 1 proxies not synced: check-meshed/stale acknowledged \"\" but was sent"
        ),
        "{message}"
    );
    assert_eq!(
        behind.check("proxy-certificates")["status"],
        "ok",
        "{:#}",
        behind.json
    );
    drop(stale);
    healthy(&args, "the stale proxy gone").await;
    let _ = Api::<Pod>::namespaced(client.clone(), MESHED)
        .delete("stale", &DeleteParams::default().grace_period(0))
        .await;

    // Uninstall, leaving the cluster as --pre wants it for the next run.
    delete_meshconfig(&client).await;
    plane_a.stop();
    plane_b.stop();
    operator.stop();
    let _ = kubeconfig;
}

/// Without an apiserver, that is the one check reported, with its cause, and the run fails.
#[test]
fn an_unreachable_apiserver_is_the_one_failure() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // A port nothing listens on: bound and closed at once.
    let port = support::control_plane::free_port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: gone\n\
             clusters: [{{name: gone, cluster: {{server: \"https://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: gone, context: {{cluster: gone, user: u}}}}]\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args([
            "check",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "-o",
            "json",
        ])
        .env_remove("SKEIN_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running skein check");
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{json:#}");
    assert_eq!(checks[0]["id"], "kubernetes-api");
    assert_eq!(checks[0]["status"], "fail");
    let message = checks[0]["message"].as_str().unwrap();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(checks[0]["hint"].as_str().unwrap().contains("--kubeconfig"));
}
