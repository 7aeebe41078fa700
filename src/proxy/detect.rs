//! Protocol detection: the proxy reads a client's first bytes to choose between HTTP/2, HTTP/1,
//! TLS (routed by SNI) and opaque TCP, then hands those bytes on through [`PrefixedIo`] so
//! nothing the client sent is lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::sni::{self, SniError};

/// The client connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most bytes read before giving up and treating the connection as opaque: a request line
/// longer than this is not worth parsing.
pub const MAX_PREFIX: usize = 8 * 1024;
/// Most bytes read for a ClientHello; post-quantum key shares make them a few KiB.
pub const MAX_TLS_PREFIX: usize = 16 * 1024;
/// Longest HTTP/1 method accepted; real ones are far shorter.
const MAX_METHOD_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http2,
    Http1,
    Tls,
    Opaque,
}

/// What [`detect`] found, and the bytes it consumed to find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub protocol: Detected,
    /// The ClientHello's server name, for [`Detected::Tls`] only.
    pub sni: Option<String>,
    /// Everything read from the client, to be replayed with [`PrefixedIo`].
    pub prefix: Bytes,
}

/// Whether one protocol's start matches the bytes so far.
enum Match {
    Yes(Detected),
    Maybe,
    No,
}

/// Classifies the first bytes of a client's connection: the HTTP/2 preface, a TLS handshake
/// record header, or an HTTP/1.x request line. `None` while the bytes are still the start of
/// one of them, `Opaque` as soon as they cannot be.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    let mut undecided = false;
    for matcher in [match_h2, match_tls, match_h1] {
        match matcher(prefix) {
            Match::Yes(protocol) => return Some(protocol),
            Match::Maybe => undecided = true,
            Match::No => {}
        }
    }
    (!undecided).then_some(Detected::Opaque)
}

fn match_h2(prefix: &[u8]) -> Match {
    if prefix.len() >= H2_PREFACE.len() {
        if prefix.starts_with(H2_PREFACE) {
            Match::Yes(Detected::Http2)
        } else {
            Match::No
        }
    } else if H2_PREFACE.starts_with(prefix) {
        Match::Maybe
    } else {
        Match::No
    }
}

/// A handshake record of SSL 3.0 up to TLS 1.3.
fn match_tls(prefix: &[u8]) -> Match {
    match prefix {
        [0x16, 0x03, 0x00..=0x04, ..] => Match::Yes(Detected::Tls),
        [0x16] | [0x16, 0x03] => Match::Maybe,
        _ => Match::No,
    }
}

/// `METHOD SP request-target SP HTTP/1.x CRLF` (RFC 9112 §3).
fn match_h1(prefix: &[u8]) -> Match {
    let method_len = prefix.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len > MAX_METHOD_LEN {
        return Match::No;
    }
    let Some(rest) = prefix.get(method_len..).filter(|rest| !rest.is_empty()) else {
        return Match::Maybe;
    };
    let Some(rest) = rest.strip_prefix(b" ").filter(|_| method_len > 0) else {
        return Match::No;
    };

    let target_len = rest.iter().take_while(|&&b| is_target_byte(b)).count();
    let Some(rest) = rest.get(target_len..).filter(|rest| !rest.is_empty()) else {
        return Match::Maybe;
    };
    let Some(version) = rest.strip_prefix(b" ").filter(|_| target_len > 0) else {
        return Match::No;
    };

    let mut undecided = false;
    for line_end in [&b"HTTP/1.1\r\n"[..], b"HTTP/1.0\r\n"] {
        if version.starts_with(line_end) {
            return Match::Yes(Detected::Http1);
        }
        undecided |= line_end.starts_with(version);
    }
    if undecided { Match::Maybe } else { Match::No }
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Anything but spaces and control characters; the HTTP server judges the rest.
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

/// [`detect`], except on a connection already known to be opaque (its port says so, or its
/// client did): then nothing is read, so a server-first protocol never waits.
pub async fn detect_unless_opaque<R: AsyncRead + Unpin>(
    opaque: bool,
    io: &mut R,
    timeout: Duration,
) -> io::Result<Detection> {
    if opaque {
        return Ok(Detection {
            protocol: Detected::Opaque,
            sni: None,
            prefix: Bytes::new(),
        });
    }
    detect(io, timeout).await
}

/// Reads from `io` until [`classify`] decides, [`MAX_PREFIX`] bytes were read or `timeout`
/// passed (both: `Opaque`), and returns the decision with the bytes read. For TLS it goes on
/// reading, within the same deadline and up to [`MAX_TLS_PREFIX`], until the ClientHello's SNI
/// can be read; if it cannot, the result is still `Tls`, without SNI. EOF before a decision is
/// `Opaque` with what was read.
pub async fn detect<R: AsyncRead + Unpin>(io: &mut R, timeout: Duration) -> io::Result<Detection> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    let protocol = loop {
        if let Some(protocol) = classify(&buf) {
            break protocol;
        }
        if buf.len() >= MAX_PREFIX || !read_more(io, &mut buf, MAX_PREFIX, deadline).await? {
            break Detected::Opaque;
        }
    };

    let mut sni = None;
    if protocol == Detected::Tls {
        sni = loop {
            match sni::server_name(&buf) {
                Ok(name) => break name,
                Err(SniError::Incomplete) => {}
                // Still TLS; the forwarder decides what SNI-less TLS may reach.
                Err(SniError::NotClientHello | SniError::Malformed(_)) => break None,
            }
            if buf.len() >= MAX_TLS_PREFIX
                || !read_more(io, &mut buf, MAX_TLS_PREFIX, deadline).await?
            {
                break None;
            }
        };
    }
    Ok(Detection {
        protocol,
        sni,
        prefix: buf.freeze(),
    })
}

/// One read into `buf`, never past `max` bytes in all. `false` on EOF or once `deadline`
/// passed.
async fn read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
    deadline: Instant,
) -> io::Result<bool> {
    let room = max.saturating_sub(buf.len());
    buf.reserve(room.min(4096));
    let mut limited = (&mut *buf).limit(room);
    match tokio::time::timeout_at(deadline, io.read_buf(&mut limited)).await {
        Ok(Ok(n)) => Ok(n > 0),
        Ok(Err(err)) => Err(err),
        Err(_elapsed) => Ok(false),
    }
}

/// An IO that first yields `prefix`, then reads from `inner`; writes go straight to `inner`.
/// Lets hyper and the TCP forwarder see the bytes detection already consumed.
#[derive(Debug)]
pub struct PrefixedIo<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> PrefixedIo<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The prefix bytes not read yet, and the inner IO.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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
    use super::*;
    use crate::sni::test_client_hello;
    use tokio::io::{AsyncWriteExt, duplex};

    const H1_REQUEST: &[u8] = b"GET /index.html?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n";
    /// How many bytes of `H1_REQUEST` decide it: the request line.
    const H1_LINE_LEN: usize = 30;

    #[test]
    fn classifies_each_protocol() {
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        assert_eq!(classify(&h2), Some(Detected::Http2));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(H1_REQUEST), Some(Detected::Http1));
        assert_eq!(classify(&H1_REQUEST[..H1_LINE_LEN]), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.0\r\n"), Some(Detected::Http1));
        assert_eq!(
            classify(b"CONNECT a.example:443 HTTP/1.1\r\n"),
            Some(Detected::Http1)
        );
        let method = "A".repeat(MAX_METHOD_LEN);
        assert_eq!(
            classify(format!("{method} / HTTP/1.1\r\n").as_bytes()),
            Some(Detected::Http1)
        );
        let hello = test_client_hello("api.example.com", true);
        assert_eq!(classify(&hello), Some(Detected::Tls));
        for minor in 0..=4 {
            assert_eq!(classify(&[0x16, 0x03, minor]), Some(Detected::Tls));
        }
    }

    #[test]
    fn every_strict_prefix_is_undecided() {
        let hello = test_client_hello("api.example.com", true);
        for (name, decisive) in [
            ("h2", H2_PREFACE),
            ("h1", &H1_REQUEST[..H1_LINE_LEN]),
            ("tls", &hello[..3]),
        ] {
            for end in 0..decisive.len() {
                assert_eq!(classify(&decisive[..end]), None, "{name}: {end} bytes");
            }
        }
    }

    #[test]
    fn garbage_is_opaque() {
        let long_method = format!("{} / HTTP/1.1\r\n", "A".repeat(MAX_METHOD_LEN + 1));
        for bytes in [
            &b"\x00"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"hello world\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.1\rX",
            b"GET / HTTP/1.1\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET /\x01 HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET / http/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX",
            b"\x16\x03\x05",
            b"\x16\x02",
            b"\x17\x03\x03",
            long_method.as_bytes(),
        ] {
            assert_eq!(classify(bytes), Some(Detected::Opaque), "{bytes:?}");
        }
    }

    async fn detect_bytes(bytes: &[u8]) -> Detection {
        let (mut client, mut server) = duplex(64 * 1024);
        client.write_all(bytes).await.unwrap();
        detect(&mut server, Duration::from_secs(5)).await.unwrap()
    }

    #[tokio::test]
    async fn detects_http1() {
        let detection = detect_bytes(H1_REQUEST).await;
        assert_eq!(detection.protocol, Detected::Http1);
        assert_eq!(detection.sni, None);
        assert_eq!(&detection.prefix[..], H1_REQUEST);
    }

    #[tokio::test]
    async fn detects_http2() {
        let detection = detect_bytes(H2_PREFACE).await;
        assert_eq!(detection.protocol, Detected::Http2);
        assert_eq!(&detection.prefix[..], H2_PREFACE);
    }

    #[tokio::test]
    async fn detects_tls_and_its_sni() {
        let hello = test_client_hello("api.example.com", true);
        let detection = detect_bytes(&hello).await;
        assert_eq!(detection.protocol, Detected::Tls);
        assert_eq!(detection.sni.as_deref(), Some("api.example.com"));
        assert_eq!(&detection.prefix[..], &hello[..]);
    }

    #[tokio::test]
    async fn reads_a_client_hello_sent_in_pieces() {
        let hello = test_client_hello("api.example.com", true);
        let (mut client, mut server) = duplex(64 * 1024);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(50) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let detection = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(detection.protocol, Detected::Tls);
        assert_eq!(detection.sni.as_deref(), Some("api.example.com"));
        assert_eq!(&detection.prefix[..], &hello[..]);
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_is_opaque_with_the_partial_bytes() {
        let (mut client, mut server) = duplex(1024);
        client.write_all(b"GET /partial").await.unwrap();
        let detection = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(detection.protocol, Detected::Opaque);
        assert_eq!(&detection.prefix[..], b"GET /partial");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_opaque_after_the_timeout() {
        let (client, mut server) = duplex(1024);
        let started = Instant::now();
        let detection = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(detection.protocol, Detected::Opaque);
        assert!(detection.prefix.is_empty());
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn truncated_client_hello_is_tls_without_sni_after_the_timeout() {
        let hello = test_client_hello("api.example.com", true);
        let (mut client, mut server) = duplex(64 * 1024);
        client.write_all(&hello[..40]).await.unwrap();
        let detection = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(detection.protocol, Detected::Tls);
        assert_eq!(detection.sni, None);
        assert_eq!(&detection.prefix[..], &hello[..40]);
        drop(client);
    }

    #[tokio::test]
    async fn eof_before_a_decision_is_opaque() {
        let (mut client, mut server) = duplex(1024);
        client.write_all(b"GET / HT").await.unwrap();
        drop(client);
        let detection = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(detection.protocol, Detected::Opaque);
        assert_eq!(&detection.prefix[..], b"GET / HT");
    }

    #[tokio::test]
    async fn gives_up_after_max_prefix_bytes() {
        let mut request = b"GET /".to_vec();
        request.resize(MAX_PREFIX + 1000, b'a');
        let detection = detect_bytes(&request).await;
        assert_eq!(detection.protocol, Detected::Opaque);
        assert_eq!(&detection.prefix[..], &request[..MAX_PREFIX]);
    }

    #[tokio::test]
    async fn garbage_is_opaque_at_once() {
        let detection = detect_bytes(b"\x00\x01\x02").await;
        assert_eq!(detection.protocol, Detected::Opaque);
        assert_eq!(&detection.prefix[..], b"\x00\x01\x02");
    }

    #[tokio::test]
    async fn prefixed_io_yields_the_prefix_then_the_rest_and_passes_writes() {
        let (mut client, server) = duplex(1024);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello "), server);
        client.write_all(b"world").await.unwrap();
        client.shutdown().await.unwrap();

        // A small buffer: the prefix comes out over several reads.
        let mut small = [0u8; 4];
        let n = io.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"hell");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"o world");

        io.write_all(b"reply").await.unwrap();
        let bufs = [io::IoSlice::new(b" and"), io::IoSlice::new(b" more")];
        let written = io.write_vectored(&bufs).await.unwrap();
        io.write_all(&b" and more"[written..]).await.unwrap();
        assert!(io.get_ref().is_write_vectored());
        assert!(io.is_write_vectored());
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"reply and more");
    }

    #[tokio::test]
    async fn detection_then_prefixed_io_replays_every_byte() {
        let (mut client, mut server) = duplex(64 * 1024);
        client.write_all(H1_REQUEST).await.unwrap();
        client.shutdown().await.unwrap();
        let detection = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        let mut io = PrefixedIo::new(detection.prefix, server);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, H1_REQUEST);
    }
}
