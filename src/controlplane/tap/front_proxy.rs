//! Who is asking, when the Kubernetes apiserver forwards a request to the tap API (an aggregated
//! API, [`super::api`]). The apiserver authenticates the user, then calls the control plane as
//! its "front proxy": with its own client certificate and the user in request headers
//! (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`). Those headers are believed only on a
//! connection whose client certificate chains to the apiserver's request-header CA and, when the
//! apiserver lists allowed names, carries one of them as its common name. Both come from the
//! ConfigMap `kube-system/extension-apiserver-authentication` (what every aggregated API server
//! reads), followed every minute so a rotated CA is picked up.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP: &str = "extension-apiserver-authentication";
/// The Role every cluster has that reads [`CONFIGMAP`] (bound to the control plane).
pub const READER_ROLE: &str = "extension-apiserver-authentication-reader";
const REFRESH: Duration = Duration::from_secs(60);

/// The apiserver's front-proxy settings, as the ConfigMap holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    pub ca_pem: String,
    /// Common names a front proxy's certificate may carry; empty: any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub uid_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP} has no requestheader-client-ca-file: the \
         apiserver runs without a front proxy (--requestheader-client-ca-file and \
         --proxy-client-cert-file), so it cannot forward users to aggregated APIs such as the \
         tap API"
    )]
    NoCa,
    #[error(
        "{key} in ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP} is not a JSON list of strings: {message}"
    )]
    BadList { key: &'static str, message: String },
    #[error(
        "requestheader-client-ca-file in ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP} holds no usable CA certificate"
    )]
    BadCa,
}

/// The settings in the ConfigMap's `data`.
pub fn parse(data: &BTreeMap<String, String>) -> Result<RequestHeaderConfig, ConfigError> {
    let ca_pem = data
        .get("requestheader-client-ca-file")
        .filter(|pem| !pem.trim().is_empty())
        .ok_or(ConfigError::NoCa)?
        .clone();
    let list = |key: &'static str| -> Result<Vec<String>, ConfigError> {
        match data.get(key).map(|text| text.trim()) {
            None | Some("") | Some("null") => Ok(Vec::new()),
            Some(text) => serde_json::from_str(text).map_err(|err| ConfigError::BadList {
                key,
                message: err.to_string(),
            }),
        }
    };
    Ok(RequestHeaderConfig {
        ca_pem,
        allowed_names: list("requestheader-allowed-names")?,
        username_headers: list("requestheader-username-headers")?,
        uid_headers: list("requestheader-uid-headers")?,
        group_headers: list("requestheader-group-headers")?,
        extra_prefixes: list("requestheader-extra-headers-prefix")?,
    })
}

/// The user a front proxy named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a request to the tap API is not believed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "only the Kubernetes apiserver may call the tap API (no front-proxy client certificate \
         on this connection): run `skein tap`, which goes through the apiserver"
    )]
    NotFrontProxy,
    #[error(
        "the client certificate's common name {0:?} is not one of the apiserver's front-proxy names"
    )]
    NameNotAllowed(String),
    #[error("the client certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("the apiserver forwarded the request without a user")]
    NoUser,
    #[error("the apiserver's front-proxy settings are not known yet: {0}")]
    NotConfigured(String),
}

/// The user of a request whose connection presented `client_cert` (already verified against
/// the CA by [`FrontProxyTrust`]'s verifier).
pub fn authenticate(
    config: &RequestHeaderConfig,
    client_cert: Option<&CertificateDer<'_>>,
    headers: &HeaderMap,
) -> Result<User, AuthError> {
    let cert = client_cert.ok_or(AuthError::NotFrontProxy)?;
    if !config.allowed_names.is_empty() {
        let name = common_name(cert)?;
        if !config.allowed_names.contains(&name) {
            return Err(AuthError::NameNotAllowed(name));
        }
    }
    user_of(config, headers).ok_or(AuthError::NoUser)
}

/// The user the headers name, as the apiserver's request-header authenticator reads them.
pub fn user_of(config: &RequestHeaderConfig, headers: &HeaderMap) -> Option<User> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let first = |names: &[String]| {
        names
            .iter()
            .find_map(|name| values(name).into_iter().find(|v| !v.is_empty()))
    };
    let name = first(&config.username_headers)?;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (header, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        for prefix in &config.extra_prefixes {
            // Header names are lowercase here; the prefixes are configured in any case.
            let prefix = prefix.to_ascii_lowercase();
            if let Some(key) = header.as_str().strip_prefix(&prefix) {
                extra
                    .entry(percent_decode(key))
                    .or_default()
                    .push(value.to_owned());
            }
        }
    }
    Some(User {
        name,
        uid: first(&config.uid_headers),
        groups: config
            .group_headers
            .iter()
            .flat_map(|h| values(h))
            .collect(),
        extra,
    })
}

/// `%XX` escapes of an extra key (the apiserver escapes keys that are not valid header names).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn common_name(cert: &CertificateDer<'_>) -> Result<String, AuthError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|err| AuthError::BadCertificate(err.to_string()))?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(name)
}

/// The current front-proxy settings and the client-certificate verifier built from them; shared
/// by the webhook server's TLS (which asks every client for an optional certificate) and the
/// tap API's handlers.
#[derive(Debug, Clone)]
pub struct FrontProxyTrust {
    current: Arc<RwLock<Result<Trusted, String>>>,
}

#[derive(Debug, Clone)]
struct Trusted {
    config: RequestHeaderConfig,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl Default for FrontProxyTrust {
    fn default() -> Self {
        Self::new()
    }
}

impl FrontProxyTrust {
    pub fn new() -> Self {
        Self {
            current: Arc::new(RwLock::new(Err("not read yet".to_owned()))),
        }
    }

    /// The settings, or why there are none.
    pub fn config(&self) -> Result<RequestHeaderConfig, AuthError> {
        match &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            Ok(trusted) => Ok(trusted.config.clone()),
            Err(why) => Err(AuthError::NotConfigured(why.clone())),
        }
    }

    /// Installs `config`'s CA as the one client certificates must chain to.
    pub fn set(&self, config: RequestHeaderConfig) -> Result<(), ConfigError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(config.ca_pem.as_bytes()) {
            let cert = cert.map_err(|_| ConfigError::BadCa)?;
            roots.add(cert).map_err(|_| ConfigError::BadCa)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|_| ConfigError::BadCa)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Ok(Trusted { config, verifier });
        Ok(())
    }

    fn fail(&self, why: String) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // A CA once read stays trusted through a failed re-read (the apiserver still has it).
        if current.is_err() {
            *current = Err(why);
        }
    }

    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().ok().map(|t| t.verifier.clone())
    }

    /// The verifier the TLS server asks clients' certificates of.
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(FrontProxyVerifier(self.clone()))
    }

    /// Reads the ConfigMap now and every minute after, until the task is dropped.
    pub async fn follow(self, client: kube::Client) {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, CONFIGMAP_NAMESPACE);
        let mut last: Option<Result<RequestHeaderConfig, String>> = None;
        loop {
            let read = match api.get_opt(CONFIGMAP).await {
                Ok(Some(map)) => parse(&map.data.unwrap_or_default()).map_err(|e| e.to_string()),
                Ok(None) => Err(format!(
                    "no ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP} (the apiserver writes it)"
                )),
                Err(err) => Err(format!(
                    "reading ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP}: {err} (the control \
                     plane needs the Role {READER_ROLE} in {CONFIGMAP_NAMESPACE})"
                )),
            };
            if last.as_ref() != Some(&read) {
                match &read {
                    Ok(config) => match self.set(config.clone()) {
                        Ok(()) => tracing::info!(
                            allowed = ?config.allowed_names,
                            "the tap API trusts the apiserver's front proxy"
                        ),
                        Err(err) => {
                            tracing::warn!("the tap API is unavailable: {err}");
                            self.fail(err.to_string());
                        }
                    },
                    Err(why) => {
                        tracing::warn!("the tap API is unavailable: {why}");
                        self.fail(why.clone());
                    }
                }
                last = Some(read);
            }
            tokio::time::sleep(REFRESH).await;
        }
    }
}

/// Asks every client for a certificate once the front-proxy CA is known, never requires one; a
/// presented certificate must chain to that CA (else the handshake fails), so a certificate a
/// handler sees is the front proxy's.
#[derive(Debug)]
struct FrontProxyVerifier(FrontProxyTrust);

impl FrontProxyVerifier {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0.verifier().ok_or_else(|| {
            rustls::Error::General("the apiserver's front-proxy CA is not known yet".to_owned())
        })
    }
}

impl ClientCertVerifier for FrontProxyVerifier {
    // Until the CA is known no certificate is asked for: a handshake with one that cannot be
    // checked would fail, and with it the apiserver's availability check of the tap API.
    fn offer_client_auth(&self) -> bool {
        self.0.verifier().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: a client with one certificate sends it whatever the hints; clients without one
    // (the apiserver calling the webhooks) send none.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn config() -> RequestHeaderConfig {
        parse(&data(&[
            ("requestheader-client-ca-file", "PEM"),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Remote-Extra-"]"#,
            ),
        ]))
        .unwrap()
    }

    #[test]
    fn the_configmap_is_read_as_the_apiserver_writes_it() {
        let config = config();
        assert_eq!(config.allowed_names, ["front-proxy-client"]);
        assert_eq!(config.username_headers, ["X-Remote-User"]);
        assert!(config.uid_headers.is_empty());
        assert_eq!(parse(&data(&[])), Err(ConfigError::NoCa));
        assert!(matches!(
            parse(&data(&[
                ("requestheader-client-ca-file", "PEM"),
                ("requestheader-allowed-names", "front-proxy-client"),
            ])),
            Err(ConfigError::BadList {
                key: "requestheader-allowed-names",
                ..
            })
        ));
    }

    #[test]
    fn the_user_groups_and_extras_come_from_the_configured_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("jane"));
        headers.append("x-remote-group", HeaderValue::from_static("dev"));
        headers.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        headers.append("x-remote-extra-scopes", HeaderValue::from_static("a"));
        headers.append("x-remote-extra-scopes", HeaderValue::from_static("b"));
        headers.append(
            "x-remote-extra-example.org%2fteam",
            HeaderValue::from_static("x"),
        );
        let user = user_of(&config(), &headers).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, ["dev", "system:authenticated"]);
        assert_eq!(user.extra["scopes"], ["a", "b"]);
        assert_eq!(user.extra["example.org/team"], ["x"]);
        assert_eq!(user_of(&config(), &HeaderMap::new()), None);
    }

    /// A self-signed certificate whose common name is `name`.
    fn certificate_named(name: &str) -> rcgen::Certificate {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
    }

    #[test]
    fn headers_count_only_with_a_front_proxy_certificate() {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("system:admin"));
        headers.insert("x-remote-group", HeaderValue::from_static("system:masters"));
        assert_eq!(
            authenticate(&config(), None, &headers),
            Err(AuthError::NotFrontProxy)
        );
        let other = certificate_named("someone-else");
        assert_eq!(
            authenticate(&config(), Some(other.der()), &headers),
            Err(AuthError::NameNotAllowed("someone-else".to_owned()))
        );
        let proxy = certificate_named("front-proxy-client");
        let user = authenticate(&config(), Some(proxy.der()), &headers).unwrap();
        assert_eq!(user.name, "system:admin");
    }
}
