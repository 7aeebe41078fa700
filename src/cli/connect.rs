//! `--kubeconfig` and `--context`, as kubectl, istioctl and linkerd take them, and the one place
//! a kube `Client` is built from them.

use std::path::{Path, PathBuf};

use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};

/// Which cluster a command talks to. Flattened into every command that talks to one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file to use. Default: `$KUBECONFIG`, else `~/.kube/config`, else the pod's
    /// service account when running in a cluster.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use. Default: the kubeconfig's current context.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// Why no client could be built. Each message is a whole one-liner: kube's error is part of it
/// and not also a `source`, so `{:#}` does not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {}: {error}", path.display())]
    ReadFile {
        path: PathBuf,
        error: KubeconfigError,
    },
    #[error("reading the kubeconfig ($KUBECONFIG or ~/.kube/config): {0}")]
    Read(KubeconfigError),
    #[error("using kubeconfig {file}: {error}")]
    Load {
        file: String,
        error: KubeconfigError,
    },
    #[error("no kubeconfig found and not running in a cluster: {0}")]
    Infer(InferConfigError),
    #[error("building a Kubernetes client: {0}")]
    Client(kube::Error),
}

impl KubeArgs {
    /// The arguments naming one kubeconfig file and its current context.
    pub fn file(path: &Path) -> Self {
        Self {
            kubeconfig: Some(path.to_owned()),
            context: None,
        }
    }

    /// The kubeconfig these arguments select, its current context set to `--context` if given.
    pub fn kubeconfig(&self) -> Result<Kubeconfig, ConnectError> {
        let mut kubeconfig = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path).map_err(|error| ConnectError::ReadFile {
                path: path.clone(),
                error,
            })?,
            None => Kubeconfig::read().map_err(ConnectError::Read)?,
        };
        if let Some(context) = &self.context {
            kubeconfig.current_context = Some(context.clone());
        }
        Ok(kubeconfig)
    }

    /// The client configuration: the selected kubeconfig, or kube's usual inference (which also
    /// covers a pod's service account) when neither flag is given.
    pub async fn config(&self) -> Result<Config, ConnectError> {
        if self.kubeconfig.is_none() && self.context.is_none() {
            return Config::infer().await.map_err(ConnectError::Infer);
        }
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        Config::from_custom_kubeconfig(self.kubeconfig()?, &options)
            .await
            .map_err(|error| ConnectError::Load {
                file: self.kubeconfig.as_ref().map_or_else(
                    || "($KUBECONFIG or ~/.kube/config)".to_owned(),
                    |path| path.display().to_string(),
                ),
                error,
            })
    }

    /// A client for the selected cluster.
    pub async fn client(&self) -> Result<Client, ConnectError> {
        Client::try_from(self.config().await?).map_err(ConnectError::Client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CONTEXTS: &str = r#"
apiVersion: v1
kind: Config
current-context: one
clusters:
  - name: one
    cluster: {server: "https://127.0.0.1:1111"}
  - name: two
    cluster: {server: "https://127.0.0.1:2222"}
users:
  - name: admin
    user: {token: secret}
contexts:
  - name: one
    context: {cluster: one, user: admin, namespace: ns-one}
  - name: two
    context: {cluster: two, user: admin}
"#;

    fn write_kubeconfig() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(file.path(), TWO_CONTEXTS).expect("writing the kubeconfig");
        file
    }

    #[tokio::test]
    async fn the_current_context_is_used_unless_one_is_named() {
        let file = write_kubeconfig();
        let current = KubeArgs::file(file.path()).config().await.expect("config");
        assert_eq!(current.cluster_url.port_u16(), Some(1111));
        assert_eq!(current.default_namespace, "ns-one");

        let named = KubeArgs {
            context: Some("two".to_owned()),
            ..KubeArgs::file(file.path())
        };
        let config = named.config().await.expect("config");
        assert_eq!(config.cluster_url.port_u16(), Some(2222));
        assert_eq!(
            named.kubeconfig().expect("kubeconfig").current_context,
            Some("two".to_owned())
        );
    }

    #[tokio::test]
    async fn an_unknown_context_or_file_is_an_error() {
        let file = write_kubeconfig();
        let unknown = KubeArgs {
            context: Some("three".to_owned()),
            ..KubeArgs::file(file.path())
        };
        assert!(matches!(
            unknown.config().await,
            Err(ConnectError::Load { .. })
        ));
        let missing = KubeArgs::file(Path::new("/nonexistent/kubeconfig"));
        assert!(matches!(
            missing.config().await,
            Err(ConnectError::ReadFile { .. })
        ));
    }
}
