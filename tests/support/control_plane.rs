//! A real `skein control-plane` process for tests: its own CA and serving certificate, a free
//! loopback port, the test cluster's kubeconfig, and its log printed if the test fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skein::api::meshconfig::{FailurePolicy, InjectionSpec};
use skein::inject::registration::{WebhookTarget, webhook_configuration};
use skein::pki::{Ca, CertifiedKeyPem};

use super::TestContext;

/// Whom a test's control plane reaches the apiserver as.
enum Acting<'a> {
    /// The test cluster's admin.
    Admin,
    /// A user the admin impersonates.
    Impersonating(&'a str),
    /// Whoever this kubeconfig names.
    Kubeconfig(&'a std::path::Path),
}

pub struct ControlPlane {
    child: Child,
    pub port: u16,
    /// The configuration stream (gRPC) and the debug server.
    pub xds_port: u16,
    pub debug_port: u16,
    pub ca: CertifiedKeyPem,
    pub dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts a control plane and waits until it is ready (caches synced).
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start), with more flags (`--xds-tls`, ...).
    pub async fn start_with(flags: &[&str]) -> Self {
        let control_plane = Self::spawn(flags, Acting::Admin);
        control_plane.wait_ready().await;
        control_plane
    }

    /// A control plane acting as `user` (impersonated with the admin kubeconfig, so RBAC
    /// decides what it may read), once it serves: it may never become ready.
    pub async fn start_as(user: &str, flags: &[&str]) -> Self {
        let control_plane = Self::spawn(flags, Acting::Impersonating(user));
        control_plane.wait_serving().await;
        control_plane
    }

    /// [`start_with`](Self::start_with), reaching the apiserver with `kubeconfig` (someone
    /// else than the test cluster's admin, e.g. a service account's token).
    pub async fn start_with_kubeconfig(flags: &[&str], kubeconfig: &std::path::Path) -> Self {
        let control_plane = Self::spawn(flags, Acting::Kubeconfig(kubeconfig));
        control_plane.wait_ready().await;
        control_plane
    }

    /// Starts the process as `who`.
    fn spawn(flags: &[&str], who: Acting<'_>) -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let kubeconfig = match who {
            Acting::Admin => super::kubeconfig().to_owned(),
            Acting::Kubeconfig(path) => path.to_owned(),
            Acting::Impersonating(user) => {
                let admin =
                    std::fs::read_to_string(super::kubeconfig()).expect("reading the kubeconfig");
                let path = dir.path().join("kubeconfig");
                std::fs::write(&path, impersonating(&admin, user)).unwrap();
                path
            }
        };
        let ca = Ca::generate("skein-test-webhook-ca", Duration::from_secs(3600)).unwrap();
        let serving = ca
            .issue_serving(&["127.0.0.1", "localhost"], Duration::from_secs(3600))
            .unwrap();
        write_cert(&dir, &serving);
        let [port, xds_port, debug_port] = free_ports();
        let log = std::fs::File::create(dir.path().join("control-plane.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args([
                "control-plane",
                "--webhook-addr",
                &format!("127.0.0.1:{port}"),
                "--xds-address",
                "127.0.0.1:9090",
                "--xds-addr",
                &format!("127.0.0.1:{xds_port}"),
                "--debug-addr",
                &format!("127.0.0.1:{debug_port}"),
            ])
            .args(flags)
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .env("KUBECONFIG", &kubeconfig)
            .env("SKEIN_LOG", "info,skein=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting skein control-plane");
        Self {
            child,
            port,
            xds_port,
            debug_port,
            ca: ca.pem.clone(),
            dir,
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("https://127.0.0.1:{}/inject", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// An HTTPS client trusting only `ca_pem`.
    pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub fn http(&self) -> reqwest::Client {
        Self::client_trusting(&self.ca.cert_pem)
    }

    /// Replaces the serving certificate files (the server should pick them up by itself).
    pub fn replace_cert(&self, serving: &CertifiedKeyPem) {
        write_cert(&self.dir, serving);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("control-plane.log")
    }

    /// The process's PID (for its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process (the webhook is then down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn wait_ready(&self) {
        self.wait_for("/readyz").await;
    }

    async fn wait_serving(&self) {
        self.wait_for("/healthz").await;
    }

    async fn wait_for(&self, path: &str) {
        let http = self.http();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http.get(self.url(path)).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "skein control-plane did not answer {path} within 30s; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- skein control-plane log ({}):\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// The admin kubeconfig `admin` (as `tests/cluster/up.sh` writes it: client certificates)
/// with its user impersonating `user`.
pub fn impersonating(admin: &str, user: &str) -> String {
    let mut out = String::new();
    let mut added = false;
    for line in admin.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(indent) = line.find("client-key:") {
            out.push_str(&format!("{}as: {user}\n", " ".repeat(indent)));
            added = true;
        }
    }
    assert!(
        added,
        "the kubeconfig has no client-key to impersonate with:\n{admin}"
    );
    out
}

fn write_cert(dir: &tempfile::TempDir, serving: &CertifiedKeyPem) {
    // Write-then-rename, as a Secret volume update does, so the reader never sees half a file.
    for (name, text) in [
        ("tls.key", &serving.key_pem),
        ("tls.crt", &serving.cert_pem),
    ] {
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` free ports, all different: each listener is held until every port is picked (ports
/// picked one after another can repeat, once the first listener is closed).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free port"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("a bound listener's address")
            .port()
    })
}

/// Registers the injection webhook, restricted to `namespaces` so that concurrently running
/// tests never see each other's webhooks.
pub async fn register_webhook(
    ctx: &TestContext,
    suffix: &str,
    url: &str,
    ca_pem: &str,
    policy: FailurePolicy,
    namespaces: &[&str],
) {
    let injection = InjectionSpec {
        failure_policy: policy,
        ..InjectionSpec::default()
    };
    let name = ctx.unique_name(suffix);
    let mut config = webhook_configuration(
        &name,
        &injection,
        &WebhookTarget::Url(url.to_owned()),
        ca_pem.as_bytes(),
    );
    config
        .metadata
        .labels
        .get_or_insert_default()
        .extend(ctx.owner_labels());
    for webhook in config.webhooks.iter_mut().flatten() {
        let selector = webhook.namespace_selector.get_or_insert_default();
        selector
            .match_expressions
            .get_or_insert_default()
            .push(LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".to_owned(),
                operator: "In".to_owned(),
                values: Some(namespaces.iter().map(|ns| (*ns).to_owned()).collect()),
            });
    }
    Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("registering the webhook");
}

pub async fn label_namespace(ctx: &TestContext, namespace: &str, key: &str, value: &str) {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(ctx.client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}
