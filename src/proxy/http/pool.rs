//! Connections kept open to upstream endpoints and reused by every request of the proxy: per
//! endpoint address and transport (plaintext or mutual TLS), a stack of idle HTTP/1
//! connections and one shared HTTP/2 connection. Opening connections is
//! [`upstream`](super::upstream)'s job; this module only keeps them.
//!
//! Why not hyper-util's pooled client: it keys its pool by a URI formatted and parsed per
//! request, boxes each request's future, takes the pool's lock twice per request and spawns a
//! task per HTTP/1 request to learn when the connection is free again. Here the key is the
//! socket address, and an HTTP/1 connection comes back when its response body is dropped
//! ([`Checkin`]), which is when hyper is done with it.
//!
//! An idle connection is handed out only while younger than the idle limit
//! ([`Limits::upstream_pool_idle`](crate::limits::Limits::upstream_pool_idle)): the upstream's
//! proxy closes idle HTTP/1 connections after its header-read timeout, which is longer, so no
//! request goes out on a connection being closed under it. Connections idle past the limit are
//! closed, and endpoints left with none forgotten, by [`reap`] (an app may never close its
//! side, and a burst of requests leaves one idle connection per request it had in flight).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use hyper::client::conn::{http1, http2};

use super::body::ProxyBody;
use super::upstream::UpstreamError;

pub type Http1Sender = http1::SendRequest<ProxyBody>;
pub type Http2Sender = http2::SendRequest<ProxyBody>;

/// The endpoints the proxy has connections to, by address.
#[derive(Debug)]
pub struct Pool {
    idle_limit: Duration,
    endpoints: RwLock<HashMap<SocketAddr, Arc<Endpoint>>>,
}

/// One endpoint's connections.
#[derive(Debug)]
pub struct Endpoint {
    /// The address as a URI authority (HTTP/2's `:authority`, HTTP/1's `Host` when the client
    /// sent none), made once.
    pub authority: Authority,
    idle_limit: Duration,
    plain: Transport,
    mtls: Transport,
}

#[derive(Debug, Default)]
struct Transport {
    /// Idle HTTP/1 connections, oldest first; the newest is reused first, so the others age
    /// out when fewer are needed.
    http1: Mutex<Vec<Idle>>,
    http2: Mutex<Option<Shared>>,
    /// Taken while an HTTP/2 connection is opened, so that requests arriving meanwhile share it
    /// (or its failure) rather than each opening one; holds the last failure.
    http2_connect: tokio::sync::Mutex<Option<UpstreamError>>,
    /// Failed HTTP/2 connects so far: a request that waited on a connect tells by it whether
    /// that connect failed.
    http2_failures: AtomicU64,
}

#[derive(Debug)]
struct Idle {
    sender: Http1Sender,
    since: Instant,
}

#[derive(Debug)]
struct Shared {
    sender: Http2Sender,
    last_used: Instant,
}

impl Pool {
    pub fn new(idle_limit: Duration) -> Self {
        Self {
            idle_limit,
            endpoints: RwLock::default(),
        }
    }

    /// The endpoint at `address`, added on first use.
    pub fn endpoint(&self, address: SocketAddr) -> Arc<Endpoint> {
        if let Some(endpoint) = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
        {
            return endpoint.clone();
        }
        self.endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(address)
            .or_insert_with(|| Arc::new(Endpoint::new(address, self.idle_limit)))
            .clone()
    }

    /// Closes the connections idle past the limit and forgets the endpoints left with none that
    /// no request is using.
    fn close_idle(&self, now: Instant) {
        self.endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, endpoint| endpoint.close_idle(now) || Arc::strong_count(endpoint) > 1);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Endpoint {
    fn new(address: SocketAddr, idle_limit: Duration) -> Self {
        Self {
            authority: Authority::from_maybe_shared(Bytes::from(address.to_string()))
                .expect("a socket address is a valid authority"),
            idle_limit,
            plain: Transport::default(),
            mtls: Transport::default(),
        }
    }

    fn transport(&self, mtls: bool) -> &Transport {
        if mtls { &self.mtls } else { &self.plain }
    }

    /// An idle HTTP/1 connection ready for a request, if one is young enough. Connections that
    /// closed or are still busy finishing an exchange are let go.
    pub fn take_http1(&self, mtls: bool, now: Instant) -> Option<Http1Sender> {
        let mut idle = self
            .transport(mtls)
            .http1
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(entry) = idle.pop() {
            if now.saturating_duration_since(entry.since) >= self.idle_limit {
                // The rest are older still.
                idle.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Keeps an HTTP/1 connection that finished an exchange, unless it closed.
    pub fn put_http1(&self, mtls: bool, sender: Http1Sender, now: Instant) {
        if sender.is_closed() {
            return;
        }
        self.transport(mtls)
            .http1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Idle { sender, since: now });
    }

    /// The shared HTTP/2 connection, if it is open and was used within the idle limit.
    fn live_http2(&self, mtls: bool, now: Instant) -> Option<Http2Sender> {
        let mut slot = self
            .transport(mtls)
            .http2
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(shared)
                if !shared.sender.is_closed()
                    && now.saturating_duration_since(shared.last_used) < self.idle_limit =>
            {
                shared.last_used = now;
                Some(shared.sender.clone())
            }
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// The shared HTTP/2 connection, opened with `connect` when there is none. Requests that
    /// arrive while it is being opened wait for it, and share its failure. The flag says
    /// whether the connection was already open.
    pub async fn http2<F>(
        &self,
        mtls: bool,
        connect: impl FnOnce() -> F,
    ) -> Result<(Http2Sender, bool), UpstreamError>
    where
        F: Future<Output = Result<Http2Sender, UpstreamError>>,
    {
        if let Some(sender) = self.live_http2(mtls, Instant::now()) {
            return Ok((sender, true));
        }
        let transport = self.transport(mtls);
        let failures_before = transport.http2_failures.load(Ordering::Acquire);
        let mut last_failure = transport.http2_connect.lock().await;
        if let Some(sender) = self.live_http2(mtls, Instant::now()) {
            return Ok((sender, true));
        }
        if transport.http2_failures.load(Ordering::Acquire) != failures_before
            && let Some(failed) = last_failure.as_ref()
        {
            return Err(failed.clone());
        }
        match connect().await {
            Ok(sender) => {
                *transport
                    .http2
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Shared {
                    sender: sender.clone(),
                    last_used: Instant::now(),
                });
                Ok((sender, false))
            }
            Err(err) => {
                *last_failure = Some(err.clone());
                transport.http2_failures.fetch_add(1, Ordering::Release);
                Err(err)
            }
        }
    }

    /// Forgets the shared HTTP/2 connection if it closed (a request found it so).
    pub fn forget_closed_http2(&self, mtls: bool) {
        let mut slot = self
            .transport(mtls)
            .http2
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot
            .as_ref()
            .is_some_and(|shared| shared.sender.is_closed())
        {
            *slot = None;
        }
    }

    /// Drops the connections idle past the limit (which closes them); says whether any is left.
    fn close_idle(&self, now: Instant) -> bool {
        let young = |since: Instant| now.saturating_duration_since(since) < self.idle_limit;
        let mut kept = false;
        for transport in [&self.plain, &self.mtls] {
            let mut http1 = transport
                .http1
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Oldest first: the expired ones are a prefix.
            let expired = http1.partition_point(|idle| !young(idle.since));
            http1.drain(..expired);
            let mut http2 = transport
                .http2
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if http2
                .as_ref()
                .is_some_and(|shared| !young(shared.last_used))
            {
                *http2 = None;
            }
            kept |= !http1.is_empty() || http2.is_some();
        }
        kept
    }
}

/// Runs [`Pool::close_idle`] every half idle limit for as long as the pool exists.
pub async fn reap(pool: Weak<Pool>) {
    let Some(every) = pool.upgrade().map(|pool| pool.idle_limit / 2) else {
        return;
    };
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.close_idle(Instant::now());
    }
}

/// An HTTP/1 connection lent to one exchange: given back to its endpoint when dropped, which
/// the response body does when hyper is done with it ([`super::upstream::UpstreamBody`]).
#[derive(Debug)]
pub struct Checkin {
    endpoint: Arc<Endpoint>,
    mtls: bool,
    sender: Option<Http1Sender>,
}

impl Checkin {
    pub fn new(endpoint: Arc<Endpoint>, mtls: bool, sender: Http1Sender) -> Self {
        Self {
            endpoint,
            mtls,
            sender: Some(sender),
        }
    }
}

impl Drop for Checkin {
    fn drop(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        if sender.is_ready() {
            self.endpoint.put_http1(self.mtls, sender, Instant::now());
            return;
        }
        if sender.is_closed() {
            return;
        }
        // The body ended before hyper finished the exchange (the request's body may still be
        // going out): wait for it rather than lose a good connection. Rare, so a task is fine.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let endpoint = self.endpoint.clone();
        let mtls = self.mtls;
        runtime.spawn(async move {
            if sender.ready().await.is_ok() {
                endpoint.put_http1(mtls, sender, Instant::now());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_connections_are_forgotten_unless_in_use() {
        let pool = Pool::new(Duration::from_secs(15));
        let held = pool.endpoint("10.0.0.1:80".parse().expect("address"));
        drop(pool.endpoint("10.0.0.2:80".parse().expect("address")));
        assert_eq!(pool.len(), 2);
        // 10.0.0.2 holds no connection and no request uses it; 10.0.0.1 is in use.
        pool.close_idle(Instant::now());
        assert_eq!(pool.len(), 1);
        assert_eq!(held.authority.as_str(), "10.0.0.1:80");
        let v6 = pool.endpoint("[fd00::1]:8080".parse().expect("address"));
        assert_eq!(v6.authority.as_str(), "[fd00::1]:8080");
    }
}
