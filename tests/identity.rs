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
    let ca_pem = String::from_utf8(stored.data.unwrap()["tls.crt"].0.clone()).unwrap();

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
    assert_eq!(info.issuer, CertInfo::parse(&ca_pem).unwrap().subject);
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
    use skein::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use skein::xds::discovery::{DeltaDiscoveryRequest, Node};
    let address = format!("http://127.0.0.1:{}", control_plane.xds_port);
    let mut client = AggregatedDiscoveryServiceClient::connect(address)
        .await
        .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let first = DeltaDiscoveryRequest {
        node: Some(Node {
            id: String::new(),
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            ip: String::new(),
        }),
        type_url: skein::xds::resources::TYPE_URLS[0].to_owned(),
        resource_names_subscribe: vec!["*".to_owned()],
        ..DeltaDiscoveryRequest::default()
    };
    let requests =
        futures::StreamExt::chain(futures::stream::iter([first]), futures::stream::pending());
    let mut request = tonic::Request::new(requests);
    if let Some(token) = token {
        skein::proxy::identity::authorize(&mut request, token).unwrap();
    }
    let mut responses = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    responses
        .message()
        .await?
        .map(|_| ())
        .ok_or_else(|| tonic::Status::cancelled("no response"))
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
