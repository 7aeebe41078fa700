//! Opaque TCP forwarding: connect to the target, then copy bytes both ways until both sides are
//! done.
//!
//! - Half-close is forwarded: when one side finishes sending (EOF), the proxy shuts down its
//!   write side towards the other and keeps copying the other way, so request/response protocols
//!   that signal the end of a request with a FIN work.
//! - Failures are forwarded as failures: if the upstream cannot be reached (refused, or no
//!   answer within the connect timeout) or either side breaks mid-stream, the proxy resets
//!   (`SO_LINGER` 0, then close) rather than closing cleanly, so the other end does not mistake
//!   it for a complete exchange.
//! - `TCP_NODELAY` on both sides: the proxy must not add Nagle delays to what the app writes.
//! - Idle connections are closed after `--idle-timeout` (no byte either way), by the listener
//!   ([`super::limits`]); otherwise a connection lives as long as both ends keep it.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::detect::PrefixedIo;
use super::mtls::{Carries, Mtls};
use super::{Direction, Shared};
use skein_core::identity::SpiffeId;

/// The upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {target}")]
    Io {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {target}: no answer within {timeout:?}")]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
    },
    #[error("mutual TLS with {target} (expected to be {identity}) failed")]
    Handshake {
        target: SocketAddr,
        identity: SpiffeId,
        #[source]
        source: io::Error,
    },
}

/// Connects to `target` within `timeout`.
pub async fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ConnectError::Io { target, source }),
        Err(_) => Err(ConnectError::Timeout { target, timeout }),
    }
}

/// Closes `stream` with a reset when it is dropped (best effort).
pub fn reset(stream: &TcpStream) {
    if let Err(err) = stream.set_zero_linger() {
        tracing::debug!(error = %err, "cannot set SO_LINGER 0; the connection closes normally");
    }
}

/// No Nagle delays on what the proxy writes: HTTP/2 in particular writes small frames that
/// would otherwise wait for the peer's delayed ACK (40 ms).
pub(crate) fn set_nodelay(stream: &TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
}

/// Counts a forwarded connection as closed however its task ends (even if it is cancelled).
struct CountClosed<'a>(&'a Counter);

impl Drop for CountClosed<'_> {
    fn drop(&mut self) {
        self.0.inc();
    }
}

/// Where a forwarded connection goes, and as whom the upstream must prove to be: with an
/// identity the connection is mutual TLS (the upstream is a meshed pod's proxy).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Upstream<'a> {
    pub address: SocketAddr,
    pub identity: Option<&'a SpiffeId>,
}

impl Upstream<'_> {
    pub fn plain(address: SocketAddr) -> Upstream<'static> {
        Upstream {
            address,
            identity: None,
        }
    }
}

/// Forwards one accepted connection to `upstream` until both sides are done, a side fails, or
/// the drain runs out of time. `client` replays the bytes protocol detection read. Returns
/// whether the upstream was reached (the balancer learns of connect failures).
pub(crate) async fn forward<C>(
    client: C,
    peer: SocketAddr,
    direction: Direction,
    upstream: Upstream<'_>,
    shared: &Shared,
) -> bool
where
    C: AsyncRead + AsyncWrite + Unpin + OnTcp,
{
    let metrics = shared.metrics.tcp(direction);
    metrics.opened.inc();
    let _closed = CountClosed(&metrics.closed);
    let connected = tokio::select! {
        biased;
        () = shared.drain.aborted() => {
            reset(client.tcp());
            return true;
        }
        connected = open(upstream, Carries::Opaque, &shared.mtls, shared.connect_timeout) => connected,
    };
    match connected {
        Ok(connected) => relay(client, connected, peer, direction, upstream.address, shared).await,
        Err(err) => {
            unreachable(&err, client.tcp(), peer, direction, shared);
            return false;
        }
    }
    true
}

/// [`forward`] over an upstream connection that is already open (a quiet client's, see
/// [`super::server_first`]); `upstream` replays what the server already sent.
pub(crate) async fn forward_connected<C, U>(
    client: C,
    upstream: U,
    peer: SocketAddr,
    direction: Direction,
    target: SocketAddr,
    shared: &Shared,
) where
    C: AsyncRead + AsyncWrite + Unpin + OnTcp,
    U: AsyncRead + AsyncWrite + Unpin + OnTcp,
{
    let metrics = shared.metrics.tcp(direction);
    metrics.opened.inc();
    let _closed = CountClosed(&metrics.closed);
    relay(client, upstream, peer, direction, target, shared).await;
}

/// Says why an upstream was not reached, counts it, and resets the client.
fn unreachable(
    err: &ConnectError,
    client: &TcpStream,
    peer: SocketAddr,
    direction: Direction,
    shared: &Shared,
) {
    shared.metrics.tcp(direction).connect_failures.inc();
    tracing::warn!(
        %direction,
        %peer,
        error = %ErrorChain(err),
        "upstream unreachable: resetting the client connection"
    );
    reset(client);
}

/// Opens the connection to `upstream` within `timeout` (TCP, then the handshake): plain TCP, or
/// mutual TLS when it has an identity, saying what it `carries` (opaque: the upstream's proxy
/// forwards the bytes without detecting anything).
pub(crate) async fn open(
    upstream: Upstream<'_>,
    carries: Carries,
    mtls: &Mtls,
    timeout: Duration,
) -> Result<Connected, ConnectError> {
    let tcp = connect(upstream.address, timeout).await?;
    set_nodelay(&tcp);
    let Some(identity) = upstream.identity else {
        return Ok(Connected::Plain(tcp));
    };
    let handshake = mtls.connect(tcp, identity, carries);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => Ok(Connected::Mtls(Box::new(tls))),
        Ok(Err(source)) => Err(ConnectError::Handshake {
            target: upstream.address,
            identity: identity.clone(),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            target: upstream.address,
            timeout,
        }),
    }
}

/// An open upstream connection.
#[derive(Debug)]
pub(crate) enum Connected {
    Plain(TcpStream),
    Mtls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Connected {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connected::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Connected::Mtls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connected {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connected::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Connected::Mtls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connected::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Connected::Mtls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connected::Plain(tcp) => tcp.is_write_vectored(),
            Connected::Mtls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connected::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Connected::Mtls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connected::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Connected::Mtls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl OnTcp for Connected {
    fn tcp(&self) -> &TcpStream {
        match self {
            Connected::Plain(tcp) => tcp,
            Connected::Mtls(tls) => tls.tcp(),
        }
    }
}

/// Copies both ways between a client and a connected upstream.
async fn relay<C, U>(
    client: C,
    mut upstream: U,
    peer: SocketAddr,
    direction: Direction,
    target: SocketAddr,
    shared: &Shared,
) where
    C: AsyncRead + AsyncWrite + Unpin + OnTcp,
    U: AsyncRead + AsyncWrite + Unpin + OnTcp,
{
    let metrics = shared.metrics.tcp(direction);
    // Bytes the client sends leave the pod when the client is the app (outbound) and enter it
    // when the client is outside (inbound).
    let (from_client, to_client) = match direction {
        Direction::Outbound => (metrics.bytes_sent.clone(), metrics.bytes_received.clone()),
        Direction::Inbound => (metrics.bytes_received.clone(), metrics.bytes_sent.clone()),
    };
    let mut client = Counted::new(client, to_client, from_client);
    let started = Instant::now();
    let outcome = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => Some(copied),
        () = shared.drain.aborted() => None,
    };
    let (from_client, to_client) = (client.received(), client.sent());
    let duration = started.elapsed();
    match outcome {
        Some(Ok(_)) => {
            tracing::debug!(%direction, %peer, %target, from_client, to_client, ?duration, "closed");
        }
        Some(Err(err)) => {
            reset(client.get_ref().tcp());
            reset(upstream.tcp());
            tracing::debug!(
                %direction, %peer, %target, from_client, to_client, ?duration, error = %err,
                "connection broke: reset both sides"
            );
        }
        None => {
            reset(client.get_ref().tcp());
            reset(upstream.tcp());
            tracing::debug!(
                %direction, %peer, %target, from_client, to_client, ?duration,
                "still open at the end of the drain: reset"
            );
        }
    }
}

/// A stream carried by a TCP connection, which a failure resets.
pub(crate) trait OnTcp {
    fn tcp(&self) -> &TcpStream;
}

impl OnTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl<T: OnTcp> OnTcp for PrefixedIo<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl<T: OnTcp> OnTcp for tokio_rustls::server::TlsStream<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl<T: OnTcp> OnTcp for tokio_rustls::client::TlsStream<T> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

/// An error and its sources on one line (what `{:#}` does for anyhow).
pub(crate) struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// A stream that counts the bytes read from it as received and the bytes written to it as sent,
/// into both a metric and its own totals.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    sent_metric: Counter,
    received_metric: Counter,
    sent: u64,
    received: u64,
}

impl<T> Counted<T> {
    pub fn new(inner: T, sent: Counter, received: Counter) -> Self {
        Self {
            inner,
            sent_metric: sent,
            received_metric: received,
            sent: 0,
            received: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes written so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    fn count_sent(&mut self, n: usize) {
        let n = n as u64;
        self.sent += n;
        self.sent_metric.inc_by(n);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        this.received += n;
        this.received_metric.inc_by(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.count_sent(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.count_sent(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn counted_streams_count_both_ways() {
        let (sent, received) = (Counter::default(), Counter::default());
        let (near, mut far) = tokio::io::duplex(64);
        let mut counted = Counted::new(near, sent.clone(), received.clone());

        counted.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        far.read_exact(&mut buf).await.expect("read");
        far.write_all(b"hi").await.expect("write back");
        let mut buf = [0u8; 2];
        counted.read_exact(&mut buf).await.expect("read back");

        assert_eq!((counted.sent(), counted.received()), (5, 2));
        assert_eq!((sent.get(), received.get()), (5, 2));
    }

    #[tokio::test]
    async fn connect_reports_refusal_with_the_target() {
        // A port that was just free: refused.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = connect(addr, Duration::from_secs(5))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, ConnectError::Io { target, .. } if target == addr));
        assert!(ErrorChain(&err).to_string().contains(&addr.to_string()));
    }
}
