//! Which CA certificates proxies trust, and why a CA stays trusted after it leaves the Secret.
//!
//! The bundle every proxy gets is the union of:
//! - the Secret's `ca.crt` (or its `tls.crt` when there is no `ca.crt`),
//! - the CA that signs now, and the one about to sign (a rotation's new CA must be trusted
//!   everywhere before the first certificate it signs is handed out),
//! - every CA that signed a certificate still valid for a pod that still exists, from the
//!   [`Ledger`].
//!
//! The last is what makes a rotation safe to get wrong: a root removed from `ca.crt` while
//! certificates chaining to it are alive stays trusted until the last of them expires, and the
//! MeshConfig status says so (`status.trust`), instead of breaking those connections.
//!
//! Everything here is pure; [`super::ca`] reads the Secret and keeps the ledger in the
//! ConfigMap [`LEDGER_CONFIGMAP`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::pki::CertInfo;

/// `skein-system/<this>`: the CAs that signed certificates still valid, and until when.
pub const LEDGER_CONFIGMAP: &str = "skein-ca-issuers";

/// One CA certificate of a bundle, as PEM with what is shown about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedCert {
    /// One PEM certificate, ending with a newline.
    pub pem: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    pub subject: String,
    pub not_after: SystemTime,
}

impl TrustedCert {
    /// The first certificate of `pem`.
    pub fn parse(pem: &str) -> Option<Self> {
        pem_blocks(pem).next().and_then(parse_block)
    }
}

/// Every certificate of a PEM bundle; what is not a parsable certificate is skipped.
pub fn certs_of(bundle_pem: &str) -> Vec<TrustedCert> {
    pem_blocks(bundle_pem).filter_map(parse_block).collect()
}

fn pem_blocks(pem: &str) -> impl Iterator<Item = &str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = pem;
    std::iter::from_fn(move || {
        let start = rest.find(BEGIN)?;
        let end = rest[start..].find(END)? + start + END.len();
        let block = &rest[start..end];
        rest = &rest[end..];
        Some(block)
    })
}

fn parse_block(block: &str) -> Option<TrustedCert> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(block.as_bytes()).ok()?;
    let info = CertInfo::parse(block).ok()?;
    Some(TrustedCert {
        pem: format!("{block}\n"),
        fingerprint: sha256_hex(&pem.contents),
        subject: info.subject,
        not_after: info.not_after.into(),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A CA that signed workload certificates, and which pods hold one until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRecord {
    pub subject: String,
    /// The CA certificate, PEM: what keeps being trusted after it leaves the Secret.
    pub certificate: String,
    /// `namespace/pod` → when the last certificate it signed for that pod expires (rounded up:
    /// see [`Ledger::record`]). A deleted pod's certificate is dead: it is forgotten.
    pub pods: BTreeMap<String, Timestamp>,
}

impl IssuerRecord {
    /// When the last live certificate it signed expires.
    pub fn live_until(&self, now: SystemTime) -> Option<SystemTime> {
        self.pods
            .values()
            .map(|until| SystemTime::from(*until))
            .filter(|until| *until > now)
            .max()
    }
}

/// The CAs that signed certificates, by fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    issuers: BTreeMap<String, IssuerRecord>,
}

impl Ledger {
    /// Notes that `issuer` signed a certificate for `pod` (`namespace/name`) valid until
    /// `not_after`, with `lifetime`. Returns whether the ledger changed (and should be stored).
    /// The time is rounded up by a fifth of the lifetime, so a later certificate within that
    /// changes nothing.
    pub fn record(
        &mut self,
        issuer: &TrustedCert,
        pod: &str,
        not_after: SystemTime,
        lifetime: Duration,
    ) -> bool {
        let record = self
            .issuers
            .entry(issuer.fingerprint.clone())
            .or_insert_with(|| IssuerRecord {
                subject: issuer.subject.clone(),
                certificate: issuer.pem.clone(),
                pods: BTreeMap::new(),
            });
        let covered = record
            .pods
            .get(pod)
            .is_some_and(|until| SystemTime::from(*until) >= not_after);
        if covered {
            return false;
        }
        let Ok(until) = Timestamp::try_from(not_after + lifetime / 5) else {
            return false;
        };
        record.pods.insert(pod.to_owned(), until);
        true
    }

    /// Takes the later time of each pod in both (another replica's records, the stored ones).
    /// Returns whether this ledger changed.
    pub fn merge(&mut self, other: &Ledger) -> bool {
        let mut changed = false;
        for (fingerprint, theirs) in &other.issuers {
            let ours = self
                .issuers
                .entry(fingerprint.clone())
                .or_insert_with(|| IssuerRecord {
                    pods: BTreeMap::new(),
                    ..theirs.clone()
                });
            for (pod, until) in &theirs.pods {
                if ours.pods.get(pod).is_none_or(|mine| mine < until) {
                    ours.pods.insert(pod.clone(), *until);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Forgets expired certificates, those of pods that no longer exist (`exists` says), and
    /// CAs left with none. Returns whether anything was forgotten.
    pub fn prune(&mut self, now: SystemTime, exists: impl Fn(&str) -> bool) -> bool {
        let before = self.clone();
        for record in self.issuers.values_mut() {
            record
                .pods
                .retain(|pod, until| SystemTime::from(*until) > now && exists(pod));
        }
        self.issuers.retain(|_, record| !record.pods.is_empty());
        *self != before
    }

    /// The issuers with live certificates at `now`, and until when.
    pub fn live(&self, now: SystemTime) -> impl Iterator<Item = (&IssuerRecord, SystemTime)> {
        self.issuers
            .values()
            .filter_map(move |record| Some((record, record.live_until(now)?)))
    }

    /// As stored in the ConfigMap: one key per fingerprint, each a JSON [`IssuerRecord`].
    pub fn to_data(&self) -> BTreeMap<String, String> {
        self.issuers
            .iter()
            .filter_map(|(fingerprint, record)| {
                Some((fingerprint.clone(), serde_json::to_string(record).ok()?))
            })
            .collect()
    }

    /// From the ConfigMap's data; entries that do not parse are returned by key, and skipped.
    pub fn from_data(data: &BTreeMap<String, String>) -> (Self, Vec<String>) {
        let mut ledger = Ledger::default();
        let mut bad = Vec::new();
        for (fingerprint, json) in data {
            match serde_json::from_str::<IssuerRecord>(json) {
                Ok(record) => {
                    ledger.issuers.insert(fingerprint.clone(), record);
                }
                Err(_) => bad.push(fingerprint.clone()),
            }
        }
        (ledger, bad)
    }
}

/// Why a CA certificate is in the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// In the Secret's `ca.crt` (or its `tls.crt`, without one).
    Secret,
    /// The signing CA (or the next one), missing from `ca.crt`.
    Signing,
    /// Removed from the Secret, but certificates it signed are valid until then.
    Retained { until: SystemTime },
}

/// The bundle proxies get, and what is in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    pub bundle_pem: String,
    pub certs: Vec<(TrustedCert, Why)>,
}

impl Trust {
    /// The CAs kept only because certificates they signed are still alive.
    pub fn retained(&self) -> impl Iterator<Item = (&TrustedCert, SystemTime)> {
        self.certs.iter().filter_map(|(cert, why)| match why {
            Why::Retained { until } => Some((cert, *until)),
            _ => None,
        })
    }
}

/// The bundle from the Secret's bundle, the signing CAs and the ledger, at `now`.
pub fn trust(
    secret_bundle_pem: &str,
    signing: &[&TrustedCert],
    ledger: &Ledger,
    now: SystemTime,
) -> Trust {
    let mut certs: Vec<(TrustedCert, Why)> = Vec::new();
    let mut add = |cert: TrustedCert, why: Why| {
        if !certs.iter().any(|(c, _)| c.fingerprint == cert.fingerprint) {
            certs.push((cert, why));
        }
    };
    for cert in certs_of(secret_bundle_pem) {
        add(cert, Why::Secret);
    }
    for cert in signing {
        add((*cert).clone(), Why::Signing);
    }
    for (record, until) in ledger.live(now) {
        if let Some(cert) = TrustedCert::parse(&record.certificate) {
            add(cert, Why::Retained { until });
        }
    }
    let bundle_pem = certs.iter().map(|(cert, _)| cert.pem.as_str()).collect();
    Trust { bundle_pem, certs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    const HOUR: Duration = Duration::from_secs(3600);

    fn ca(name: &str) -> TrustedCert {
        let ca = Ca::generate(name, HOUR).unwrap();
        TrustedCert::parse(&ca.pem.cert_pem).expect("a CA certificate")
    }

    #[test]
    fn a_bundle_splits_into_its_certificates_and_skips_garbage() {
        let (a, b) = (ca("a"), ca("b"));
        let bundle = format!(
            "{}junk\n{}-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
            a.pem, b.pem
        );
        let certs = certs_of(&bundle);
        assert_eq!(certs, vec![a.clone(), b]);
        assert!(a.subject.contains("CN=a"), "{}", a.subject);
        assert_eq!(a.fingerprint.len(), 64);
    }

    #[test]
    fn the_signing_ca_is_trusted_even_when_ca_crt_lacks_it() {
        let (old, new) = (ca("old"), ca("new"));
        let trust = trust(
            &old.pem,
            &[&old, &new],
            &Ledger::default(),
            SystemTime::now(),
        );
        assert_eq!(trust.bundle_pem, format!("{}{}", old.pem, new.pem));
        assert_eq!(trust.certs[1].1, Why::Signing);
    }

    #[test]
    fn a_removed_root_stays_trusted_until_its_last_certificate_expires() {
        let (old, new) = (ca("old"), ca("new"));
        let now = SystemTime::now();
        let mut ledger = Ledger::default();
        assert!(ledger.record(&old, "demo/web-1", now + HOUR, HOUR));
        // The user removed the old root while a certificate it signed is valid for an hour.
        let during = trust(&new.pem, &[&new], &ledger, now);
        assert_eq!(during.bundle_pem, format!("{}{}", new.pem, old.pem));
        let (retained, until) = during.retained().next().expect("the old root is retained");
        assert_eq!(retained.fingerprint, old.fingerprint);
        assert!(
            until >= now + HOUR,
            "kept at least until the certificate expires"
        );

        let after = trust(&new.pem, &[&new], &ledger, now + 2 * HOUR);
        assert_eq!(
            after.bundle_pem, new.pem,
            "dropped once nothing chains to it"
        );
        assert!(ledger.prune(now + 2 * HOUR, |_| true));
        assert_eq!(ledger, Ledger::default());
    }

    #[test]
    fn a_deleted_pods_certificate_keeps_nothing_trusted() {
        let (old, new) = (ca("old"), ca("new"));
        let now = SystemTime::now();
        let mut ledger = Ledger::default();
        ledger.record(&old, "demo/gone", now + 24 * HOUR, 24 * HOUR);
        ledger.record(&old, "demo/alive", now + HOUR, HOUR);
        assert!(ledger.prune(now, |pod| pod != "demo/gone"));
        let trust = trust(&new.pem, &[&new], &ledger, now);
        let (_, until) = trust
            .retained()
            .next()
            .expect("the live pod's certificate keeps it");
        assert!(
            until < now + 2 * HOUR,
            "the deleted pod's day-long certificate does not count"
        );
        assert!(
            !ledger.prune(now, |pod| pod != "demo/gone"),
            "nothing more to forget"
        );
    }

    #[test]
    fn recording_rounds_up_so_a_fifth_of_the_lifetime_passes_between_stores() {
        let issuer = ca("ca");
        let now = SystemTime::now();
        let mut ledger = Ledger::default();
        let pod = "demo/web-1";
        assert!(ledger.record(&issuer, pod, now + HOUR, HOUR));
        let later = now + HOUR + HOUR / 10;
        assert!(!ledger.record(&issuer, pod, later, HOUR), "still covered");
        let later = now + HOUR + HOUR / 4;
        assert!(
            ledger.record(&issuer, pod, later, HOUR),
            "past the rounding"
        );
        assert!(
            ledger.record(&issuer, "demo/web-2", now + HOUR, HOUR),
            "another pod"
        );
    }

    #[test]
    fn ledgers_merge_by_the_later_time_and_round_trip_through_the_configmap() {
        let (a, b) = (ca("a"), ca("b"));
        let now = SystemTime::now();
        let mut ours = Ledger::default();
        ours.record(&a, "demo/web-1", now + HOUR, HOUR);
        let mut theirs = Ledger::default();
        theirs.record(&a, "demo/web-1", now + 2 * HOUR, HOUR);
        theirs.record(&b, "demo/web-2", now + HOUR, HOUR);
        assert!(ours.merge(&theirs));
        assert!(!ours.merge(&theirs), "nothing new the second time");
        assert_eq!(ours, theirs);

        let mut data = ours.to_data();
        data.insert("broken".into(), "{not json".into());
        let (back, bad) = Ledger::from_data(&data);
        assert_eq!(back, ours);
        assert_eq!(bad, vec!["broken".to_owned()]);
    }
}
