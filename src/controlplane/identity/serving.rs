//! The configuration stream's own TLS certificate, issued by the control plane from the identity
//! issuer (the mesh CA's intermediate) for the names proxies dial: the Service's DNS names and the host of `--xds-address`.
//!
//! Issued on the first handshake after the CA is read, and again when the CA changes or the
//! certificate is past two thirds of its [`SERVING_VALIDITY`]; until the CA is read handshakes
//! fail (proxies retry). Signing is a few milliseconds, done in the handshake that needs it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ca::{CaStore, Signer};
use crate::api::names;
use crate::operator::desired::CONTROL_PLANE;
use crate::pki::CertInfo;

/// Lifetime of the stream's serving certificate.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The names of the stream's certificate: the Service's, and the host of `xds_address`
/// (`host:port`, a DNS name or an IP).
pub fn serving_names(xds_address: &str, cluster_domain: &str) -> Vec<String> {
    let service = format!("{CONTROL_PLANE}.{}.svc", names::MESH_NAMESPACE);
    let mut names = vec![
        service.clone(),
        format!("{service}.{cluster_domain}"),
        format!("{CONTROL_PLANE}.{}", names::MESH_NAMESPACE),
    ];
    let host = xds_address
        .rsplit_once(':')
        .map_or(xds_address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if !host.is_empty() && !names.iter().any(|name| name == host) {
        names.push(host.to_owned());
    }
    names
}

struct Current {
    key: Arc<CertifiedKey>,
    /// The CA it was signed by (a new CA means a new certificate).
    ca_pem: String,
    info: CertInfo,
}

/// Resolves the serving certificate for every handshake (rustls calls it per connection).
pub struct ServingCerts {
    ca: Arc<CaStore>,
    names: Vec<String>,
    current: Mutex<Option<Current>>,
}

impl std::fmt::Debug for ServingCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCerts")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ServingCerts {
    pub fn new(ca: Arc<CaStore>, names: Vec<String>) -> Self {
        Self {
            ca,
            names,
            current: Mutex::new(None),
        }
    }

    /// The rustls server configuration of the stream (HTTP/2 only, as gRPC is).
    pub fn server_config(self: Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(self);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn issue(&self, signer: &Signer) -> Result<Current, String> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let pem = signer
            .ca
            .issue_serving(&names, SERVING_VALIDITY)
            .map_err(|err| err.to_string())?;
        let info = CertInfo::parse(&pem.cert_pem).map_err(|err| err.to_string())?;
        // The leaf, then the intermediate that signed it: clients hold only the roots.
        let chain_pem = format!("{}{}", pem.cert_pem, signer.chain_pem);
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
        let key =
            PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes()).map_err(|err| err.to_string())?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|err| err.to_string())?;
        tracing::info!(names = ?self.names, "issued the configuration stream's serving certificate");
        Ok(Current {
            key: Arc::new(key),
            ca_pem: signer.ca.pem.cert_pem.clone(),
            info,
        })
    }
}

impl ResolvesServerCert for ServingCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(signer) = self.ca.current() else {
            tracing::warn!("TLS handshake refused: the mesh CA is not loaded yet");
            return None;
        };
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = current.as_ref().is_some_and(|c| {
            c.ca_pem == signer.ca.pem.cert_pem
                && !c.info.needs_renewal(time::OffsetDateTime::now_utc())
        });
        if !fresh {
            match self.issue(&signer) {
                Ok(issued) => *current = Some(issued),
                Err(err) => {
                    tracing::error!(error = %err, "issuing the stream's serving certificate");
                    // An older certificate is better than none while it is valid.
                }
            }
        }
        current.as_ref().map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_the_service_and_the_advertised_host() {
        let names = serving_names("skein-control-plane.skein-system.svc:9090", "cluster.local");
        assert_eq!(
            names,
            [
                "skein-control-plane.skein-system.svc",
                "skein-control-plane.skein-system.svc.cluster.local",
                "skein-control-plane.skein-system",
            ]
        );
        let external = serving_names("10.0.0.5:9090", "example.org");
        assert_eq!(external.last().map(String::as_str), Some("10.0.0.5"));
        assert_eq!(
            serving_names("[fd00::5]:9090", "cluster.local")
                .last()
                .map(String::as_str),
            Some("fd00::5")
        );
    }
}
