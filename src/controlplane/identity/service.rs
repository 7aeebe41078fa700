//! `skein.identity.v1alpha1.Identity/Certify`: a proxy's CSR in, its workload certificate and
//! the trust bundle out. Served on the configuration stream's port
//! ([`crate::controlplane::push::PushServer::with_identity`]).
//!
//! The identity is the authenticated pod's service account in the MeshConfig's
//! `mtls.trustDomain`; the lifetime is `mtls.workloadCertLifetime`. Both are read per request,
//! so a MeshConfig change applies to the next certificate (renewals pick it up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::authn::{Authenticate, bearer_token};
use super::ca::CaStore;
use crate::api::meshconfig::MtlsSpec;
use crate::pki::{self, PkiError};
use crate::xds::identity::identity_server::{Identity, IdentityServer};
use crate::xds::identity::{CertifyRequest, CertifyResponse};

/// The MeshConfig's `mtls` settings now (the active MeshConfig's, else the defaults).
pub type MtlsSettings = Arc<dyn Fn() -> MtlsSpec + Send + Sync>;

/// What was issued to which pod (`namespace/pod` → expiry), for `/debug/proxies` and
/// `skein proxy-status`. Only this replica's issuances: a proxy certified by another replica
/// shows none here.
#[derive(Default)]
pub struct IssuedCerts(Mutex<HashMap<(String, String), SystemTime>>);

impl IssuedCerts {
    pub fn record(&self, namespace: &str, pod: &str, not_after: SystemTime) {
        let mut issued = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        issued.retain(|_, expiry| *expiry > now);
        issued.insert((namespace.to_owned(), pod.to_owned()), not_after);
    }

    /// The expiry of the last certificate issued to the pod, while it is valid.
    pub fn expiry(&self, namespace: &str, pod: &str) -> Option<SystemTime> {
        let issued = self.0.lock().unwrap_or_else(|e| e.into_inner());
        issued
            .get(&(namespace.to_owned(), pod.to_owned()))
            .copied()
            .filter(|expiry| *expiry > SystemTime::now())
    }
}

pub struct IdentityService {
    pub ca: Arc<CaStore>,
    pub authn: Arc<dyn Authenticate>,
    pub mtls: MtlsSettings,
    pub issued: Arc<IssuedCerts>,
}

impl IdentityService {
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let token = bearer_token(request.metadata()).map_err(|e| e.status())?;
        let proxy = self
            .authn
            .authenticate(token)
            .await
            .map_err(|err| err.status())?;
        let signer = self
            .ca
            .current()
            .ok_or_else(|| Status::unavailable("the mesh CA is not loaded yet"))?;
        let mtls = (self.mtls)();
        let id = proxy.spiffe_id(&mtls.trust_domain);
        let lifetime = mtls.workload_cert_lifetime.as_std();
        let cert_pem = signer
            .ca
            .issue_workload(&request.get_ref().csr_pem, &id, lifetime)
            .map_err(|err| match err {
                PkiError::BadCsr(_) => Status::invalid_argument(err.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        let not_after = pki::CertInfo::parse(&cert_pem)
            .map(|info| SystemTime::from(info.not_after))
            .map_err(|err| Status::internal(err.to_string()))?;
        self.issued.record(&proxy.namespace, &proxy.pod, not_after);
        self.ca
            .record_issued(&signer, &proxy.namespace, &proxy.pod, not_after, lifetime);
        tracing::info!(
            %id,
            pod = %proxy.pod,
            namespace = %proxy.namespace,
            lifetime = %mtls.workload_cert_lifetime,
            "issued a workload certificate"
        );
        // The leaf, then the intermediate: peers hold only the roots.
        Ok(Response::new(CertifyResponse {
            cert_chain_pem: format!("{cert_pem}{}", signer.chain_pem),
            trust_bundle_pem: signer.bundle_pem.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::authn::FixedTokens;
    use super::*;
    use crate::pki::{Ca, WorkloadCertInfo};

    fn service(with_ca: bool) -> (IdentityService, Ca) {
        let ca = Ca::generate("test-ca", Duration::from_secs(3600)).unwrap();
        let store = Arc::new(CaStore::default());
        if with_ca {
            store.load_ca(
                Ca::from_pem(&ca.pem.cert_pem, &ca.pem.key_pem).unwrap(),
                ca.pem.cert_pem.clone(),
            );
        }
        let service = IdentityService {
            ca: store,
            authn: Arc::new(FixedTokens::pod("good", "demo", "web-1")),
            mtls: Arc::new(|| MtlsSpec {
                trust_domain: "example.org".into(),
                workload_cert_lifetime: crate::api::Duration::from_secs(600),
                ..MtlsSpec::default()
            }),
            issued: Arc::default(),
        };
        (service, ca)
    }

    fn request(token: Option<&str>, csr_pem: &str) -> Request<CertifyRequest> {
        let mut request = Request::new(CertifyRequest {
            csr_pem: csr_pem.to_owned(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::CertificateParams::new(vec!["attacker.example".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[tokio::test]
    async fn an_authenticated_pod_gets_its_service_accounts_identity_for_the_mesh_lifetime() {
        let (service, ca) = service(true);
        let answer = service
            .certify(request(Some("good"), &csr()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.trust_bundle_pem, ca.pem.cert_pem);
        let info = pki::CertInfo::parse(&answer.cert_chain_pem).unwrap();
        let workload = WorkloadCertInfo::parse_der(&x509_der(&answer.cert_chain_pem)).unwrap();
        assert_eq!(
            workload.id.to_string(),
            "spiffe://example.org/ns/demo/sa/web",
            "the CSR's names are ignored"
        );
        let lifetime = info.not_after - info.not_before;
        assert!(
            lifetime >= time::Duration::seconds(600)
                && lifetime <= time::Duration::seconds(600 + 600),
            "{lifetime}"
        );
        assert!(service.issued.expiry("demo", "web-1").is_some());
    }

    fn x509_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn refusals_have_clear_codes() {
        let (service, _) = service(true);
        let code = |status: Status| (status.code(), status.message().to_owned());
        let (no_token, message) = code(service.certify(request(None, &csr())).await.unwrap_err());
        assert_eq!(no_token, tonic::Code::Unauthenticated, "{message}");
        let (expired, message) = code(
            service
                .certify(request(Some("old"), &csr()))
                .await
                .unwrap_err(),
        );
        assert_eq!(expired, tonic::Code::Unauthenticated);
        assert!(message.contains("token has expired"), "{message}");
        let (bad_csr, message) = code(
            service
                .certify(request(Some("good"), "not a csr"))
                .await
                .unwrap_err(),
        );
        assert_eq!(bad_csr, tonic::Code::InvalidArgument, "{message}");
        let (no_ca, _) = code(
            self::service(false)
                .0
                .certify(request(Some("good"), &csr()))
                .await
                .unwrap_err(),
        );
        assert_eq!(no_ca, tonic::Code::Unavailable);
    }
}
