//! What one client may hold of the proxy: limits on the inbound and outbound listeners against
//! slow and abusive clients (and a misbehaving app).
//!
//! | limit | flag (env) | default | what happens |
//! |---|---|---|---|
//! | connections per listener | `--max-connections` (`SKEIN_MAX_CONNECTIONS`) | 10000 | a connection over the cap is reset at once, counted as `tcp_connections_rejected_total{reason="connection_limit"}` |
//! | HTTP/1 request head | `--header-read-timeout` (`SKEIN_HEADER_READ_TIMEOUT`) | 30s | a connection that does not send a whole request head within it is closed (`tcp_connections_cut_total{reason="header_timeout"}`); this includes an HTTP/1 keep-alive connection idle between requests, as most servers do |
//! | HTTP/1 request head size | `--max-request-header-bytes` (`SKEIN_MAX_REQUEST_HEADER_BYTES`) | 64 KiB | a bigger head (request line and headers) is answered `431` and the connection closed (`reason="header_too_large"`); for HTTP/2 it is the advertised `SETTINGS_MAX_HEADER_LIST_SIZE` |
//! | HTTP/2 concurrent streams | `--http2-max-concurrent-streams` (`SKEIN_HTTP2_MAX_CONCURRENT_STREAMS`) | 250 | advertised in SETTINGS; more are refused by the HTTP/2 layer |
//! | idle connection | `--idle-timeout` (`SKEIN_IDLE_TIMEOUT`) | 1h (`0s`: none) | a connection on which no byte moved in either direction for that long is closed (`reason="idle_timeout"`); a WebSocket or a long HTTP/2 stream that carries traffic is never cut |
//!
//! HTTP/2 also gets explicit guards against reset floods: at most
//! [`HTTP2_MAX_PENDING_ACCEPT_RESETS`] streams reset by the client before the server saw them
//! (CVE-2023-44487, "rapid reset") and [`HTTP2_MAX_LOCAL_ERROR_RESETS`] streams the server had
//! to reset for the client's errors; past them the connection is closed with a GOAWAY. The h2
//! version in use (0.4.20, `Cargo.lock`) also bounds CONTINUATION frames (CVE-2024-27316 class,
//! fixed in h2 0.4.4) by the header list size.
//!
//! Idleness is read from the kernel (`TCP_INFO`: time since the last data segment was received
//! and since the last one was sent), so it counts every byte at the TCP level, whatever the
//! protocol above, without a wrapper on every read and write.

use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Streams a client may reset before the server accepted them, per connection (h2's default,
/// made explicit: hyper leaves it unset otherwise).
pub const HTTP2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset because of the client's protocol errors, per connection.
pub const HTTP2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// HTTP/2 flow control, both ways between proxies (the inbound server and the upstream clients).
/// A stream whose reader stalls keeps up to one stream window unread; the connection's window is
/// 16 of them, so it takes 16 stalled bodies, not one, to hold up the other streams of a
/// connection: HTTP/1 requests from many clients share one ([`crate::http::multiplex`]).
pub const HTTP2_STREAM_WINDOW: u32 = 1024 * 1024;
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 * HTTP2_STREAM_WINDOW;
/// hyper refuses smaller HTTP/1 buffers (and a head must fit a request line and a few headers).
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// The limits every listener applies (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// Zero: no idle timeout.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            http2_max_concurrent_streams: 250,
        }
    }
}

/// A limit that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("--header-read-timeout must be more than 0s")]
    NoHeaderTime,
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--max-request-header-bytes must be at least {MIN_HEADER_BYTES}")]
    HeaderBytes,
    #[error("--http2-max-concurrent-streams must be at least 1")]
    NoStreams,
}

impl Limits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.header_read_timeout.is_zero() {
            return Err(LimitsError::NoHeaderTime);
        }
        if self.max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(LimitsError::HeaderBytes);
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(LimitsError::NoStreams);
        }
        Ok(())
    }

    /// How long the proxy keeps an idle pooled HTTP connection to an upstream: less than the
    /// header-read timeout, after which the upstream's proxy closes an idle HTTP/1 connection,
    /// so a request is never sent on a connection being closed under it.
    pub fn upstream_pool_idle(&self) -> Duration {
        (self.header_read_timeout / 2).min(Duration::from_secs(90))
    }
}

/// The connections one listener holds, up to its cap.
#[derive(Debug)]
pub struct Slots {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// A place for one more connection, or `None` at the cap.
    pub fn try_acquire(&self) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(self.open.clone()))
    }
}

/// Pure: how long a connection has been idle, from the kernel's "since the last data segment
/// received" and "since the last one sent" (milliseconds).
pub fn idle_for(last_data_received_ms: u32, last_data_sent_ms: u32) -> Duration {
    Duration::from_millis(u64::from(last_data_received_ms.min(last_data_sent_ms)))
}

/// How long the TCP connection on `fd` has moved no data either way (`TCP_INFO`).
fn tcp_idle(fd: RawFd) -> std::io::Result<Duration> {
    // SAFETY: tcp_info is plain old data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a pointer to a buffer of `len` bytes and a pointer to its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(idle_for(info.tcpi_last_data_recv, info.tcpi_last_data_sent))
}

/// Resolves once the connection `socket` has moved no data in either direction for `timeout`
/// (never with a zero timeout, or if the kernel cannot tell). `socket` must stay open while
/// this is polled: race it against the future that owns the connection.
pub async fn idle_expired(socket: &impl AsRawFd, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let fd = socket.as_raw_fd();
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        match tcp_idle(fd) {
            Ok(idle) if idle >= timeout => return,
            // Check again when it would have been idle for the whole timeout.
            Ok(idle) => wait = timeout - idle,
            Err(err) => {
                tracing::debug!(error = %err, "TCP_INFO unavailable: no idle timeout on this connection");
                return std::future::pending().await;
            }
        }
    }
}

/// When bytes last moved on a set of streams wrapped by [`Activity::wrap`]: the idle timeout of
/// a connection the kernel's view cannot cover (an upgraded HTTP/1 connection, once hyper has
/// handed it over to the tunnel).
#[derive(Debug, Clone)]
pub struct Activity {
    since: tokio::time::Instant,
    /// Milliseconds from `since` to the last byte moved.
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            since: tokio::time::Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    pub fn wrap<T>(&self, inner: T) -> Active<T> {
        Active {
            inner,
            activity: self.clone(),
        }
    }

    /// Resolves once no byte moved for `timeout` (never with a zero timeout).
    pub async fn expired(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let deadline = self.last() + timeout;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records in its [`Activity`] when bytes move.
#[derive(Debug)]
pub struct Active<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.activity.touch();
        }
        Poll::Ready(result)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            self.activity.touch();
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_the_shorter_of_both_directions() {
        assert_eq!(idle_for(5_000, 200), Duration::from_millis(200));
        assert_eq!(idle_for(100, 7_000), Duration::from_millis(100));
        assert_eq!(idle_for(9_000, 9_000), Duration::from_secs(9));
    }

    #[test]
    fn slots_stop_at_the_cap_and_come_back() {
        let slots = Slots::new(2);
        let a = slots.try_acquire().expect("first");
        let _b = slots.try_acquire().expect("second");
        assert!(slots.try_acquire().is_none(), "over the cap");
        drop(a);
        assert!(slots.try_acquire().is_some(), "a place came back");
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let small = Limits {
            max_header_bytes: 1024,
            ..Limits::default()
        };
        assert_eq!(small.validate(), Err(LimitsError::HeaderBytes));
        let none = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(none.validate(), Err(LimitsError::NoConnections));
        assert_eq!(
            Limits::default().upstream_pool_idle(),
            Duration::from_secs(15)
        );
    }

    #[tokio::test]
    async fn an_idle_socket_expires_and_a_busy_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let fd = server.as_raw_fd();
        let (mut server_read, _server_write) = server.into_split();
        let timeout = Duration::from_millis(600);
        // Busy: a byte every 200 ms for 1.8 s (three timeouts).
        let busy = async {
            for _ in 0..9 {
                client.write_all(b"x").await.expect("write");
                let mut byte = [0u8; 1];
                server_read.read_exact(&mut byte).await.expect("read");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            () = idle_expired(&fd, timeout) => panic!("a busy connection expired"),
            () = busy => {}
        }
        tokio::time::timeout(timeout * 5, idle_expired(&fd, timeout))
            .await
            .expect("an idle connection expires");
    }
}
