//! The webhook's serving certificate: loaded from PEM files (a mounted Secret, in the cluster) or
//! read from a Secret through the API (a control plane running outside the cluster), and
//! reloaded when it changes, without dropping connections or restarting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;

/// How often the files are checked. Secret volume updates take a minute or more to land, so a
/// few seconds is plenty and costs two small reads.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no PEM private key: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "{source_name}: the certificate and key do not make a usable TLS configuration: {source}"
    )]
    Config {
        source_name: String,
        source: rustls::Error,
    },
    #[error("reading secret {namespace}/{name}: {source}")]
    SecretRead {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("secret {namespace}/{name} has no {key}")]
    SecretKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
}

/// The certificate and key files, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Where the certificate and key come from.
#[derive(Clone)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// `tls.crt` and `tls.key` of a Secret (what the operator writes).
    Secret {
        client: kube::Client,
        namespace: String,
        name: String,
    },
}

impl CertSource {
    fn describe(&self) -> String {
        match self {
            CertSource::Files { cert, key } => format!("{} and {}", cert.display(), key.display()),
            CertSource::Secret {
                namespace, name, ..
            } => format!("secret {namespace}/{name}"),
        }
    }

    async fn read(&self) -> Result<Pem, TlsError> {
        match self {
            CertSource::Files { cert, key } => {
                let read = |path: &Path| {
                    std::fs::read(path).map_err(|source| TlsError::Read {
                        path: path.to_owned(),
                        source,
                    })
                };
                Ok(Pem {
                    cert: read(cert)?,
                    key: read(key)?,
                })
            }
            CertSource::Secret {
                client,
                namespace,
                name,
            } => {
                let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                    kube::Api::namespaced(client.clone(), namespace);
                let secret = api.get(name).await.map_err(|source| TlsError::SecretRead {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
                let field = |key: &'static str| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|data| data.get(key))
                        .map(|bytes| bytes.0.clone())
                        .ok_or_else(|| TlsError::SecretKey {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            key,
                        })
                };
                Ok(Pem {
                    cert: field("tls.crt")?,
                    key: field("tls.key")?,
                })
            }
        }
    }

    fn server_config(
        &self,
        pem: &Pem,
        client_auth: &Arc<dyn ClientCertVerifier>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&pem.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Certificate {
                path: PathBuf::from(self.describe()),
                source,
            })?;
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|source| TlsError::Key {
            path: PathBuf::from(self.describe()),
            source,
        })?;
        let to_config_error = |source| TlsError::Config {
            source_name: self.describe(),
            source,
        };
        // The provider is named explicitly so this never depends on a process default.
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(to_config_error)?
                .with_client_cert_verifier(client_auth.clone())
                .with_single_cert(certs, key)
                .map_err(to_config_error)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Loads the certificate once: the server does not start without a valid one. Clients'
    /// certificates are checked by `client_auth` (the tap API's front proxy presents one).
    pub async fn load(
        &self,
        client_auth: Arc<dyn ClientCertVerifier>,
    ) -> Result<(RustlsConfig, Reloader), TlsError> {
        let pem = self.read().await?;
        let rustls = RustlsConfig::from_config(self.server_config(&pem, &client_auth)?);
        Ok((
            rustls.clone(),
            Reloader {
                source: self.clone(),
                rustls,
                current: pem,
                client_auth,
            },
        ))
    }
}

/// Watches the source and swaps the served certificate when it changes.
pub struct Reloader {
    source: CertSource,
    rustls: RustlsConfig,
    current: Pem,
    client_auth: Arc<dyn ClientCertVerifier>,
}

impl Reloader {
    /// Runs until the process ends. A bad new certificate is logged and the old one kept: a
    /// half-written update must not take the webhook down.
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            ticks.tick().await;
            if let Err(err) = self.reload_if_changed().await {
                tracing::warn!(error = %err, "keeping the current webhook certificate");
            }
        }
    }

    async fn reload_if_changed(&mut self) -> Result<(), TlsError> {
        let pem = self.source.read().await?;
        if pem == self.current {
            return Ok(());
        }
        let config = self.source.server_config(&pem, &self.client_auth)?;
        self.rustls.reload_from_config(config);
        self.current = pem;
        tracing::info!(source = %self.source.describe(), "reloaded the webhook serving certificate");
        Ok(())
    }
}
