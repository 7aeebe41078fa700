//! The handshake's checks, against whatever credentials are current at the time of the
//! handshake (a renewed certificate or an updated trust bundle acts on the next connection):
//!
//! - a client accepts a server only if its certificate chains to the bundle and carries the
//!   identity the client asked for (the control plane's word on who serves that endpoint,
//!   spelt as the TLS server name: [`SpiffeId::server_name`]);
//! - a server requires a client certificate that chains to the bundle; its identity is read
//!   after the handshake;
//! - both present the proxy's own current certificate, and a server refuses a client that asks
//!   for another identity than its own.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::credentials::Credentials;
use skein_core::pki::WorkloadCertInfo;

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn no_credentials() -> Error {
    Error::General("this proxy has no workload certificate yet".to_owned())
}

/// The client side's check of a server.
pub struct ServerIdentityVerifier {
    pub credentials: Arc<Credentials>,
}

impl fmt::Debug for ServerIdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerIdentityVerifier")
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let current = self.credentials.current().ok_or_else(no_credentials)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &current.roots,
            intermediates,
            now,
            algorithms().all,
        )?;
        let expected = server_name.to_str();
        let presented = WorkloadCertInfo::parse_der(end_entity)
            .map_err(|err| Error::InvalidCertificate(CertificateError::Other(shared(err))))?;
        if presented.id.server_name() != expected.as_ref() {
            return Err(Error::InvalidCertificate(
                CertificateError::NotValidForNameContext {
                    expected: server_name.to_owned(),
                    presented: vec![presented.id.to_string()],
                },
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The server side's check of a client: a certificate chaining to the current bundle.
pub struct ClientChainVerifier {
    pub credentials: Arc<Credentials>,
}

impl fmt::Debug for ClientChainVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientChainVerifier")
    }
}

impl ClientChainVerifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        self.credentials
            .current()
            .map(|loaded| loaded.client_verifier.clone())
            .ok_or_else(no_credentials)
    }
}

impl ClientCertVerifier for ClientChainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Clients have one certificate each: no hints needed.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The proxy's own certificate, for both sides of a handshake.
pub struct OwnCertificate {
    pub credentials: Arc<Credentials>,
}

impl fmt::Debug for OwnCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnCertificate")
    }
}

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.credentials.current()?;
        // A client that asks for another identity was sent to the wrong pod (a stale endpoint
        // whose IP was reused): refusing beats answering as someone it did not expect.
        if client_hello.server_name() != Some(current.id.server_name().as_str()) {
            tracing::debug!(
                asked = client_hello.server_name().unwrap_or(""),
                own = %current.id,
                "refusing a TLS client that asked for another identity"
            );
            return None;
        }
        Some(current.key.clone())
    }
}

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.credentials.current()?.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn shared(err: impl std::error::Error + Send + Sync + 'static) -> rustls::OtherError {
    rustls::OtherError(Arc::new(err))
}
