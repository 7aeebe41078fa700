//! The webhook's serving certificate: loaded from PEM files and reloaded when they change (a
//! mounted Secret is updated in place), without dropping connections or restarting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    #[error("certificate {cert} and key {key} do not make a usable TLS configuration: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The certificate and key files, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn read(&self) -> Result<Pem, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Pem {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }

    fn server_config(&self, pem: &Pem) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&pem.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Certificate {
                path: self.cert.clone(),
                source,
            })?;
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|source| TlsError::Key {
            path: self.key.clone(),
            source,
        })?;
        let to_config_error = |source| TlsError::Config {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        };
        // The provider is named explicitly so this never depends on a process default.
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(to_config_error)?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(to_config_error)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Loads the files once: the server does not start without a valid certificate.
    pub fn load(&self) -> Result<(RustlsConfig, Reloader), TlsError> {
        let pem = self.read()?;
        let rustls = RustlsConfig::from_config(self.server_config(&pem)?);
        Ok((
            rustls.clone(),
            Reloader {
                files: self.clone(),
                rustls,
                current: pem,
            },
        ))
    }
}

/// Watches the files and swaps the served certificate when they change.
pub struct Reloader {
    files: CertFiles,
    rustls: RustlsConfig,
    current: Pem,
}

impl Reloader {
    /// Runs until the process ends. A bad new certificate is logged and the old one kept: a
    /// half-written Secret update must not take the webhook down.
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            ticks.tick().await;
            if let Err(err) = self.reload_if_changed() {
                tracing::warn!(error = %err, "keeping the current webhook certificate");
            }
        }
    }

    fn reload_if_changed(&mut self) -> Result<(), TlsError> {
        let pem = self.files.read()?;
        if pem == self.current {
            return Ok(());
        }
        let config = self.files.server_config(&pem)?;
        self.rustls.reload_from_config(config);
        self.current = pem;
        tracing::info!(cert = %self.files.cert.display(), "reloaded the webhook serving certificate");
        Ok(())
    }
}
