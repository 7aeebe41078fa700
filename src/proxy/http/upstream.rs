//! Connections to upstreams: one pooled client per HTTP version, and what a failed send means
//! for retries.

use std::net::SocketAddr;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::body::ProxyBody;
use crate::proxy::retry::AttemptOutcome;
use crate::proxy::tcp::ErrorChain;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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

/// Pooled clients to upstreams, shared by all connections of the proxy.
#[derive(Clone, Debug)]
pub struct Upstreams {
    http1: Client<HttpConnector, ProxyBody>,
    http2: Client<HttpConnector, ProxyBody>,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        // Requests carry absolute URIs built from endpoint addresses; nothing else is resolved.
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(POOL_IDLE_TIMEOUT);
        let http1 = builder.clone().build(connector.clone());
        let http2 = builder.http2_only(true).build(connector);
        Self { http1, http2 }
    }

    /// Sends one try of a request to `address`, speaking the version the client spoke.
    pub async fn send(
        &self,
        address: SocketAddr,
        parts: &Parts,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let request = build(address, parts, body)?;
        let client = if parts.version == Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        };
        client
            .request(request)
            .await
            .map_err(|err| classify(address, &err))
    }
}

/// The request as the upstream gets it: the same method, headers and path, aimed at `address`.
fn build(
    address: SocketAddr,
    parts: &Parts,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, UpstreamError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri =
        format!("http://{address}{path}")
            .parse()
            .map_err(|err: http::uri::InvalidUri| UpstreamError::BadRequest {
                address,
                reason: err.to_string(),
            })?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers.clone();
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
