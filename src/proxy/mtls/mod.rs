//! Mutual TLS between meshed workloads.
//!
//! A client proxy originates mTLS to an endpoint the control plane says is meshed (its
//! `identity`); the server proxy terminates it on its inbound listener and forwards plaintext to
//! the app at the pod IP. The client asks for the identity it expects as the TLS server name
//! ([`SpiffeId::server_name`]), which also tells the server's inbound listener that this is the
//! mesh's TLS and not the app's own. ALPN carries what the server needs to skip protocol
//! detection: `skein/opaque` for opaque TCP (so server-first protocols never wait for a client's
//! first bytes), `h2` / `http/1.1` for HTTP.
//!
//! - [`credentials`]: the workload certificate and trust bundle every handshake reads.
//! - [`verify`]: the handshake's checks and the proxy's own certificate.
//!
//! TLS 1.3 only: both ends are Skein proxies. Sessions resume (tickets), and HTTP connections
//! are pooled, so full handshakes stay off the request path.

pub mod credentials;
pub mod verify;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

pub use credentials::{Credentials, CredentialsError, Loaded};

use self::verify::{ClientChainVerifier, OwnCertificate, ServerIdentityVerifier};
use crate::config::Compiled;
use skein_core::identity::SpiffeId;
use skein_core::pki::WorkloadCertInfo;

/// ALPN of an opaque TCP connection: forward the bytes, detect nothing.
pub const ALPN_OPAQUE: &[u8] = b"skein/opaque";
pub const ALPN_HTTP2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What a client's mTLS connection carries, said by ALPN: the server proxy forwards opaque bytes
/// at once and serves HTTP in the version named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    Opaque,
    Http1,
    Http2,
}

/// The proxy's TLS configurations, built once; each handshake reads the current credentials.
pub struct Mtls {
    pub credentials: Arc<Credentials>,
    /// This pod's IP: a call to the pod itself (an app calling its own Service) stays
    /// plaintext, as it leaves the proxy straight to the app, bypassing the inbound listener.
    own_ip: Option<IpAddr>,
    server: TlsAcceptor,
    client_opaque: TlsConnector,
    client_http1: TlsConnector,
    client_http2: TlsConnector,
}

impl std::fmt::Debug for Mtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mtls")
            .field(
                "identity",
                &self.credentials.current().map(|c| c.id.to_string()),
            )
            .finish_non_exhaustive()
    }
}

/// A terminated mTLS connection and who is on the other end.
pub struct Accepted<IO> {
    pub stream: server::TlsStream<IO>,
    pub peer: SpiffeId,
    /// The client said the bytes are opaque TCP (ALPN `skein/opaque`).
    pub opaque: bool,
    /// Resumed from an earlier session: no certificates exchanged, no signatures made.
    pub resumed: bool,
}

impl Mtls {
    pub fn new(credentials: Arc<Credentials>, own_ip: Option<IpAddr>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let own = Arc::new(OwnCertificate {
            credentials: credentials.clone(),
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(ClientChainVerifier {
                credentials: credentials.clone(),
            }))
            .with_cert_resolver(own.clone());
        server.alpn_protocols = vec![
            ALPN_OPAQUE.to_vec(),
            ALPN_HTTP2.to_vec(),
            ALPN_HTTP1.to_vec(),
        ];
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier {
                credentials: credentials.clone(),
            }))
            .with_client_cert_resolver(own);
        // Clones share the session cache, so every kind of connection resumes the same sessions.
        let with_alpn = |alpn: &[u8]| {
            let mut config = client.clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            TlsConnector::from(Arc::new(config))
        };
        Self {
            server: TlsAcceptor::from(Arc::new(server)),
            client_opaque: with_alpn(ALPN_OPAQUE),
            client_http1: with_alpn(ALPN_HTTP1),
            client_http2: with_alpn(ALPN_HTTP2),
            credentials,
            own_ip: own_ip.map(|ip| ip.to_canonical()),
        }
    }

    /// The identity to demand from `endpoint` over mTLS; `None`: plaintext, because the control
    /// plane does not list it as meshed, this proxy has no certificate to take part with (a
    /// Strict server then refuses, as it should), or the endpoint is this very pod.
    pub fn identity_for<'c>(
        &self,
        config: &'c Compiled,
        endpoint: SocketAddr,
    ) -> Option<&'c SpiffeId> {
        if self.own_ip == Some(endpoint.ip().to_canonical()) || !self.ready() {
            return None;
        }
        config.identity_of(endpoint)
    }

    /// Whether this proxy can take part in mTLS (it holds a certificate).
    pub fn ready(&self) -> bool {
        self.credentials.current().is_some()
    }

    /// Opens an mTLS connection over `tcp` to a server that must prove it is `server`, saying
    /// by ALPN what it carries.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        server: &SpiffeId,
        carries: Carries,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let connector = match carries {
            Carries::Opaque => &self.client_opaque,
            Carries::Http1 => &self.client_http1,
            Carries::Http2 => &self.client_http2,
        };
        connector.connect(server_name(server)?, tcp).await
    }

    /// Completes the server side of a handshake whose ClientHello asked for a Skein identity.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<Accepted<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.server.accept(io).await?;
        let (_, connection) = stream.get_ref();
        let peer = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "the client sent no certificate")
            })
            .and_then(|leaf| {
                WorkloadCertInfo::parse_der(leaf)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
            })?
            .id;
        let opaque = connection.alpn_protocol() == Some(ALPN_OPAQUE);
        let resumed = connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        Ok(Accepted {
            stream,
            peer,
            opaque,
            resumed,
        })
    }
}

/// The TLS server name a client asks for to reach `id`.
pub fn server_name(id: &SpiffeId) -> io::Result<ServerName<'static>> {
    ServerName::try_from(id.server_name())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use skein_core::pki::Ca;

    /// Credentials for `id`, issued by `ca` the way the control plane issues them.
    pub(crate) fn credentials(ca: &Ca, id: &SpiffeId, bundle: &str) -> Arc<Credentials> {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let cert = ca
            .issue_workload(&csr, id, Duration::from_secs(3600))
            .unwrap();
        let credentials = Arc::new(Credentials::default());
        credentials
            .install(&cert, &key.serialize_pem(), bundle)
            .unwrap();
        credentials
    }

    /// One handshake over loopback: what the server learned, or the client's error.
    async fn handshake(
        server: &Mtls,
        client: &Mtls,
        expect: &SpiffeId,
    ) -> Result<(SpiffeId, bool), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (accepted, connected) = tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut accepted = server.accept(tcp).await.map_err(|e| e.to_string())?;
                let mut buf = [0; 5];
                accepted
                    .stream
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?;
                assert_eq!(&buf, b"hello");
                Ok::<_, String>((accepted.peer, accepted.opaque))
            },
            async {
                let tcp = TcpStream::connect(address).await.unwrap();
                let mut stream = client
                    .connect(tcp, expect, Carries::Opaque)
                    .await
                    .map_err(|e| e.to_string())?;
                stream
                    .write_all(b"hello")
                    .await
                    .map_err(|e| e.to_string())?;
                stream.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(stream)
            }
        );
        let _stream = connected?;
        accepted
    }

    #[tokio::test]
    async fn peers_prove_their_identities_to_each_other() {
        let ca = Ca::generate("mesh", Duration::from_secs(3600)).unwrap();
        let bundle = ca.pem.cert_pem.clone();
        let web = SpiffeId::new("td", "demo", "web");
        let api = SpiffeId::new("td", "demo", "api");
        let client = Mtls::new(credentials(&ca, &web, &bundle), None);
        let server = Mtls::new(credentials(&ca, &api, &bundle), None);

        let (peer, opaque) = handshake(&server, &client, &api).await.unwrap();
        assert_eq!(peer, web);
        assert!(opaque);

        // Expecting another identity than the server's fails on both sides.
        let other = SpiffeId::new("td", "demo", "db");
        assert!(handshake(&server, &client, &other).await.is_err());

        // A client from another CA is refused; so is a server from another CA.
        let rogue_ca = Ca::generate("rogue", Duration::from_secs(3600)).unwrap();
        let rogue = Mtls::new(credentials(&rogue_ca, &web, &bundle), None);
        assert!(handshake(&server, &rogue, &api).await.is_err());
        let rogue_server = Mtls::new(credentials(&rogue_ca, &api, &bundle), None);
        assert!(handshake(&rogue_server, &client, &api).await.is_err());

        // Without a certificate there is no handshake.
        let empty = Mtls::new(Arc::new(Credentials::default()), None);
        assert!(!empty.ready());
        assert!(handshake(&server, &empty, &api).await.is_err());
    }

    #[tokio::test]
    async fn a_new_root_and_a_renewed_certificate_act_on_the_next_handshake() {
        let old = Ca::generate("old", Duration::from_secs(3600)).unwrap();
        let new = Ca::generate("new", Duration::from_secs(3600)).unwrap();
        let web = SpiffeId::new("td", "demo", "web");
        let api = SpiffeId::new("td", "demo", "api");
        let client = Mtls::new(credentials(&old, &web, &old.pem.cert_pem), None);
        let server_credentials = credentials(&old, &api, &old.pem.cert_pem);
        let server = Mtls::new(server_credentials.clone(), None);

        // The server renews with the new CA before the client trusts it: refused.
        let renewed = credentials(&new, &api, &new.pem.cert_pem)
            .current()
            .unwrap();
        let both = format!("{}{}", old.pem.cert_pem, new.pem.cert_pem);
        server_credentials.set_for_test(renewed);
        assert!(handshake(&server, &client, &api).await.is_err());
        // Once the client's bundle holds both roots, it works: the rotation's first step.
        client.credentials.update_bundle(&both).unwrap();
        server_credentials.update_bundle(&both).unwrap();
        assert_eq!(handshake(&server, &client, &api).await.unwrap().0, web);
    }
}
