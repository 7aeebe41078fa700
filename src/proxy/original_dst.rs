//! The original destination of a connection redirected by iptables.
//!
//! `REDIRECT` rewrites a connection's destination to the proxy's port; conntrack remembers the
//! address the client asked for, and netfilter hands it back through `getsockopt`
//! (`SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6).

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// The destination the peer of an accepted, redirected TCP connection originally connected to.
///
/// The netfilter family is picked from the socket's local address: IPv4 sockets, and IPv6 sockets
/// carrying an IPv4 connection (a dual-stack listener on `[::]` shows it as `::ffff:a.b.c.d`),
/// are looked up in the IPv4 conntrack table; others in the IPv6 one.
///
/// Fails with `ENOENT` when conntrack knows no such connection (it was not redirected, or it was
/// never tracked) and with `ENOPROTOOPT` when the kernel lacks the netfilter support.
pub fn original_dst(stream: &impl AsRawFd) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    match local_addr(fd)? {
        SocketAddr::V6(local) if local.ip().to_ipv4_mapped().is_none() => original_dst_v6(fd),
        _ => original_dst_v4(fd),
    }
}

fn original_dst_v4(fd: RawFd) -> io::Result<SocketAddr> {
    let addr: libc::sockaddr_in = get_sockaddr(fd, libc::SOL_IP, libc::SO_ORIGINAL_DST)?;
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)).into())
}

fn original_dst_v6(fd: RawFd) -> io::Result<SocketAddr> {
    let addr: libc::sockaddr_in6 = get_sockaddr(fd, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST)?;
    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
    let port = u16::from_be(addr.sin6_port);
    // Same conventions as std: flowinfo and scope id are passed through as the kernel stores them.
    Ok(SocketAddrV6::new(ip, port, addr.sin6_flowinfo, addr.sin6_scope_id).into())
}

fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let mut storage: libc::sockaddr_storage = zeroed();
    let mut len = socklen::<libc::sockaddr_storage>();
    // SAFETY: `storage` is writable for `len` bytes and `len` is a valid pointer.
    let rc = unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, which fits in and is aligned like storage.
            let addr = unsafe { *(&raw const storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Ok(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let addr = unsafe { *(&raw const storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Ok(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), 0, addr.sin6_scope_id).into())
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an IP socket (address family {family})"),
        )),
    }
}

/// Plain C socket address structs: every bit pattern, including all zeroes, is a valid value.
///
/// # Safety
/// Only implement for `repr(C)` structs made of integers and arrays of integers.
unsafe trait SockaddrPod: Copy {}
// SAFETY: libc's socket address structs are repr(C) integers and integer arrays.
unsafe impl SockaddrPod for libc::sockaddr_in {}
// SAFETY: as above.
unsafe impl SockaddrPod for libc::sockaddr_in6 {}
// SAFETY: as above.
unsafe impl SockaddrPod for libc::sockaddr_storage {}

fn zeroed<T: SockaddrPod>() -> T {
    // SAFETY: all-zero is a valid value of a `SockaddrPod`.
    unsafe { std::mem::zeroed() }
}

fn socklen<T>() -> libc::socklen_t {
    // Socket address structs are far smaller than socklen_t::MAX.
    size_of::<T>() as libc::socklen_t
}

/// `getsockopt` of an option whose value is a socket address of type `T`.
fn get_sockaddr<T: SockaddrPod>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut value: T = zeroed();
    let mut len = socklen::<T>();
    // SAFETY: `value` is writable for `len` bytes; the kernel writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len != socklen::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("original destination of unexpected size {len}"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_sockets_are_an_error_not_a_panic() {
        let file = std::fs::File::open("/proc/self/status").expect("open /proc/self/status");
        assert!(original_dst(&file).is_err());
    }

    #[test]
    fn local_address_family_is_read_from_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert_eq!(
            local_addr(listener.as_raw_fd()).expect("getsockname"),
            listener.local_addr().expect("addr")
        );
    }
}
