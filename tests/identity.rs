//! Workload identity against a real apiserver: the control plane's TokenReview (bound to a live
//! pod), certificates signed by the mesh CA for the MeshConfig's trust domain and lifetime, the
//! proxy's issuer, and the configuration stream's authentication (no token, someone else's pod
//! or namespace: no configuration).
//!
//! Its own cluster (`skein-test-identity`): it writes the mesh CA Secret and the active
//! MeshConfig, which other tests' control planes would read.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use skein::api::MeshConfig;
use skein::api::names;
use skein::controlplane::push::ProxyIdentity;
use skein::operator::certs;
use skein::operator::desired::ISSUER_SECRET;
use skein::pki::{Ca, CertInfo, WorkloadCertInfo};
use skein::proxy::client::{self, ClientSettings};
use skein::proxy::config::{Compiled, ConfigStore};
use skein::proxy::identity::{IdentityMetrics, IdentitySettings};
use skein::proxy::mtls::Credentials;
use skein::xds::identity::identity_client::IdentityClient;
use skein::xds::identity::{CertifyRequest, CertifyResponse};
use support::TestContext;
use support::control_plane::ControlPlane;
use support::identity::{SERVICE_ACCOUNT, pod, pod_token, service_account, token_for};

const CLUSTER: &str = "skein-test-identity";
const TRUST_DOMAIN: &str = "identity.test";
const LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// Bound on the control plane's start (caches synced, CA read) and each wait below.
const WAIT: Duration = Duration::from_secs(30);

/// The test's cluster with a mesh CA and an active MeshConfig naming the trust domain and
/// lifetime; returns the CA certificate.
async fn mesh() -> (TestContext, String) {
    support::use_cluster(CLUSTER);
    let ctx = TestContext::new().await;
    let client = &ctx.client;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mesh_namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(names::MESH_NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let _ = namespaces
        .create(&PostParams::default(), &mesh_namespace)
        .await;
    // Created once per cluster and never replaced (tests run in parallel): each reads it back.
    let ca = Ca::generate("skein-test-identity-ca", Duration::from_secs(24 * 3600)).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), names::MESH_NAMESPACE);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "skein-ca"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": ca.pem.cert_pem, "tls.key": ca.pem.key_pem},
    }))
    .unwrap();
    let _ = secrets.create(&PostParams::default(), &secret).await;
    let stored = secrets.get("skein-ca").await.unwrap();
    let (root, ca_pem) = certs::ca_and_bundle(&stored, "skein-ca").unwrap();
    // The identity issuer the control plane signs with, as the operator keeps it (an
    // intermediate of the stored root; any one of them will do, so concurrent tests may race).
    let stored_issuer = secrets.get_opt(ISSUER_SECRET).await.unwrap();
    let (issuer, new) = certs::issuer_for(
        &root,
        stored_issuer.as_ref(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    if new {
        let issuer_secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": ISSUER_SECRET},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": issuer.cert_pem, "tls.key": issuer.key_pem, "ca.crt": ca_pem},
        });
        secrets
            .patch(
                ISSUER_SECRET,
                &PatchParams::apply("skein-test-identity").force(),
                &Patch::Apply(issuer_secret),
            )
            .await
            .unwrap();
    }

    let meshconfig = json!({
        "apiVersion": "skein.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": names::ACTIVE_MESHCONFIG},
        "spec": {"mtls": {"trustDomain": TRUST_DOMAIN, "workloadCertLifetime": "2h"}},
    });
    Api::<MeshConfig>::all(client.clone())
        .patch(
            names::ACTIVE_MESHCONFIG,
            &PatchParams::apply("skein-test-identity").force(),
            &Patch::Apply(meshconfig),
        )
        .await
        .unwrap();
    (ctx, ca_pem)
}

/// `Certify` with `token` (none: no metadata).
async fn certify(
    control_plane: &ControlPlane,
    token: Option<&str>,
    csr_pem: &str,
) -> Result<CertifyResponse, tonic::Status> {
    let address = format!("http://127.0.0.1:{}", control_plane.xds_port);
    let mut client = IdentityClient::connect(address)
        .await
        .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let mut request = tonic::Request::new(CertifyRequest {
        csr_pem: csr_pem.to_owned(),
    });
    if let Some(token) = token {
        skein::proxy::identity::authorize(&mut request, token).unwrap();
    }
    client
        .certify(request)
        .await
        .map(tonic::Response::into_inner)
}

/// `Certify`, retried while the control plane is still starting (not listening, or the CA not
/// read yet).
async fn certify_when_up(
    control_plane: &ControlPlane,
    token: Option<&str>,
    csr_pem: &str,
) -> Result<CertifyResponse, tonic::Status> {
    let deadline = Instant::now() + WAIT;
    loop {
        match certify(control_plane, token, csr_pem).await {
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answer => return answer,
        }
    }
}

/// Asserts that a workload certificate chain (leaf, intermediate) verifies as a peer's proxy
/// checks it, trusting only the roots of `bundle_pem`, and that the leaf alone does not (it is
/// signed by the intermediate, not by a root).
fn verify_chain(chain_pem: &str, bundle_pem: &str) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    assert_eq!(chain.len(), 2, "the leaf and the intermediate: {chain_pem}");
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(root.expect("a PEM root")).expect("a root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("a verifier");
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .expect("the chain verifies against the roots");
    assert!(
        verifier
            .verify_client_cert(&chain[0], &[], UnixTime::now())
            .is_err(),
        "the leaf alone does not chain to a root"
    );
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

/// A file holding `text` (a token, a trust bundle).
fn file_with(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[tokio::test]
async fn a_pod_gets_its_service_accounts_certificate_and_nobody_else_does() {
    let (ctx, ca_pem) = mesh().await;
    let ns = ctx.namespace.as_str();
    let control_plane = ControlPlane::start().await;
    let token = pod_token(&ctx.client, ns, "web-a").await;

    let answer = certify_when_up(&control_plane, Some(&token), &csr())
        .await
        .unwrap_or_else(|status| panic!("{status}; log:\n{}", control_plane.log()));
    assert_eq!(answer.trust_bundle_pem, ca_pem);
    let info = CertInfo::parse(&answer.cert_chain_pem).unwrap();
    verify_chain(&answer.cert_chain_pem, &ca_pem);
    let lifetime = info.not_after - info.not_before;
    let wanted = time::Duration::try_from(LIFETIME).unwrap();
    assert!(
        lifetime >= wanted && lifetime <= wanted + time::Duration::minutes(10),
        "the MeshConfig's lifetime (plus backdating): {lifetime}"
    );
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(answer.cert_chain_pem.as_bytes())
        .unwrap();
    let workload = WorkloadCertInfo::parse_der(&der).unwrap();
    assert_eq!(
        workload.id.to_string(),
        format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{SERVICE_ACCOUNT}")
    );

    // Refusals, each with its reason.
    let no_token = certify(&control_plane, None, &csr()).await.unwrap_err();
    assert_eq!(no_token.code(), tonic::Code::Unauthenticated, "{no_token}");
    let pod_b = pod(&ctx.client, ns, "web-b").await;
    let other_audience = token_for(&ctx.client, &pod_b, "https://example.org").await;
    let refused = certify(&control_plane, Some(&other_audience), &csr())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let bad_csr = certify(&control_plane, Some(&token), "not a CSR")
        .await
        .unwrap_err();
    assert_eq!(bad_csr.code(), tonic::Code::InvalidArgument, "{bad_csr}");

    // A token whose pod is gone is worth nothing (never used before, so not cached).
    let gone = pod(&ctx.client, ns, "web-gone").await;
    let gone_token = token_for(&ctx.client, &gone, "skein.dev").await;
    Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .delete("web-gone", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_gone(&ctx, "web-gone").await;
    let refused = certify(&control_plane, Some(&gone_token), &csr())
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ),
        "{refused}"
    );

    // The proxy's own issuer: a key of its own, the token from its file, installed.
    let file = file_with(&token);
    let credentials = Arc::new(Credentials::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = IdentityMetrics::register(&mut registry, credentials.clone());
    let issuer = tokio::spawn(skein::proxy::identity::run(
        IdentitySettings {
            address: format!("127.0.0.1:{}", control_plane.xds_port),
            token_path: file.path().to_owned(),
            trust: Default::default(),
        },
        credentials.clone(),
        metrics,
    ));
    let deadline = Instant::now() + WAIT;
    let installed = loop {
        if let Some(current) = credentials.current() {
            break current;
        }
        assert!(Instant::now() < deadline, "no certificate installed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    issuer.abort();
    assert_eq!(installed.id, workload.id);
    assert!(installed.not_after > SystemTime::now() + LIFETIME - Duration::from_secs(60));
}

async fn wait_gone(ctx: &TestContext, name: &str) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let deadline = Instant::now() + WAIT;
    while pods.get_opt(name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "pod {name} was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first response of a stream opened with `token` by a node claiming `namespace/pod`.
async fn open_stream(
    control_plane: &ControlPlane,
    token: Option<&str>,
    namespace: &str,
    pod: &str,
) -> Result<(), tonic::Status> {
    let xds = format!("127.0.0.1:{}", control_plane.xds_port);
    support::identity::open_stream(&xds, token, namespace, pod)
        .await
        .map(drop)
}

#[tokio::test]
async fn the_stream_serves_only_the_pod_the_token_belongs_to() {
    let (ctx, _) = mesh().await;
    let ns = ctx.namespace.as_str();
    let control_plane = ControlPlane::start().await;
    let token_a = pod_token(&ctx.client, ns, "web-a").await;
    service_account(&ctx.client, ns).await;
    pod(&ctx.client, ns, "web-b").await;

    // Wait for the stream to serve (caches synced), as pod A itself.
    let deadline = Instant::now() + WAIT;
    loop {
        match open_stream(&control_plane, Some(&token_a), ns, "web-a").await {
            Ok(()) => break,
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!(
                "pod A's own stream: {status}; log:\n{}",
                control_plane.log()
            ),
        }
    }

    let as_b = open_stream(&control_plane, Some(&token_a), ns, "web-b")
        .await
        .unwrap_err();
    assert_eq!(as_b.code(), tonic::Code::PermissionDenied, "{as_b}");
    assert!(
        as_b.message().contains(&format!("{ns}/web-b"))
            && as_b.message().contains(&format!("{ns}/web-a")),
        "says what was claimed and what was authenticated: {as_b}"
    );
    let elsewhere = open_stream(&control_plane, Some(&token_a), "kube-system", "web-a")
        .await
        .unwrap_err();
    assert_eq!(
        elsewhere.code(),
        tonic::Code::PermissionDenied,
        "{elsewhere}"
    );
    let anonymous = open_stream(&control_plane, None, ns, "web-a")
        .await
        .unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous}"
    );
    let forged = open_stream(&control_plane, Some("not.a.token"), ns, "web-a")
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged}");

    // The proxy's own client, with its token file, syncs.
    let file = file_with(&token_a);
    let store = Arc::new(ConfigStore::new(Compiled::passthrough()));
    let (applied, mut applied_rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = tokio::spawn(client::run(
        ClientSettings {
            address: format!("127.0.0.1:{}", control_plane.xds_port),
            identity: ProxyIdentity {
                pod: "web-a".to_owned(),
                namespace: ns.to_owned(),
                ip: None,
            },
            token_path: Some(file.path().to_owned()),
            trust: Default::default(),
        },
        store,
        move |result| {
            let _ = applied.send(result.is_ok());
        },
    ));
    let result = tokio::time::timeout(WAIT, applied_rx.recv())
        .await
        .expect("the proxy gets a configuration");
    assert_eq!(result, Some(true));
    proxy.abort();
}

/// `--xds-tls`: the stream and `Certify` over TLS with a certificate from the mesh CA for the
/// advertised address (`--xds-address 127.0.0.1:9090` here); a proxy trusting the bundle syncs
/// and gets its certificate, a plaintext one gets nothing.
#[tokio::test]
async fn over_tls_the_proxy_verifies_the_control_plane_against_the_mesh_ca() {
    let (ctx, ca_pem) = mesh().await;
    let ns = ctx.namespace.as_str();
    let control_plane = ControlPlane::start_with(&["--xds-tls"]).await;
    let token = pod_token(&ctx.client, ns, "web-tls").await;
    let token_path = file_with(&token);
    let bundle = file_with(&ca_pem);
    let address = format!("127.0.0.1:{}", control_plane.xds_port);

    let credentials = Arc::new(Credentials::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let issuer = tokio::spawn(skein::proxy::identity::run(
        IdentitySettings {
            address: address.clone(),
            token_path: token_path.path().to_owned(),
            trust: skein::proxy::stream_trust::StreamTrust::file(bundle.path()),
        },
        credentials.clone(),
        IdentityMetrics::register(&mut registry, credentials.clone()),
    ));
    let store = Arc::new(ConfigStore::new(Compiled::passthrough()));
    let (applied, mut applied_rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = tokio::spawn(client::run(
        ClientSettings {
            address: address.clone(),
            identity: ProxyIdentity {
                pod: "web-tls".to_owned(),
                namespace: ns.to_owned(),
                ip: None,
            },
            token_path: Some(token_path.path().to_owned()),
            trust: skein::proxy::stream_trust::StreamTrust::file(bundle.path()),
        },
        store,
        move |result| {
            let _ = applied.send(result.is_ok());
        },
    ));
    let result = tokio::time::timeout(WAIT, applied_rx.recv()).await;
    assert_eq!(
        result.ok().flatten(),
        Some(true),
        "the proxy gets a configuration over TLS; log:\n{}",
        control_plane.log()
    );
    let deadline = Instant::now() + WAIT;
    while credentials.current().is_none() {
        assert!(Instant::now() < deadline, "no certificate over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.abort();
    issuer.abort();

    let plaintext = certify(&control_plane, Some(&token), &csr()).await;
    assert!(plaintext.is_err(), "plaintext is not served");
}

/// The control plane's Role names the Secrets it needs: it cannot read the mesh CA's key
/// (`skein-ca`), only the identity issuer's; and a control plane with nothing but its own
/// service account's permissions (the operator's RBAC objects, applied here) still serves,
/// watches its Secret by name and hands out certificates that verify against the roots.
#[tokio::test]
async fn the_control_plane_cannot_read_the_mesh_ca_and_certifies_pods_with_its_own_role() {
    use skein::operator::desired::{self, CONTROL_PLANE};
    let (ctx, ca_pem) = mesh().await;
    let ns = ctx.namespace.as_str();

    // The control plane's ServiceAccount, Role(s) and bindings, as the operator applies them.
    let mut meshconfig = MeshConfig::new(names::ACTIVE_MESHCONFIG, Default::default());
    meshconfig.metadata.uid = Some("00000000-0000-0000-0000-000000000001".to_owned());
    let inputs = desired::Inputs {
        ca_cert_pem: "",
        settings_hash: "",
    };
    let install = desired::desired(&meshconfig, &inputs).expect("the desired install");
    // Its binding in kube-system reads the apiserver's front-proxy settings (the tap API).
    let rbac = install.objects.into_iter().filter(|o| {
        (o.name == CONTROL_PLANE || o.name == desired::FRONT_PROXY_READER_BINDING)
            && matches!(
                o.resource.kind.as_str(),
                "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
            )
    });
    for object in rbac {
        let mut object = object.object;
        // Owned by a MeshConfig that does not exist, the garbage collector would delete them.
        object["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("ownerReferences");
        kubectl_ok(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&object.to_string()),
        );
    }
    let user = format!(
        "system:serviceaccount:{}:{CONTROL_PLANE}",
        names::MESH_NAMESPACE
    );
    let can = |verb: &str, resource: &str| {
        let output = support::kubectl()
            .args(["auth", "can-i", verb, resource, "-n", names::MESH_NAMESPACE])
            .args(["--as", &user])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running kubectl auth can-i");
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    for verb in ["get", "list", "watch"] {
        assert!(
            !can(verb, "secret/skein-ca"),
            "the control plane may {verb} the mesh CA's key"
        );
        assert!(
            can(verb, &format!("secret/{ISSUER_SECRET}")),
            "the control plane may not {verb} the identity issuer"
        );
    }
    assert!(
        !can("list", "secrets"),
        "the control plane may list every Secret"
    );

    // A control plane with only those permissions.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let token = kubectl_ok(
        &[
            "create",
            "token",
            CONTROL_PLANE,
            "-n",
            names::MESH_NAMESPACE,
            "--duration",
            "1h",
        ],
        None,
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.trim()).expect("writing the token");
    let mut kubeconfig =
        kube::config::Kubeconfig::read_from(support::kubeconfig()).expect("the kubeconfig");
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token_file: Some(token_file.display().to_string()),
            ..Default::default()
        });
    }
    let kubeconfig_path = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig_path,
        serde_json::to_string(&kubeconfig).expect("a kubeconfig"),
    )
    .expect("writing the kubeconfig");
    let control_plane = ControlPlane::start_with_kubeconfig(&[], &kubeconfig_path).await;

    let token = pod_token(&ctx.client, ns, "web-rbac").await;
    let answer = certify_when_up(&control_plane, Some(&token), &csr())
        .await
        .unwrap_or_else(|status| panic!("{status}; log:\n{}", control_plane.log()));
    assert_eq!(answer.trust_bundle_pem, ca_pem);
    verify_chain(&answer.cert_chain_pem, &ca_pem);
    assert!(
        !control_plane.log().contains("forbidden"),
        "the control plane was refused something; log:\n{}",
        control_plane.log()
    );
}

/// Runs kubectl on the test cluster as its admin; returns its output, failing on an error.
fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = support::kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    let mut input = child.stdin.take().expect("kubectl's stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("writing to kubectl");
    drop(input);
    let output = child.wait_with_output().expect("kubectl's output");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
