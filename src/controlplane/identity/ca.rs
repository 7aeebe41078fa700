//! The CA the control plane signs workload certificates with, and the trust bundle it hands
//! out with them and on the configuration stream: from the Secret
//! `skein-system/skein-identity-issuer` ([`ISSUER_SECRET`]), reloaded whenever it changes.
//!
//! That Secret holds an intermediate CA the operator issues from the mesh root in
//! `skein-system/skein-ca` and renews ([`crate::operator::certs::ensure_issuer`]): `tls.crt` is
//! the intermediate followed by the root it chains to, `ca.crt` the roots of `skein-ca`. The
//! control plane never reads `skein-ca` (its Role names only the Secrets it needs), so the
//! root's key stays out of its reach. Certificates it signs carry the intermediate with them;
//! peers verify them against the roots alone.
//!
//! What the bundle holds, and why a root removed from the Secret can stay in it, is
//! [`super::trust`]: it is made of roots, and the ledger records the root each certificate
//! chains to. This module is its I/O: the Secret's watch, the ledger of issuers kept in
//! the ConfigMap [`LEDGER_CONFIGMAP`], and a tick that lets a new CA start signing, and a
//! retained one go, when their time comes.
//!
//! A Secret that becomes unusable (or is deleted) is logged and the last good CA stays in use:
//! refusing every certificate would take the mesh down with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::trust::{LEDGER_CONFIGMAP, Ledger, Trust, TrustedCert, trust};
use crate::api::names;
use crate::operator::certs::CertError;
use crate::operator::desired::ISSUER_SECRET;
use crate::pki::Ca;

/// How long a new CA's certificate is in every proxy's bundle before it signs anything: the
/// stream delivers a bundle in well under a second; this leaves room for a slow proxy.
pub const PROPAGATION: Duration = Duration::from_secs(10);
/// How often a new CA's start and retained CAs' expiry are checked.
const TICK: Duration = Duration::from_secs(1);
/// How often the ledger is stored when it changed.
const STORE_EVERY: Duration = Duration::from_secs(5);
/// A pod certified this recently is kept in the ledger even if the pod cache has not seen it
/// yet (the cache follows the apiserver with a delay).
const NEW_POD_GRACE: Duration = Duration::from_secs(60);

/// Whether pod `namespace`/`name` exists (the control plane's pod cache).
pub type PodExists = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The CA that signs now, and the roots peers' certificates may chain to.
pub struct Signer {
    pub ca: Arc<Ca>,
    /// The root the CA chains to (the CA itself when it is a root), as the ledger records it.
    pub issuer: TrustedCert,
    /// PEM: the certificates sent after a leaf it signs (the intermediate; "" for a root).
    pub chain_pem: String,
    /// PEM: every CA certificate proxies trust now.
    pub bundle_pem: String,
}

/// Pure: the issuer Secret → its CA and its bundle (`ca.crt`, else `tls.crt`), or what is
/// wrong with the Secret.
pub fn ca_and_bundle(secret: &Secret) -> Result<(Ca, String), CertError> {
    crate::operator::certs::ca_and_bundle(secret, ISSUER_SECRET)
}

/// Pure: a signing CA's `tls.crt` (the CA, then the certificates up to its root) → what to send
/// after a leaf it signs, and the root. A lone certificate is its own root.
pub fn chain_and_root(cert_pem: &str) -> Option<(String, TrustedCert)> {
    let mut certs = super::trust::certs_of(cert_pem);
    let root = certs.pop()?;
    let chain = certs.iter().map(|cert| cert.pem.as_str()).collect();
    Some((chain, root))
}

#[derive(Default)]
struct State {
    /// The Secret's bundle as last read successfully.
    secret_bundle: String,
    signing: Option<(Arc<Ca>, TrustedCert)>,
    /// A new CA from the Secret, not trusted by proxies yet: it signs from the instant given.
    next: Option<(Arc<Ca>, TrustedCert, Instant)>,
    ledger: Ledger,
    /// The ledger changed since it was last stored.
    unstored: bool,
    /// `namespace/pod` → when this process last certified it.
    recently_certified: HashMap<String, Instant>,
    /// Why the Secret as last read cannot be used (then the last good CA, if any, still signs).
    problem: Option<String>,
    current: Option<Arc<Signer>>,
    trust: Option<Trust>,
}

/// The current signer, if the Secret was ever read successfully.
pub struct CaStore {
    state: Mutex<State>,
    /// The bundle proxies get on the stream ("" until the Secret is read).
    bundle: watch::Sender<String>,
    /// Set once the pod cache is synced: deleted pods' certificates leave the ledger.
    pods: OnceLock<PodExists>,
}

impl Default for CaStore {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            bundle: watch::Sender::new(String::new()),
            pods: OnceLock::new(),
        }
    }
}

impl CaStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current(&self) -> Option<Arc<Signer>> {
        self.state().current.clone()
    }

    /// The bundle proxies trust now; changes when a CA is added, starts signing, or is no
    /// longer needed.
    pub fn bundle(&self) -> watch::Receiver<String> {
        self.bundle.subscribe()
    }

    /// What the bundle holds and why (for `/debug`).
    pub fn trust(&self) -> Option<Trust> {
        self.state().trust.clone()
    }

    /// Why the mesh CA cannot sign now, if it cannot: the Secret is unusable (say, its CA
    /// expired or is not valid yet), or the CA read earlier has expired since. `None` also
    /// before the Secret is first read (nothing is wrong yet).
    pub fn unusable(&self) -> Option<String> {
        let state = self.state();
        if let Some(problem) = state.problem.clone() {
            return Some(problem);
        }
        let (ca, _) = state.signing.as_ref()?;
        let info = crate::pki::CertInfo::parse(&ca.pem.cert_pem).ok()?;
        crate::operator::certs::validity_problem(&info, time::OffsetDateTime::now_utc())
            .map(|problem| format!("secret {}/{ISSUER_SECRET} {problem}", names::MESH_NAMESPACE))
    }

    /// Takes a CA and bundle as read from the Secret. The first CA signs at once; a later one
    /// at once if proxies already trust its root (the same root: a renewed intermediate; or
    /// step 1 of docs/ca-rotation.md was done), else after [`PROPAGATION`], its root being in
    /// the bundle meanwhile.
    pub fn load_ca(&self, ca: Ca, bundle_pem: String) {
        let Some((_, cert)) = chain_and_root(&ca.pem.cert_pem) else {
            return;
        };
        let mut state = self.state();
        let new = Arc::new(ca);
        let trusted = state.trust.as_ref().is_some_and(|trust| {
            trust
                .certs
                .iter()
                .any(|(c, _)| c.fingerprint == cert.fingerprint)
        });
        let already_next = state
            .next
            .as_ref()
            .is_some_and(|(_, next, _)| next.fingerprint == cert.fingerprint);
        match &state.signing {
            // The same root (perhaps a renewed intermediate): it signs at once.
            Some((_, signing)) if signing.fingerprint == cert.fingerprint => {
                state.signing = Some((new, cert));
                state.next = None;
            }
            // Re-read while proxies learn to trust its root (the bundle holds it because it is
            // next, which is no proof they have it yet): keep waiting.
            Some(_) if already_next => {
                if let Some(next) = state.next.as_mut() {
                    next.0 = new;
                }
            }
            Some(_) if !trusted => {
                tracing::info!(
                    ca = %cert.subject,
                    after = ?PROPAGATION,
                    "a new mesh CA: it signs once every proxy trusts it"
                );
                state.next = Some((new, cert, Instant::now() + PROPAGATION));
            }
            _ => {
                state.signing = Some((new, cert));
                state.next = None;
            }
        }
        state.secret_bundle = bundle_pem;
        state.problem = None;
        self.refresh(&mut state, Instant::now(), SystemTime::now());
    }

    /// From now on, the certificates of pods that no longer exist stop keeping a CA trusted.
    pub fn follow_pods(&self, exists: PodExists) {
        let _ = self.pods.set(exists);
    }

    /// Notes a certificate `signer` issued to pod `namespace/pod`, valid until `not_after`.
    pub fn record_issued(
        &self,
        signer: &Signer,
        namespace: &str,
        pod: &str,
        not_after: SystemTime,
        lifetime: Duration,
    ) {
        let key = format!("{namespace}/{pod}");
        let mut state = self.state();
        let now = Instant::now();
        state
            .recently_certified
            .retain(|_, at| now.duration_since(*at) < NEW_POD_GRACE);
        state.recently_certified.insert(key.clone(), now);
        if state
            .ledger
            .record(&signer.issuer, &key, not_after, lifetime)
        {
            state.unstored = true;
            self.refresh(&mut state, now, SystemTime::now());
        }
    }

    /// Forgets expired certificates and those of deleted pods.
    fn prune(&self, state: &mut State, now: Instant, wall: SystemTime) {
        let recent = &state.recently_certified;
        let exists = |key: &str| {
            let known = self.pods.get().is_none_or(|exists| {
                key.split_once('/')
                    .is_some_and(|(namespace, pod)| exists(namespace, pod))
            });
            known
                || recent
                    .get(key)
                    .is_some_and(|at| now.duration_since(*at) < NEW_POD_GRACE)
        };
        if state.ledger.prune(wall, exists) {
            state.unstored = true;
        }
    }

    /// Recomputes the signer and the bundle; publishes the bundle when it changed.
    fn refresh(&self, state: &mut State, now: Instant, wall: SystemTime) {
        if state.next.as_ref().is_some_and(|(_, _, from)| now >= *from)
            && let Some((ca, cert, _)) = state.next.take()
        {
            tracing::info!(ca = %cert.subject, "the new mesh CA signs from now on");
            state.signing = Some((ca, cert));
        }
        let Some((ca, issuer)) = state.signing.clone() else {
            return;
        };
        let mut signing = vec![&issuer];
        if let Some((_, next, _)) = &state.next {
            signing.push(next);
        }
        let trust = trust(&state.secret_bundle, &signing, &state.ledger, wall);
        let bundle_changed = state
            .trust
            .as_ref()
            .is_none_or(|old| old.bundle_pem != trust.bundle_pem);
        if bundle_changed {
            for (cert, until) in trust.retained() {
                tracing::warn!(
                    ca = %cert.subject,
                    sha256 = %cert.fingerprint,
                    until = %crate::timestamp::rfc3339(until),
                    "a CA removed from the Secret stays trusted while certificates it signed are valid"
                );
            }
            tracing::info!(
                roots = trust.certs.len(),
                "the trust bundle changed: pushing it to every proxy"
            );
        }
        let signer_changed = state
            .current
            .as_ref()
            .is_none_or(|current| !Arc::ptr_eq(&current.ca, &ca) || bundle_changed);
        if signer_changed {
            let chain_pem = chain_and_root(&ca.pem.cert_pem)
                .map(|(chain, _)| chain)
                .unwrap_or_default();
            state.current = Some(Arc::new(Signer {
                ca,
                issuer,
                chain_pem,
                bundle_pem: trust.bundle_pem.clone(),
            }));
        }
        if bundle_changed {
            self.bundle.send_replace(trust.bundle_pem.clone());
        }
        state.trust = Some(trust);
    }

    /// Follows the issuer Secret, keeps the ledger stored, and ticks, for as long as it is polled.
    pub async fn run(self: Arc<Self>, client: kube::Client) {
        tokio::join!(self.clone().watch(client.clone()), self.maintain(client));
    }

    async fn watch(self: Arc<Self>, client: kube::Client) {
        let secrets: Api<Secret> = Api::namespaced(client, names::MESH_NAMESPACE);
        // By name only: the control plane's Role grants this Secret by name, which the
        // apiserver allows to list and watch with this field selector alone.
        let only_issuer =
            watcher::Config::default().fields(&format!("metadata.name={ISSUER_SECRET}"));
        watcher(secrets, only_issuer)
            .default_backoff()
            .for_each(|event| {
                match event {
                    Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                        self.load(&secret);
                    }
                    Ok(watcher::Event::Delete(_)) => tracing::warn!(
                        secret = ISSUER_SECRET,
                        namespace = names::MESH_NAMESPACE,
                        "the identity issuer Secret was deleted: still signing with the last CA read"
                    ),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(err) => tracing::warn!(error = %err, "watching the identity issuer Secret"),
                }
                futures::future::ready(())
            })
            .await;
    }

    fn load(&self, secret: &Secret) {
        match ca_and_bundle(secret) {
            Ok((ca, bundle_pem)) => {
                tracing::info!(
                    roots = bundle_pem.matches("BEGIN CERTIFICATE").count(),
                    "loaded the mesh CA"
                );
                self.load_ca(ca, bundle_pem);
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    "the identity issuer Secret is unusable: keeping the last CA read (if any)"
                );
                self.state().problem = Some(err.to_string());
            }
        }
    }

    /// Ticks: a new CA starts signing, a retained CA goes once its last certificate expired,
    /// and the ledger is merged with the stored one (other replicas', an earlier run's) and
    /// stored when it changed.
    async fn maintain(self: Arc<Self>, client: kube::Client) {
        let configmaps: Api<ConfigMap> = Api::namespaced(client, names::MESH_NAMESPACE);
        let mut synced = false;
        let mut last_sync: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let unstored = {
                let mut state = self.state();
                let (now, wall) = (Instant::now(), SystemTime::now());
                self.prune(&mut state, now, wall);
                self.refresh(&mut state, now, wall);
                state.unstored
            };
            let due = last_sync.is_none_or(|at| at.elapsed() >= STORE_EVERY);
            if due && (!synced || unstored) {
                last_sync = Some(Instant::now());
                match self.sync_ledger(&configmaps).await {
                    Ok(()) => synced = true,
                    Err(err) => tracing::warn!(
                        error = %err,
                        configmap = LEDGER_CONFIGMAP,
                        "storing the CA ledger (retried)"
                    ),
                }
            }
        }
    }

    /// Merges the stored ledger into ours and stores the result if it differs.
    async fn sync_ledger(&self, configmaps: &Api<ConfigMap>) -> Result<(), kube::Error> {
        let stored = configmaps.get_opt(LEDGER_CONFIGMAP).await?;
        let stored_data = stored
            .as_ref()
            .and_then(|cm| cm.data.clone())
            .unwrap_or_default();
        let (theirs, bad) = Ledger::from_data(&stored_data);
        for key in bad {
            tracing::warn!(
                key,
                configmap = LEDGER_CONFIGMAP,
                "skipping an unreadable entry"
            );
        }
        let data = {
            let mut state = self.state();
            let (now, wall) = (Instant::now(), SystemTime::now());
            state.ledger.merge(&theirs);
            self.prune(&mut state, now, wall);
            state.unstored = false;
            self.refresh(&mut state, now, wall);
            state.ledger.to_data()
        };
        if data == stored_data && stored.is_some() {
            return Ok(());
        }
        let configmap = ConfigMap {
            metadata: ObjectMeta {
                name: Some(LEDGER_CONFIGMAP.to_owned()),
                namespace: Some(names::MESH_NAMESPACE.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "skein".to_owned(),
                )])),
                resource_version: stored.and_then(|cm| cm.metadata.resource_version),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let written = match configmap.metadata.resource_version {
            Some(_) => {
                configmaps
                    .replace(LEDGER_CONFIGMAP, &PostParams::default(), &configmap)
                    .await
            }
            None => configmaps.create(&PostParams::default(), &configmap).await,
        };
        if let Err(err) = written {
            // Another replica wrote first (a conflict): merge theirs at the next tick.
            self.state().unstored = true;
            return Err(err);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

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

    fn copy(ca: &Ca) -> Ca {
        Ca::from_pem(&ca.pem.cert_pem, &ca.pem.key_pem).unwrap()
    }

    /// A store that read a CA "old" (and a CA "new" to rotate to).
    fn store_signing_with_old() -> (Ca, Ca, CaStore) {
        let (old, new) = (
            Ca::generate("old", HOUR).unwrap(),
            Ca::generate("new", HOUR).unwrap(),
        );
        let store = CaStore::default();
        store.load_ca(copy(&old), old.pem.cert_pem.clone());
        (old, new, store)
    }

    fn tick(store: &CaStore, after: Duration) {
        let mut state = store.state();
        store.refresh(
            &mut state,
            Instant::now() + after,
            SystemTime::now() + after,
        );
    }

    #[test]
    fn the_bundle_is_ca_crt_when_present_else_the_ca_itself() {
        let ca = Ca::generate("test-ca", HOUR).unwrap();
        let other = Ca::generate("next-ca", HOUR).unwrap();
        let (cert, key) = (ca.pem.cert_pem.as_str(), ca.pem.key_pem.as_str());

        let (_, alone) = ca_and_bundle(&secret(&[("tls.crt", cert), ("tls.key", key)])).unwrap();
        assert_eq!(alone, cert);

        let both = format!("{cert}{}", other.pem.cert_pem);
        let (signing, rotating) = ca_and_bundle(&secret(&[
            ("tls.crt", cert),
            ("tls.key", key),
            ("ca.crt", &both),
        ]))
        .unwrap();
        assert_eq!(rotating, both);
        assert_eq!(signing.pem.cert_pem, cert, "signs with tls.crt/tls.key");

        let err = ca_and_bundle(&secret(&[("tls.crt", cert)]))
            .err()
            .expect("no key");
        assert!(err.to_string().contains("tls.key"), "{err}");
    }

    #[test]
    fn a_bad_secret_keeps_the_last_signer() {
        let store = CaStore::default();
        assert!(store.current().is_none());
        let ca = Ca::generate("test-ca", HOUR).unwrap();
        store.load(&secret(&[
            ("tls.crt", &ca.pem.cert_pem),
            ("tls.key", &ca.pem.key_pem),
        ]));
        store.load(&secret(&[("tls.crt", "garbage")]));
        let kept = store.current().expect("kept");
        assert_eq!(kept.ca.pem.cert_pem, ca.pem.cert_pem);
        assert!(store.unusable().is_some_and(|why| why.contains("tls.key")));
    }

    #[test]
    fn the_three_documented_steps_sign_with_the_new_ca_at_once_and_keep_the_old_root() {
        let (old, new, store) = store_signing_with_old();
        let bundle = store.bundle();
        let signer = store.current().unwrap();
        store.record_issued(&signer, "demo", "web-1", SystemTime::now() + HOUR, HOUR);

        // 1. Add the new root: pushed at once, the old CA still signs.
        let both = format!("{}{}", old.pem.cert_pem, new.pem.cert_pem);
        store.load_ca(copy(&old), both.clone());
        assert_eq!(*bundle.borrow(), both);
        assert_eq!(store.current().unwrap().ca.pem.cert_pem, old.pem.cert_pem);
        // 2. Sign with the new CA: trusted already, so it signs at once.
        store.load_ca(copy(&new), both.clone());
        assert_eq!(store.current().unwrap().ca.pem.cert_pem, new.pem.cert_pem);
        // 3. Remove the old root too early: it stays, as a certificate it signed is valid.
        store.load_ca(copy(&new), new.pem.cert_pem.clone());
        assert_eq!(
            *bundle.borrow(),
            format!("{}{}", new.pem.cert_pem, old.pem.cert_pem)
        );
        let trust = store.trust().unwrap();
        assert_eq!(trust.retained().count(), 1);
        // ... and goes once that certificate has expired.
        tick(&store, 2 * HOUR);
        assert_eq!(*bundle.borrow(), new.pem.cert_pem);
    }

    /// An intermediate of `root`, as the operator stores it (the intermediate, then the root).
    fn intermediate(root: &Ca) -> Ca {
        let issued = root.issue_intermediate("issuer", HOUR).unwrap();
        Ca::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()
    }

    #[test]
    fn an_intermediate_signs_its_renewal_at_once_and_the_ledger_keeps_its_root() {
        let (old, new) = (
            Ca::generate("old", HOUR).unwrap(),
            Ca::generate("new", HOUR).unwrap(),
        );
        let store = CaStore::default();
        let bundle = store.bundle();
        let first = intermediate(&old);
        let first_pem = first.pem.cert_pem.clone();
        store.load_ca(first, old.pem.cert_pem.clone());
        let signer = store.current().unwrap();
        assert_eq!(
            signer.issuer.pem, old.pem.cert_pem,
            "the ledger records the root"
        );
        assert_eq!(
            signer.chain_pem,
            crate::pki::first_cert_pem(&first_pem),
            "the intermediate goes with each certificate"
        );
        assert_eq!(*bundle.borrow(), old.pem.cert_pem, "only roots are trusted");
        store.record_issued(&signer, "demo", "web-1", SystemTime::now() + HOUR, HOUR);

        // A renewed intermediate of the same root signs at once, the bundle unchanged.
        let renewed = intermediate(&old);
        let renewed_pem = renewed.pem.cert_pem.clone();
        store.load_ca(renewed, old.pem.cert_pem.clone());
        assert_eq!(store.current().unwrap().ca.pem.cert_pem, renewed_pem);
        assert_eq!(*bundle.borrow(), old.pem.cert_pem);

        // One step to a new root's intermediate: the new root is trusted first, and signs
        // after the propagation time; the old root stays while its certificate lives.
        let next = intermediate(&new);
        let next_pem = next.pem.cert_pem.clone();
        store.load_ca(next, new.pem.cert_pem.clone());
        assert_eq!(store.current().unwrap().ca.pem.cert_pem, renewed_pem);
        assert_eq!(
            *bundle.borrow(),
            format!("{}{}", new.pem.cert_pem, old.pem.cert_pem)
        );
        tick(&store, PROPAGATION);
        let signer = store.current().unwrap();
        assert_eq!(signer.ca.pem.cert_pem, next_pem);
        assert_eq!(signer.issuer.pem, new.pem.cert_pem);
        assert_eq!(store.trust().unwrap().retained().count(), 1);
        tick(&store, 2 * HOUR);
        assert_eq!(*bundle.borrow(), new.pem.cert_pem);
    }

    #[test]
    fn a_new_ca_swapped_in_one_step_is_trusted_first_and_signs_after_the_propagation_time() {
        let (old, new, store) = store_signing_with_old();
        let bundle = store.bundle();
        store.load_ca(copy(&new), new.pem.cert_pem.clone());
        assert_eq!(
            store.current().unwrap().ca.pem.cert_pem,
            old.pem.cert_pem,
            "the old CA signs until proxies trust the new one"
        );
        assert!(bundle.borrow().contains(&new.pem.cert_pem));
        store.load_ca(copy(&new), new.pem.cert_pem.clone());
        assert_eq!(
            store.current().unwrap().ca.pem.cert_pem,
            old.pem.cert_pem,
            "reading the Secret again does not cut the wait short"
        );
        tick(&store, PROPAGATION);
        assert_eq!(store.current().unwrap().ca.pem.cert_pem, new.pem.cert_pem);
        // The old CA signed nothing recorded here, so nothing keeps it.
        assert_eq!(*bundle.borrow(), new.pem.cert_pem);
    }
}
