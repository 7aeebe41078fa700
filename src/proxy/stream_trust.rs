//! What the configuration stream's TLS trusts: the control plane's certificate is signed by
//! the mesh CA, which can rotate while the proxy runs.
//!
//! In order of preference, for each connection:
//! 1. the bundle the control plane last pushed (a rotation reaches the stream at once);
//! 2. the bundle saved by an earlier run of this container (`--state-dir`, an emptyDir the
//!    injector mounts): a sidecar restarted after a rotation does not fall back to the bundle
//!    its pod was created with, which may no longer hold the CA that signs now;
//! 3. the bundle given at start: `--xds-trust-bundle-pem` (the injector sets it to the bundle
//!    when the pod was created) or the file `--trust-bundle`.
//!
//! Without any of them the stream is plaintext.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// File name of the saved bundle in `--state-dir`.
const SAVED_BUNDLE: &str = "trust-bundle.pem";

/// The bundle given at start.
#[derive(Debug, Clone)]
pub enum InitialTrust {
    File(PathBuf),
    Pem(String),
}

#[derive(Debug, Clone, Default)]
pub struct StreamTrust {
    initial: Option<InitialTrust>,
    state_dir: Option<PathBuf>,
    pushed: Arc<RwLock<Option<String>>>,
}

impl StreamTrust {
    pub fn new(initial: Option<InitialTrust>, state_dir: Option<PathBuf>) -> Self {
        Self {
            initial,
            state_dir,
            pushed: Arc::default(),
        }
    }

    /// Trusting the bundle in `path` (and what the control plane pushes).
    pub fn file(path: &std::path::Path) -> Self {
        Self::new(Some(InitialTrust::File(path.to_owned())), None)
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        self.initial.is_some()
    }

    /// The PEM roots to verify the control plane with now (`None`: plaintext).
    pub async fn roots(&self) -> Result<Option<Vec<u8>>, std::io::Error> {
        let Some(initial) = &self.initial else {
            return Ok(None);
        };
        let pushed = self
            .pushed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(pem) = pushed {
            return Ok(Some(pem.into_bytes()));
        }
        if let Some(saved) = self.saved_path() {
            match tokio::fs::read(&saved).await {
                Ok(pem) if !pem.is_empty() => return Ok(Some(pem)),
                _ => {}
            }
        }
        match initial {
            InitialTrust::Pem(pem) => Ok(Some(pem.clone().into_bytes())),
            InitialTrust::File(path) => tokio::fs::read(path).await.map(Some),
        }
    }

    /// Takes a bundle the control plane pushed; saves it for a restart of this container.
    pub fn pushed(&self, bundle_pem: &str) {
        if !self.is_tls() || bundle_pem.is_empty() {
            return;
        }
        {
            let mut pushed = self.pushed.write().unwrap_or_else(|e| e.into_inner());
            if pushed.as_deref() == Some(bundle_pem) {
                return;
            }
            *pushed = Some(bundle_pem.to_owned());
        }
        if let Some(saved) = self.saved_path() {
            // Written aside and renamed, so a crash never leaves half a bundle.
            let partial = saved.with_extension("pem.partial");
            let written = std::fs::write(&partial, bundle_pem)
                .and_then(|()| std::fs::rename(&partial, &saved));
            if let Err(err) = written {
                tracing::warn!(
                    error = %err,
                    path = %saved.display(),
                    "saving the trust bundle for a restart"
                );
            }
        }
    }

    fn saved_path(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|dir| dir.join(SAVED_BUNDLE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pushed_bundle_wins_and_outlives_a_restart_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let initial = Some(InitialTrust::Pem("created-with".into()));
        let trust = StreamTrust::new(initial.clone(), Some(dir.path().to_owned()));
        assert_eq!(trust.roots().await.unwrap().unwrap(), b"created-with");
        trust.pushed("rotated");
        assert_eq!(trust.roots().await.unwrap().unwrap(), b"rotated");

        // The container restarts: same pod spec, same emptyDir.
        let restarted = StreamTrust::new(initial, Some(dir.path().to_owned()));
        assert_eq!(restarted.roots().await.unwrap().unwrap(), b"rotated");
    }

    #[tokio::test]
    async fn without_a_bundle_the_stream_is_plaintext_and_ignores_pushes() {
        let trust = StreamTrust::default();
        trust.pushed("ignored");
        assert!(!trust.is_tls());
        assert!(trust.roots().await.unwrap().is_none());
    }
}
