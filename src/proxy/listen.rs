//! The listeners: binding, the accept loop, and where each accepted connection is going.
//!
//! Each port is served by an IPv4 socket on `0.0.0.0` and, where the host has IPv6, a second,
//! IPv6-only socket on `[::]`: two sockets rather than one dual-stack socket, so the result does
//! not depend on the `net.ipv6.bindv6only` sysctl.
//!
//! Where a connection goes is decided by its original destination, the address the client
//! connected to before `skein init`'s `REDIRECT` rewrote it:
//!
//! - outbound: exactly there;
//! - inbound: there too, to the app at the pod IP the client asked for (never loopback: a port
//!   the app bound to `127.0.0.1` only is not for other pods, and the app sees the pod IP as the
//!   peer instead of `127.0.0.1`). The proxy's UID is exempt from capture, so this connection is
//!   not captured again. The original destination must be one of the pod's own addresses:
//!   a packet routed to the pod for another address (a host that points a route at the pod)
//!   would otherwise turn the proxy into a relay past every egress rule.
//!
//! A connection without an original destination (not redirected: someone connected to the
//! proxy's port directly) or whose original destination is the proxy itself is closed at once:
//! forwarding it would connect the proxy to itself.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::limits::{Slots, idle_expired};
use super::metrics::{CutReason, RejectReason};
use super::original_dst::original_dst;
use super::{Direction, Shared, inbound, outbound, tcp};

/// Pending-connection queue of each listener (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 1024;
/// Pause after an accept error other than a client giving up (typically out of descriptors), so a
/// persistent error does not spin the loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Listeners on `0.0.0.0:port` and, if the host has IPv6, on `[::]:port` (IPv6 only).
///
/// A host without IPv6 only gets the IPv4 listener (logged); any other failure is an error.
pub fn bind(port: u16) -> Result<Vec<TcpListener>, BindError> {
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut listeners = vec![bind_one(v4).map_err(|source| BindError { addr: v4, source })?];
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match bind_one(v6) {
        Ok(listener) => listeners.push(listener),
        Err(err) if ipv6_unavailable(&err) => {
            tracing::info!(port, error = %err, "no IPv6 on this host: listening on IPv4 only");
        }
        Err(source) => return Err(BindError { addr: v6, source }),
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            set_ipv6_only(&socket)?;
            socket
        }
    };
    // A restarted proxy can bind again while its old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn set_ipv6_only(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to an int of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The errors of a host (or network namespace) without IPv6.
fn ipv6_unavailable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// Accepts connections until the drain stops accepting, then closes the listener (so new
/// connections are refused). Each connection is handled on its own task and tracked by the drain
/// from the moment it is accepted. At most `--max-connections` are open at once (a connection
/// over the cap is reset at once), and one that moves no byte for `--idle-timeout` is closed
/// ([`super::limits`]).
pub(crate) async fn accept_loop(listener: TcpListener, direction: Direction, shared: Arc<Shared>) {
    let local = listener.local_addr().ok();
    let slots = Slots::new(shared.limits.max_connections);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.drain.stopped_accepting() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = slots.try_acquire() else {
                    over_capacity(&stream, peer, direction, &shared);
                    continue;
                };
                let tracked = shared.drain.track();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _tracked = tracked;
                    let _slot = slot;
                    // Read while `handle` owns (and so keeps open) the socket.
                    let fd = stream.as_raw_fd();
                    let idle_timeout = shared.limits.idle_timeout;
                    tokio::select! {
                        () = handle(stream, peer, direction, &shared) => {}
                        () = idle_expired(&fd, idle_timeout) => {
                            shared.metrics.tcp(direction).cut(CutReason::IdleTimeout).inc();
                            tracing::info!(%direction, %peer, timeout = ?idle_timeout, "closing a connection idle for the idle timeout");
                        }
                    }
                });
            }
            // The client gave up before we accepted: nothing to do.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) =>
            {
                tracing::debug!(%direction, error = %err, "accept");
            }
            Err(err) => {
                tracing::warn!(%direction, listener = ?local, error = %err, "accept failed");
                tokio::select! {
                    () = shared.drain.stopped_accepting() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
    tracing::debug!(%direction, listener = ?local, "listener closed");
}

/// Resets a connection the listener has no room for (counted; logged at debug only, since a
/// flood would flood the log too).
fn over_capacity(stream: &TcpStream, peer: SocketAddr, direction: Direction, shared: &Shared) {
    let rejected = shared.metrics.tcp(direction);
    rejected.rejected(RejectReason::ConnectionLimit).inc();
    tracing::debug!(%direction, %peer, max = shared.limits.max_connections, "refusing a connection: the listener is at its connection limit");
    tcp::reset(stream);
}

async fn handle(stream: TcpStream, peer: SocketAddr, direction: Direction, shared: &Arc<Shared>) {
    match target(direction, &stream, &shared.own_ports) {
        Ok(target) => {
            tracing::debug!(%direction, %peer, %target, "accepted");
            dispatch(stream, peer, direction, target, shared).await;
        }
        Err(rejected) => {
            shared
                .metrics
                .tcp(direction)
                .rejected(rejected.reason())
                .inc();
            let local = stream.local_addr().ok();
            tracing::warn!(
                %direction,
                %peer,
                ?local,
                error = %rejected,
                "refusing a connection"
            );
            tcp::reset(&stream);
        }
    }
}

/// Decides how a connection is handled: [`inbound::serve`] or [`outbound::serve`].
async fn dispatch(
    stream: TcpStream,
    peer: SocketAddr,
    direction: Direction,
    target: SocketAddr,
    shared: &Arc<Shared>,
) {
    tcp::set_nodelay(&stream);
    match direction {
        Direction::Inbound => inbound::serve(stream, peer, target, shared).await,
        Direction::Outbound => outbound::serve(stream, peer, target, shared).await,
    }
}

/// Why an accepted connection is not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(
        "it has no original destination (it was not redirected by `skein init`, or conntrack does not know it)"
    )]
    NoOriginalDestination(#[source] io::Error),
    #[error("its original destination {0} is the proxy itself")]
    Loop(SocketAddr),
    #[error("its original destination {0} is not an address of this pod")]
    NotLocal(SocketAddr),
}

impl Rejected {
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejected::NoOriginalDestination(_) => RejectReason::NoOriginalDestination,
            Rejected::Loop(_) => RejectReason::Loop,
            Rejected::NotLocal(_) => RejectReason::NotLocal,
        }
    }
}

/// Where an accepted, redirected connection must be forwarded to.
pub fn target(
    direction: Direction,
    stream: &TcpStream,
    own_ports: &[u16],
) -> Result<SocketAddr, Rejected> {
    let local = stream
        .local_addr()
        .map_err(Rejected::NoOriginalDestination)?;
    let original = original_dst(stream).map_err(Rejected::NoOriginalDestination)?;
    let target = resolve(direction, local, original, own_ports)?;
    if direction == Direction::Inbound && !is_local_address(target.ip()) {
        return Err(Rejected::NotLocal(target));
    }
    Ok(target)
}

/// Whether `ip` is an address of this host (network namespace): the kernel lets a socket bind
/// only to those (with `ip_nonlocal_bind` off, as in pods).
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Pure part of [`target`]: `local` is the accepted socket's address, `original` its original
/// destination.
///
/// A connection that was not NATed reports its own local address as original destination (when
/// conntrack tracks it at all); one aimed at another of the proxy's ports on this host would come
/// back to the proxy too. Inbound connections go to the pod's own address, so any of the proxy's
/// ports there is the proxy.
pub fn resolve(
    direction: Direction,
    local: SocketAddr,
    original: SocketAddr,
    own_ports: &[u16],
) -> Result<SocketAddr, Rejected> {
    let local = canonical(local);
    let original = canonical(original);
    let ip = original.ip();
    let to_own_port = own_ports.contains(&original.port())
        && match direction {
            Direction::Inbound => true,
            Direction::Outbound => ip.is_loopback() || ip.is_unspecified() || ip == local.ip(),
        };
    if original == local || to_own_port {
        return Err(Rejected::Loop(original));
    }
    // Both ways the original destination: inbound it is the pod's own address (the IPv6 one for
    // an IPv6 client), where an app listening on the wildcard address or that address answers.
    Ok(original)
}

/// `::ffff:a.b.c.d` as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: [u16; 3] = [16001, 16006, 16000];

    fn at(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    #[test]
    fn outbound_goes_to_the_original_destination() {
        let target = resolve(
            Direction::Outbound,
            at("127.0.0.1:16001"),
            at("10.96.0.10:80"),
            &OWN,
        );
        assert_eq!(target.expect("target"), at("10.96.0.10:80"));
        let target = resolve(
            Direction::Outbound,
            at("[::1]:16001"),
            at("[fd00:96::10]:443"),
            &OWN,
        );
        assert_eq!(target.expect("target"), at("[fd00:96::10]:443"));
        // A remote service that happens to use one of the proxy's port numbers is fine.
        let target = resolve(
            Direction::Outbound,
            at("127.0.0.1:16001"),
            at("10.96.0.10:16001"),
            &OWN,
        );
        assert_eq!(target.expect("target"), at("10.96.0.10:16001"));
    }

    #[test]
    fn inbound_goes_to_the_app_at_the_pod_address_the_client_asked_for_never_loopback() {
        let target = resolve(
            Direction::Inbound,
            at("10.213.0.2:16006"),
            at("10.213.0.2:8080"),
            &OWN,
        );
        assert_eq!(target.expect("target"), at("10.213.0.2:8080"));
        let target = resolve(
            Direction::Inbound,
            at("[fe80::1]:16006"),
            at("[fd00:213::2]:8080"),
            &OWN,
        );
        assert_eq!(target.expect("target"), at("[fd00:213::2]:8080"));
        // A dual-stack socket's view of an IPv4 connection.
        let target = resolve(
            Direction::Inbound,
            at("[::ffff:10.213.0.2]:16006"),
            at("10.213.0.2:8080"),
            &OWN,
        );
        assert_eq!(target.expect("target"), at("10.213.0.2:8080"));
        // The app calling its own pod IP: redirected to loopback, still sent to the pod IP.
        let target = resolve(
            Direction::Inbound,
            at("127.0.0.1:16006"),
            at("10.213.0.2:8080"),
            &OWN,
        );
        assert_eq!(target.expect("target"), at("10.213.0.2:8080"));
    }

    #[test]
    fn only_addresses_of_this_host_are_local() {
        assert!(is_local_address(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // TEST-NET-3: nobody's address.
        assert!(!is_local_address("203.0.113.77".parse().expect("ip")));
    }

    #[test]
    fn connections_that_would_come_back_to_the_proxy_are_refused() {
        let loops = [
            // Not redirected: the original destination is the listener itself.
            (Direction::Outbound, "127.0.0.1:16001", "127.0.0.1:16001"),
            (Direction::Inbound, "10.213.0.2:16006", "10.213.0.2:16006"),
            (
                Direction::Inbound,
                "[::ffff:10.213.0.2]:16006",
                "10.213.0.2:16006",
            ),
            // Another of the proxy's ports on this host.
            (Direction::Outbound, "127.0.0.1:16001", "127.0.0.1:16006"),
            (Direction::Outbound, "10.213.0.2:16001", "10.213.0.2:16000"),
            (Direction::Inbound, "10.213.0.2:16006", "10.213.0.2:16001"),
        ];
        for (direction, local, original) in loops {
            let result = resolve(direction, at(local), at(original), &OWN);
            assert!(
                matches!(result, Err(Rejected::Loop(_))),
                "{direction} {local} → {original}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_target() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        // Without conntrack there is no original destination; with it, the local address is.
        let result = target(Direction::Outbound, &accepted, &[addr.port()]);
        assert!(result.is_err(), "{result:?}");
    }

    #[tokio::test]
    async fn bind_gives_an_ipv4_listener_and_ipv6_if_available() {
        let listeners = bind(0).expect("bind");
        assert!(matches!(listeners[0].local_addr(), Ok(SocketAddr::V4(_))));
        if let Some(v6) = listeners.get(1) {
            assert!(matches!(v6.local_addr(), Ok(SocketAddr::V6(_))));
        }
    }
}
