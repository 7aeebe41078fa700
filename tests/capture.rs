//! `skein init` against real network namespaces: the real binary programs a "pod" namespace that is
//! wired by a veth pair to a "peer" namespace, and real TCP connections show what the rules do.
//!
//! ```text
//!   pod netns                                   peer netns
//!   eth0 10.213.0.2/24, fd00:213::2/64  <-veth->  eth0 10.213.0.1/24, fd00:213::1/64
//!   default route via the peer                   lo: 10.96.0.10, fd00:96::10 (a "Service VIP")
//! ```
//!
//! All traffic stays inside namespaces the test creates; each test has its own pair, deleted by a
//! drop guard even when the test panics. Needs root, iproute2, iptables and setpriv: without
//! them the tests fail (they never skip).
//!
//! Sockets are opened on short-lived threads that joined a namespace with `setns` (the network
//! namespace is per thread, and a socket stays in the namespace it was created in), so the
//! test keeps plain `std::net` streams it can assert on.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use skein::proxy::original_dst::original_dst;
use support::netns::{
    COMMAND_TIMEOUT, PEER_IP, PEER_IP6, POD_IP, POD_IP6, WiredPod, any_v4, any_v6, at,
    connect_within, describe, ip, listen, run_command,
};

const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
/// The defaults `skein init` uses.
const PROXY_UID: u32 = 2170;
const OUTBOUND_PORT: u16 = 16001;
const INBOUND_PORT: u16 = 16006;
/// Any UID other than the proxy's: the application.
const APP_UID: u32 = 1000;
/// `nobody`, for runs without privileges.
const NOBODY: &str = "65534";

const SERVICE_VIP: &str = "10.96.0.10";
const SERVICE_VIP6: &str = "fd00:96::10";

/// Bound on every connect, accept, read and write.
const NET_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// The behaviour users notice.

#[test]
fn app_connection_to_a_service_reaches_the_outbound_port_with_its_original_destination() {
    let pod = Pod::new();
    pod.init(&[]);
    let proxy = listen(&pod.name, Some(PROXY_UID), any_v4(OUTBOUND_PORT));

    let mut app = connect(&pod.name, Some(APP_UID), at(SERVICE_VIP, 80));
    let mut accepted = accept(&proxy);

    assert_eq!(
        original_dst(&accepted).expect("original destination"),
        at(SERVICE_VIP, 80)
    );
    exchange(&mut app, &mut accepted);
}

#[test]
fn proxy_uid_connections_are_not_redirected() {
    let pod = Pod::new();
    pod.init(&[]);
    let proxy = listen(&pod.name, Some(PROXY_UID), any_v4(OUTBOUND_PORT));
    let service = listen(&pod.peer.0, None, at(SERVICE_VIP, 80));

    let mut client = connect(&pod.name, Some(PROXY_UID), at(SERVICE_VIP, 80));
    let mut server = accept(&service);

    exchange(&mut client, &mut server);
    assert_nothing_arrived(
        &proxy,
        "the proxy's own connection was looped into its outbound port",
    );
}

#[test]
fn inbound_connection_reaches_the_inbound_port_with_its_original_destination() {
    let pod = Pod::new();
    pod.init(&[]);
    let proxy = listen(&pod.name, Some(PROXY_UID), any_v4(INBOUND_PORT));
    let app = listen(&pod.name, Some(APP_UID), any_v4(8080));

    let mut client = connect(&pod.peer.0, None, at(POD_IP, 8080));
    let mut accepted = accept(&proxy);

    assert_eq!(
        original_dst(&accepted).expect("original destination"),
        at(POD_IP, 8080)
    );
    exchange(&mut client, &mut accepted);
    assert_nothing_arrived(&app, "an inbound connection bypassed the proxy");
}

#[test]
fn excluded_inbound_port_reaches_the_app_directly() {
    let pod = Pod::new();
    pod.init(&["--exclude-inbound-ports=22,8081"]);
    let proxy = listen(&pod.name, Some(PROXY_UID), any_v4(INBOUND_PORT));
    let app = listen(&pod.name, Some(APP_UID), any_v4(8081));

    let mut client = connect(&pod.peer.0, None, at(POD_IP, 8081));
    let mut server = accept(&app);

    exchange(&mut client, &mut server);
    assert_nothing_arrived(&proxy, "an excluded inbound port was captured");
}

#[test]
fn excluded_outbound_port_and_cidr_reach_their_destinations_directly() {
    let pod = Pod::new();
    pod.init(&[
        "--exclude-outbound-ports=5432",
        &format!("--exclude-outbound-cidrs={PEER_IP}/32"),
    ]);
    let proxy = listen(&pod.name, Some(PROXY_UID), any_v4(OUTBOUND_PORT));
    let database = listen(&pod.peer.0, None, at(SERVICE_VIP, 5432));
    let peer = listen(&pod.peer.0, None, at(PEER_IP, 9090));

    let mut client = connect(&pod.name, Some(APP_UID), at(SERVICE_VIP, 5432));
    exchange(&mut client, &mut accept(&database));
    let mut client = connect(&pod.name, Some(APP_UID), at(PEER_IP, 9090));
    exchange(&mut client, &mut accept(&peer));

    assert_nothing_arrived(&proxy, "excluded outbound traffic was captured");
}

#[test]
fn include_cidrs_capture_only_those_destinations() {
    let pod = Pod::new();
    pod.init(&["--include-outbound-cidrs=10.96.0.0/12"]);
    let proxy = listen(&pod.name, Some(PROXY_UID), any_v4(OUTBOUND_PORT));
    let peer = listen(&pod.peer.0, None, at(PEER_IP, 9090));

    let mut client = connect(&pod.name, Some(APP_UID), at(PEER_IP, 9090));
    exchange(&mut client, &mut accept(&peer));
    assert_nothing_arrived(
        &proxy,
        "a destination outside the include CIDRs was captured",
    );

    let mut client = connect(&pod.name, Some(APP_UID), at(SERVICE_VIP, 80));
    let mut accepted = accept(&proxy);
    assert_eq!(
        original_dst(&accepted).expect("original destination"),
        at(SERVICE_VIP, 80)
    );
    exchange(&mut client, &mut accepted);
}

/// The app calling its own pod IP is treated as inbound; the proxy's forwarding to the app at the
/// pod IP (what it does with every inbound connection) and localhost traffic are left alone.
#[test]
fn app_calling_its_own_pod_ip_goes_through_the_inbound_port_without_loops() {
    let pod = Pod::new();
    pod.init(&[]);
    let proxy = listen(&pod.name, Some(PROXY_UID), any_v4(INBOUND_PORT));
    let app = listen(&pod.name, Some(APP_UID), any_v4(8080));

    let mut client = connect(&pod.name, Some(APP_UID), at(POD_IP, 8080));
    let mut accepted = accept(&proxy);
    assert_eq!(
        original_dst(&accepted).expect("original destination"),
        at(POD_IP, 8080)
    );
    exchange(&mut client, &mut accepted);
    assert_nothing_arrived(&app, "the app's call to its own pod IP bypassed the proxy");

    let mut forwarded = connect(&pod.name, Some(PROXY_UID), at(POD_IP, 8080));
    exchange(&mut forwarded, &mut accept(&app));
    let mut local = connect(&pod.name, Some(APP_UID), at("127.0.0.1", 8080));
    exchange(&mut local, &mut accept(&app));
    assert_nothing_arrived(
        &proxy,
        "the proxy's forwarding or localhost traffic was captured",
    );
}

#[test]
fn dual_stack_pod_captures_ipv6_too() {
    let pod = Pod::dual_stack();
    pod.init(&[]);
    // One dual-stack listener per port, as a proxy would bind: IPv4 connections arrive on it as
    // v4-mapped addresses and must still report an IPv4 original destination.
    let outbound = listen(&pod.name, Some(PROXY_UID), any_v6(OUTBOUND_PORT));
    let inbound = listen(&pod.name, Some(PROXY_UID), any_v6(INBOUND_PORT));

    for vip in [at(SERVICE_VIP6, 80), at(SERVICE_VIP, 80)] {
        let mut app = connect(&pod.name, Some(APP_UID), vip);
        let mut accepted = accept(&outbound);
        assert_eq!(original_dst(&accepted).expect("original destination"), vip);
        exchange(&mut app, &mut accepted);
    }

    let mut client = connect(&pod.peer.0, None, at(POD_IP6, 8080));
    let mut accepted = accept(&inbound);
    assert_eq!(
        original_dst(&accepted).expect("original destination"),
        at(POD_IP6, 8080)
    );
    exchange(&mut client, &mut accepted);
}

#[test]
fn running_init_twice_leaves_the_same_ruleset() {
    let pod = Pod::new();
    pod.init(&[]);
    let first = (
        pod.nat_table("iptables-save"),
        pod.nat_table("ip6tables-save"),
    );
    assert_eq!(first.0.matches("-j SKEIN_OUTPUT").count(), 1, "{}", first.0);

    pod.init(&[]);
    let second = (
        pod.nat_table("iptables-save"),
        pod.nat_table("ip6tables-save"),
    );

    assert_eq!(first, second, "a second `skein init` changed the ruleset");
}

#[test]
fn cleanup_restores_the_nat_table_and_is_idempotent() {
    let pod = Pod::new();
    // Another tool's rule, which must survive.
    let other = [
        "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN",
    ];
    pod.exec_ok("iptables", &other);
    let before = (
        pod.nat_table("iptables-save"),
        pod.nat_table("ip6tables-save"),
    );

    pod.init(&[]);
    assert_ne!(
        pod.nat_table("iptables-save"),
        before.0,
        "`skein init` added no rules"
    );
    pod.init(&["--cleanup"]);
    let after = (
        pod.nat_table("iptables-save"),
        pod.nat_table("ip6tables-save"),
    );
    assert_eq!(
        after, before,
        "`skein init --cleanup` did not restore the nat table"
    );

    pod.init(&["--cleanup"]);
    assert_eq!(pod.nat_table("iptables-save"), before.0);
}

#[test]
fn dry_run_prints_the_rules_without_privileges_and_changes_nothing() {
    let pod = Pod::new();
    let before = pod.nat_table("iptables-save");

    let output = pod.exec(&unprivileged(&[SKEIN, "init", "--dry-run"]));

    assert!(
        output.status.success(),
        "`skein init --dry-run` failed: {}",
        describe(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("-j REDIRECT --to-ports {OUTBOUND_PORT}")),
        "{stdout}"
    );
    assert_eq!(
        pod.nat_table("iptables-save"),
        before,
        "`--dry-run` changed the nat table"
    );
}

#[test]
fn init_without_net_admin_fails_with_one_clear_line() {
    let pod = Pod::new();
    let before = pod.nat_table("iptables-save");

    let output = pod.exec(&unprivileged(&[SKEIN, "init"]));

    assert!(
        !output.status.success(),
        "`skein init` without NET_ADMIN succeeded"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(
        lines.len() == 1 && lines[0].contains("NET_ADMIN"),
        "stderr: {stderr}"
    );
    assert_eq!(pod.nat_table("iptables-save"), before);
}

#[test]
fn rules_go_to_the_backend_the_namespace_already_uses() {
    let pod = Pod::new();
    // As if the CNI had programmed this namespace with iptables-legacy.
    pod.exec_ok(
        "iptables-legacy",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-p",
            "udp",
            "-j",
            "RETURN",
        ],
    );

    pod.init(&[]);
    assert!(
        pod.nat_table("iptables-legacy-save")
            .contains("-j SKEIN_OUTPUT")
    );
    assert!(!pod.nat_table("iptables-nft-save").contains("SKEIN"));

    pod.init(&["--cleanup"]);
    assert!(!pod.nat_table("iptables-legacy-save").contains("SKEIN"));
}

// ---------------------------------------------------------------------------------------------
// Topology.

/// A [`WiredPod`] whose peer also holds the Service VIPs (and, dual-stack, the pod's IPv6 default
/// route via the peer).
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
        Self::create(false)
    }

    /// A pod with global IPv6 addresses too.
    fn dual_stack() -> Self {
        Self::create(true)
    }

    fn create(ipv6: bool) -> Self {
        require_environment();
        let pod = WiredPod::new("skcap", ipv6);
        ip(
            &pod.peer.0,
            &["addr", "add", &format!("{SERVICE_VIP}/32"), "dev", "lo"],
        );
        if ipv6 {
            ip(
                &pod.peer.0,
                &["addr", "add", &format!("{SERVICE_VIP6}/128"), "dev", "lo"],
            );
            ip(
                &pod.name,
                &[
                    "-6", "route", "add", "default", "via", PEER_IP6, "dev", "eth0",
                ],
            );
        }
        Pod(pod)
    }

    /// Runs `skein init ARGS` (the real binary) in the pod namespace; it must succeed.
    fn init(&self, args: &[&str]) {
        let command: Vec<&str> = [SKEIN, "init"].iter().chain(args).copied().collect();
        let output = self.exec(&command);
        assert!(
            output.status.success(),
            "`skein init {}` failed: {}",
            args.join(" "),
            describe(&output)
        );
    }

    /// Runs a command in the pod namespace.
    fn exec(&self, command: &[&str]) -> Output {
        let args: Vec<&str> = ["netns", "exec", &self.name]
            .iter()
            .chain(command)
            .copied()
            .collect();
        run("ip", &args)
    }

    fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let command: Vec<&str> = std::iter::once(program)
            .chain(args.iter().copied())
            .collect();
        let output = self.exec(&command);
        assert!(
            output.status.success(),
            "`{}` failed: {}",
            command.join(" "),
            describe(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The pod's nat table as printed by `save` (an `*tables-save` tool), without the comment
    /// lines and packet counters that differ between two dumps of the same rules.
    fn nat_table(&self, save: &str) -> String {
        let saved = self.exec_ok(save, &["-t", "nat"]);
        saved
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| match line.rsplit_once(" [") {
                Some((chain, _counters)) if line.starts_with(':') => chain,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `command` run as `nobody` without any capability.
fn unprivileged<'a>(command: &[&'a str]) -> Vec<&'a str> {
    let setpriv = [
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "--inh-caps=-all",
    ];
    setpriv.iter().chain(command).copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Sockets inside namespaces.

fn connect(ns: &str, uid: Option<u32>, to: SocketAddr) -> TcpStream {
    connect_within(ns, uid, to, NET_TIMEOUT)
        .unwrap_or_else(|err| panic!("connecting to {to} from {ns} as uid {uid:?}: {err}"))
}

/// The next connection on `listener`, waiting at most [`NET_TIMEOUT`].
fn accept(listener: &TcpListener) -> TcpStream {
    let addr = listener.local_addr().expect("listener address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let deadline = Instant::now() + NET_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return with_timeouts(stream);
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                panic!("no connection arrived at {addr} within {NET_TIMEOUT:?}")
            }
            Err(err) => panic!("accepting on {addr}: {err}"),
        }
    }
}

/// Fails with `message` if a connection is waiting on `listener`. Callers check this after a
/// connection completed elsewhere: a redirect would have happened on its first packet.
fn assert_nothing_arrived(listener: &TcpListener, message: &str) {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    match listener.accept() {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("{message} (connection from {from})"),
        Err(err) => panic!("accept: {err}"),
    }
}

fn with_timeouts(stream: TcpStream) -> TcpStream {
    stream
        .set_read_timeout(Some(NET_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(NET_TIMEOUT))
        .expect("write timeout");
    stream
}

/// Bytes flow both ways between the two ends of one connection.
fn exchange(client: &mut TcpStream, server: &mut TcpStream) {
    let mut buf = [0u8; 4];
    client.write_all(b"ping").expect("client write");
    server.read_exact(&mut buf).expect("server read");
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").expect("server write");
    client.read_exact(&mut buf).expect("client read");
    assert_eq!(&buf, b"pong");
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Fails the test (with what is missing) unless it runs as root with the tools it needs.
fn require_environment() {
    support::netns::require_environment(
        "capture",
        &[
            ("ip", "-V"),
            ("iptables", "--version"),
            ("iptables-save", "--version"),
            ("ip6tables-save", "--version"),
            ("iptables-legacy", "--version"),
            ("setpriv", "--version"),
        ],
        "iproute2, iptables and util-linux",
    );
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`], without the backtrace variables:
/// anyhow appends a multi-line backtrace to `main`'s error when these are set; users of the init
/// container do not set them, and the tests check what those users see.
fn run(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    run_command(command, COMMAND_TIMEOUT)
}
