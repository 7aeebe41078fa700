//! The proxy's workload certificate and the mesh's trust bundle, as last installed.
//!
//! [`crate::identity`] installs a certificate each time one is issued; the configuration
//! stream updates the trust bundle (a CA rotation adds a root before anything is signed by it).
//! Handshakes read the current value per connection, so a renewal takes effect at once and
//! established connections carry on.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use skein_core::identity::SpiffeId;
use skein_core::pki;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the certificate chain holds no PEM certificate")]
    NoCertificate,
    #[error("the private key is not PEM: {0}")]
    Key(rustls::pki_types::pem::Error),
    #[error("the certificate does not match the key, or the key type is unsupported: {0}")]
    KeyMismatch(rustls::Error),
    #[error("the trust bundle holds no usable root certificate")]
    EmptyBundle,
    #[error("the trust bundle cannot verify clients: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the certificate's identity: {0}")]
    Identity(#[from] pki::PkiError),
}

/// A certificate with its key, identity and the roots peers are checked against.
pub struct Loaded {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    /// Checks client certificates against `roots` (built once per bundle, not per handshake).
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// The bundle as PEM, for `/config` and to compare updates.
    pub bundle_pem: String,
}

/// Shared by the issuer (writes) and every handshake (reads).
pub struct Credentials {
    current: RwLock<Option<Arc<Loaded>>>,
    /// Bumped on every change, for those who rebuild something when credentials change.
    changes: watch::Sender<u64>,
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            current: RwLock::new(None),
            changes: watch::Sender::new(0),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.current().map(|loaded| loaded.id.to_string());
        f.debug_struct("Credentials").field("id", &id).finish()
    }
}

impl Credentials {
    /// The current certificate, if one was ever installed (it may have expired: see
    /// [`Loaded::not_after`]).
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Installs a newly issued certificate (leaf first, then intermediates), its private key and
    /// the trust bundle (one or more roots).
    pub fn install(
        &self,
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
    ) -> Result<Arc<Loaded>, CredentialsError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
        let leaf = chain.first().ok_or(CredentialsError::NoCertificate)?;
        let identity = pki::WorkloadCertInfo::parse_der(leaf)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(CredentialsError::Key)?;
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(CredentialsError::KeyMismatch)?;
        let (roots, client_verifier) = trust(bundle_pem)?;
        let loaded = Arc::new(Loaded {
            id: identity.id,
            not_before: identity.not_before,
            not_after: identity.not_after,
            key: Arc::new(certified),
            roots,
            client_verifier,
            bundle_pem: bundle_pem.to_owned(),
        });
        self.set(loaded.clone());
        Ok(loaded)
    }

    /// Replaces the trust bundle and keeps the certificate. Before any certificate is installed
    /// there is nothing to update: the issuer installs the bundle with the first certificate.
    pub fn update_bundle(&self, bundle_pem: &str) -> Result<(), CredentialsError> {
        let Some(current) = self.current() else {
            return Ok(());
        };
        if current.bundle_pem == bundle_pem {
            return Ok(());
        }
        let (roots, client_verifier) = trust(bundle_pem)?;
        self.set(Arc::new(Loaded {
            id: current.id.clone(),
            not_before: current.not_before,
            not_after: current.not_after,
            key: current.key.clone(),
            roots,
            client_verifier,
            bundle_pem: bundle_pem.to_owned(),
        }));
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn set_for_test(&self, loaded: Arc<Loaded>) {
        self.set(loaded);
    }

    fn set(&self, loaded: Arc<Loaded>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
        self.changes.send_modify(|n| *n += 1);
    }
}

fn trust(
    bundle_pem: &str,
) -> Result<(Arc<RootCertStore>, Arc<dyn ClientCertVerifier>), CredentialsError> {
    let roots = Arc::new(roots(bundle_pem)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider).build()?;
    Ok((roots, verifier))
}

/// The roots of a PEM trust bundle; certificates rustls cannot use as anchors are skipped.
pub fn roots(bundle_pem: &str) -> Result<RootCertStore, CredentialsError> {
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(
        CertificateDer::pem_slice_iter(bundle_pem.as_bytes()).filter_map(Result::ok),
    );
    if added == 0 {
        return Err(CredentialsError::EmptyBundle);
    }
    Ok(store)
}
