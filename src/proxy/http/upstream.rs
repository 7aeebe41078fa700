//! Connections to upstreams: one pooled client per HTTP version, and what a failed send means
//! for retries. HTTP/1 to meshed endpoints that take it travels over HTTP/2 ([`multiplex`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::body::ProxyBody;
use super::multiplex;
use crate::config::ConfigStore;
use crate::mtls::{self, Mtls};
use crate::retry::AttemptOutcome;
use crate::tcp::ErrorChain;

/// Why an upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: SocketAddr, reason: String },
    #[error("{address} refused the stream (it did not process the request)")]
    RefusedStream { address: SocketAddr },
    #[error("{address} reset or closed the connection before responding: {reason}")]
    Reset { address: SocketAddr, reason: String },
    #[error("the request to {address} could not be built: {reason}")]
    BadRequest { address: SocketAddr, reason: String },
}

impl UpstreamError {
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Self::Connect { .. } => AttemptOutcome::ConnectFailure,
            Self::RefusedStream { .. } => AttemptOutcome::RefusedStream,
            Self::Reset { .. } | Self::BadRequest { .. } => AttemptOutcome::Reset,
        }
    }
}

/// Pooled clients to upstreams, shared by all connections of the proxy: plaintext, and mutual
/// TLS for endpoints the control plane says are meshed, one of each per HTTP version.
#[derive(Clone)]
pub struct Upstreams {
    http1: Client<HttpConnector, ProxyBody>,
    http2: Client<HttpConnector, ProxyBody>,
    mtls_http1: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    mtls_http2: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    config: Arc<ConfigStore>,
    mtls: Arc<Mtls>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstreams")
    }
}

impl Upstreams {
    /// `pool_idle`: how long an idle pooled connection is kept
    /// ([`Limits::upstream_pool_idle`](crate::limits::Limits::upstream_pool_idle)).
    pub fn new(
        connect_timeout: Duration,
        pool_idle: Duration,
        mtls: Arc<Mtls>,
        config: Arc<ConfigStore>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(pool_idle)
            .http2_initial_stream_window_size(crate::limits::HTTP2_STREAM_WINDOW)
            .http2_initial_connection_window_size(crate::limits::HTTP2_CONNECTION_WINDOW);
        // Requests carry absolute URIs built from endpoint addresses; nothing else is resolved.
        let mut plain = connector.clone();
        plain.enforce_http(true);
        let http1 = builder.clone().build(plain.clone());
        let http2 = builder.clone().http2_only(true).build(plain);

        connector.enforce_http(false);
        // The server name is the identity the endpoint must prove, looked up when connecting.
        let identities = config.clone();
        let server_name = move |uri: &Uri| {
            let address = uri
                .authority()
                .and_then(|authority| authority.as_str().parse::<SocketAddr>().ok())
                .ok_or_else(|| format!("{uri} names no endpoint address"))?;
            let current = identities.current();
            let identity = current
                .identity_of(address)
                .ok_or_else(|| format!("{address} is no longer a meshed endpoint"))?;
            mtls::server_name(identity).map_err(|err| err.to_string())
        };
        let mtls_http1 = builder.clone().build(
            HttpsConnectorBuilder::new()
                .with_tls_config(mtls.client_http.clone())
                .https_only()
                .with_server_name_resolver(server_name.clone())
                .enable_http1()
                .wrap_connector(connector.clone()),
        );
        let mtls_http2 = builder.http2_only(true).build(
            HttpsConnectorBuilder::new()
                .with_tls_config(mtls.client_http.clone())
                .https_only()
                .with_server_name_resolver(server_name)
                .enable_http2()
                .wrap_connector(connector),
        );
        Self {
            http1,
            http2,
            mtls_http1,
            mtls_http2,
            config,
            mtls,
        }
    }

    /// Sends one try of a request to `address`, speaking the version the client spoke, over
    /// mutual TLS if the endpoint is meshed. Takes the head by value: a try that may be retried
    /// sends a copy, the last one the original, so no try copies the headers twice.
    ///
    /// An HTTP/1 request to a meshed endpoint whose proxy takes it goes over HTTP/2
    /// ([`multiplex`]); its response is handed back as HTTP/1.1.
    pub async fn send(
        &self,
        address: SocketAddr,
        mut parts: Parts,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (meshed, carried) = {
            let config = self.config.current();
            let meshed = self.mtls.identity_for(&config, address).is_some();
            let carried =
                meshed && config.takes_http2_upgrade(address) && multiplex::can_carry(&parts);
            (meshed, carried)
        };
        if carried {
            multiplex::carry(&mut parts);
        }
        let http2 = parts.version == Version::HTTP_2;
        let request = build(address, meshed, parts, body)?;
        let sent = match (meshed, http2) {
            (false, false) => self.http1.request(request).await,
            (false, true) => self.http2.request(request).await,
            (true, false) => self.mtls_http1.request(request).await,
            (true, true) => self.mtls_http2.request(request).await,
        };
        let mut response = sent.map_err(|err| classify(address, &err))?;
        if carried {
            *response.version_mut() = Version::HTTP_11;
        }
        Ok(response)
    }
}

/// The request as the upstream gets it: the same method, headers and path, aimed at `address`.
fn build(
    address: SocketAddr,
    mtls: bool,
    parts: Parts,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let scheme = if mtls { "https" } else { "http" };
    let uri: Uri =
        format!("{scheme}://{address}{path}")
            .parse()
            .map_err(|err: http::uri::InvalidUri| UpstreamError::BadRequest {
                address,
                reason: err.to_string(),
            })?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers;
    *request.version_mut() = if parts.version == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    Ok(request)
}

fn classify(address: SocketAddr, err: &hyper_util::client::legacy::Error) -> UpstreamError {
    let reason = ErrorChain(err).to_string();
    if err.is_connect() {
        return UpstreamError::Connect { address, reason };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = source {
        if let Some(h2) = current.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return UpstreamError::RefusedStream { address };
        }
        source = current.source();
    }
    UpstreamError::Reset { address, reason }
}
