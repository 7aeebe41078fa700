//! Server-first protocols on ports nobody listed as opaque (SSH, FTP, SMTP or a database on a
//! port of its own): their client sends nothing until it has read the server's greeting, so
//! waiting for the client's first bytes to detect the protocol would stall every connection
//! for the whole detection timeout, on each proxy on the way.
//!
//! Instead, a client that has sent nothing within [`QUIET`] is not waited for: the proxy opens
//! the connection the bytes would take as opaque TCP (to the Service's endpoint over mutual TLS,
//! whose proxy then forwards without detecting anything; or to the app) and lets whoever
//! speaks first decide:
//!
//! - the server: the protocol is server-first. Its bytes go to the client, the connection is
//!   forwarded as opaque TCP, and the destination is remembered ([`Learned`]), so its next
//!   connections skip detection and pay nothing;
//! - the client: detection goes on as usual. Opaque bytes use the connection already open; HTTP
//!   (or TLS, routed by its SNI) takes its usual path and the open connection is closed unused;
//! - neither, within the detection timeout: opaque TCP, as before.
//!
//! HTTP clients send their request as soon as they connect, so ordinary traffic never opens
//! the extra connection; a client that connects ahead of its first request (a warm pool) may.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a silent client is waited for before the server is given its chance to speak.
/// Clients that speak first do so in well under a millisecond after connecting.
pub const QUIET: Duration = Duration::from_millis(20);
/// How long a destination is remembered as server-first (a Service may change what it serves).
pub const REMEMBERED_FOR: Duration = Duration::from_secs(600);
/// Most destinations remembered; past it the oldest are forgotten.
pub const MAX_LEARNED: usize = 4096;

/// Whether the client sent a byte (or closed) within `quiet`.
pub async fn client_spoke_within(client: &TcpStream, quiet: Duration) -> bool {
    tokio::time::timeout(quiet, has_bytes(client)).await.is_ok()
}

/// Waits until `client` has a byte to read, or has closed or failed; consumes nothing. A peek,
/// not `readable()`: readiness may be reported without a byte to read.
async fn has_bytes(client: &TcpStream) {
    let mut byte = [0u8; 1];
    let _ = client.peek(&mut byte).await;
}

/// Who spoke first once a quiet client's upstream connection was open.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstWord {
    /// The client has bytes to read (or closed): detect them as usual.
    Client,
    /// The server sent these bytes (empty: it closed).
    Server(Bytes),
    /// Neither before the deadline.
    Neither,
}

/// Waits for the first of the client's and the server's bytes, up to `deadline`. Nothing the
/// client sent is consumed; what the server sent is returned, to be handed to the client.
pub async fn first_word<U: AsyncRead + Unpin>(
    client: &TcpStream,
    upstream: &mut U,
    deadline: Instant,
) -> io::Result<FirstWord> {
    let mut greeting = BytesMut::with_capacity(1024);
    tokio::select! {
        biased;
        () = has_bytes(client) => Ok(FirstWord::Client),
        read = upstream.read_buf(&mut greeting) => read.map(|_| FirstWord::Server(greeting.freeze())),
        () = tokio::time::sleep_until(deadline) => Ok(FirstWord::Neither),
    }
}

/// The destinations seen to speak first, each for [`REMEMBERED_FOR`].
#[derive(Debug, Default)]
pub struct Learned {
    learned: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Learned {
    /// Whether `target` was seen to speak first within [`REMEMBERED_FOR`] of `now`.
    pub fn speaks_first(&self, target: SocketAddr, now: Instant) -> bool {
        let learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        learned
            .get(&target)
            .is_some_and(|&at| now.saturating_duration_since(at) < REMEMBERED_FOR)
    }

    /// Remembers that `target` spoke first at `now`; `true` when it was not known already.
    pub fn learn(&self, target: SocketAddr, now: Instant) -> bool {
        let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if learned.len() >= MAX_LEARNED && !learned.contains_key(&target) {
            learned.retain(|_, &mut at| now.saturating_duration_since(at) < REMEMBERED_FOR);
            if learned.len() >= MAX_LEARNED
                && let Some(oldest) = learned.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
            {
                learned.remove(&oldest);
            }
        }
        learned
            .insert(target, now)
            .is_none_or(|at| now.saturating_duration_since(at) >= REMEMBERED_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn a_learned_destination_is_remembered_for_a_while_and_memory_stays_bounded() {
        let learned = Learned::default();
        let start = Instant::now();
        assert!(!learned.speaks_first(addr(2222), start));
        assert!(learned.learn(addr(2222), start));
        assert!(!learned.learn(addr(2222), start), "already known");
        assert!(learned.speaks_first(addr(2222), start + REMEMBERED_FOR / 2));
        assert!(!learned.speaks_first(addr(2222), start + REMEMBERED_FOR));
        assert!(!learned.speaks_first(addr(2223), start));
        for port in 0..(MAX_LEARNED as u16 + 10) {
            learned.learn(addr(port), start + Duration::from_millis(u64::from(port)));
        }
        assert!(learned.learned.lock().unwrap().len() <= MAX_LEARNED);
        let last = MAX_LEARNED as u16 + 9;
        assert!(learned.speaks_first(addr(last), start + Duration::from_secs(1)));
        assert!(
            !learned.speaks_first(addr(0), start),
            "the oldest went first"
        );
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connecting);
        (accepted.unwrap().0, connected.unwrap())
    }

    #[tokio::test]
    async fn whoever_speaks_first_is_found_and_nothing_the_client_sent_is_consumed() {
        // The server greets: its bytes are returned.
        let (client, mut app_side) = pair().await;
        let (mut upstream, mut server) = pair().await;
        server.write_all(b"SSH-2.0-test\r\n").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let word = first_word(&client, &mut upstream, deadline).await.unwrap();
        assert_eq!(
            word,
            FirstWord::Server(Bytes::from_static(b"SSH-2.0-test\r\n"))
        );

        // The client speaks: its bytes stay to be read.
        app_side.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let word = first_word(&client, &mut upstream, deadline).await.unwrap();
        assert_eq!(word, FirstWord::Client);
        let mut read = [0u8; 16];
        let mut client = client;
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"GET / HTTP/1.1\r\n");

        // Neither.
        let (quiet, _quiet_app) = pair().await;
        let (mut silent, _silent_server) = pair().await;
        let soon = Instant::now() + Duration::from_millis(30);
        let word = first_word(&quiet, &mut silent, soon).await.unwrap();
        assert_eq!(word, FirstWord::Neither);
        assert!(!client_spoke_within(&quiet, Duration::from_millis(10)).await);
    }
}
