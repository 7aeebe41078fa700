//! The mesh CA and the webhook serving certificate, kept in Secrets in the mesh namespace.
//!
//! The CA Secret (`skein-ca`, type `kubernetes.io/tls`) is created once and never overwritten:
//! a user brings their own CA by creating it first. It is not owned by the MeshConfig, so an
//! uninstall keeps it (reinstalling keeps the same root of trust); delete it by hand to start
//! afresh. The webhook certificate Secret is owned and renewed well before it expires.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use time::OffsetDateTime;

use super::desired::{CA_SECRET, WEBHOOK_TLS_SECRET, labels};
use crate::api::{MeshConfig, names};
use crate::pki::{Ca, CertInfo, CertifiedKeyPem, PkiError};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const WEBHOOK_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The user-visible reason is `CASecretInvalid`.
    #[error("secret {namespace}/{name} {problem}")]
    CaSecretInvalid {
        namespace: &'static str,
        name: &'static str,
        problem: String,
    },
    #[error("generating certificates: {0}")]
    Pki(#[from] PkiError),
    #[error("reading or writing secret {name}: {source}")]
    Kube {
        name: &'static str,
        source: kube::Error,
    },
}

impl CertError {
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::CaSecretInvalid { .. } => "CASecretInvalid",
            CertError::Pki(_) => "CertificateGenerationFailed",
            CertError::Kube { .. } => "SecretAccessFailed",
        }
    }
}

fn invalid_ca(problem: impl Into<String>) -> CertError {
    CertError::CaSecretInvalid {
        namespace: names::MESH_NAMESPACE,
        name: CA_SECRET,
        problem: problem.into(),
    }
}

/// The CA from its Secret, generating and storing one if there is none.
pub async fn load_or_create_ca(client: &Client) -> Result<Ca, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), names::MESH_NAMESPACE);
    let kube_error = |source| CertError::Kube {
        name: CA_SECRET,
        source,
    };
    if let Some(secret) = secrets.get_opt(CA_SECRET).await.map_err(kube_error)? {
        return ca_from_secret(&secret);
    }
    let ca = Ca::generate("skein-mesh-ca", CA_VALIDITY)?;
    let secret = tls_secret(
        CA_SECRET,
        &ca.pem,
        None,
        labels("ca", names::SKEIN_VERSION),
        None,
    );
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(ca),
        // Another replica (or the user) created it first: use theirs, never overwrite it.
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let secret = secrets.get(CA_SECRET).await.map_err(kube_error)?;
            ca_from_secret(&secret)
        }
        Err(source) => Err(kube_error(source)),
    }
}

/// Pure: a CA Secret → the CA, or a message saying exactly what is wrong with the Secret.
pub fn ca_from_secret(secret: &Secret) -> Result<Ca, CertError> {
    let field = |key: &str| -> Result<String, CertError> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .ok_or_else(|| invalid_ca(format!("has no {key}")))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| invalid_ca(format!("has a {key} that is not PEM text")))
    };
    let (cert, key) = (field("tls.crt")?, field("tls.key")?);
    let ca = Ca::from_pem(&cert, &key)
        .map_err(|err| invalid_ca(format!("does not hold a usable CA: {err}")))?;
    // Everything it signed would be refused by every peer: say so rather than sign.
    let info = CertInfo::parse(&cert)
        .map_err(|err| invalid_ca(format!("does not hold a usable CA: {err}")))?;
    if let Some(problem) = validity_problem(&info, OffsetDateTime::now_utc()) {
        return Err(invalid_ca(problem));
    }
    Ok(ca)
}

/// Pure: why a CA certificate cannot sign now, if it cannot.
pub fn validity_problem(info: &CertInfo, now: OffsetDateTime) -> Option<String> {
    let at = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    if now >= info.not_after {
        Some(format!(
            "holds a CA certificate that expired at {}: replace tls.crt and tls.key (docs/ca-rotation.md)",
            at(info.not_after)
        ))
    } else if now < info.not_before {
        Some(format!(
            "holds a CA certificate that is not valid before {} (is a clock wrong?)",
            at(info.not_before)
        ))
    } else {
        None
    }
}

/// The webhook serving certificate for `dns_names`: the stored one while it is valid, signed by
/// `ca` and covers the names; otherwise a new one, stored (owned by the MeshConfig).
pub async fn ensure_webhook_cert(
    client: &Client,
    ca: &Ca,
    mc: &MeshConfig,
    dns_names: &[String],
) -> Result<CertifiedKeyPem, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), names::MESH_NAMESPACE);
    let kube_error = |source| CertError::Kube {
        name: WEBHOOK_TLS_SECRET,
        source,
    };
    let stored = secrets
        .get_opt(WEBHOOK_TLS_SECRET)
        .await
        .map_err(kube_error)?;
    if let Some(current) = stored
        .as_ref()
        .and_then(|s| usable_webhook_cert(s, ca, dns_names))
    {
        return Ok(current);
    }
    let names: Vec<&str> = dns_names.iter().map(String::as_str).collect();
    let issued = ca.issue_serving(&names, WEBHOOK_CERT_VALIDITY)?;
    let owner = super::desired::owner_reference(mc);
    let secret = tls_secret(
        WEBHOOK_TLS_SECRET,
        &issued,
        Some(&ca.pem.cert_pem),
        labels("control-plane", mc.spec.effective_version()),
        Some(owner),
    );
    let mut body = serde_json::to_value(&secret)
        .map_err(|e| CertError::Pki(PkiError::BadCertificate(e.to_string())))?;
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    secrets
        .patch(
            WEBHOOK_TLS_SECRET,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_error)?;
    tracing::info!(names = ?dns_names, "issued a new webhook serving certificate");
    Ok(issued)
}

/// Pure: the stored certificate, if it can stay.
fn usable_webhook_cert(secret: &Secret, ca: &Ca, dns_names: &[String]) -> Option<CertifiedKeyPem> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let (cert_pem, key_pem, ca_pem) = (text("tls.crt")?, text("tls.key")?, text("ca.crt")?);
    if ca_pem != ca.pem.cert_pem {
        return None; // signed by an earlier CA
    }
    let info = CertInfo::parse(&cert_pem).ok()?;
    let covers = dns_names.iter().all(|name| info.names.contains(name));
    (covers && !info.needs_renewal(OffsetDateTime::now_utc()))
        .then_some(CertifiedKeyPem { cert_pem, key_pem })
}

fn tls_secret(
    name: &str,
    pem: &CertifiedKeyPem,
    ca_pem: Option<&str>,
    labels: BTreeMap<String, String>,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Secret {
    let mut data = BTreeMap::from([
        (
            "tls.crt".to_owned(),
            ByteString(pem.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(pem.key_pem.clone().into_bytes()),
        ),
    ]);
    if let Some(ca_pem) = ca_pem {
        data.insert("ca.crt".to_owned(), ByteString(ca_pem.as_bytes().to_vec()));
    }
    let mut secret = Secret {
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Default::default()
    };
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = Some(names::MESH_NAMESPACE.to_owned());
    secret.metadata.labels = Some(labels);
    secret.metadata.owner_references = owner.map(|o| vec![o]);
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_outside_its_validity_cannot_sign_and_says_when() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let info = |from: i64, to: i64| CertInfo {
            not_before: now + time::Duration::seconds(from),
            not_after: now + time::Duration::seconds(to),
            names: vec![],
            issuer: String::new(),
            subject: String::new(),
        };
        assert_eq!(validity_problem(&info(-10, 10), now), None);
        let expired = validity_problem(&info(-20, -10), now).unwrap();
        assert!(
            expired.contains("expired at 2027-01-15T07:59:50Z"),
            "{expired}"
        );
        assert!(expired.contains("replace tls.crt and tls.key"), "{expired}");
        let early = validity_problem(&info(60, 120), now).unwrap();
        assert!(early.contains("not valid before"), "{early}");
    }

    fn secret_with(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_broken_ca_secret_says_what_is_wrong() {
        let ca = Ca::generate("ca", Duration::from_secs(3600)).unwrap();
        let no_key = ca_from_secret(&secret_with(&[("tls.crt", &ca.pem.cert_pem)]))
            .err()
            .unwrap();
        assert_eq!(
            no_key.to_string(),
            "secret skein-system/skein-ca has no tls.key"
        );
        assert_eq!(no_key.reason(), "CASecretInvalid");
        let garbage = ca_from_secret(&secret_with(&[
            ("tls.crt", "junk"),
            ("tls.key", &ca.pem.key_pem),
        ]))
        .err()
        .unwrap();
        assert!(
            garbage.to_string().contains("does not hold a usable CA"),
            "{garbage}"
        );
        assert!(
            ca_from_secret(&secret_with(&[
                ("tls.crt", &ca.pem.cert_pem),
                ("tls.key", &ca.pem.key_pem)
            ]))
            .is_ok()
        );
    }

    #[test]
    fn the_webhook_cert_is_kept_only_while_it_fits() {
        let ca = Ca::generate("ca", Duration::from_secs(3600)).unwrap();
        let names = vec!["cp.skein-system.svc".to_owned()];
        let cert = ca
            .issue_serving(&["cp.skein-system.svc"], Duration::from_secs(3600))
            .unwrap();
        let stored = secret_with(&[
            ("tls.crt", &cert.cert_pem),
            ("tls.key", &cert.key_pem),
            ("ca.crt", &ca.pem.cert_pem),
        ]);
        assert_eq!(
            usable_webhook_cert(&stored, &ca, &names),
            Some(cert.clone())
        );
        // New names, or a new CA → reissue.
        assert_eq!(
            usable_webhook_cert(&stored, &ca, &["other.example".to_owned()]),
            None
        );
        let other_ca = Ca::generate("other", Duration::from_secs(3600)).unwrap();
        assert_eq!(usable_webhook_cert(&stored, &other_ca, &names), None);
        // Close to expiry → reissue.
        let short = ca
            .issue_serving(&["cp.skein-system.svc"], Duration::from_secs(1))
            .unwrap();
        let stored = secret_with(&[
            ("tls.crt", &short.cert_pem),
            ("tls.key", &short.key_pem),
            ("ca.crt", &ca.pem.cert_pem),
        ]);
        assert_eq!(usable_webhook_cert(&stored, &ca, &names), None);
    }
}
