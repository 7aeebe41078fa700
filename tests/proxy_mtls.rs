//! Mutual TLS between two real sidecars on a real network (the harness of `proxy_http.rs`: pods
//! in network namespaces, the real `skein init` capture, the real `skein proxy`): each sidecar
//! holds a workload certificate from the test mesh's CA (`--workload-cert`, as the control
//! plane would issue it), the client's configuration names the identity each endpoint must
//! prove, and every protocol crosses the encrypted hop; HTTP/1 rides one HTTP/2 connection
//! between the sidecars where the endpoint takes it. Strict mode refuses plaintext but the
//! node's probes. Needs root, iproute2, iptables and curl.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use support::pods::{APP_UID, Mesh, Pod, head_value, read_head, websocket_echo};

const SERVICE: &str = "backend.demo.svc.cluster.local";
const VIP: u8 = 10;
const HTTP_PORT: u16 = 80;
/// Server-speaks-first protocols (PostgreSQL's port is opaque by default).
const OPAQUE_PORT: u16 = 5432;

/// The client sidecar's configuration: the backend Service with one endpoint per
/// `(port, server port)`, all on `server`, which must prove `identity` and takes HTTP/1 over
/// HTTP/2.
fn config(mesh: &Mesh, server: &Pod, identity: &str, ports: &[(u16, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, target)| {
            json!({"port": port, "endpoints": [{
                "address": SocketAddr::from((server.ip, *target)).to_string(),
                "workload": {"name": "backend", "namespace": "demo"},
                "identity": identity,
                // As the control plane says of a pod injected by this build.
                "http2Upgrade": true,
            }]})
        })
        .collect();
    json!({
        "version": "1",
        "workload": {"name": "client", "namespace": "demo"},
        "destinations": [{
            "name": SERVICE,
            "addresses": [mesh.vip(VIP).to_string()],
            "hosts": ["backend"],
            "ports": ports,
        }],
    })
}

#[test]
fn http1_and_http2_cross_mutual_tls_and_the_server_sees_the_callers_identity() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.demo_app("v1", &[]);
    let server_proxy = server.meshed_sidecar(None);
    let client = mesh.pod("client");
    let _client_proxy = client.meshed_sidecar(Some(&config(
        &mesh,
        &server,
        &server.identity(),
        &[(HTTP_PORT, 8080)],
    )));
    let url = format!("http://{}:{HTTP_PORT}/hello", mesh.vip(VIP));

    let h1 = client.curl(&[&url]);
    assert_eq!(h1.status, 200, "{h1:?}");
    let h2 = client.curl(&["--http2-prior-knowledge", &url]);
    assert_eq!(h2.status, 200, "{h2:?}");
    assert!(h2.status_line.starts_with("HTTP/2"), "{h2:?}");

    // The server's sidecar knows who called from the certificate, not the address.
    server_proxy.wait_for_metric(
        "skein_proxy_requests_total",
        &[
            ("direction", "inbound"),
            ("source_principal", &client.identity()),
            ("source_namespace", "demo"),
            ("tls", "true"),
            ("status_code", "200"),
        ],
        |n| n == 2.0,
    );
}

/// What an HTTP/1 app answers after `APP_DELAY`, recording each request's head: long enough that
/// the requests a test sends at once are all in flight together.
fn recording_app(heads: Arc<Mutex<Vec<String>>>) -> impl Fn(TcpStream) + Send + Sync + 'static {
    const APP_DELAY: Duration = Duration::from_millis(300);
    move |mut stream: TcpStream| {
        while let Some(head) = read_head(&mut stream) {
            heads.lock().expect("heads").push(head);
            thread::sleep(APP_DELAY);
            let answered = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
            if answered.is_err() {
                return;
            }
        }
    }
}

#[test]
fn http1_requests_to_a_proxy_that_takes_them_share_one_http2_connection_and_reach_the_app_as_http1()
{
    const CARRIED_PORT: u16 = 80;
    const KEPT_PORT: u16 = 81;
    const IN_FLIGHT: usize = 6;
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let _app = server.tcp_server(8080, recording_app(heads.clone()));
    let _kept_app = server.tcp_server(8081, recording_app(Arc::default()));
    let server_proxy = server.meshed_sidecar(None);
    let client = mesh.pod("client");
    // Two ports of the server: one as the control plane describes a pod whose proxy takes HTTP/1
    // over HTTP/2 (`http2Upgrade`), one as a pod injected before that.
    let endpoint = |carried: bool| {
        let target = if carried { 8080 } else { 8081 };
        json!([{
            "address": SocketAddr::from((server.ip, target)).to_string(),
            "workload": {"name": "backend", "namespace": "demo"},
            "identity": server.identity(),
            "http2Upgrade": carried,
        }])
    };
    let _client_proxy = client.meshed_sidecar(Some(&json!({
        "version": "1",
        "workload": {"name": "client", "namespace": "demo"},
        "destinations": [{
            "name": SERVICE,
            "addresses": [mesh.vip(VIP).to_string()],
            "hosts": ["backend"],
            "ports": [
                {"port": CARRIED_PORT, "endpoints": endpoint(true)},
                {"port": KEPT_PORT, "endpoints": endpoint(false)},
            ],
        }],
    })));
    // The client proxy's connections to the server's `port` (its pool keeps them open).
    let to_server = |port| i64::try_from(client.established_to_port(port)).expect("a count");
    // IN_FLIGHT HTTP/1.1 requests at once from as many client connections; how many connections
    // the client's proxy opened to the server for them.
    let send_at_once = |port: u16, target: u16| {
        let before = to_server(target);
        let responses: Vec<_> = thread::scope(|scope| {
            let sent: Vec<_> = (0..IN_FLIGHT)
                .map(|n| {
                    let url = format!("http://backend:{port}/orders?id={n}");
                    let resolve = format!("backend:{port}:{}", mesh.vip(VIP));
                    let client = &client;
                    scope.spawn(move || client.curl(&["--resolve", &resolve, &url]))
                })
                .collect();
            sent.into_iter().map(|t| t.join().expect("curl")).collect()
        });
        for response in &responses {
            assert_eq!(response.status, 200, "{response:?}");
            assert!(
                response.status_line.starts_with("HTTP/1.1 "),
                "{response:?}"
            );
            assert_eq!(response.body, "ok\n", "{response:?}");
        }
        to_server(target) - before
    };

    // Carried: the client's proxy multiplexes every request on one mTLS connection.
    let carried = send_at_once(CARRIED_PORT, 8080);
    assert_eq!(
        carried, 1,
        "connections from the client's proxy to the server"
    );
    // The app got each as the HTTP/1.1 request the client sent, with nothing of the carrying.
    let mut seen: Vec<String> = std::mem::take(&mut *heads.lock().expect("heads"));
    assert_eq!(seen.len(), IN_FLIGHT, "{seen:?}");
    seen.sort();
    for (n, head) in seen.iter().enumerate() {
        assert!(
            head.starts_with(&format!("GET /orders?id={n} HTTP/1.1\r\n")),
            "{head}"
        );
        // curl leaves out the default port.
        assert_eq!(head_value(head, "host"), Some("backend"), "{head}");
        assert_eq!(head_value(head, "x-skein-orig-proto"), None, "{head}");
    }

    // Kept as HTTP/1: one connection per request in flight (so the count above could fail).
    let kept = send_at_once(KEPT_PORT, 8081);
    assert!(
        kept >= 2,
        "connections from the client's proxy to the server: {kept}"
    );

    // The server's proxy counts the requests as HTTP/1 from the client's identity.
    server_proxy.wait_for_metric(
        "skein_proxy_requests_total",
        &[
            ("direction", "inbound"),
            ("source_principal", &client.identity()),
            ("tls", "true"),
            ("status_code", "200"),
        ],
        |n| n == (2 * IN_FLIGHT) as f64,
    );
}

/// An HTTP/1 app that reads `/stall` requests' heads but never their bodies (holding the
/// connection), and answers any other request once it has read its `content-length` body.
fn stalling_app(mut stream: TcpStream) {
    while let Some(head) = read_head(&mut stream) {
        if head.starts_with("POST /stall ") {
            thread::sleep(Duration::from_secs(20));
            return;
        }
        let length: u64 =
            head_value(&head, "content-length").map_or(0, |v| v.parse().expect("length"));
        let read = std::io::copy(&mut (&mut stream).take(length), &mut std::io::sink());
        if read.ok() != Some(length)
            || stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                .is_err()
        {
            return;
        }
    }
}

#[test]
fn an_upload_the_app_stops_reading_holds_up_no_other_request_on_the_shared_connection() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.tcp_server(8080, stalling_app);
    let _server_proxy = server.meshed_sidecar(None);
    let client = mesh.pod("client");
    let _client_proxy = client.meshed_sidecar(Some(&config(
        &mesh,
        &server,
        &server.identity(),
        &[(HTTP_PORT, 8080)],
    )));
    let url = |path: &str| format!("http://{}:{HTTP_PORT}{path}", mesh.vip(VIP));
    let body = |name: &str, bytes: usize| {
        let path = mesh.dir().join(name);
        std::fs::write(&path, vec![b'x'; bytes]).expect("body file");
        format!("@{}", path.to_str().expect("a UTF-8 path"))
    };
    // Far more than the socket buffers and one HTTP/2 stream window hold: the upload stalls with
    // its stream's window used up.
    let stalled_body = body("stalled", 64 << 20);
    let small_body = body("small", 256 << 10);
    // Opens the shared connection first, so both requests below are streams on it.
    assert_eq!(client.curl(&[&url("/first")]).status, 200);
    thread::scope(|scope| {
        let stalled =
            scope.spawn(|| client.curl(&["--data-binary", &stalled_body, &url("/stall")]));
        // Let the stalled upload fill what it can.
        thread::sleep(Duration::from_secs(2));
        let other = client.curl(&["--data-binary", &small_body, &url("/other")]);
        assert_eq!(other.status, 200, "{other:?}");
        assert_eq!(other.body, "ok\n", "{other:?}");
        // The stalled upload ends with curl's time limit or the app's close; either way it
        // got no 200.
        let stalled = stalled.join().expect("curl");
        assert_ne!(stalled.status, 200, "{stalled:?}");
    });
}

#[test]
fn a_server_that_is_not_the_expected_identity_gets_no_request() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.demo_app("v1", &[]);
    let server_proxy = server.meshed_sidecar(None);
    let client = mesh.pod("client");
    // The control plane says the endpoint is someone else (a reused pod IP, say).
    let elsewhere = "spiffe://cluster.local/ns/demo/sa/payments";
    let client_proxy = client.meshed_sidecar(Some(&config(
        &mesh,
        &server,
        elsewhere,
        &[(HTTP_PORT, 8080)],
    )));
    let response = client.curl(&[&format!("http://{}:{HTTP_PORT}/", mesh.vip(VIP))]);
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(
        response.header("x-skein-error"),
        Some("connect-failure"),
        "{response:?}"
    );
    client_proxy.wait_for_metric(
        "skein_proxy_local_responses_total",
        &[("reason", "connect-failure")],
        |n| n >= 1.0,
    );
    // The server refused the handshake (asked for another identity) before the app saw it.
    server_proxy.wait_for_metric(
        "skein_proxy_tcp_connections_rejected_total",
        &[
            ("direction", "inbound"),
            ("reason", "mtls_handshake_failed"),
        ],
        |n| n >= 1.0,
    );
    assert_eq!(
        server_proxy
            .metrics()
            .sum("skein_proxy_requests_total", &[("direction", "inbound")]),
        0.0
    );
}

#[test]
fn websocket_and_server_first_opaque_tcp_cross_mutual_tls() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _ws = server.tcp_server(9100, websocket_echo);
    // A server that speaks first, as SMTP or PostgreSQL do: the client sends nothing until it
    // has read the banner, so nothing on the way may wait for the client's bytes.
    let _banner = server.tcp_server(OPAQUE_PORT, |mut stream| {
        let _ = stream.write_all(b"220 banner\r\n");
        let mut line = [0u8; 5];
        if stream.read_exact(&mut line).is_ok() {
            let _ = stream.write_all(&line);
        }
    });
    let server_proxy = server.meshed_sidecar(None);
    let client = mesh.pod("client");
    let _client_proxy = client.meshed_sidecar(Some(&config(
        &mesh,
        &server,
        &server.identity(),
        &[(HTTP_PORT, 9100), (OPAQUE_PORT, OPAQUE_PORT)],
    )));

    // WebSocket: upgrade, then bytes both ways, then a half-close.
    let vip = SocketAddr::from((mesh.vip(VIP), HTTP_PORT));
    let mut stream = client.connect(Some(APP_UID), vip).expect("connect");
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: backend\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("send the handshake");
    let head = read_head(&mut stream).expect("the handshake's answer");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(head_value(&head, "upgrade"), Some("websocket"), "{head}");
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let mut writer = stream.try_clone().expect("clone");
    let sent = big.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).expect("send");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).expect("the echo");
    sender.join().expect("sender");
    assert!(
        echoed == big,
        "echoed {} of {} bytes",
        echoed.len(),
        big.len()
    );

    // Server first: the banner arrives with the client silent.
    let vip = SocketAddr::from((mesh.vip(VIP), OPAQUE_PORT));
    let mut stream = client.connect(Some(APP_UID), vip).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut banner = [0u8; 12];
    stream
        .read_exact(&mut banner)
        .expect("the server's banner without sending a byte");
    assert_eq!(&banner, b"220 banner\r\n");
    stream.write_all(b"HELO\n").expect("send");
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).expect("the reply");
    assert_eq!(&reply, b"HELO\n");
    drop(stream);

    server_proxy.wait_for_metric(
        "skein_proxy_requests_total",
        &[
            ("direction", "inbound"),
            ("status_code", "101"),
            ("tls", "true"),
        ],
        |n| n == 1.0,
    );
    // The second connection to the same server resumed the first one's TLS session: its
    // handshake exchanged no certificates (the client's HTTP and opaque connectors share one
    // session cache).
    let handshakes = server_proxy.metrics();
    let kind = |kind| {
        handshakes.sum(
            "skein_proxy_identity_mtls_inbound_handshakes_total",
            &[("kind", kind)],
        )
    };
    assert_eq!((kind("full"), kind("resumed")), (1.0, 1.0));
}

/// An SSH server (Dropbear) on a port nobody listed as opaque: the server speaks first and its
/// client waits for that greeting. Through two sidecars the greeting arrives with the client
/// silent; the client's sidecar then remembers the destination, so the next connection skips
/// detection altogether; the whole protocol works (`ssh-keyscan` reads the host key); and a
/// plaintext client straight to the pod gets the greeting too. The times to the greeting are
/// printed (no timed assertion: the benchmark is where timing is judged).
#[test]
fn a_real_server_first_protocol_on_an_unlisted_port_is_not_stalled() {
    const SSH_PORT: u16 = 2222;
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let key = mesh.dir().join("dropbear_ed25519");
    let key = key.to_str().expect("a UTF-8 path");
    let made = server.run(None, &["dropbearkey", "-t", "ed25519", "-f", key]);
    assert!(made.status.success(), "{made:?}");
    let port = SSH_PORT.to_string();
    let mut sshd = server.spawn(
        "dropbear",
        None,
        &["dropbear", "-F", "-E", "-s", "-r", key, "-p", &port],
        &[],
    );
    server.wait_listening(SSH_PORT, &mut sshd);
    // The server has until the detection timeout to greet before the connection is opaque
    // anyway (and, unlearned, not counted): long here, so a busy machine cannot decide it.
    let patient = json!("10s");
    let server_proxy = server.meshed_sidecar(Some(&json!({"detectTimeout": patient})));
    let client = mesh.pod("client");
    let mut client_config = config(&mesh, &server, &server.identity(), &[(SSH_PORT, SSH_PORT)]);
    client_config["detectTimeout"] = patient;
    let client_proxy = client.meshed_sidecar(Some(&client_config));
    let server_first = |proxy: &support::pods::Proxy<'_>, direction: &str| {
        proxy.metrics().sum(
            "skein_proxy_tcp_server_first_total",
            &[("direction", direction)],
        )
    };

    let vip = SocketAddr::from((mesh.vip(VIP), SSH_PORT));
    let greeting = |pod: &Pod, to: SocketAddr| {
        let started = std::time::Instant::now();
        let mut stream = pod.connect(Some(APP_UID), to).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("the server's greeting, without sending a byte");
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        assert!(line.starts_with("SSH-2.0-dropbear"), "{line:?}");
        started.elapsed()
    };
    let first = greeting(&client, vip);
    assert_eq!(server_first(&client_proxy, "outbound"), 1.0);
    let second = greeting(&client, vip);
    assert_eq!(
        server_first(&client_proxy, "outbound"),
        1.0,
        "the second connection went straight through"
    );
    println!("greeting through two sidecars: first connection {first:?}, second {second:?}");

    let scan = client.run(
        Some(APP_UID),
        &[
            "ssh-keyscan",
            "-T",
            "10",
            "-p",
            &port,
            "-t",
            "ed25519",
            &mesh.vip(VIP).to_string(),
        ],
    );
    let keys = String::from_utf8_lossy(&scan.stdout);
    assert!(keys.contains("ssh-ed25519 "), "{scan:?}");

    // A plaintext client outside the mesh, straight to the pod: the server's sidecar lets the
    // app greet it as well.
    let outsider = mesh.pod("outsider");
    let direct = greeting(&outsider, SocketAddr::from((server.ip, SSH_PORT)));
    println!("greeting through the server's sidecar alone: {direct:?}");
    assert_eq!(server_first(&server_proxy, "inbound"), 1.0);
}

/// The `notBefore` of the workload certificate the sidecar holds now (from its `/config`).
fn cert_not_before(proxy: &support::pods::Proxy<'_>) -> String {
    let response = proxy.admin("GET", "/config");
    let config: Value = serde_json::from_str(&response.body).expect("/config is JSON");
    config["identity"]["notBefore"].to_string()
}

/// Renewals under live traffic: a WebSocket and a slow HTTP/2 stream, both opened before the
/// certificates of both sidecars are renewed twice, keep flowing through the renewals; new
/// connections after them work too.
#[test]
fn a_websocket_and_an_http2_stream_outlive_two_renewals_of_both_certificates() {
    const SLOW_PORT: u16 = 8080;
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _ws = server.tcp_server(9100, websocket_echo);
    let _app = server.demo_app("v1", &[]);
    let server_proxy = server.meshed_sidecar(None);
    let client = mesh.pod("client");
    let client_proxy = client.meshed_sidecar(Some(&config(
        &mesh,
        &server,
        &server.identity(),
        &[(HTTP_PORT, 9100), (SLOW_PORT, 8080)],
    )));

    let vip = SocketAddr::from((mesh.vip(VIP), HTTP_PORT));
    let mut ws = client.connect(Some(APP_UID), vip).expect("connect");
    ws.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    ws.write_all(
        b"GET /chat HTTP/1.1\r\nHost: backend\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("send the handshake");
    let head = read_head(&mut ws).expect("the handshake's answer");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut exchange = |message: &[u8]| {
        ws.write_all(message).expect("send over the WebSocket");
        let mut echoed = vec![0u8; message.len()];
        ws.read_exact(&mut echoed).expect("the echo");
        assert_eq!(echoed, message);
    };
    exchange(b"before");

    let slow_url = format!("http://{}:{SLOW_PORT}/slow", mesh.vip(VIP));
    thread::scope(|scope| {
        // Answered after 25 s (under the harness's 30 s per command): long enough to span both
        // renewals below, which take a few seconds each.
        let slow = scope.spawn(|| {
            client.curl(&[
                "--http2-prior-knowledge",
                "--max-time",
                "60",
                "-H",
                "x-demo-backend-latency-ms: 25000",
                &slow_url,
            ])
        });
        for round in 1..=2 {
            let before = [
                cert_not_before(&server_proxy),
                cert_not_before(&client_proxy),
            ];
            // A later second, so the renewed certificate's notBefore differs.
            thread::sleep(Duration::from_millis(1100));
            server.identity_flags();
            client.identity_flags();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while [
                cert_not_before(&server_proxy),
                cert_not_before(&client_proxy),
            ][..]
                .iter()
                .zip(&before)
                .any(|(now, before)| now == before)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "renewal {round}: both sidecars to load their new certificates"
                );
                thread::sleep(Duration::from_millis(200));
            }
            exchange(format!("after renewal {round}").as_bytes());
        }
        assert!(
            !slow.is_finished(),
            "the HTTP/2 stream was still open through both renewals"
        );
        let answer = slow.join().expect("the slow request");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.status_line.starts_with("HTTP/2"), "{answer:?}");
    });
    exchange(b"after the stream");

    // New connections use the renewed certificates.
    let fresh = client.curl(&[&format!("http://{}:{SLOW_PORT}/", mesh.vip(VIP))]);
    assert_eq!(fresh.status, 200, "{fresh:?}");
    server_proxy.wait_for_metric(
        "skein_proxy_requests_total",
        &[
            ("direction", "inbound"),
            ("tls", "true"),
            ("status_code", "200"),
        ],
        |n| n == 2.0,
    );
}

#[test]
fn strict_refuses_plaintext_but_lets_the_nodes_probes_reach_their_paths() {
    let mesh = Mesh::new();
    let server = mesh.pod("server");
    let _app = server.demo_app("v1", &[]);
    let server_config = json!({
        "version": "1",
        "inboundMtls": {
            "mode": "Strict",
            "probes": [{"port": 8080, "httpPaths": ["/healthz"]}],
            "nodeIp": mesh.hub_ip().to_string(),
        },
    });
    let server_proxy = server.meshed_sidecar(Some(&server_config));
    let url = |path: &str| format!("http://{}:8080{path}", server.ip);

    // A pod outside the mesh (no sidecar) is refused at the connection.
    let outsider = mesh.pod("outsider");
    let refused = outsider.curl(&[&url("/")]);
    assert_eq!(refused.status, 0, "plaintext got an answer: {refused:?}");
    server_proxy.wait_for_metric(
        "skein_proxy_tcp_connections_rejected_total",
        &[("direction", "inbound"), ("reason", "plaintext_refused")],
        |n| n >= 1.0,
    );

    // The node (the hub, as the kubelet) reaches the probe's path, and only that.
    let probe = mesh.run_in_hub(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url("/healthz"),
    ]);
    assert_eq!(String::from_utf8_lossy(&probe.stdout), "200", "{probe:?}");
    let other = mesh.run_in_hub(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url("/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&other.stdout), "403", "{other:?}");

    // A meshed client still gets through.
    let client = mesh.pod("client");
    let _client_proxy = client.meshed_sidecar(Some(&config(
        &mesh,
        &server,
        &server.identity(),
        &[(HTTP_PORT, 8080)],
    )));
    let meshed = client.curl(&[&format!("http://{}:{HTTP_PORT}/", mesh.vip(VIP))]);
    assert_eq!(meshed.status, 200, "{meshed:?}");
}
