//! What a hostile pod or a slow client can do to a sidecar, on a real network: pods in network
//! namespaces on a bridge (`tests/support/pods.rs`), the real `skein init` capture, the real
//! `skein proxy` sidecar, the real `skein demo-app` or a raw TCP server as the app, and raw
//! sockets or `curl` as the client from a second pod.
//!
//! - the admin port answers other pods only `/live`, `/ready` and `/metrics`;
//! - an `h2c` upgrade is not honoured, so no request rides past the proxy inside it;
//! - slow and abusive clients: header-read timeout, 431 for big heads, the connection cap, the
//!   idle timeout (and that traffic, however slow, keeps a connection alive).
//!
//! Timeouts are configured short (seconds) so the tests stay fast; the bounds checked are loose
//! (a cut must come after the timeout and within three times it).
//!
//! Needs root, iproute2, iptables, util-linux and curl; the tests never skip.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::pods::{
    ADMIN_PORT, APP_UID, Mesh, WEBSOCKET_ACCEPT, head_value, http_request, parse_response,
    read_head, tag, websocket_echo,
};

// ---------------------------------------------------------------------------------------------
// The admin port.

/// Another pod (and the node, which the kubelet probes from) reaches `/live`, `/ready` and
/// `/metrics`, but not `/config`, `/drain`, `/shutdown` or anything else: the proxy keeps
/// serving. From inside the pod everything still works.
#[test]
fn the_admin_port_answers_other_pods_only_probes_and_metrics() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.demo_app("v1", &[]);
    let mut proxy = server.sidecar(None);
    let other = mesh.pod("other");
    let admin = SocketAddr::from((server.ip, ADMIN_PORT));
    let from_other = |method: &str, path: &str| {
        http_request(&other.ns, Some(APP_UID), admin, method, path, &[])
            .unwrap_or_else(|err| panic!("{method} {path} from another pod: {err}"))
    };

    for (method, path) in [
        ("POST", "/shutdown"),
        ("POST", "/drain"),
        ("GET", "/config"),
        ("GET", "/"),
        ("GET", "/debug"),
    ] {
        let response = from_other(method, path);
        assert_eq!(response.status, 403, "{method} {path}: {}", response.body);
        assert!(
            response.body.contains("only from inside the pod"),
            "{method} {path}: {}",
            response.body
        );
        assert!(
            !response.body.contains("\"version\""),
            "the refusal reveals nothing: {}",
            response.body
        );
    }
    for path in ["/live", "/ready", "/metrics"] {
        let response = from_other("GET", path);
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
    }
    assert!(
        from_other("GET", "/metrics")
            .body
            .contains("skein_proxy_tcp_connections_opened_total")
    );
    // The node (the hub here) is just another address: probes yes, changes no.
    let node = mesh.run_in_hub(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        &format!("http://{admin}/ready"),
    ]);
    assert_eq!(String::from_utf8_lossy(&node.stdout), "200");
    let node = mesh.run_in_hub(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "-X",
        "POST",
        &format!("http://{admin}/shutdown"),
    ]);
    assert_eq!(String::from_utf8_lossy(&node.stdout), "403");

    // The proxy still runs, accepts and serves.
    assert!(proxy.process.try_status().is_none(), "the proxy exited");
    assert_eq!(proxy.admin("GET", "/ready").status, 200);
    let served = other.curl(&[&format!("http://{}/", server.endpoint())]);
    assert_eq!(served.status, 200, "{served:?}");

    // From inside the pod (loopback): everything answers.
    let config = proxy.admin("GET", "/config");
    assert_eq!(config.status, 200, "{}", config.body);
    assert!(config.body.contains("\"passthrough\""), "{}", config.body);
    assert_eq!(proxy.admin("POST", "/drain").status, 200);
    proxy.wait_for_ready_status(503);
    assert_eq!(proxy.admin("POST", "/shutdown").status, 200);
    let exit = proxy.process.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "{exit}");
}

// ---------------------------------------------------------------------------------------------
// Upgrades.

/// An app that honours `h2c` upgrades: it answers `101` and then takes whatever comes as
/// bytes past the proxy (recorded in `smuggled`); plain requests get `200` with keep-alive.
/// Every request head it sees is recorded in `heads`.
fn h2c_app(heads: Arc<Mutex<Vec<String>>>, smuggled: Arc<Mutex<Vec<u8>>>) -> impl Fn(TcpStream) {
    move |mut stream: TcpStream| {
        while let Some(head) = read_head(&mut stream) {
            heads.lock().expect("heads").push(head.clone());
            if head_value(&head, "upgrade").is_some() {
                let switch = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
                if stream.write_all(switch.as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    smuggled
                        .lock()
                        .expect("smuggled")
                        .extend_from_slice(&buf[..n]);
                }
                return;
            }
            let body = "plain\n";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length` (or none: empty body) off a kept-alive
/// connection: the status and the head.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let head = read_head(stream).expect("a response head");
    let response = parse_response(head.as_bytes()).expect("an HTTP response");
    let length: usize = head_value(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the response body");
    (response.status, head)
}

/// A client asks the sidecar for an `h2c` upgrade on a connection to an app that would accept
/// it: the proxy does not switch (no `101`, the app never sees `Upgrade` or `HTTP2-Settings`),
/// so the next request on the connection still goes through the proxy, where an AccessPolicy
/// denies it, instead of riding to the app inside an HTTP/2 tunnel.
#[test]
fn an_h2c_upgrade_is_not_honoured_and_cannot_smuggle_a_request_past_policy() {
    const PORT: u16 = 9100;
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let smuggled = Arc::new(Mutex::new(Vec::new()));
    let _app = server.tcp_server(PORT, h2c_app(heads.clone(), smuggled.clone()));
    let deny_secret = json!({
        "name": "demo/deny-secret",
        "action": "Deny",
        "rules": [{"to": [{"paths": [tag("prefix", json!("/secret"))]}]}],
    });
    let proxy = server.sidecar(Some(&json!({
        "version": "1",
        "accessPolicies": [deny_secret],
    })));
    let client = mesh.pod("client");
    let mut stream = client
        .connect(Some(APP_UID), SocketAddr::from((server.ip, PORT)))
        .expect("connect to the server pod");

    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: server\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        .expect("send the upgrade request");
    let (status, head) = read_response(&mut stream);
    assert_eq!(status, 200, "the proxy switched protocols: {head}");

    // The next request on the same connection: the proxy's, so the policy applies.
    stream
        .write_all(b"GET /secret HTTP/1.1\r\nHost: server\r\n\r\n")
        .expect("send the second request");
    let (status, head) = read_response(&mut stream);
    assert_eq!(status, 403, "{head}");
    assert_eq!(
        head_value(&head, "x-skein-error"),
        Some("access-denied"),
        "{head}"
    );

    let seen = heads.lock().expect("heads").clone();
    assert_eq!(seen.len(), 1, "the app saw: {seen:?}");
    for name in ["upgrade", "http2-settings"] {
        assert_eq!(head_value(&seen[0], name), None, "{seen:?}");
    }
    assert!(
        !head_value(&seen[0], "connection").is_some_and(|v| v.to_lowercase().contains("upgrade")),
        "{seen:?}"
    );
    assert!(
        smuggled.lock().expect("smuggled").is_empty(),
        "bytes reached the app past the proxy"
    );
    proxy.wait_for_metric(
        "skein_proxy_authz_denied_total",
        &[("policy", "demo/deny-secret")],
        |n| n == 1.0,
    );
}

/// WebSocket still upgrades (any letter case), and a WebSocket that carries a byte now and then
/// outlives the idle timeout several times over; once it stops, it is closed after the timeout.
#[test]
fn a_websocket_carrying_traffic_outlives_the_idle_timeout_and_an_idle_one_does_not() {
    const PORT: u16 = 9100;
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.tcp_server(PORT, websocket_echo);
    let proxy = server.sidecar_with(None, &["--idle-timeout", "2s"]);
    let client = mesh.pod("client");
    let mut stream = client
        .connect(Some(APP_UID), SocketAddr::from((server.ip, PORT)))
        .expect("connect to the server pod");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: server\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("send the handshake");
    let head = read_head(&mut stream).expect("the handshake's answer");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        head_value(&head, "sec-websocket-accept"),
        Some(WEBSOCKET_ACCEPT)
    );

    // 6 s (three idle timeouts) of a byte every 500 ms.
    let started = Instant::now();
    let mut last_sent = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        last_sent = Instant::now();
        stream.write_all(b"x").expect("the tunnel is still open");
        let mut echo = [0u8; 1];
        stream.read_exact(&mut echo).expect("the echo");
        thread::sleep(Duration::from_millis(500));
    }
    // Then idle: cut once the idle timeout has passed since the last byte, and not before. The
    // proxy saw that byte (and its echo) no earlier than it was sent, so the bound holds however
    // slow the machine is; the kernel counts idleness in jiffies, hence the 50 ms.
    let waited = last_sent.elapsed();
    let cut = waited + wait_for_close(&mut stream, Duration::from_secs(10));
    assert!(
        cut >= Duration::from_millis(1950),
        "an idle WebSocket closed {cut:?} after its last byte, before the 2s idle timeout"
    );
    proxy.wait_for_metric(
        "skein_proxy_tcp_connections_cut_total",
        &[("direction", "inbound"), ("reason", "idle_timeout")],
        |n| n == 1.0,
    );
}

// ---------------------------------------------------------------------------------------------
// Slow and abusive clients.

/// How long until the peer closes or resets `stream` (reading and discarding anything it still
/// sends); panics after `limit`.
fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return started.elapsed(),
        }
        assert!(
            started.elapsed() < limit,
            "still open after {limit:?}: never closed"
        );
    }
}

/// A client that sends its request head a byte a second is cut after the header-read timeout,
/// while requests from another client keep being answered meanwhile.
#[test]
fn a_slowloris_client_is_cut_after_the_header_timeout_while_others_are_served() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.demo_app("v1", &[]);
    let proxy = server.sidecar_with(None, &["--header-read-timeout", "2s"]);
    let client = mesh.pod("client");
    let mut slow = client
        .connect(Some(APP_UID), server.endpoint())
        .expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\n").expect("request line");

    let started = Instant::now();
    let trickle = thread::spawn(move || {
        slow.set_read_timeout(Some(Duration::from_millis(1000)))
            .expect("read timeout");
        let header = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut buf = [0u8; 1024];
        for byte in header {
            // A byte a second: the read waits the second, and sees the close if it comes.
            if slow.write_all(&[*byte]).is_err() {
                return started.elapsed();
            }
            match slow.read(&mut buf) {
                Ok(_) => return started.elapsed(),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return started.elapsed(),
            }
        }
        panic!("the slow client was never cut ({:?})", started.elapsed());
    });
    // Meanwhile, others are served.
    for _ in 0..3 {
        let response = client.curl(&[&format!("http://{}/", server.endpoint())]);
        assert_eq!(response.status, 200, "{response:?}");
        thread::sleep(Duration::from_millis(300));
    }
    let cut = trickle.join().expect("the slow client");
    assert!(
        cut >= Duration::from_millis(1500) && cut <= Duration::from_secs(6),
        "the slow client was cut after {cut:?}, not after the 2s header-read timeout"
    );
    proxy.wait_for_metric(
        "skein_proxy_tcp_connections_cut_total",
        &[("direction", "inbound"), ("reason", "header_timeout")],
        |n| n >= 1.0,
    );
    let response = client.curl(&[&format!("http://{}/", server.endpoint())]);
    assert_eq!(response.status, 200, "{response:?}");
}

/// A request head over `--max-request-header-bytes` is answered 431 by the proxy (the app never
/// sees it); a normal one passes.
#[test]
fn an_oversized_request_head_gets_431() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.demo_app("v1", &[]);
    let proxy = server.sidecar_with(None, &["--max-request-header-bytes", "16384"]);
    let client = mesh.pod("client");
    let url = format!("http://{}/", server.endpoint());

    let big = format!("X-Big: {}", "a".repeat(20_000));
    let response = client.curl(&["-H", &big, &url]);
    assert_eq!(response.status, 431, "{response:?}");
    let fits = format!("X-Fits: {}", "a".repeat(8_000));
    let response = client.curl(&["-H", &fits, &url]);
    assert_eq!(response.status, 200, "{response:?}");
    proxy.wait_for_metric(
        "skein_proxy_tcp_connections_cut_total",
        &[("direction", "inbound"), ("reason", "header_too_large")],
        |n| n == 1.0,
    );
}

/// Sends one keep-alive GET on `stream` and returns the status.
fn keep_alive_get(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: server\r\n\r\n")
        .expect("send a request");
    read_response(stream).0
}

/// With `--max-connections 4`, idle connections take the places: the ones beyond the cap are
/// reset at once and counted, while a client that had a connection keeps being served on it,
/// and places come back when connections close.
#[test]
fn connections_over_the_cap_are_refused_while_an_active_client_keeps_working() {
    const CAP: usize = 4;
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.demo_app("v1", &[]);
    let proxy = server.sidecar_with(None, &["--max-connections", "4"]);
    let client = mesh.pod("client");

    let mut active = client
        .connect(Some(APP_UID), server.endpoint())
        .expect("connect");
    assert_eq!(keep_alive_get(&mut active), 200);

    let mut idle = Vec::new();
    let mut reset = 0;
    for _ in 0..CAP + 5 {
        // The kernel completes the handshake before the proxy accepts; its reset may already
        // have come when the test sets up the socket.
        match client.connect(Some(APP_UID), server.endpoint()) {
            Ok(stream) => idle.push(stream),
            Err(_) => reset += 1,
        }
    }
    let mut open = 0;
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("read timeout");
        let mut buf = [0u8; 16];
        match stream.read(&mut buf) {
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                open += 1;
            }
            Ok(0) | Err(_) => reset += 1,
            Ok(n) => panic!("an idle connection got {n} bytes"),
        }
    }
    assert_eq!(
        (open, reset),
        (CAP - 1, 6),
        "the listener holds {CAP}: the active client's and {} idle ones",
        CAP - 1
    );
    proxy.wait_for_metric(
        "skein_proxy_tcp_connections_rejected_total",
        &[("direction", "inbound"), ("reason", "connection_limit")],
        |n| n == 6.0,
    );
    // The active client is still served, on its connection.
    for _ in 0..3 {
        assert_eq!(keep_alive_get(&mut active), 200);
    }
    // Places come back as connections close.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = client.curl(&[&format!("http://{}/", server.endpoint())]);
        if response.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no place came back: {response:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// An opaque TCP connection that moves no byte for the idle timeout is closed; one that sends a
/// byte every so often (more rarely than the timeout would allow in total) is not.
#[test]
fn an_idle_tcp_connection_is_closed_and_a_trickling_one_is_not() {
    const PORT: u16 = 9200;
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.tcp_server(PORT, support::pods::echo);
    let proxy = server.sidecar_with(None, &["--idle-timeout", "2s"]);
    let client = mesh.pod("client");
    let to = SocketAddr::from((server.ip, PORT));

    let mut idle = client.connect(Some(APP_UID), to).expect("connect");
    let mut trickling = client.connect(Some(APP_UID), to).expect("connect");
    for stream in [&mut idle, &mut trickling] {
        // Not HTTP, not TLS: opaque at once.
        stream.write_all(b"hello\n").expect("send");
        let mut echo = [0u8; 6];
        stream.read_exact(&mut echo).expect("the echo");
    }
    let idle_since = Instant::now();
    let trickle = thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(7) {
            thread::sleep(Duration::from_millis(700));
            trickling
                .write_all(b"x")
                .expect("the trickling connection is open");
            let mut echo = [0u8; 1];
            trickling.read_exact(&mut echo).expect("the echo");
        }
    });
    wait_for_close(&mut idle, Duration::from_secs(10));
    let cut_after = idle_since.elapsed();
    assert!(
        cut_after >= Duration::from_millis(1500) && cut_after <= Duration::from_secs(6),
        "the idle connection closed after {cut_after:?}, not after the 2s idle timeout"
    );
    trickle.join().expect("the trickling connection lived 7 s");
    proxy.wait_for_metric(
        "skein_proxy_tcp_connections_cut_total",
        &[("direction", "inbound"), ("reason", "idle_timeout")],
        |n| n == 1.0,
    );
}
