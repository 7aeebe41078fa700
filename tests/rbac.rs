//! The permissions of the operator and of the control plane it installs, against a real
//! apiserver, on a cluster of their own (`skein-test-rbac`): the operator's RBAC is applied from
//! config/operator-rbac.yaml exactly as a user applies it.
//!
//! - What the operator may do is compared, rule by rule, with an explicit list (`kubectl auth
//!   can-i --list` in skein-system and in another namespace, the latter being its cluster-wide
//!   permissions): any widening fails here.
//! - The real `skein operator`, with a token of its ServiceAccount and nothing more, installs a
//!   mesh and uninstalls it.
//! - The control plane's ServiceAccount reads the Secrets it needs and no other.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{Value, json};
use skein::api::{MeshConfig, names};
use skein::operator::desired;

const CLUSTER: &str = "skein-test-rbac";
const MESH_NAMESPACE: &str = names::MESH_NAMESPACE;
const OPERATOR: &str = "system:serviceaccount:skein-system:skein-operator";
const CONTROL_PLANE: &str = "system:serviceaccount:skein-system:skein-control-plane";
const WAIT: Duration = Duration::from_secs(90);

/// The tests share skein-system and the cluster-scoped objects of the mesh.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster, with the CRDs, the mesh namespace and the operator's RBAC as config/ has them.
async fn cluster() -> Client {
    support::use_cluster(CLUSTER);
    let client = support::client().await;
    let mut apply = support::kubectl();
    apply
        .args(["apply", "--server-side", "--force-conflicts"])
        .args([
            "-f",
            "config/namespace.yaml",
            "-f",
            "config/operator-rbac.yaml",
        ])
        .current_dir(support::source_dir());
    run(apply);
    client
}

fn run(mut command: Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("running a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kubectl auth can-i --list` as `user` in `namespace`, one normalized line per rule
/// (`RESOURCES NON-RESOURCE-URLS RESOURCE-NAMES VERBS`, whitespace collapsed), header left out.
fn can_i_list(user: &str, namespace: &str) -> Vec<String> {
    let mut command = support::kubectl();
    command.args(["auth", "can-i", "--list", "-n", namespace, "--as", user]);
    let mut lines: Vec<String> = run(command)
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect();
    lines.sort();
    lines
}

/// `kubectl auth can-i VERB RESOURCE` as `user` in `namespace`.
fn can(user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let output = support::kubectl()
        .args([
            "auth", "can-i", verb, resource, "-n", namespace, "--as", user,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl auth can-i");
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

/// What every authenticated identity may do (Kubernetes' own discovery, self-review and
/// ClusterTrustBundle roles), as `kubectl auth can-i --list` prints it.
const EVERYONE: &[&str] = &[
    "selfsubjectreviews.authentication.k8s.io [] [] [create]",
    "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
    "selfsubjectrulesreviews.authorization.k8s.io [] [] [create]",
    "clustertrustbundles.certificates.k8s.io [] [] [get list watch]",
    "[/.well-known/openid-configuration/] [] [get]",
    "[/.well-known/openid-configuration] [] [get]",
    "[/api/*] [] [get]",
    "[/api] [] [get]",
    "[/apis/*] [] [get]",
    "[/apis] [] [get]",
    "[/healthz] [] [get]",
    "[/healthz] [] [get]",
    "[/livez] [] [get]",
    "[/livez] [] [get]",
    "[/openapi/*] [] [get]",
    "[/openapi] [] [get]",
    "[/openid/v1/jwks/] [] [get]",
    "[/openid/v1/jwks] [] [get]",
    "[/readyz] [] [get]",
    "[/readyz] [] [get]",
    "[/version/] [] [get]",
    "[/version/] [] [get]",
    "[/version] [] [get]",
    "[/version] [] [get]",
];

/// The operator's permissions in every namespace, i.e. its cluster-wide ones: reads of what the
/// control plane reads (it may only grant what it holds), writes of its own cluster-scoped
/// objects by name.
const OPERATOR_EVERYWHERE: &[&str] = &[
    "events [] [] [create patch]",
    "events.events.k8s.io [] [] [create patch]",
    "tokenreviews.authentication.k8s.io [] [] [create]",
    "namespaces [] [] [get list watch]",
    "pods [] [] [get list watch]",
    "endpointslices.discovery.k8s.io [] [] [get list watch]",
    "meshconfigs.skein.dev [] [] [get list watch patch]",
    "meshconfigs.skein.dev/status [] [] [get patch]",
    "meshconfigs.skein.dev/finalizers [] [] [update]",
    "accesspolicies.skein.dev [] [] [get list watch]",
    "egressrules.skein.dev [] [] [get list watch]",
    "mtlspolicies.skein.dev [] [] [get list watch]",
    "routerules.skein.dev [] [] [get list watch]",
    "trafficpolicies.skein.dev [] [] [get list watch]",
    "accesspolicies.skein.dev/status [] [] [get patch update]",
    "egressrules.skein.dev/status [] [] [get patch update]",
    "mtlspolicies.skein.dev/status [] [] [get patch update]",
    "routerules.skein.dev/status [] [] [get patch update]",
    "trafficpolicies.skein.dev/status [] [] [get patch update]",
    "namespaces [] [skein-system] [create patch]",
    "clusterrolebindings.rbac.authorization.k8s.io [] [skein-control-plane] [get list watch create patch delete]",
    "clusterroles.rbac.authorization.k8s.io [] [skein-control-plane] [get list watch create patch delete]",
    "clusterroles.rbac.authorization.k8s.io [] [skein-tap] [get list watch create patch delete]",
    "clusterroles.rbac.authorization.k8s.io [] [skein-dashboard] [get list watch create patch delete]",
    "apiservices.apiregistration.k8s.io [] [v1alpha1.tap.skein.dev] [get list watch create patch delete]",
    "subjectaccessreviews.authorization.k8s.io [] [] [create]",
    "deployments.tap.skein.dev/tap [] [] [watch]",
    "pods.tap.skein.dev/tap [] [] [watch]",
    "tap.tap.skein.dev [] [] [watch]",
    "dashboard.tap.skein.dev [] [] [get list]",
    "mutatingwebhookconfigurations.admissionregistration.k8s.io [] [skein-sidecar-injector] [get list watch create patch delete]",
    "validatingwebhookconfigurations.admissionregistration.k8s.io [] [skein-rule-validator] [get list watch create patch delete]",
];

/// Services outside skein-system: only read.
const OPERATOR_SERVICES_ELSEWHERE: &[&str] = &["services [] [] [get list watch]"];

/// In kube-system on top, by name: binding the control plane to the Role that reads the
/// apiserver's front-proxy settings (the tap API's authentication), and holding that read.
const OPERATOR_IN_KUBE_SYSTEM: &[&str] = &[
    "configmaps [] [extension-apiserver-authentication] [get list watch]",
    "rolebindings.rbac.authorization.k8s.io [] [skein-control-plane-front-proxy] [get list watch create patch delete]",
];

/// In skein-system on top (kubectl merges the verbs of one resource): the control plane's
/// namespaced objects, the mesh's Secrets, its Lease.
const OPERATOR_IN_MESH_NAMESPACE: &[&str] = &[
    "secrets [] [] [get list watch create]",
    "secrets [] [skein-identity-issuer] [patch delete]",
    "secrets [] [skein-webhook-tls] [patch delete]",
    "configmaps [] [] [get list watch create patch delete update]",
    "serviceaccounts [] [] [get list watch create patch delete]",
    "services [] [] [get list watch create patch delete]",
    "deployments.apps [] [] [get list watch create patch delete]",
    "poddisruptionbudgets.policy [] [] [get list watch create patch delete]",
    "rolebindings.rbac.authorization.k8s.io [] [] [get list watch create patch delete]",
    "roles.rbac.authorization.k8s.io [] [] [get list watch create patch delete]",
    "leases.coordination.k8s.io [] [] [create]",
    "leases.coordination.k8s.io [] [skein-operator] [get update]",
];

fn sorted(groups: &[&[&str]]) -> Vec<String> {
    let mut lines: Vec<String> = groups
        .iter()
        .flat_map(|group| group.iter().map(|line| (*line).to_owned()))
        .collect();
    lines.sort();
    lines
}

/// Lines of `got` missing from `want` and the other way round, for a readable failure.
fn difference(got: &[String], want: &[String]) -> String {
    let extra: Vec<&String> = got.iter().filter(|line| !want.contains(line)).collect();
    let missing: Vec<&String> = want.iter().filter(|line| !got.contains(line)).collect();
    format!("granted but not expected: {extra:#?}\nexpected but not granted: {missing:#?}")
}

#[tokio::test]
async fn the_operator_holds_exactly_the_listed_permissions() {
    let _serial = SERIAL.lock().await;
    cluster().await;
    for (namespace, want) in [
        (
            MESH_NAMESPACE,
            sorted(&[EVERYONE, OPERATOR_EVERYWHERE, OPERATOR_IN_MESH_NAMESPACE]),
        ),
        (
            "default",
            sorted(&[EVERYONE, OPERATOR_EVERYWHERE, OPERATOR_SERVICES_ELSEWHERE]),
        ),
        (
            "kube-system",
            sorted(&[
                EVERYONE,
                OPERATOR_EVERYWHERE,
                OPERATOR_SERVICES_ELSEWHERE,
                OPERATOR_IN_KUBE_SYSTEM,
            ]),
        ),
    ] {
        let got = can_i_list(OPERATOR, namespace);
        assert!(
            got == want,
            "the operator's permissions in {namespace} changed: update this list only for a \
             reason\n{}",
            difference(&got, &want)
        );
    }
    // What the list rules out, spelled out: the operator is no cluster admin.
    for (verb, resource, namespace) in [
        ("get", "secrets", "default"),
        ("list", "secrets", "kube-system"),
        ("create", "deployments.apps", "default"),
        ("delete", "namespaces/default", "default"),
        ("delete", "namespaces/skein-system", "default"),
        ("create", "namespaces/team-a", "default"),
        ("patch", "clusterroles/admin", "default"),
        ("create", "clusterrolebindings/skein-escalate", "default"),
        (
            "create",
            "mutatingwebhookconfigurations/skein-other",
            "default",
        ),
        ("escalate", "clusterroles", "default"),
        ("bind", "clusterroles", "default"),
        ("impersonate", "serviceaccounts", "default"),
        ("create", "pods", MESH_NAMESPACE),
        ("patch", "secrets/skein-ca", MESH_NAMESPACE),
        ("delete", "secrets/skein-ca", MESH_NAMESPACE),
        ("update", "leases/kube-scheduler", "kube-system"),
    ] {
        assert!(
            !can(OPERATOR, verb, resource, namespace),
            "the operator may {verb} {resource} in {namespace}"
        );
    }
}

/// A kubeconfig for `service_account` of skein-system: the cluster's address and CA, and a
/// token of that ServiceAccount as the only credential.
fn service_account_kubeconfig(service_account: &str, dir: &std::path::Path) -> PathBuf {
    let mut token = support::kubectl();
    token.args([
        "create",
        "token",
        service_account,
        "-n",
        MESH_NAMESPACE,
        "--duration=1h",
    ]);
    let token = run(token).trim().to_owned();
    let mut view = support::kubectl();
    view.args([
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]);
    let mut kubeconfig: Value = serde_json::from_str(&run(view)).expect("kubeconfig JSON");
    let user = kubeconfig["contexts"][0]["context"]["user"].clone();
    kubeconfig["users"] = json!([{"name": user, "user": {"token": token}}]);
    let path = dir.join(format!("{service_account}.kubeconfig"));
    std::fs::write(&path, kubeconfig.to_string()).expect("writing the kubeconfig");
    path
}

/// `skein operator` with only its ServiceAccount's token; killed on drop (log printed on failure).
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(kubeconfig: &std::path::Path, dir: &std::path::Path) -> Self {
        let log = dir.join("operator.log");
        let file = std::fs::File::create(&log).expect("creating the log");
        let child = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args(["operator", "--lease-duration", "4s"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", MESH_NAMESPACE)
            .env("SKEIN_LOG", "info,skein=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("cloning the log"))
            .stderr(file)
            .spawn()
            .expect("starting skein operator");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- skein operator log:\n{}", self.log());
        }
    }
}

/// The operator's log, to add to a failure.
fn operator_log(operator: &Operator) -> String {
    format!("; operator log:\n{}", operator.log())
}

#[tokio::test]
async fn the_operator_installs_and_uninstalls_the_mesh_with_only_its_rbac() {
    let _serial = SERIAL.lock().await;
    let client = cluster().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    // A Secret of the wrong type under the issuer's name (made by hand, or left by another
    // test): a Secret's type is immutable, so the operator must replace it, by name.
    let secrets = Api::<Secret>::namespaced(client.clone(), MESH_NAMESPACE);
    let _ = secrets
        .delete(desired::ISSUER_SECRET, &Default::default())
        .await;
    let opaque = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": desired::ISSUER_SECRET, "namespace": MESH_NAMESPACE},
                        "stringData": {"placeholder": "x"}});
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(opaque).expect("a Secret"),
        )
        .await
        .expect("creating a Secret of the wrong type");
    let kubeconfig = service_account_kubeconfig("skein-operator", dir.path());
    let operator = Operator::start(&kubeconfig, dir.path());

    let meshconfigs = Api::<MeshConfig>::all(client.clone());
    let body = json!({"apiVersion": "skein.dev/v1alpha1", "kind": "MeshConfig",
                      "metadata": {"name": names::ACTIVE_MESHCONFIG}, "spec": {}});
    meshconfigs
        .patch(
            names::ACTIVE_MESHCONFIG,
            &PatchParams::apply("skein-rbac-test").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("applying the MeshConfig");
    // Installed: every object applied (cluster-scoped ones included) and the CA and webhook
    // certificate Secrets written. The control plane never gets ready here (no node runs it).
    support::eventually_or(
        "Installed=True",
        WAIT,
        || operator_log(&operator),
        || async {
            let mc = meshconfigs.get_opt(names::ACTIVE_MESHCONFIG).await.ok()??;
            let installed = mc
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Installed")?;
            (installed.status == "True").then_some(())
        },
    )
    .await;
    for name in [
        desired::CA_SECRET,
        desired::ISSUER_SECRET,
        desired::WEBHOOK_TLS_SECRET,
    ] {
        let secret = secrets.get_opt(name).await.expect("reading");
        assert_eq!(
            secret.and_then(|s| s.type_).as_deref(),
            Some("kubernetes.io/tls"),
            "{name} missing or not a TLS Secret"
        );
    }
    let install = desired::desired(
        &MeshConfig::new(names::ACTIVE_MESHCONFIG, Default::default()),
        &desired::Inputs {
            ca_cert_pem: "",
            settings_hash: "",
        },
    )
    .expect("the desired install");
    for object in &install.objects {
        let api: Api<kube::core::DynamicObject> = match &object.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &object.resource),
            None => Api::all_with(client.clone(), &object.resource),
        };
        assert!(
            api.get_opt(&object.name).await.expect("reading").is_some(),
            "{} {} was not installed; operator log:\n{}",
            object.resource.kind,
            object.name,
            operator.log()
        );
    }

    // The uninstall (its finalizer) deletes what it installed.
    meshconfigs
        .delete(names::ACTIVE_MESHCONFIG, &DeleteParams::default())
        .await
        .expect("deleting the MeshConfig");
    support::eventually_or(
        "the MeshConfig to be gone",
        WAIT,
        || operator_log(&operator),
        || async {
            meshconfigs
                .get_opt(names::ACTIVE_MESHCONFIG)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let cluster_roles = Api::<ClusterRole>::all(client.clone());
    assert!(
        cluster_roles
            .get_opt(desired::CONTROL_PLANE)
            .await
            .expect("reading")
            .is_none(),
        "the control plane's ClusterRole outlived the uninstall"
    );
    let log = operator.log();
    assert!(
        !log.contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
}

/// A client acting as `user` (impersonation by the admin).
async fn client_as(user: &str) -> Client {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(support::kubeconfig()).expect("reading the kubeconfig");
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("a client config");
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).expect("a client")
}

async fn apply_as_admin(client: &Client, object: &desired::DesiredObject) {
    let api: Api<kube::core::DynamicObject> = match &object.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &object.resource),
        None => Api::all_with(client.clone(), &object.resource),
    };
    let mut body = object.object.clone();
    // Owned by a MeshConfig that does not exist, the garbage collector would delete it.
    if let Some(metadata) = body["metadata"].as_object_mut() {
        metadata.remove("ownerReferences");
    }
    api.patch(
        &object.name,
        &PatchParams::apply("skein-rbac-test").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap_or_else(|err| panic!("applying {} {}: {err}", object.resource.kind, object.name));
}

#[tokio::test]
async fn the_control_plane_reads_only_the_secrets_it_needs() {
    let _serial = SERIAL.lock().await;
    let client = cluster().await;
    // The control plane's identity as the operator installs it.
    let install = desired::desired(
        &MeshConfig::new(names::ACTIVE_MESHCONFIG, Default::default()),
        &desired::Inputs {
            ca_cert_pem: "",
            settings_hash: "",
        },
    )
    .expect("the desired install");
    for object in install.objects.iter().filter(|o| {
        o.name == desired::CONTROL_PLANE
            && matches!(
                o.resource.kind.as_str(),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            )
    }) {
        apply_as_admin(&client, object).await;
    }
    // The mesh CA (a real one, as the operator creates it, so that an install later finds it
    // usable), which it must not read, and others it must not read: a federation kubeconfig.
    skein::operator::certs::load_or_create_ca(&client)
        .await
        .expect("the mesh CA Secret");
    let secrets = Api::<Secret>::namespaced(client.clone(), MESH_NAMESPACE);
    // The identity issuer it signs with (the operator issues it; only its name matters here).
    if secrets
        .get_opt(desired::ISSUER_SECRET)
        .await
        .expect("reading")
        .is_none()
    {
        let issuer = json!({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": desired::ISSUER_SECRET, "namespace": MESH_NAMESPACE},
                            "stringData": {"placeholder": "x"}});
        secrets
            .create(
                &Default::default(),
                &serde_json::from_value(issuer).expect("a Secret"),
            )
            .await
            .expect("creating the issuer Secret");
    }
    let others = ["skein-remote-east", "skein-rbac-test-other"];
    for name in others {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": name, "namespace": MESH_NAMESPACE},
                            "stringData": {"kubeconfig": "x"}});
        secrets
            .patch(
                name,
                &PatchParams::apply("skein-rbac-test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .expect("creating a Secret");
    }

    let as_control_plane =
        Api::<Secret>::namespaced(client_as(CONTROL_PLANE).await, MESH_NAMESPACE);
    for name in desired::CONTROL_PLANE_SECRETS {
        as_control_plane
            .get(name)
            .await
            .unwrap_or_else(|err| panic!("the control plane cannot get {name}: {err}"));
        // Its watch of each, with a metadata.name field selector, as it follows the CA.
        let only = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let first = tokio::time::timeout(
            Duration::from_secs(30),
            watcher(as_control_plane.clone(), only).boxed().next(),
        )
        .await
        .expect("the watch answers");
        assert!(
            matches!(first, Some(Ok(_))),
            "the control plane cannot watch {name}: {first:?}"
        );
    }
    let forbidden = |result: Result<Secret, kube::Error>| matches!(result, Err(kube::Error::Api(status)) if status.code == 403);
    // Never the mesh CA's key: it signs with the issuer the operator derives from it.
    for name in others
        .iter()
        .chain(&[desired::CA_SECRET, desired::WEBHOOK_TLS_SECRET])
    {
        assert!(
            forbidden(as_control_plane.get(name).await),
            "the control plane may read Secret {name}"
        );
    }
    let list = as_control_plane.list(&Default::default()).await;
    assert!(
        matches!(&list, Err(kube::Error::Api(status)) if status.code == 403),
        "the control plane may list every Secret in {MESH_NAMESPACE}: {:?}",
        list.map(|l| l.items.len())
    );
    assert!(!can(CONTROL_PLANE, "watch", "secrets", MESH_NAMESPACE));
    // Its only Secret permission, in full.
    let secret_rules: Vec<String> = can_i_list(CONTROL_PLANE, MESH_NAMESPACE)
        .into_iter()
        .filter(|line| line.starts_with("secrets "))
        .collect();
    assert_eq!(
        secret_rules,
        [format!(
            "secrets [] [{}] [get list watch]",
            desired::CONTROL_PLANE_SECRETS.join(" ")
        )]
    );
    assert!(!can(CONTROL_PLANE, "get", "secrets", "default"));
    // The CA ledger it keeps.
    let ledger = format!(
        "configmaps/{}",
        skein::controlplane::identity::trust::LEDGER_CONFIGMAP
    );
    for verb in ["get", "update"] {
        assert!(
            can(CONTROL_PLANE, verb, &ledger, MESH_NAMESPACE),
            "{verb} the ledger"
        );
    }
    assert!(!can(
        CONTROL_PLANE,
        "update",
        "configmaps/skein-mesh-config",
        MESH_NAMESPACE
    ));
}
