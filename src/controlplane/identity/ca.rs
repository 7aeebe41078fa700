//! The mesh CA the control plane signs workload certificates with, and the trust bundle it
//! hands out with them: both from the Secret `skein-system/skein-ca` (written once by the
//! operator, see [`crate::operator::certs`]), reloaded whenever the Secret changes.
//!
//! The bundle is the Secret's `ca.crt` when it has one (during a CA rotation it holds the old
//! and the new root), else its `tls.crt`. A Secret that becomes unusable (or is deleted) is
//! logged and the last good CA stays in use: refusing every certificate would take the mesh
//! down with it.

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::api::names;
use crate::operator::certs::{CertError, ca_from_secret};
use crate::operator::desired::CA_SECRET;
use crate::pki::Ca;

/// The CA and the roots certificates it signs chain to.
pub struct Signer {
    pub ca: Ca,
    /// PEM, one or more roots.
    pub bundle_pem: String,
}

/// Pure: the CA Secret → the signer, or what is wrong with the Secret.
pub fn signer_from_secret(secret: &Secret) -> Result<Signer, CertError> {
    let ca = ca_from_secret(secret)?;
    let bundle = secret
        .data
        .as_ref()
        .and_then(|data| data.get("ca.crt"))
        .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
        .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"));
    let bundle_pem = bundle.unwrap_or_else(|| ca.pem.cert_pem.clone());
    Ok(Signer { ca, bundle_pem })
}

/// The current signer, if the Secret was ever read successfully.
#[derive(Default)]
pub struct CaStore {
    current: RwLock<Option<Arc<Signer>>>,
    /// Why the Secret as last read cannot be used (then the last good CA, if any, still signs).
    problem: RwLock<Option<String>>,
}

impl CaStore {
    pub fn current(&self) -> Option<Arc<Signer>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set(&self, signer: Signer) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(signer));
    }

    /// Why the mesh CA cannot sign now, if it cannot: the Secret is unusable (say, its CA
    /// expired or is not valid yet), or the CA read earlier has expired since. `None` also
    /// before the Secret is first read (nothing is wrong yet).
    pub fn unusable(&self) -> Option<String> {
        if let Some(problem) = self
            .problem
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(problem);
        }
        let current = self.current()?;
        let info = crate::pki::CertInfo::parse(&current.ca.pem.cert_pem).ok()?;
        crate::operator::certs::validity_problem(&info, time::OffsetDateTime::now_utc())
            .map(|problem| format!("secret {}/{CA_SECRET} {problem}", names::MESH_NAMESPACE))
    }

    fn set_problem(&self, problem: Option<String>) {
        *self.problem.write().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Follows the CA Secret for as long as it is polled.
    pub async fn watch(self: Arc<Self>, client: kube::Client) {
        let secrets: Api<Secret> = Api::namespaced(client, names::MESH_NAMESPACE);
        let only_ca = watcher::Config::default().fields(&format!("metadata.name={CA_SECRET}"));
        watcher(secrets, only_ca)
            .default_backoff()
            .for_each(|event| {
                match event {
                    Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                        self.load(&secret);
                    }
                    Ok(watcher::Event::Delete(_)) => tracing::warn!(
                        secret = CA_SECRET,
                        namespace = names::MESH_NAMESPACE,
                        "the mesh CA Secret was deleted: still signing with the last CA read"
                    ),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(err) => tracing::warn!(error = %err, "watching the mesh CA Secret"),
                }
                futures::future::ready(())
            })
            .await;
    }

    fn load(&self, secret: &Secret) {
        match signer_from_secret(secret) {
            Ok(signer) => {
                tracing::info!(
                    roots = signer.bundle_pem.matches("BEGIN CERTIFICATE").count(),
                    "loaded the mesh CA"
                );
                self.set(signer);
                self.set_problem(None);
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    "the mesh CA Secret is unusable: keeping the last CA read (if any)"
                );
                self.set_problem(Some(err.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn the_bundle_is_ca_crt_when_present_else_the_ca_itself() {
        let ca = Ca::generate("test-ca", Duration::from_secs(3600)).unwrap();
        let other = Ca::generate("next-ca", Duration::from_secs(3600)).unwrap();
        let (cert, key) = (ca.pem.cert_pem.as_str(), ca.pem.key_pem.as_str());

        let alone = signer_from_secret(&secret(&[("tls.crt", cert), ("tls.key", key)])).unwrap();
        assert_eq!(alone.bundle_pem, cert);

        let both = format!("{cert}{}", other.pem.cert_pem);
        let rotating = signer_from_secret(&secret(&[
            ("tls.crt", cert),
            ("tls.key", key),
            ("ca.crt", &both),
        ]))
        .unwrap();
        assert_eq!(rotating.bundle_pem, both);
        assert_eq!(rotating.ca.pem.cert_pem, cert, "signs with tls.crt/tls.key");

        let err = signer_from_secret(&secret(&[("tls.crt", cert)]))
            .err()
            .expect("no key");
        assert!(err.to_string().contains("tls.key"), "{err}");
    }

    #[test]
    fn a_bad_secret_keeps_the_last_signer() {
        let store = CaStore::default();
        assert!(store.current().is_none());
        let ca = Ca::generate("test-ca", Duration::from_secs(3600)).unwrap();
        store.load(&secret(&[
            ("tls.crt", &ca.pem.cert_pem),
            ("tls.key", &ca.pem.key_pem),
        ]));
        store.load(&secret(&[("tls.crt", "garbage")]));
        let kept = store.current().expect("kept");
        assert_eq!(kept.ca.pem.cert_pem, ca.pem.cert_pem);
    }
}
