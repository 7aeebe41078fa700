//! `skein proxy` forwarding opaque TCP in real network namespaces: the real `skein init` captures
//! a "pod" namespace's traffic, the real `skein proxy` runs in it as the proxy UID, and apps and
//! clients on both sides use plain sockets.
//!
//! ```text
//!   pod netns                                        peer netns
//!   skein init rules, skein proxy (uid 2170),         servers and clients "elsewhere"
//!   the app (uid 1000)
//!   eth0 10.213.0.2/24, fd00:213::2/64  <-veth->  eth0 10.213.0.1/24, fd00:213::1/64
//! ```
//!
//! All traffic stays inside namespaces the test creates; each test has its own pair (and its own
//! proxy process), removed by drop guards even when the test panics; the proxy's log is printed
//! when a test fails. Needs root, iproute2, iptables and setpriv: without them the tests fail
//! (they never skip). Every connect, read, write and wait is bounded.
//!
//! Sockets are opened on short-lived threads that joined a namespace with `setns` (see
//! `tests/support/netns.rs`), so the test keeps plain `std::net` streams it can assert on.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::netns::{
    COMMAND_TIMEOUT, PEER_IP, PEER_IP6, POD_IP, POD_IP6, WiredPod, any_v4, any_v6, at,
    connect_within, describe, listen, run, run_ok,
};

const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
/// The defaults `skein init` and `skein proxy` share.
const PROXY_UID: u32 = 2170;
const OUTBOUND_PORT: u16 = 16001;
const INBOUND_PORT: u16 = 16006;
const ADMIN_PORT: u16 = 16000;
/// Any UID other than the proxy's: the application.
const APP_UID: u32 = 1000;

/// Bound on every connect, accept, read and write of the test's own sockets.
const NET_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a server connection may sit idle before the test's server gives up on it.
const SERVER_IDLE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The behaviour users notice.

#[test]
fn app_connection_to_a_remote_server_goes_through_the_proxy() {
    let pod = Pod::new();
    let _server = Server::start(&pod.peer.0, at(PEER_IP, 9000), Reply::Echo);
    let proxy = pod.mesh(&[]);

    let mut app = connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000));
    echo(&mut app, b"hello from the app");
    echo(&mut app, b"and again");

    let metrics = proxy.metrics();
    let outbound = [("direction", "outbound")];
    assert!(metrics.value("skein_proxy_tcp_connections_opened_total", &outbound) >= 1.0);
    let bytes = |flow| {
        metrics.value(
            "skein_proxy_tcp_bytes_total",
            &[("direction", "outbound"), ("flow", flow)],
        )
    };
    let expected = (b"hello from the app".len() + b"and again".len()) as f64;
    assert!(bytes("sent") >= expected, "{}", metrics.0);
    assert!(bytes("received") >= expected, "{}", metrics.0);
}

/// `skein proxy` hands over to the lean `skein-proxy` binary beside it (same process, exec'd),
/// so a sidecar maps only the data plane's code (tests/architecture.rs checks it has no
/// Kubernetes client): that is the memory every meshed pod pays for.
#[test]
fn the_sidecar_runs_the_lean_proxy_binary() {
    let pod = Pod::new();
    let proxy = pod.mesh(&[]);
    let exe = std::fs::read_link(format!("/proc/{}/exe", proxy.child.id()))
        .expect("reading the proxy process's executable");
    assert_eq!(
        exe.file_name().and_then(|name| name.to_str()),
        Some("skein-proxy"),
        "`skein proxy` runs {}",
        exe.display()
    );
}

#[test]
fn client_connection_to_the_pod_reaches_the_app_through_the_proxy() {
    let pod = Pod::new();
    // The app listens on the wildcard address, as most do.
    let _app = Server::start_as(&pod.name, Some(APP_UID), any_v4(8080), Reply::Echo);
    let proxy = pod.mesh(&[]);

    let mut client = connect(&pod.peer.0, None, at(POD_IP, 8080));
    echo(&mut client, b"hello from outside");

    let metrics = proxy.metrics();
    let inbound = [("direction", "inbound")];
    assert!(metrics.value("skein_proxy_tcp_connections_opened_total", &inbound) >= 1.0);
    let received = metrics.value(
        "skein_proxy_tcp_bytes_total",
        &[("direction", "inbound"), ("flow", "received")],
    );
    assert!(
        received >= b"hello from outside".len() as f64,
        "{}",
        metrics.0
    );
}

/// The client sends its whole request and shuts down its write side; the server only answers
/// once it has read EOF, then closes. The client must get the whole answer, both ways.
#[test]
fn half_close_is_forwarded_in_both_directions() {
    let pod = Pod::new();
    let _remote = Server::start(&pod.peer.0, at(PEER_IP, 9000), Reply::AtEof);
    let _app = Server::start_as(&pod.name, Some(APP_UID), any_v4(8080), Reply::AtEof);
    let _proxy = pod.mesh(&[]);
    // Larger than the socket buffers on the way, so the proxy must keep both directions moving.
    let request: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();

    for (what, ns, uid, to) in [
        ("outbound", &pod.name, Some(APP_UID), at(PEER_IP, 9000)),
        ("inbound", &pod.peer.0, None, at(POD_IP, 8080)),
    ] {
        let mut client = connect(ns, uid, to);
        client.write_all(&request).expect("send the request");
        client
            .shutdown(Shutdown::Write)
            .expect("shut down the write side");
        let mut answer = Vec::new();
        client
            .read_to_end(&mut answer)
            .unwrap_or_else(|err| panic!("{what}: reading the whole answer: {err}"));
        assert!(
            answer == reply_at_eof(&request),
            "{what}: the answer is {} bytes, expected {}",
            answer.len(),
            request.len() + REPLY_PREFIX.len()
        );
    }
}

#[test]
fn unreachable_upstream_closes_the_client_connection_and_the_proxy_stays_ready() {
    let pod = Pod::new();
    let proxy = pod.mesh(&[]);

    // Nothing listens: the peer refuses the proxy's connect.
    assert_closed(
        try_connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000)),
        "outbound connection to a refusing server",
    );
    // No app on this port in the pod.
    assert_closed(
        try_connect(&pod.peer.0, None, at(POD_IP, 8080)),
        "inbound connection to a port without app",
    );

    assert_eq!(proxy.get("/ready").0, 200, "the proxy is no longer ready");
    let metrics = proxy.metrics();
    for direction in ["outbound", "inbound"] {
        let failures = metrics.value(
            "skein_proxy_tcp_connect_failures_total",
            &[("direction", direction)],
        );
        assert!(failures >= 1.0, "{direction}: {}", metrics.0);
    }
}

#[test]
fn upstream_that_never_answers_is_given_up_after_the_connect_timeout() {
    let pod = Pod::new();
    // SYNs to this port vanish: the connect can only time out.
    pod.peer_exec_ok(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP"],
    );
    let proxy = pod.mesh(&["--connect-timeout", "300ms"]);

    assert_closed(
        try_connect(&pod.name, Some(APP_UID), at(PEER_IP, 9999)),
        "outbound connection to a black hole",
    );

    assert_eq!(proxy.get("/ready").0, 200);
    let failures = proxy.metrics().value(
        "skein_proxy_tcp_connect_failures_total",
        &[("direction", "outbound")],
    );
    assert!(failures >= 1.0);
}

#[test]
fn sigterm_drains_in_flight_connections_refuses_new_ones_and_exits_zero() {
    let pod = Pod::new();
    let _remote = Server::start(&pod.peer.0, at(PEER_IP, 9000), Reply::Echo);
    let _app = Server::start_as(&pod.name, Some(APP_UID), any_v4(8080), Reply::Echo);
    // Far longer than the test needs: the proxy must exit because the connections are done,
    // and leave its drain window because a second signal says so.
    let mut proxy = pod.mesh(&["--drain-timeout", "25s", "--drain-window", "10m"]);

    let mut outbound = connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000));
    echo(&mut outbound, b"before the signal");
    let mut inbound = connect(&pod.peer.0, None, at(POD_IP, 8080));
    echo(&mut inbound, b"before the signal");

    // The drain window: still ready, still accepting both ways (callers may not know yet).
    proxy.signal(libc::SIGTERM);
    let mut late = connect(&pod.peer.0, None, at(POD_IP, 8080));
    echo(&mut late, b"inside the drain window");
    let mut late_out = connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000));
    echo(&mut late_out, b"inside the drain window");
    proxy.wait_for_ready_status(200);
    finish(late);
    finish(late_out);

    // A second signal ends the window: the listeners close.
    proxy.signal(libc::SIGTERM);
    proxy.wait_for_ready_status(503);

    let refused = try_connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000));
    assert_refused(refused, "new outbound connection while draining");
    let refused = try_connect(&pod.peer.0, None, at(POD_IP, 8080));
    assert_refused(refused, "new inbound connection while draining");

    echo(&mut outbound, b"during the drain");
    echo(&mut inbound, b"during the drain");
    finish(outbound);
    assert!(
        proxy.try_status().is_none(),
        "exited with a connection in flight"
    );
    finish(inbound);

    let status = proxy.wait_exit();
    assert!(status.success(), "the proxy exited with {status}");
}

#[test]
fn connections_still_open_at_the_drain_timeout_are_closed_and_the_proxy_exits_zero() {
    let pod = Pod::new();
    let _remote = Server::start(&pod.peer.0, at(PEER_IP, 9000), Reply::Echo);
    let mut proxy = pod.mesh(&["--drain-timeout", "500ms", "--drain-window", "0s"]);
    let mut idle = connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000));
    echo(&mut idle, b"then nothing");

    proxy.signal(libc::SIGTERM);

    assert_closed(Ok(idle), "idle connection after the drain timeout");
    let status = proxy.wait_exit();
    assert!(status.success(), "the proxy exited with {status}");
}

#[test]
fn post_drain_then_post_shutdown() {
    let pod = Pod::new();
    let _remote = Server::start(&pod.peer.0, at(PEER_IP, 9000), Reply::Echo);
    let mut proxy = pod.mesh(&["--drain-timeout", "25s"]);
    let mut app = connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000));
    echo(&mut app, b"before the drain");

    let (status, body) = proxy.post("/drain");
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.get("/ready").0, 503);
    let refused = try_connect(&pod.name, Some(APP_UID), at(PEER_IP, 9000));
    assert_refused(refused, "new connection after POST /drain");
    echo(&mut app, b"during the drain");
    finish(app);
    // Draining alone does not end the process.
    assert_eq!(proxy.get("/live").0, 200);
    assert!(
        proxy.try_status().is_none(),
        "POST /drain ended the process"
    );

    let (status, body) = proxy.post("/shutdown");
    assert_eq!(status, 200, "{body}");
    let status = proxy.wait_exit();
    assert!(status.success(), "the proxy exited with {status}");
}

/// Connections that reach the proxy's listeners without having been redirected would make it
/// connect to itself: they are closed instead, and counted.
#[test]
fn connections_aimed_at_the_proxy_itself_are_refused() {
    let pod = Pod::new();
    let proxy = pod.mesh(&[]);

    // The capture rules leave the proxy's own ports alone.
    assert_closed(
        try_connect(&pod.peer.0, None, at(POD_IP, INBOUND_PORT)),
        "direct connection to the inbound port",
    );
    assert_closed(
        try_connect(&pod.name, Some(APP_UID), at("127.0.0.1", OUTBOUND_PORT)),
        "direct connection to the outbound port",
    );

    assert_eq!(proxy.get("/ready").0, 200);
    let metrics = proxy.metrics();
    for direction in ["inbound", "outbound"] {
        let rejected: f64 = ["loop", "no_original_destination"]
            .iter()
            .map(|reason| {
                metrics.value(
                    "skein_proxy_tcp_connections_rejected_total",
                    &[("direction", direction), ("reason", reason)],
                )
            })
            .sum();
        assert!(rejected >= 1.0, "{direction}: {}", metrics.0);
        let opened = metrics.value(
            "skein_proxy_tcp_connections_opened_total",
            &[("direction", direction)],
        );
        assert_eq!(opened, 0.0, "{direction}: a loop was forwarded");
    }
}

#[test]
fn dual_stack_pod_is_proxied_over_ipv6_too() {
    let pod = Pod::dual_stack();
    let _remote = Server::start(&pod.peer.0, at(PEER_IP6, 9000), Reply::Echo);
    // A dual-stack wildcard listener: the proxy forwards IPv6 connections to ::1.
    let _app = Server::start_as(&pod.name, Some(APP_UID), any_v6(8080), Reply::Echo);
    let proxy = pod.mesh(&[]);

    let mut app = connect(&pod.name, Some(APP_UID), at(PEER_IP6, 9000));
    echo(&mut app, b"outbound over IPv6");
    let mut client = connect(&pod.peer.0, None, at(POD_IP6, 8080));
    echo(&mut client, b"inbound over IPv6");
    // And IPv4 still works next to it.
    let mut client = connect(&pod.peer.0, None, at(POD_IP, 8080));
    echo(&mut client, b"inbound over IPv4");

    let metrics = proxy.metrics();
    for (direction, at_least) in [("outbound", 1.0), ("inbound", 2.0)] {
        let opened = metrics.value(
            "skein_proxy_tcp_connections_opened_total",
            &[("direction", direction)],
        );
        assert!(opened >= at_least, "{direction}: {}", metrics.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions on connections.

/// Sends `message` and expects it back (from an echo server).
fn echo(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).expect("write");
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, message);
}

/// Ends a connection to an echo server cleanly: half-close, then read its close.
fn finish(mut stream: TcpStream) {
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read to the end");
    assert!(rest.is_empty(), "unexpected data: {rest:?}");
}

/// The connection was accepted (by the proxy) and is then closed, by EOF or reset, within
/// [`NET_TIMEOUT`] and without data. A reset may already show as the connect's result.
fn assert_closed(connected: std::io::Result<TcpStream>, what: &str) {
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(err) if err.kind() == ErrorKind::ConnectionReset => return,
        Err(err) => panic!("{what}: the connect failed: {err}"),
    };
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: unexpected data {:?}", &buf[..n]),
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("{what}: still open after {NET_TIMEOUT:?}")
        }
        Err(_reset) => {}
    }
}

fn assert_refused(result: std::io::Result<TcpStream>, what: &str) {
    match result {
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => {}
        Err(err) => panic!("{what}: expected a refusal, got {err}"),
        Ok(stream) => panic!("{what}: accepted (local {:?})", stream.local_addr().ok()),
    }
}

// ---------------------------------------------------------------------------------------------
// Servers.

const REPLY_PREFIX: &[u8] = b"received:";

/// What a [`Server`] does with a connection.
#[derive(Clone, Copy)]
enum Reply {
    /// Writes back every chunk as it arrives; closes after EOF.
    Echo,
    /// Reads until EOF, then answers [`reply_at_eof`] and closes.
    AtEof,
}

fn reply_at_eof(request: &[u8]) -> Vec<u8> {
    [REPLY_PREFIX, request].concat()
}

/// A TCP server on its own thread (one more thread per connection), stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(ns: &str, addr: SocketAddr, reply: Reply) -> Self {
        Self::start_as(ns, None, addr, reply)
    }

    fn start_as(ns: &str, uid: Option<u32>, addr: SocketAddr, reply: Reply) -> Self {
        let listener = listen(ns, uid, addr);
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        thread::spawn(move || serve_connection(stream, reply));
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(err) => panic!("server on {addr}: accept: {err}"),
                }
            }
        });
        Server { stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Errors end the connection quietly: the client side of the test asserts what matters.
fn serve_connection(mut stream: TcpStream, reply: Reply) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(SERVER_IDLE)).is_err()
        || stream.set_write_timeout(Some(SERVER_IDLE)).is_err()
    {
        return;
    }
    match reply {
        Reply::Echo => {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        Reply::AtEof => {
            let mut request = Vec::new();
            if stream.read_to_end(&mut request).is_err() {
                return;
            }
            if stream.write_all(&reply_at_eof(&request)).is_err() {
                return;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// The proxy process.

/// A running `skein proxy` (as the proxy UID, in the pod namespace), killed on drop; its log is
/// printed if the test fails.
struct Proxy {
    child: Child,
    pod: String,
    log: Arc<Mutex<Vec<u8>>>,
    exited: Option<ExitStatus>,
}

impl Proxy {
    fn start(pod: &str, args: &[&str]) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", pod, "setpriv"])
            .args(["--reuid", &PROXY_UID.to_string()])
            .args(["--regid", &PROXY_UID.to_string(), "--clear-groups"])
            .args([support::skein_for_any_user(), "proxy"])
            .args(args)
            .env("SKEIN_LOG", "info,skein_proxy=debug")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in support::pods::ROLE_ENV {
            command.env_remove(var);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting `skein proxy`: {err}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut stderr) = child.stderr.take() {
            let log = log.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            });
        }
        let mut proxy = Proxy {
            child,
            pod: pod.to_owned(),
            log,
            exited: None,
        };
        proxy.wait_for_ready_status(200);
        proxy
    }

    fn log(&self) -> String {
        let log = self
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&log).into_owned()
    }

    /// Polls `GET /ready` until it answers `status`, failing if the proxy exits or takes longer
    /// than [`COMMAND_TIMEOUT`].
    fn wait_for_ready_status(&mut self, status: u16) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(exit) = self.try_status() {
                panic!(
                    "`skein proxy` exited with {exit} while waiting for /ready {status}; log:\n{}",
                    self.log()
                );
            }
            match admin_request(&self.pod, "GET", "/ready") {
                Ok((got, _)) if got == status => return,
                Ok((got, body)) => last = format!("{got} {body}"),
                Err(err) => last = err.to_string(),
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "GET /ready never answered {status} (last: {last}); log:\n{}",
            self.log()
        );
    }

    fn get(&self, path: &str) -> (u16, String) {
        admin_request(&self.pod, "GET", path)
            .unwrap_or_else(|err| panic!("GET {path}: {err}; log:\n{}", self.log()))
    }

    fn post(&self, path: &str) -> (u16, String) {
        admin_request(&self.pod, "POST", path)
            .unwrap_or_else(|err| panic!("POST {path}: {err}; log:\n{}", self.log()))
    }

    fn metrics(&self) -> Metrics {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        Metrics(text)
    }

    fn signal(&self, signal: libc::c_int) {
        // `ip netns exec`, `setpriv` and `skein proxy` exec the next program: the child is
        // `skein-proxy` itself.
        let pid = self.child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "skein-proxy", "pid {pid} is not the proxy");
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// The exit status, if the proxy has exited.
    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits for the proxy to exit, at most [`COMMAND_TIMEOUT`].
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.try_status() {
                return status;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "`skein proxy` did not exit within {COMMAND_TIMEOUT:?}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- skein proxy log ---\n{}", self.log());
        }
    }
}

/// One HTTP/1.1 request to the proxy's admin port from inside the pod: status and body.
fn admin_request(pod: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let stream = try_connect(pod, None, at("127.0.0.1", ADMIN_PORT));
    let mut stream = stream?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Prometheus text.
struct Metrics(String);

impl Metrics {
    /// The value of the series `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for line in self.0.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, label_text) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let found: Vec<(&str, &str)> = label_text
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key, value.trim_matches('"')))
                .collect();
            if labels.iter().all(|label| found.contains(label)) {
                return value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad metric value in {line:?}"));
            }
        }
        panic!("no {name}{labels:?} in the metrics:\n{}", self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Topology.

/// A [`WiredPod`], meshed by [`Pod::mesh`].
struct Pod(WiredPod);

impl std::ops::Deref for Pod {
    type Target = WiredPod;

    fn deref(&self) -> &WiredPod {
        &self.0
    }
}

impl Pod {
    /// An IPv4-only pod.
    fn new() -> Self {
        require_environment();
        Pod(WiredPod::new("skprx", false))
    }

    /// A pod with global IPv6 addresses too.
    fn dual_stack() -> Self {
        require_environment();
        Pod(WiredPod::new("skprx", true))
    }

    /// Meshes the pod: the real `skein init` (defaults), then the real `skein proxy ARGS` as the
    /// proxy UID, ready.
    fn mesh(&self, proxy_args: &[&str]) -> Proxy {
        let output = run("ip", &["netns", "exec", &self.name, SKEIN, "init"]);
        assert!(
            output.status.success(),
            "`skein init` failed: {}",
            describe(&output)
        );
        Proxy::start(&self.name, proxy_args)
    }

    fn peer_exec_ok(&self, program: &str, args: &[&str]) {
        let command: Vec<&str> = ["netns", "exec", &self.peer.0, program]
            .iter()
            .chain(args)
            .copied()
            .collect();
        run_ok("ip", &command);
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets inside namespaces.

fn try_connect(ns: &str, uid: Option<u32>, to: SocketAddr) -> std::io::Result<TcpStream> {
    connect_within(ns, uid, to, NET_TIMEOUT)
}

fn connect(ns: &str, uid: Option<u32>, to: SocketAddr) -> TcpStream {
    try_connect(ns, uid, to)
        .unwrap_or_else(|err| panic!("connecting to {to} from {ns} as uid {uid:?}: {err}"))
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Fails the test (with what is missing) unless it runs as root with the tools it needs.
fn require_environment() {
    support::netns::require_environment(
        "proxy",
        &[
            ("ip", "-V"),
            ("iptables", "--version"),
            ("setpriv", "--version"),
        ],
        "iproute2, iptables and util-linux",
    );
}
