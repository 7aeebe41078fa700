//! The mesh CA, the identity issuer and the webhook serving certificate, kept in Secrets in the
//! mesh namespace.
//!
//! The CA Secret (`skein-ca`, type `kubernetes.io/tls`) is created once and never overwritten:
//! a user brings their own CA by creating it first. It is not owned by the MeshConfig, so an
//! uninstall keeps it (reinstalling keeps the same root of trust); delete it by hand to start
//! afresh. The webhook certificate Secret is owned and renewed well before it expires.
//!
//! The identity issuer Secret (`skein-identity-issuer`) holds an intermediate CA signed by the
//! root in `skein-ca`, and the roots: the control plane signs workload certificates with it and
//! cannot read `skein-ca`, so a compromised control plane leaks a short-lived intermediate,
//! never the root. Owned, renewed at two thirds of [`ISSUER_VALIDITY`], and re-issued when the
//! root in `skein-ca` changes.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use time::OffsetDateTime;

use super::desired::{CA_SECRET, ISSUER_SECRET, WEBHOOK_TLS_SECRET, labels};
use crate::api::{MeshConfig, names};
use crate::pki::{Ca, CertInfo, CertifiedKeyPem, PkiError};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const WEBHOOK_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the identity issuer (never beyond the root's): renewed at two thirds, so ten
/// days of operator downtime pass before the control plane runs out of a CA to sign with, and a
/// leaked intermediate is worthless within a month.
pub const ISSUER_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Common name of the intermediate CA.
const ISSUER_NAME: &str = "skein-identity-issuer";

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

/// The mesh CA (root) and its trust bundle.
pub type CaAndBundle = (Ca, String);

/// The CA from its Secret (and its bundle: `ca.crt`, else `tls.crt`), generating and storing
/// one if there is none.
pub async fn load_or_create_ca(client: &Client) -> Result<CaAndBundle, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), names::MESH_NAMESPACE);
    let kube_error = |source| CertError::Kube {
        name: CA_SECRET,
        source,
    };
    if let Some(secret) = secrets.get_opt(CA_SECRET).await.map_err(kube_error)? {
        return ca_and_bundle(&secret, CA_SECRET);
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
        Ok(_) => {
            let bundle = ca.pem.cert_pem.clone();
            Ok((ca, bundle))
        }
        // Another replica (or the user) created it first: use theirs, never overwrite it.
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let secret = secrets.get(CA_SECRET).await.map_err(kube_error)?;
            ca_and_bundle(&secret, CA_SECRET)
        }
        Err(source) => Err(kube_error(source)),
    }
}

/// Pure: the CA Secret → the CA, or a message saying exactly what is wrong with the Secret.
pub fn ca_from_secret(secret: &Secret) -> Result<Ca, CertError> {
    tls_ca_from_secret(secret, CA_SECRET)
}

/// Pure: a CA Secret `name` (the mesh CA's, the identity issuer's) → its CA and its bundle
/// (`ca.crt`, else `tls.crt`), or what is wrong with the Secret.
pub fn ca_and_bundle(secret: &Secret, name: &'static str) -> Result<CaAndBundle, CertError> {
    let ca = tls_ca_from_secret(secret, name)?;
    let bundle = secret
        .data
        .as_ref()
        .and_then(|data| data.get("ca.crt"))
        .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
        .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"));
    let bundle_pem = bundle.unwrap_or_else(|| ca.pem.cert_pem.clone());
    Ok((ca, bundle_pem))
}

fn tls_ca_from_secret(secret: &Secret, name: &'static str) -> Result<Ca, CertError> {
    let invalid_ca = |problem: String| CertError::CaSecretInvalid {
        namespace: names::MESH_NAMESPACE,
        name,
        problem,
    };
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

/// Pure: the identity issuer to store for `root`: the stored one while it chains to `root`
/// and is not due for renewal, else a new one. Its `cert_pem` is the intermediate, then
/// `root`'s certificate.
pub fn issuer_for(
    root: &Ca,
    stored: Option<&Secret>,
    now: OffsetDateTime,
) -> Result<(CertifiedKeyPem, bool), PkiError> {
    match stored.and_then(|secret| usable_issuer(secret, root, now)) {
        Some(kept) => Ok((kept, false)),
        None => Ok((root.issue_intermediate(ISSUER_NAME, ISSUER_VALIDITY)?, true)),
    }
}

fn usable_issuer(secret: &Secret, root: &Ca, now: OffsetDateTime) -> Option<CertifiedKeyPem> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let (cert_pem, key_pem) = (text("tls.crt")?, text("tls.key")?);
    let certs = crate::controlplane::identity::trust::certs_of(&cert_pem);
    let root_cert = crate::controlplane::identity::trust::TrustedCert::parse(&root.pem.cert_pem)?;
    let [_, chains_to] = certs.as_slice() else {
        return None;
    };
    if chains_to.fingerprint != root_cert.fingerprint {
        return None; // signed by an earlier root
    }
    Ca::from_pem(&cert_pem, &key_pem).ok()?;
    let info = CertInfo::parse(&cert_pem).ok()?;
    (validity_problem(&info, now).is_none() && !info.needs_renewal(now))
        .then_some(CertifiedKeyPem { cert_pem, key_pem })
}

/// Keeps the identity issuer Secret current for `root` and its `bundle` (see
/// [`issuer_for`]); the bundle is rewritten whenever `skein-ca`'s changes.
pub async fn ensure_issuer(
    client: &Client,
    (root, bundle): &CaAndBundle,
    mc: &MeshConfig,
) -> Result<(), CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), names::MESH_NAMESPACE);
    let kube_error = |source| CertError::Kube {
        name: ISSUER_SECRET,
        source,
    };
    let stored = secrets.get_opt(ISSUER_SECRET).await.map_err(kube_error)?;
    let (issuer, new) = issuer_for(root, stored.as_ref(), OffsetDateTime::now_utc())?;
    let secret = tls_secret(
        ISSUER_SECRET,
        &issuer,
        Some(bundle),
        labels("control-plane", mc.spec.effective_version()),
        Some(super::desired::owner_reference(mc)),
    );
    if stored
        .as_ref()
        .is_some_and(|s| s.data == secret.data && s.type_ == secret.type_)
    {
        return Ok(());
    }
    // A Secret of another type under the issuer's name (made by hand, say) cannot be turned
    // into ours: the type is immutable. The name is the operator's, so it is replaced.
    if let Some(found) = stored.as_ref().filter(|s| s.type_ != secret.type_) {
        tracing::warn!(
            secret = ISSUER_SECRET,
            found = found.type_.as_deref().unwrap_or("Opaque"),
            "replacing a Secret of the wrong type with the identity issuer"
        );
        secrets
            .delete(ISSUER_SECRET, &Default::default())
            .await
            .map_err(kube_error)?;
    }
    apply_secret(&secrets, &secret).await.map_err(kube_error)?;
    if new {
        tracing::info!(
            secret = ISSUER_SECRET,
            "issued a new identity issuer (intermediate CA) from the mesh CA"
        );
    }
    Ok(())
}

/// Server-side applies a Secret of ours.
async fn apply_secret(secrets: &Api<Secret>, secret: &Secret) -> Result<(), kube::Error> {
    let mut body = serde_json::to_value(secret).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    secrets
        .patch(
            name,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(())
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
    fn the_issuer_is_kept_renewed_at_two_thirds_and_reissued_for_a_new_root() {
        let root = Ca::generate("root", Duration::from_secs(365 * 24 * 3600)).unwrap();
        let now = OffsetDateTime::now_utc();
        let (first, new) = issuer_for(&root, None, now).unwrap();
        assert!(new);
        let stored = |issuer: &CertifiedKeyPem| {
            secret_with(&[
                ("tls.crt", &issuer.cert_pem),
                ("tls.key", &issuer.key_pem),
                ("ca.crt", &root.pem.cert_pem),
            ])
        };
        let info = CertInfo::parse(&first.cert_pem).unwrap();
        let lifetime = info.not_after - info.not_before;
        assert!(
            lifetime >= ISSUER_VALIDITY && lifetime <= ISSUER_VALIDITY + Duration::from_secs(600),
            "{lifetime}"
        );
        // Kept while it chains to the root, until two thirds of its lifetime.
        let day = time::Duration::days(1);
        for at in [now, now + 19 * day] {
            let (kept, new) = issuer_for(&root, Some(&stored(&first)), at).unwrap();
            assert!(!new);
            assert_eq!(kept, first);
        }
        let (renewed, new) = issuer_for(&root, Some(&stored(&first)), now + 21 * day).unwrap();
        assert!(new && renewed != first, "renewed after two thirds");
        // A new root in skein-ca: a new intermediate, chaining to it.
        let other = Ca::generate("other", Duration::from_secs(3600)).unwrap();
        let (moved, new) = issuer_for(&other, Some(&stored(&first)), now).unwrap();
        assert!(new);
        assert!(moved.cert_pem.ends_with(&other.pem.cert_pem));
        let info = CertInfo::parse(&moved.cert_pem).unwrap();
        assert!(
            info.not_after <= CertInfo::parse(&other.pem.cert_pem).unwrap().not_after,
            "never outlives its root"
        );
        // What the control plane reads: a CA chaining to the root, and the roots.
        let (ca, bundle) = ca_and_bundle(&stored(&first), ISSUER_SECRET).unwrap();
        assert_eq!(ca.pem.cert_pem, first.cert_pem);
        assert_eq!(bundle, root.pem.cert_pem);
        // Garbage is replaced, and says which Secret it is when read.
        let broken = secret_with(&[("tls.crt", "junk"), ("tls.key", "junk")]);
        assert!(issuer_for(&root, Some(&broken), now).unwrap().1);
        let err = ca_and_bundle(&broken, ISSUER_SECRET).err().unwrap();
        assert!(
            err.to_string()
                .starts_with("secret skein-system/skein-identity-issuer does not hold a usable CA"),
            "{err}"
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
