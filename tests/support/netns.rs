//! The network-namespace harness the data-plane tests share (`tests/capture.rs`,
//! `tests/proxy_tcp.rs` and [`super::pods`]): namespaces deleted by drop guards, a pod wired to a
//! peer by a veth pair, sockets opened inside a namespace, and external commands run with a time
//! limit. One copy, so a fix to the harness reaches every suite.
//!
//! Sockets are opened on short-lived threads that joined a namespace with `setns` (the network
//! namespace is per thread, and a socket stays in the namespace it was created in), so a test
//! keeps plain `std::net` streams it can assert on.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Bound on every external command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Addresses of a [`WiredPod`]: the pod's `eth0` and the peer's.
pub const POD_IP: &str = "10.213.0.2";
pub const PEER_IP: &str = "10.213.0.1";
pub const POD_IP6: &str = "fd00:213::2";
pub const PEER_IP6: &str = "fd00:213::1";

// ---------------------------------------------------------------------------------------------
// Namespaces.

/// A network namespace, deleted on drop (with the veth ends inside it).
pub struct Netns(pub String);

impl Netns {
    pub fn add(name: String) -> Self {
        // `ip netns add` mounts /run/netns on first use; concurrent first uses can race.
        static SETUP: Mutex<()> = Mutex::new(());
        let _serial = SETUP
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        run_ok("ip", &["netns", "add", &name]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure here must not turn a passing test into a panic during unwind.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// `ip -n NS ARGS`, which must succeed.
pub fn ip(ns: &str, args: &[&str]) {
    let args: Vec<&str> = ["-n", ns].iter().chain(args).copied().collect();
    run_ok("ip", &args);
}

/// Creates `eth0` in `ns` as one end of a veth pair whose other end is `peer_end` in `peer_ns`.
/// Created directly inside the namespaces, so the names cannot clash with the host's.
pub fn add_veth(ns: &str, peer_end: &str, peer_ns: &str) {
    run_ok(
        "ip",
        &[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer_end, "netns",
            peer_ns,
        ],
    );
}

/// Brings up `lo` and `eth0` in `ns` and gives `eth0` the address `cidr` (`IP/LEN`).
pub fn bring_up_eth0(ns: &str, cidr: &str) {
    ip(ns, &["link", "set", "lo", "up"]);
    ip(ns, &["link", "set", "eth0", "up"]);
    ip(ns, &["addr", "add", cidr, "dev", "eth0"]);
}

/// A pod namespace and the peer namespace it is wired to (named `PREFIX-PID-N-pod` and `-peer`,
/// unique per test):
///
/// ```text
///   pod netns                                   peer netns
///   eth0 10.213.0.2/24, fd00:213::2/64  <-veth->  eth0 10.213.0.1/24, fd00:213::1/64
///   default route via the peer
/// ```
///
/// The IPv6 addresses only with `ipv6`. Both namespaces are deleted on drop, the pod first.
pub struct WiredPod {
    /// The pod namespace.
    pub name: String,
    // Fields drop in order: the pod first, then the peer.
    _pod: Netns,
    pub peer: Netns,
}

impl WiredPod {
    pub fn new(prefix: &str, ipv6: bool) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let pod = Netns::add(format!("{id}-pod"));
        let peer = Netns::add(format!("{id}-peer"));
        add_veth(&pod.0, "eth0", &peer.0);
        bring_up_eth0(&pod.0, &format!("{POD_IP}/24"));
        bring_up_eth0(&peer.0, &format!("{PEER_IP}/24"));
        ip(&pod.0, &["route", "add", "default", "via", PEER_IP]);
        if ipv6 {
            // nodad: usable at once instead of after duplicate address detection.
            for (ns, addr) in [(&pod.0, POD_IP6), (&peer.0, PEER_IP6)] {
                ip(
                    ns,
                    &["addr", "add", &format!("{addr}/64"), "dev", "eth0", "nodad"],
                );
            }
        }
        WiredPod {
            name: pod.0.clone(),
            _pod: pod,
            peer,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets inside namespaces.

pub fn at(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().expect("test IP address");
    SocketAddr::new(ip, port)
}

pub fn any_v4(port: u16) -> SocketAddr {
    at("0.0.0.0", port)
}

pub fn any_v6(port: u16) -> SocketAddr {
    at("::", port)
}

/// Runs `f` on a new thread inside network namespace `ns`, as `uid` when given.
///
/// Why a thread: the network namespace is a per-thread attribute, so `setns` on a throwaway thread
/// leaves the test's other threads alone, and sockets keep the namespace they were created in.
/// Why raw `setresuid`: glibc's `setresuid()` changes the credentials of *every* thread of the
/// process (it signals them all, for POSIX semantics), which would break tests running in
/// parallel; the raw syscall changes only the calling thread. A socket records the credentials
/// of the thread that created it, which is what `-m owner --uid-owner` matches. The thread loses
/// root with it, which is fine: it ends when `f` returns.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    uid: Option<u32>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    let thread = thread::spawn(move || {
        let netns = File::open(&path).unwrap_or_else(|err| panic!("opening {path}: {err}"));
        // SAFETY: plain syscalls on a valid descriptor, affecting only this thread.
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        if let Some(uid) = uid {
            // SAFETY: as above; group first, while the thread still may change it.
            let rc = unsafe { libc::syscall(libc::SYS_setresgid, uid, uid, uid) };
            assert_eq!(
                rc,
                0,
                "setresgid({uid}): {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: as above.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
            assert_eq!(
                rc,
                0,
                "setresuid({uid}): {}",
                std::io::Error::last_os_error()
            );
        }
        f()
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A listener on `addr` in `ns`, owned by `uid` when given.
pub fn listen(ns: &str, uid: Option<u32>, addr: SocketAddr) -> TcpListener {
    let what = format!("listening on {addr} in {ns}");
    in_netns(ns, uid, move || {
        TcpListener::bind(addr).unwrap_or_else(|err| panic!("{what}: {err}"))
    })
}

/// A connection from `ns` (as `uid` when given) to `to`; connecting, reading and writing each
/// bounded by `timeout`, so a broken proxy fails the test instead of hanging it.
pub fn connect_within(
    ns: &str,
    uid: Option<u32>,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    in_netns(ns, uid, move || {
        let stream = TcpStream::connect_timeout(&to, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    })
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Fails the test (with what is missing) unless it runs as root with `tools` (each a program and
/// the argument that makes it print its version). Checked once per test binary: every suite
/// calls it with the same tools each time.
pub fn require_environment(suite: &str, tools: &[(&str, &str)], packages: &str) {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("must run as root (network namespaces and iptables)".to_owned());
        }
        for &(tool, version) in tools {
            let found = Command::new(tool)
                .arg(version)
                .output()
                .is_ok_and(|out| out.status.success());
            if !found {
                return Err(format!("`{tool}` is missing (install {packages})"));
            }
        }
        Ok(())
    });
    if let Err(problem) = check {
        panic!("the {suite} tests cannot run: {problem}");
    }
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`].
pub fn run(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    run_command(command, COMMAND_TIMEOUT)
}

/// Runs `command` (stdin closed, output collected) to completion within `limit`.
pub fn run_command(mut command: Command, limit: Duration) -> Output {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("could not run `{described}`: {err}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{described}` did not finish within {limit:?}");
            }
            Err(err) => panic!("waiting for `{described}`: {err}"),
        }
    };
    let collect = |reader: JoinHandle<Vec<u8>>| reader.join().unwrap_or_default();
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

/// Runs a command that must succeed (within [`COMMAND_TIMEOUT`]); its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Reads a pipe to its end on another thread, so a chatty child cannot block on a full pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Exit status and both outputs of a command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
