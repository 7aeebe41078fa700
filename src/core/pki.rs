//! Certificates: a mesh CA, the serving certificates it signs (the webhook's, the configuration
//! stream's) and workload certificates carrying a SPIFFE identity. Pure: PEM in, PEM out;
//! storing them is the caller's business.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::identity::SpiffeId;

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
    #[error("the CA certificate is not valid PEM/X.509: {0}")]
    BadCaCertificate(rcgen::Error),
    #[error("the CA key is not a valid PEM private key: {0}")]
    BadCaKey(rcgen::Error),
    #[error("the certificate is not valid PEM/X.509: {0}")]
    BadCertificate(String),
    #[error("the certificate signing request is not valid PEM/PKCS#10: {0}")]
    BadCsr(rcgen::Error),
    #[error("the certificate carries no single spiffe:// URI name: {0}")]
    NoIdentity(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKeyPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority able to sign serving certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
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
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A CA from its PEM certificate and key (one a user brought, or one stored earlier).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::BadCaKey)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(PkiError::BadCaCertificate)?;
        Ok(Self {
            issuer,
            pem: CertifiedKeyPem {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
        })
    }

    /// An intermediate CA signed by this one, for `validity` but never beyond this CA's own
    /// expiry: it may sign end-entity certificates only (path length 0). Its `cert_pem` is the
    /// chain up to this CA: the intermediate, then this CA's certificate, so whoever holds it
    /// knows which root it chains to.
    pub fn issue_intermediate(
        &self,
        common_name: &str,
        validity: Duration,
    ) -> Result<CertifiedKeyPem, PkiError> {
        let generate = |what| move |source| PkiError::Generate { what, source };
        let key = KeyPair::generate().map_err(generate("the intermediate CA key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        self.set_validity(&mut params, validity);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate("the intermediate CA certificate"))?;
        Ok(CertifiedKeyPem {
            cert_pem: format!("{}{}", cert.pem(), first_cert_pem(&self.pem.cert_pem)),
            key_pem: key.serialize_pem(),
        })
    }

    /// `validity` from now, cut at this CA's own expiry: a certificate outliving the CA that
    /// signed it would stop verifying before its end.
    fn set_validity(&self, params: &mut CertificateParams, validity: Duration) {
        set_validity(params, validity);
        if let Ok(own) = CertInfo::parse(&self.pem.cert_pem)
            && own.not_after < params.not_after
        {
            params.not_after = own.not_after;
        }
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
        self.set_validity(&mut params, validity);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate("a serving certificate"))?;
        Ok(CertifiedKeyPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A workload certificate for `id`, valid for `validity`, over the public key of a PKCS#10
    /// request. Only the key is taken from the request: names, usages and validity are the CA's
    /// decision, so a request cannot ask for more than the identity it was authenticated as.
    /// Usable as both TLS client and server (a proxy is both).
    pub fn issue_workload(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let generate = |what| move |source| PkiError::Generate { what, source };
        let mut request =
            rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = id
            .to_string()
            .try_into()
            .map_err(generate("the identity's URI name"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.set_validity(&mut params, validity);
        request.params = params;
        let cert = request
            .signed_by(&self.issuer)
            .map_err(generate("a workload certificate"))?;
        Ok(cert.pem())
    }
}

/// Validity and names of a PEM certificate, for renewal decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DNS names and IP addresses (as text) of the subjectAltName extension.
    pub names: Vec<String>,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
    pub subject: String,
}

impl CertInfo {
    pub fn parse(cert_pem: &str) -> Result<Self, PkiError> {
        use x509_parser::extensions::GeneralName;
        let bad = |e: &dyn std::fmt::Display| PkiError::BadCertificate(e.to_string());
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| bad(&e))?;
        let cert = pem.parse_x509().map_err(|e| bad(&e))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| bad(&e))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                        GeneralName::IPAddress(bytes) => ip_text(bytes),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            names,
            issuer: cert.issuer().to_string(),
            subject: cert.subject().to_string(),
        })
    }

    /// Renew once less than a third of the lifetime is left: well before expiry, with time to
    /// retry if the operator is down for a while.
    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        let lifetime = self.not_after - self.not_before;
        now >= self.not_after - lifetime / 3
    }
}

/// What a peer's workload certificate says: its identity and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadCertInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCertInfo {
    /// Reads a DER certificate (as a TLS handshake delivers it). Exactly one `spiffe://` URI
    /// name is required: a certificate naming two identities names none.
    pub fn parse_der(der: &[u8]) -> Result<Self, PkiError> {
        use x509_parser::extensions::GeneralName;
        use x509_parser::prelude::FromDer;
        let bad = |e: &dyn std::fmt::Display| PkiError::BadCertificate(e.to_string());
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| bad(&e))?;
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .map_err(|e| bad(&e))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [uri] = uris.as_slice() else {
            return Err(PkiError::NoIdentity(format!("{} found", uris.len())));
        };
        let id = uri
            .parse::<SpiffeId>()
            .map_err(|e| PkiError::NoIdentity(e.to_string()))?;
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(Self {
            id,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        _ => None,
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

/// The first certificate of a PEM text (with its trailing newline), or "" if there is none.
pub fn first_cert_pem(pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    pem.find(BEGIN)
        .and_then(|start| {
            let end = pem[start..].find(END)? + start + END.len();
            Some(format!("{}\n", &pem[start..end]))
        })
        .unwrap_or_default()
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

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
    fn a_stored_ca_signs_again_and_certificates_report_their_validity() {
        let original = Ca::generate("skein-ca", Duration::from_secs(3600)).unwrap();
        let reloaded = Ca::from_pem(&original.pem.cert_pem, &original.pem.key_pem).unwrap();
        let serving = reloaded
            .issue_serving(&["svc.example", "10.0.0.1"], Duration::from_secs(300))
            .unwrap();
        let info = CertInfo::parse(&serving.cert_pem).unwrap();
        assert_eq!(info.names, ["svc.example", "10.0.0.1"]);
        assert_eq!(
            info.issuer,
            CertInfo::parse(&original.pem.cert_pem).unwrap().subject
        );
        let now = OffsetDateTime::now_utc();
        assert!(!info.needs_renewal(now));
        assert!(info.needs_renewal(now + Duration::from_secs(250)));
        assert!(matches!(
            Ca::from_pem("junk", &original.pem.key_pem),
            Err(PkiError::BadCaCertificate(_))
        ));
        assert!(matches!(
            Ca::from_pem(&original.pem.cert_pem, "junk"),
            Err(PkiError::BadCaKey(_))
        ));
    }

    #[test]
    fn workload_certificates_carry_only_the_identity_the_ca_chose() {
        let ca = Ca::generate("skein-ca", Duration::from_secs(3600)).unwrap();
        let key = KeyPair::generate().unwrap();
        // The request asks for a DNS name and another identity: neither is granted.
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        asked.subject_alt_names.push(SanType::URI(
            "spiffe://td/ns/kube-system/sa/admin".try_into().unwrap(),
        ));
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let id = SpiffeId::new("td", "demo", "web");
        let pem = ca
            .issue_workload(&csr, &id, Duration::from_secs(600))
            .unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let info = WorkloadCertInfo::parse_der(&der).unwrap();
        assert_eq!(info.id, id);
        let lifetime = info.not_after.duration_since(info.not_before).unwrap();
        assert!(
            lifetime <= Duration::from_secs(600) + BACKDATE,
            "{lifetime:?}"
        );
        assert!(CertInfo::parse(&pem).unwrap().names.is_empty());
        assert!(matches!(
            ca.issue_workload("junk", &id, Duration::from_secs(60)),
            Err(PkiError::BadCsr(_))
        ));
        // A serving certificate has no identity.
        let serving = ca
            .issue_serving(&["x.example"], Duration::from_secs(60))
            .unwrap();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).unwrap();
        assert!(matches!(
            WorkloadCertInfo::parse_der(&der),
            Err(PkiError::NoIdentity(_))
        ));
    }

    /// A server certificate verified as a rustls client does, trusting `root` alone and given
    /// the `intermediates` the server sent.
    fn verify_with_root(root: &Ca, leaf_pem: &str, intermediates: &[&str]) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&root.pem.cert_pem)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let intermediates: Vec<_> = intermediates.iter().map(|pem| der(pem)).collect();
        let name = ServerName::try_from("x.example").unwrap();
        verifier
            .verify_server_cert(&der(leaf_pem), &intermediates, &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn an_intermediate_signs_certificates_that_verify_against_the_root_with_the_chain() {
        let hour = Duration::from_secs(3600);
        let root = Ca::generate("root", hour).unwrap();
        let issued = root
            .issue_intermediate("issuer", Duration::from_secs(30 * 24 * 3600))
            .unwrap();
        // The chain to the root: the intermediate, then the root.
        let parsed = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(issued.cert_pem.ends_with(&root.pem.cert_pem));
        let info = CertInfo::parse(&issued.cert_pem).unwrap();
        let root_info = CertInfo::parse(&root.pem.cert_pem).unwrap();
        assert_eq!(info.issuer, root_info.subject);
        assert!(
            info.not_after <= root_info.not_after,
            "never outlives the root: {} > {}",
            info.not_after,
            root_info.not_after
        );

        let intermediate = Ca::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        let leaf = intermediate
            .issue_serving(&["x.example"], 2 * hour)
            .unwrap();
        let leaf_info = CertInfo::parse(&leaf.cert_pem).unwrap();
        assert!(leaf_info.not_after <= info.not_after, "nor does its leaf");
        let intermediate_pem = first_cert_pem(&issued.cert_pem);
        assert!(verify_with_root(
            &root,
            &leaf.cert_pem,
            &[&intermediate_pem]
        ));
        assert!(
            !verify_with_root(&root, &leaf.cert_pem, &[]),
            "without the intermediate, nothing links the leaf to the root"
        );
        let other = Ca::generate("other", hour).unwrap();
        assert!(!verify_with_root(
            &other,
            &leaf.cert_pem,
            &[&intermediate_pem]
        ));

        // Path length 0: a CA the intermediate signed is not a CA to anyone.
        let nested = intermediate.issue_intermediate("nested", hour).unwrap();
        let nested = Ca::from_pem(&nested.cert_pem, &nested.key_pem).unwrap();
        let deep = nested.issue_serving(&["x.example"], hour).unwrap();
        assert!(!verify_with_root(
            &root,
            &deep.cert_pem,
            &[&first_cert_pem(&nested.pem.cert_pem), &intermediate_pem]
        ));
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
