//! Certificates: a mesh CA and the serving certificates it signs (the webhook's, for now;
//! workload identities later). Pure: PEM in, PEM out; storing them is the caller's business.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Backdating absorbs clock skew between the signer and the verifier.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("{0:?} is neither a DNS name nor an IP address")]
    BadName(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKeyPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority able to sign serving certificates.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: CertifiedKeyPem,
}

impl Ca {
    /// A new self-signed CA valid for `validity`.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, PkiError> {
        let generate = |what| move |source| PkiError::Generate { what, source };
        let key = KeyPair::generate().map_err(generate("the CA key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        let cert = params
            .self_signed(&key)
            .map_err(generate("the CA certificate"))?;
        let pem = CertifiedKeyPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self { params, key, pem })
    }

    /// A TLS serving certificate for `names` (DNS names or IP addresses), valid for `validity`.
    pub fn issue_serving(
        &self,
        names: &[&str],
        validity: Duration,
    ) -> Result<CertifiedKeyPem, PkiError> {
        let generate = |what| move |source| PkiError::Generate { what, source };
        let key = KeyPair::generate().map_err(generate("a serving key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("skein"),
        );
        params.subject_alt_names = names
            .iter()
            .map(|name| san(name))
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, validity);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(generate("a serving certificate"))?;
        Ok(CertifiedKeyPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns_like = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
    let bad_name = || PkiError::BadName(name.to_owned());
    if !dns_like {
        return Err(bad_name());
    }
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|_| bad_name())
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_certificate_chains_to_its_ca() {
        let ca = Ca::generate("skein-test-ca", Duration::from_secs(3600)).unwrap();
        let serving = ca
            .issue_serving(&["localhost", "127.0.0.1"], Duration::from_secs(600))
            .unwrap();
        assert!(serving.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(serving.key_pem.contains("PRIVATE KEY"));

        // rustls accepts it for 127.0.0.1 with only the CA as a root.
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .unwrap();
        let other = ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn names_must_be_dns_names_or_ips() {
        let ca = Ca::generate("ca", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            ca.issue_serving(&["not a name"], Duration::from_secs(60)),
            Err(PkiError::BadName(_))
        ));
    }
}
