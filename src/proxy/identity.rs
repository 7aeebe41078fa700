//! The proxy's workload certificate: a key generated here (it never leaves the pod), a CSR sent
//! to the control plane's `Identity/Certify` with the pod's service-account token, the answer
//! installed into [`Credentials`] (which every mTLS handshake reads), renewed before it expires.
//!
//! - Renewal at 50% of the certificate's lifetime plus up to 10% jitter (so a mesh restarted at
//!   once does not renew at once). A renewal installs the new certificate for new handshakes;
//!   established connections carry on with theirs.
//! - A failed request is logged with its reason and retried with capped exponential backoff
//!   ([`RETRY_BASE`] doubling to [`RETRY_MAX`], jittered). The current certificate is kept until
//!   it expires: the proxy keeps serving with it.
//! - Every request generates a new key, and reads the token file afresh (the kubelet rotates
//!   it).
//! - Certificates are requested whatever the MeshConfig's `mtls.mode`: the mode governs
//!   traffic only, so switching it on needs no restart and no wait for issuance.
//!
//! Visible as:
//!
//! | where | what |
//! |---|---|
//! | `skein_proxy_identity_cert_expiry_seconds` | seconds until the current certificate expires (negative once expired), computed at scrape time; absent before the first certificate |
//! | `skein_proxy_identity_renewals_total{result}` | certificate requests that `succeeded` or `failed` |
//! | `/ready` | 503 `workload certificate expired` once the certificate has expired; at start it waits up to 10 s for the first one; after that, a proxy that never got one (no control plane yet) is ready and serves plaintext |
//! | `/config` | `identity`: the SPIFFE ID, `notBefore`, `notAfter`, `expiresInSeconds` |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::metrics::ResultLabels;
use super::mtls::{Credentials, CredentialsError, Loaded};
use skein_core::xds::identity::CertifyRequest;
use skein_core::xds::identity::identity_client::IdentityClient;

/// First retry delay after a failed request (before jitter).
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay (before jitter).
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Renewal at this fraction of the lifetime, plus up to [`RENEWAL_JITTER`] more.
const RENEWAL_AT: f64 = 0.5;
const RENEWAL_JITTER: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading the service-account token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service-account token {0} is empty")]
    EmptyToken(PathBuf),
    #[error("the service-account token holds characters a gRPC header cannot carry")]
    TokenNotHeaderText,
    #[error("generating the key or the CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Endpoint(#[from] super::client::EndpointError),
    #[error("connecting to the control plane at {address}: {}", crate::tcp::ErrorChain(.source))]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the control plane refused the certificate: {}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("the issued certificate is unusable: {0}")]
    Install(#[from] CredentialsError),
}

/// Where to ask and with what.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// The control plane (`--xds-address`): `Certify` is served next to the stream.
    pub address: String,
    pub token_path: PathBuf,
    /// As the stream's [`ClientSettings::trust`](super::client::ClientSettings::trust).
    pub trust: super::stream_trust::StreamTrust,
}

/// A workload certificate from files (`--workload-cert`, `--workload-key`, `--trust-bundle`)
/// rather than the control plane.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// How often [`CertificateFiles::watch`] looks for new files (mounted Secrets change by
/// renaming, which a poll of the content handles).
const FILES_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{cert}: {source}")]
    Install {
        cert: PathBuf,
        source: CredentialsError,
    },
}

impl CertificateFiles {
    fn read(&self) -> Result<[String; 3], FilesError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| FilesError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok([read(&self.cert)?, read(&self.key)?, read(&self.bundle)?])
    }

    /// Reads and installs the files.
    pub fn install(&self, credentials: &Credentials) -> Result<(), FilesError> {
        let [cert, key, bundle] = self.read()?;
        credentials
            .install(&cert, &key, &bundle)
            .map_err(|source| FilesError::Install {
                cert: self.cert.clone(),
                source,
            })?;
        Ok(())
    }

    /// Installs the files again whenever their content changes; a bad change is logged and
    /// the current certificate stays.
    pub async fn watch(self, credentials: Arc<Credentials>) {
        let mut last = self.read().ok();
        loop {
            tokio::time::sleep(FILES_POLL).await;
            let current = self.read().ok();
            if current.is_none() || current == last {
                continue;
            }
            match self.install(&credentials) {
                Ok(()) => {
                    tracing::info!(cert = %self.cert.display(), "workload certificate reloaded")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "keeping the current workload certificate")
                }
            }
            last = current;
        }
    }
}

/// The token, read afresh.
pub async fn read_token(path: &Path) -> Result<String, IdentityError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| IdentityError::Token {
            path: path.to_owned(),
            source,
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(IdentityError::EmptyToken(path.to_owned()));
    }
    Ok(token.to_owned())
}

/// Puts the token in a request's `authorization` metadata, as the control plane expects it.
pub fn authorize<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), IdentityError> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| IdentityError::TokenNotHeaderText)?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}

/// Requests and renews the certificate forever.
pub async fn run(
    settings: IdentitySettings,
    credentials: Arc<Credentials>,
    metrics: IdentityMetrics,
) {
    let mut failures: u32 = 0;
    loop {
        let delay = match certify(&settings, &credentials).await {
            Ok(current) => {
                failures = 0;
                metrics.renewed(true);
                let renew_at = renewal_time(
                    SystemTime::now(),
                    current.not_before,
                    current.not_after,
                    fastrand::f64(),
                );
                tracing::info!(
                    id = %current.id,
                    expires_in_s = seconds_until(current.not_after, SystemTime::now()),
                    renew_in_s = seconds_until(renew_at, SystemTime::now()),
                    "workload certificate installed"
                );
                renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                metrics.renewed(false);
                let delay = retry_delay(failures, fastrand::f64());
                match credentials.current() {
                    Some(current) if current.not_after > SystemTime::now() => tracing::warn!(
                        error = %err,
                        failures,
                        retry_in_ms = delay.as_millis() as u64,
                        expires_in_s = seconds_until(current.not_after, SystemTime::now()),
                        "workload certificate renewal failed: serving with the current one until it expires"
                    ),
                    Some(_) => tracing::error!(
                        error = %err,
                        failures,
                        retry_in_ms = delay.as_millis() as u64,
                        "workload certificate renewal failed and the current one has expired"
                    ),
                    None => tracing::warn!(
                        error = %err,
                        failures,
                        retry_in_ms = delay.as_millis() as u64,
                        "no workload certificate yet: the request failed"
                    ),
                }
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// One request: a new key, a CSR, the answer installed.
async fn certify(
    settings: &IdentitySettings,
    credentials: &Credentials,
) -> Result<Arc<Loaded>, IdentityError> {
    let token = read_token(&settings.token_path).await?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    // The CSR names nothing: the control plane decides the identity from the token.
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let endpoint = super::client::endpoint(&settings.address, &settings.trust).await?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| IdentityError::Connect {
            address: settings.address.clone(),
            source,
        })?;
    let mut request = tonic::Request::new(CertifyRequest { csr_pem });
    authorize(&mut request, &token)?;
    let answer = IdentityClient::new(channel)
        .certify(request)
        .await
        .map_err(IdentityError::Refused)?
        .into_inner();
    Ok(credentials.install(
        &answer.cert_chain_pem,
        &key.serialize_pem(),
        &answer.trust_bundle_pem,
    )?)
}

/// Pure: when to renew a certificate valid from `not_before` to `not_after`, installed at `now`;
/// `jitter` in [0, 1). Counted from `now` when `not_before` is earlier: the CA backdates it for
/// clock skew, which with a one-minute lifetime would put every renewal in the past (a storm).
pub fn renewal_time(
    now: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    jitter: f64,
) -> SystemTime {
    let valid_from = now.max(not_before);
    let lifetime = not_after
        .duration_since(valid_from)
        .unwrap_or(Duration::ZERO);
    valid_from + lifetime.mul_f64(RENEWAL_AT + RENEWAL_JITTER * jitter.clamp(0.0, 1.0))
}

/// Pure: the wait after the `failures`-th failure in a row; `jitter` in [0, 1) takes up to half
/// off, so proxies that failed together do not retry together.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let delay = RETRY_BASE.saturating_mul(1 << doublings).min(RETRY_MAX);
    delay.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// Seconds from `now` to `then`, negative if `then` has passed.
pub fn seconds_until(then: SystemTime, now: SystemTime) -> i64 {
    match then.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// When the current certificate expired, if it has (for `/ready`).
pub fn expired_at(credentials: &Credentials, now: SystemTime) -> Option<SystemTime> {
    credentials
        .current()
        .map(|current| current.not_after)
        .filter(|not_after| *not_after <= now)
}

/// The certificate as `/config` shows it (null before the first one).
pub fn describe(credentials: &Credentials, now: SystemTime) -> serde_json::Value {
    let Some(current) = credentials.current() else {
        return serde_json::Value::Null;
    };
    let rfc3339 = skein_core::timestamp::rfc3339;
    serde_json::json!({
        "id": current.id.to_string(),
        "notBefore": rfc3339(current.not_before),
        "notAfter": rfc3339(current.not_after),
        "expiresInSeconds": seconds_until(current.not_after, now),
    })
}

/// `skein_proxy_identity_*`.
#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    renewals: Family<ResultLabels, Counter>,
    handshakes: Family<KindLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

impl IdentityMetrics {
    pub fn register(registry: &mut Registry, credentials: Arc<Credentials>) -> Self {
        let renewals = Family::<ResultLabels, Counter>::default();
        for result in ["succeeded", "failed"] {
            let _ = renewals.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "identity_renewals",
            "Workload certificate requests, by result",
            renewals.clone(),
        );
        let handshakes = Family::<KindLabels, Counter>::default();
        for kind in ["full", "resumed"] {
            let _ = handshakes.get_or_create(&KindLabels { kind });
        }
        registry.register(
            "identity_mtls_inbound_handshakes",
            "Mutual TLS handshakes completed for inbound connections: full, or resumed from an \
             earlier session (no certificate exchange)",
            handshakes.clone(),
        );
        registry.register_collector(Box::new(ExpiryCollector(credentials)));
        Self {
            renewals,
            handshakes,
        }
    }

    /// Counts an inbound mTLS handshake.
    pub fn handshake(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.handshakes.get_or_create(&KindLabels { kind }).inc();
    }

    fn renewed(&self, ok: bool) {
        let result = if ok { "succeeded" } else { "failed" };
        self.renewals.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Seconds to expiry, read from the credentials at each scrape.
struct ExpiryCollector(Arc<Credentials>);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(current) = self.0.current() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(seconds_until(current.not_after, SystemTime::now()));
        let metric = encoder.encode_descriptor(
            "identity_cert_expiry_seconds",
            "Seconds until the workload certificate expires (negative once expired)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        // Two during a CA rotation: what tells an operator every proxy has the new root.
        let roots = i64::try_from(current.roots.len()).unwrap_or(i64::MAX);
        let gauge = ConstGauge::new(roots);
        let metric = encoder.encode_descriptor(
            "identity_trusted_roots",
            "CA certificates in the trust bundle peers are checked against",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_half_the_lifetime_plus_up_to_a_tenth() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        assert_eq!(
            renewal_time(start, start, end, 0.0),
            start + Duration::from_secs(500)
        );
        assert_eq!(
            renewal_time(start, start, end, 0.5),
            start + Duration::from_secs(550)
        );
        assert_eq!(
            renewal_time(start, start, end, 1.0),
            start + Duration::from_secs(600)
        );
        assert_eq!(
            renewal_time(end, end, start, 0.3),
            end,
            "a backwards validity renews at once"
        );
        // A one-minute certificate backdated five minutes, installed now: renewed in 30 s, not
        // at once (which would renew it again and again).
        let now = start + Duration::from_secs(300);
        assert_eq!(
            renewal_time(now, start, now + Duration::from_secs(60), 0.0),
            now + Duration::from_secs(30)
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        assert_eq!(retry_delay(1, 0.0), RETRY_BASE);
        assert_eq!(retry_delay(2, 0.0), RETRY_BASE * 2);
        assert_eq!(retry_delay(4, 0.0), RETRY_BASE * 8);
        assert_eq!(retry_delay(30, 0.0), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX, 0.0), RETRY_MAX);
        assert_eq!(retry_delay(30, 1.0), RETRY_MAX / 2);
    }

    #[test]
    fn expiry_is_counted_both_ways() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(seconds_until(now + Duration::from_secs(90), now), 90);
        assert_eq!(seconds_until(now - Duration::from_secs(90), now), -90);
    }

    /// A certificate from a test CA, installed; `validity` from now.
    fn installed(validity: Duration) -> Arc<Credentials> {
        let ca = skein_core::pki::Ca::generate("test-ca", Duration::from_secs(3600)).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let id = skein_core::identity::SpiffeId::new("example.org", "demo", "web");
        let cert = ca.issue_workload(&csr, &id, validity).unwrap();
        let credentials = Arc::new(Credentials::default());
        credentials
            .install(&cert, &key.serialize_pem(), &ca.pem.cert_pem)
            .unwrap();
        credentials
    }

    #[test]
    fn the_certificate_shows_in_config_metrics_and_readiness() {
        let credentials = installed(Duration::from_secs(600));
        let now = SystemTime::now();
        let shown = describe(&credentials, now);
        assert_eq!(shown["id"], "spiffe://example.org/ns/demo/sa/web");
        let left = shown["expiresInSeconds"].as_i64().unwrap();
        assert!((590..=600).contains(&left), "{shown}");
        assert_eq!(expired_at(&credentials, now), None);
        let later = now + Duration::from_secs(601);
        assert!(expired_at(&credentials, later).is_some());

        let mut registry = Registry::with_prefix("skein_proxy");
        let metrics = IdentityMetrics::register(&mut registry, credentials);
        metrics.renewed(false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("skein_proxy_identity_renewals_total{result=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("skein_proxy_identity_renewals_total{result=\"succeeded\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("skein_proxy_identity_cert_expiry_seconds 59"),
            "{text}"
        );

        let none = Arc::new(Credentials::default());
        assert_eq!(describe(&none, now), serde_json::Value::Null);
        assert_eq!(expired_at(&none, later), None, "never had one: stays ready");
    }
}
