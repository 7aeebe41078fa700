//! Pods in real network namespaces for data-plane tests: a "hub" namespace holding a Linux
//! bridge, pod namespaces wired to it by veth pairs, the real `skein init` capture, the real
//! `skein proxy` sidecar (as the proxy UID), the real `skein demo-app` as the application (as an
//! ordinary UID), and clients (`curl`, raw sockets) run as the application UID.
//!
//! ```text
//!   hub netns skh-PID-N-hub: bridge br0 10.220.N.1/24, ext0 10.223.N.1/24, forwarding on
//!     ├─veth─ pod netns skh-PID-N-client   eth0 10.220.N.10/24, default via 10.220.N.1
//!     ├─veth─ pod netns skh-PID-N-server   eth0 10.220.N.11/24, ...
//!     └─veth─ external netns skh-PID-N-ext eth0 10.223.N.2/24 (outside the mesh)
//!   Service VIPs 10.221.N.K: nothing owns them; a pod's capture redirects connections to them
//!   (the default route via the hub lets `connect()` reach the REDIRECT).
//! ```
//!
//! Each [`Mesh`] has its own namespaces and subnets, so tests run in parallel. Everything is
//! removed by drop guards, even when a test panics: processes (killed) before their pods, pods
//! before the hub (borrows enforce the order). Logs of the processes are printed when a test
//! fails. Every command, connect, read and wait is bounded.
//!
//! Sidecar configurations are `serde_json::Value`s, written to the proxy's `--config` file as YAML
//! flow text by [`yaml`] (JSON, plus [`tag`] for the YAML-tagged enum values the proxy's YAML
//! reader wants, e.g. `!exact "1"`); [`Proxy::reconfigure`] swaps a new one in atomically and waits
//! until the proxy reports its version.
//!
//! Needs root, iproute2, iptables, util-linux (`setpriv`) and curl: without them tests fail (they
//! never skip).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use super::netns::describe;
use super::netns::{
    COMMAND_TIMEOUT, Netns, add_veth, bring_up_eth0, connect_within, in_netns, ip, run, run_ok,
};

pub const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
/// The defaults `skein init` and `skein proxy` share.
pub const PROXY_UID: u32 = 2170;
pub const ADMIN_PORT: u16 = 16000;
/// The proxy's inbound listener (`skein init`'s default redirect target).
pub const INBOUND_PORT: u16 = 16006;
/// Any UID other than the proxy's: the application and its clients.
pub const APP_UID: u32 = 1000;
/// Where `demo-app`s listen.
pub const APP_PORT: u16 = 8080;

/// Bound on every connect, read and write of the test's own sockets.
pub const NET_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for a condition the proxy should reach by itself (a config reload, a metric).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of a process's log printed when a test fails.
const LOG_TAIL_LINES: usize = 150;

/// Environment variables the proxy and the demo app read: removed from what the test process
/// passes on, so a developer's shell never changes what a test runs.
pub const ROLE_ENV: [&str; 31] = [
    "SKEIN_OUTBOUND_PORT",
    "SKEIN_OUTBOUND_TRAFFIC_POLICY",
    "SKEIN_INBOUND_PORT",
    "SKEIN_ADMIN_PORT",
    "SKEIN_DRAIN_TIMEOUT",
    "SKEIN_CONNECT_TIMEOUT",
    "SKEIN_PROXY_CONFIG",
    "SKEIN_XDS_ADDRESS",
    "SKEIN_IDENTITY_TOKEN",
    "SKEIN_TRUST_BUNDLE",
    "SKEIN_WORKLOAD_CERT",
    "SKEIN_WORKLOAD_KEY",
    "SKEIN_HEADER_READ_TIMEOUT",
    "SKEIN_IDLE_TIMEOUT",
    "SKEIN_MAX_CONNECTIONS",
    "SKEIN_MAX_REQUEST_HEADER_BYTES",
    "SKEIN_HTTP2_MAX_CONCURRENT_STREAMS",
    "SKEIN_ZIPKIN_ENDPOINT",
    "SKEIN_OTLP_ENDPOINT",
    "SKEIN_TRACE_SAMPLING_PERCENTAGE",
    "DEMO_ROLE",
    "DEMO_VERSION",
    "DEMO_LISTEN",
    "DEMO_NEXT",
    "DEMO_FAIL_PERCENT",
    "DEMO_FAIL_STATUS",
    "DEMO_LATENCY",
    "DEMO_DROP_PERCENT",
    "POD_NAME",
    "POD_NAMESPACE",
    "POD_IP",
];

// ---------------------------------------------------------------------------------------------
// The mesh: hub, subnets and the per-test directory.

/// One test's network: a hub namespace with a bridge, the pods wired to it and an external
/// subnet. Dropped last (pods borrow it).
pub struct Mesh {
    /// `skh-PID-N`: the prefix of every namespace of this mesh.
    pub id: String,
    /// `N` of the subnets 10.220.N.0/24 (pods), 10.221.N.0/24 (VIPs), 10.223.N.0/24 (external).
    pub octet: u8,
    next_host: AtomicUsize,
    has_external: AtomicBool,
    dir: tempfile::TempDir,
    hub: Netns,
    /// The mesh CA, made on first use by [`Pod::identity_flags`].
    ca: OnceLock<skein::pki::Ca>,
}

impl Mesh {
    pub fn new() -> Self {
        require_environment();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let octet = u8::try_from(n % 250 + 1).expect("fits");
        let id = format!("skh-{}-{n}", std::process::id());
        let hub = Netns::add(format!("{id}-hub"));
        let ns = hub.0.clone();
        ip(&ns, &["link", "set", "lo", "up"]);
        ip(&ns, &["link", "add", "br0", "type", "bridge"]);
        ip(&ns, &["link", "set", "br0", "up"]);
        ip(
            &ns,
            &["addr", "add", &format!("10.220.{octet}.1/24"), "dev", "br0"],
        );
        run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .expect("creating the test directory");
        // The proxy runs as its own UID and reads its configuration from here.
        set_mode(dir.path(), 0o755);
        Mesh {
            id,
            octet,
            next_host: AtomicUsize::new(10),
            has_external: AtomicBool::new(false),
            dir,
            hub,
            ca: OnceLock::new(),
        }
    }

    /// This mesh's CA (its trust bundle is the one root).
    pub fn ca(&self) -> &skein::pki::Ca {
        self.ca.get_or_init(|| {
            skein::pki::Ca::generate("skein-test-mesh", Duration::from_secs(3600))
                .expect("generating the mesh CA")
        })
    }

    /// The hub's address on the pods' bridge (the node, as pods see it).
    pub fn hub_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 220, self.octet, 1)
    }

    /// Runs a command in the hub's namespace (the node), as root.
    pub fn run_in_hub(&self, args: &[&str]) -> Output {
        run("ip", &[&["netns", "exec", &self.hub.0][..], args].concat())
    }

    /// The directory for this test's files (configurations), readable by every UID.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Service VIP number `k` (10.221.N.k): the address clients connect to.
    pub fn vip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 221, self.octet, k)
    }

    /// A new pod on the bridge, with the next free address of 10.220.N.0/24 and a default route
    /// via the hub. Not captured yet: see [`Pod::sidecar`].
    pub fn pod(&self, name: &str) -> Pod<'_> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(host).expect("at most 240 pods per mesh");
        let netns = Netns::add(format!("{}-{name}", self.id));
        let ns = netns.0.clone();
        let hub_end = format!("v{host}");
        add_veth(&ns, &hub_end, &self.hub.0);
        ip(&self.hub.0, &["link", "set", &hub_end, "master", "br0"]);
        ip(&self.hub.0, &["link", "set", &hub_end, "up"]);
        let address = Ipv4Addr::new(10, 220, self.octet, host);
        let gateway = format!("10.220.{}.1", self.octet);
        bring_up_eth0(&ns, &format!("{address}/24"));
        ip(&ns, &["route", "add", "default", "via", &gateway]);
        Pod {
            mesh: self,
            name: name.to_owned(),
            ns,
            ip: address,
            _netns: netns,
        }
    }

    /// The host outside the mesh (10.223.N.2, its own subnet routed by the hub; one per mesh):
    /// never captured, reachable from captured pods only if their egress policy lets them out.
    pub fn external(&self, name: &str) -> Pod<'_> {
        assert!(
            !self.has_external.swap(true, Ordering::Relaxed),
            "one external host per mesh"
        );
        let netns = Netns::add(format!("{}-{name}", self.id));
        let ns = netns.0.clone();
        add_veth(&ns, "ext0", &self.hub.0);
        let octet = self.octet;
        ip(
            &self.hub.0,
            &[
                "addr",
                "add",
                &format!("10.223.{octet}.1/24"),
                "dev",
                "ext0",
            ],
        );
        ip(&self.hub.0, &["link", "set", "ext0", "up"]);
        let address = Ipv4Addr::new(10, 223, octet, 2);
        bring_up_eth0(&ns, &format!("{address}/24"));
        ip(
            &ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &format!("10.223.{octet}.1"),
            ],
        );
        Pod {
            mesh: self,
            name: name.to_owned(),
            ns,
            ip: address,
            _netns: netns,
        }
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new()
    }
}
// ---------------------------------------------------------------------------------------------
// Pods.

/// A pod: a network namespace on the mesh's bridge (or the external host).
pub struct Pod<'m> {
    mesh: &'m Mesh,
    /// Short name, also the `--pod` of its demo app (so responses say who answered).
    pub name: String,
    /// The namespace.
    pub ns: String,
    pub ip: Ipv4Addr,
    _netns: Netns,
}

impl<'m> Pod<'m> {
    pub fn mesh(&self) -> &'m Mesh {
        self.mesh
    }

    /// `ip:port` of this pod's app.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::from((self.ip, APP_PORT))
    }

    /// The workload identity this pod's certificate carries (service account = pod name).
    pub fn identity(&self) -> String {
        format!("spiffe://cluster.local/ns/demo/sa/{}", self.name)
    }

    /// `skein proxy` flags giving the sidecar a workload certificate for [`Pod::identity`]
    /// from the mesh CA, as the control plane would issue it (files in the test directory).
    pub fn identity_flags(&self) -> Vec<String> {
        let ca = self.mesh.ca();
        let key = rcgen::KeyPair::generate().expect("a key");
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .expect("a CSR");
        let id = self.identity().parse().expect("a SPIFFE ID");
        let cert = ca
            .issue_workload(&csr, &id, Duration::from_secs(3600))
            .expect("a workload certificate");
        let path = |what: &str| self.mesh.dir().join(format!("{}-{what}.pem", self.name));
        let files = [
            ("cert", cert),
            ("key", key.serialize_pem()),
            ("bundle", ca.pem.cert_pem.clone()),
        ];
        for (what, pem) in &files {
            write_atomically(&path(what), pem);
        }
        vec![
            "--workload-cert".to_owned(),
            path("cert").display().to_string(),
            "--workload-key".to_owned(),
            path("key").display().to_string(),
            "--trust-bundle".to_owned(),
            path("bundle").display().to_string(),
        ]
    }

    /// [`Pod::sidecar`] with a workload certificate ([`Pod::identity_flags`]).
    pub fn meshed_sidecar(&self, config: Option<&serde_json::Value>) -> Proxy<'_> {
        let flags = self.identity_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.sidecar_with(config, &flags)
    }

    /// Programs the capture with the real `skein init` (defaults).
    pub fn capture(&self) {
        let output = run("ip", &["netns", "exec", &self.ns, SKEIN, "init"]);
        assert!(
            output.status.success(),
            "`skein init` in {}: {}",
            self.ns,
            describe(&output)
        );
    }

    /// Captures the pod and starts its sidecar, ready: `skein proxy --config FILE` with `config`
    /// written to FILE (JSON is YAML), or without `--config` (pass everything through).
    pub fn sidecar(&self, config: Option<&serde_json::Value>) -> Proxy<'_> {
        self.sidecar_with(config, &[])
    }

    /// [`Pod::sidecar`] with extra `skein proxy` flags.
    pub fn sidecar_with(&self, config: Option<&serde_json::Value>, flags: &[&str]) -> Proxy<'_> {
        let mut proxy = self.sidecar_starting(config, flags);
        proxy.wait_for_ready_status(200);
        proxy
    }

    /// [`Pod::sidecar_with`] without waiting until it is ready.
    pub fn sidecar_starting(
        &self,
        config: Option<&serde_json::Value>,
        flags: &[&str],
    ) -> Proxy<'_> {
        self.capture();
        let config_path = config.map(|config| {
            let path = self.mesh.dir().join(format!("{}-proxy.yaml", self.name));
            write_atomically(&path, &pretty(config));
            path
        });
        let mut args: Vec<String> = vec![super::skein_for_any_user().into(), "proxy".into()];
        if let Some(path) = &config_path {
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        args.extend(flags.iter().map(|&flag| flag.to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = self.spawn(
            &format!("skein proxy in {}", self.name),
            Some(PROXY_UID),
            &args,
            &[("SKEIN_LOG", "info,skein_proxy=debug")],
        );
        Proxy {
            pod: self,
            process,
            config_path,
        }
    }

    /// Gives names addresses in this pod, as `hostAliases` do: writes `/etc/netns/NS/hosts`,
    /// which `ip netns exec NS` mounts over `/etc/hosts` for every process of the pod started
    /// afterwards (the sidecar, `curl`). Removed when the guard is dropped.
    pub fn hosts_file(&self, entries: &[(&str, Ipv4Addr)]) -> HostsFile {
        let dir = Path::new("/etc/netns").join(&self.ns);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("creating {}: {err}", dir.display()));
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        for (name, ip) in entries {
            text.push_str(&format!("{ip}\t{name}\n"));
        }
        let guard = HostsFile(dir.clone());
        write_atomically(&dir.join("hosts"), &text);
        guard
    }

    /// Starts `skein demo-app --role backend --version VERSION --pod NAME --listen 0.0.0.0:8080
    /// EXTRA` as the application UID, and waits until it answers `/healthz`.
    pub fn demo_app(&self, version: &str, extra: &[&str]) -> App<'_> {
        let listen = format!("0.0.0.0:{APP_PORT}");
        let mut args = vec![
            SKEIN,
            "demo-app",
            "--role",
            "backend",
            "--version",
            version,
            "--pod",
            &self.name,
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        self.demo_app_raw(&args, APP_PORT)
    }

    /// Starts a `demo-app` with exactly `args` (program included) listening on `port`.
    pub fn demo_app_raw(&self, args: &[&str], port: u16) -> App<'_> {
        let process = self.spawn(
            &format!("demo-app in {}", self.name),
            Some(APP_UID),
            args,
            &[("SKEIN_LOG", "info")],
        );
        let mut app = App { pod: self, process };
        app.wait_healthy(port);
        app
    }

    /// A long-running process in this pod as `uid` (None: root), killed on drop; its output is
    /// kept and printed if the test fails.
    pub fn spawn(
        &self,
        what: &str,
        uid: Option<u32>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        Process::spawn(what, &self.ns, uid, args, env)
    }

    /// Runs a command in this pod as `uid` (None: root) to completion (bounded).
    pub fn run(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let command = exec_args(&self.ns, uid, args);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        run(command[0], &command[1..])
    }

    /// `curl ARGS` as the application UID: one transfer, its response parsed.
    pub fn curl(&self, args: &[&str]) -> Curl {
        let mut command = vec![
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
            "-w",
            "%{stderr}\n@time_total=%{time_total}\n",
        ];
        command.extend_from_slice(args);
        Curl::parse(self.run(Some(APP_UID), &command))
    }

    /// `n` GETs of `url` by one `curl` as the application UID (a URL glob, one connection kept
    /// alive; `--parallel` and the like in `extra`): how many got each status, and how many each
    /// pod answered (by the demo app's `x-demo-pod` header; `-` for none).
    pub fn curl_many(&self, n: usize, url: &str, extra: &[&str]) -> Tally {
        assert!(
            !url.contains(['[', ']', '{', '}']),
            "{url} would be globbed"
        );
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}n=[1-{n}]");
        let mut command = vec![
            "curl",
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{x-demo-pod} %header{x-skein-error}\n",
        ];
        command.extend_from_slice(extra);
        command.push(&url);
        let output = self.run(Some(APP_UID), &command);
        let tally = Tally::parse(&String::from_utf8_lossy(&output.stdout));
        assert_eq!(
            tally.total(),
            n,
            "curl made {} of {n} requests: {}",
            tally.total(),
            describe(&output)
        );
        tally
    }

    /// Keeps sending GETs of `url` (batches of `curl_many`) from a background thread until
    /// [`Load::stop`].
    pub fn load(&self, url: &str, extra: &[&str]) -> Load {
        Load::start(&self.ns, url, extra)
    }

    /// A TCP connection from this pod as `uid` (None: root), with [`NET_TIMEOUT`] on reads and
    /// writes.
    pub fn connect(&self, uid: Option<u32>, to: SocketAddr) -> std::io::Result<TcpStream> {
        connect_in(&self.ns, uid, to)
    }

    /// A TCP listener in this pod as `uid` (None: root).
    pub fn listen(&self, uid: Option<u32>, addr: SocketAddr) -> TcpListener {
        let what = format!("listening on {addr} in {}", self.ns);
        in_netns(&self.ns, uid, move || {
            TcpListener::bind(addr).unwrap_or_else(|err| panic!("{what}: {err}"))
        })
    }

    /// A TCP server on `port` (all addresses), as root, until dropped: `handler` serves each
    /// connection (e.g. [`echo`]).
    pub fn tcp_server(
        &self,
        port: u16,
        handler: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> TcpServer {
        TcpServer::start(
            self.listen(None, SocketAddr::from(([0, 0, 0, 0], port))),
            handler,
        )
    }

    /// Waits until something in this pod accepts connections on 127.0.0.1:`port` (as root, so
    /// never captured), failing after [`COMMAND_TIMEOUT`] or if `process` exits.
    pub fn wait_listening(&self, port: u16, process: &mut Process) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(status) = process.try_status() {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    process.what,
                    process.log()
                );
            }
            match self.connect(None, to) {
                Ok(_) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!("{} never listened on {to}: {err}", process.what)
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// TCP connections in this pod in state ESTABLISHED whose remote port is `port` (`ss`).
    pub fn established_to_port(&self, port: u16) -> usize {
        self.established(&format!("( dport = :{port} )"))
    }

    /// Established TCP connections in this pod whose local port is `port` (accepted there).
    pub fn established_from_port(&self, port: u16) -> usize {
        self.established(&format!("( sport = :{port} )"))
    }

    fn established(&self, filter: &str) -> usize {
        let output = self.run(None, &["ss", "-Htn", "state", "established", filter]);
        assert!(output.status.success(), "ss: {}", describe(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A background process in a namespace (through `ip netns exec` and `setpriv`, which exec: the
/// child is the program itself), killed on drop; stdout and stderr are kept.
pub struct Process {
    what: String,
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
    exited: Option<ExitStatus>,
}

impl Process {
    fn spawn(what: &str, ns: &str, uid: Option<u32>, args: &[&str], env: &[(&str, &str)]) -> Self {
        let command = exec_args(ns, uid, args);
        let mut builder = Command::new(&command[0]);
        builder
            .args(&command[1..])
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in ROLE_ENV {
            builder.env_remove(var);
        }
        for (key, value) in env {
            builder.env(key, value);
        }
        let mut child = builder
            .spawn()
            .unwrap_or_else(|err| panic!("starting {what}: {err}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lock(&log).extend_from_slice(&buf[..n]);
                }
            });
        }
        Process {
            what: what.to_owned(),
            child,
            log,
            exited: None,
        }
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&lock(&self.log)).into_owned()
    }

    /// `VmRSS` and `VmHWM` (peak) of the process, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("reading /proc/{pid}/status: {err}"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// What the process is, as its messages call it.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `signal` to the process (checked to be `skein`, or the `skein-proxy` that `skein
    /// proxy` becomes, not a wrapper).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert!(
            matches!(comm.trim(), "skein" | "skein-proxy"),
            "pid {pid} ({}) is not skein but {comm:?}",
            self.what
        );
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.try_status() {
                return status;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not exit within {limit:?}; log:\n{}",
            self.what,
            tail(&self.log(), LOG_TAIL_LINES)
        );
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- {} (last {LOG_TAIL_LINES} lines of its log) ---\n{}",
                self.what,
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }
}

/// `ip netns exec NS [setpriv --reuid U --regid U --clear-groups] ARGS...`.
fn exec_args(ns: &str, uid: Option<u32>, args: &[&str]) -> Vec<String> {
    let mut command: Vec<String> = ["ip", "netns", "exec", ns].map(String::from).to_vec();
    if let Some(uid) = uid {
        let uid = uid.to_string();
        command.extend(
            [
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ]
            .map(String::from),
        );
    }
    command.extend(args.iter().map(|&arg| arg.to_owned()));
    command
}

/// A pod's `/etc/netns/NS` directory ([`Pod::hosts_file`]), removed on drop.
pub struct HostsFile(PathBuf);

impl Drop for HostsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `skein demo-app` (as the application UID), killed on drop.
pub struct App<'p> {
    pub pod: &'p Pod<'p>,
    pub process: Process,
}

impl App<'_> {
    fn wait_healthy(&mut self, port: u16) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(status) = self.process.try_status() {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    self.process.what,
                    self.process.log()
                );
            }
            // As root: loopback connections are never captured.
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            match http_request(&self.pod.ns, None, to, "GET", "/healthz", &[]) {
                Ok(response) if response.status == 200 => return,
                Ok(response) => last = format!("{} {}", response.status, response.body),
                Err(err) => last = err.to_string(),
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} never answered /healthz (last: {last})",
            self.process.what
        );
    }
}

/// A running `skein proxy` sidecar, killed on drop; its log is printed if the test fails.
pub struct Proxy<'p> {
    pub pod: &'p Pod<'p>,
    pub process: Process,
    config_path: Option<PathBuf>,
}

impl Proxy<'_> {
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Replaces the configuration file atomically (as a ConfigMap update does); the proxy
    /// notices within a second or so.
    pub fn write_config_text(&self, text: &str) {
        let path = self
            .config_path
            .as_ref()
            .expect("the proxy was started without --config");
        write_atomically(path, text);
    }

    pub fn write_config(&self, config: &serde_json::Value) {
        self.write_config_text(&pretty(config));
    }

    /// Writes `config` and waits until `skein_proxy_config_info{version}` shows its `version`.
    pub fn reconfigure(&self, config: &serde_json::Value) {
        let version = config["version"]
            .as_str()
            .expect("a config swapped in by the tests has a version");
        self.write_config(config);
        self.wait_for_config_version(version);
    }

    pub fn wait_for_config_version(&self, version: &str) {
        self.wait_for_metric(
            "skein_proxy_config_info",
            &[("version", version)],
            |value| value == 1.0,
        );
    }

    /// Polls the metrics until the sum of the series `name{labels}` satisfies `ok` (bounded by
    /// [`SETTLE_TIMEOUT`]); returns that value.
    pub fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let metrics = self.metrics();
            let value = metrics.sum(name, labels);
            if ok(value) {
                return value;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}{labels:?} is still {value} after {SETTLE_TIMEOUT:?}; metrics:\n{}\nproxy log:\n{}",
                    metrics.matching(name),
                    tail(&self.log(), LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// One admin request (HTTP/1.1, from inside the pod).
    pub fn admin(&self, method: &str, path: &str) -> HttpResponse {
        let to = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        http_request(&self.pod.ns, None, to, method, path, &[]).unwrap_or_else(|err| {
            panic!(
                "{method} {path} on the admin port: {err}; log:\n{}",
                tail(&self.log(), LOG_TAIL_LINES)
            )
        })
    }

    pub fn metrics(&self) -> Metrics {
        let response = self.admin("GET", "/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        Metrics(response.body)
    }

    /// Polls `GET /ready` until it answers `status`, failing if the proxy exits or takes longer
    /// than [`COMMAND_TIMEOUT`].
    pub fn wait_for_ready_status(&mut self, status: u16) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut last = String::from("no answer");
        let to = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        while Instant::now() < deadline {
            if let Some(exit) = self.process.try_status() {
                panic!(
                    "`skein proxy` exited with {exit} while waiting for /ready {status}; log:\n{}",
                    self.log()
                );
            }
            match http_request(&self.pod.ns, None, to, "GET", "/ready", &[]) {
                Ok(response) if response.status == status => return,
                Ok(response) => last = format!("{} {}", response.status, response.body),
                Err(err) => last = err.to_string(),
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "GET /ready never answered {status} (last: {last}); log:\n{}",
            self.log()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// One `curl` transfer: its exit code, and the response if there was one.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code (0: a response was received, whatever its status).
    pub exit: i32,
    /// The response's status line (`HTTP/1.1 200 OK`, `HTTP/2 200`); empty without one.
    pub status_line: String,
    /// 0 without a response.
    pub status: u16,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's `time_total`.
    pub time: Duration,
    pub stderr: String,
}

impl Curl {
    fn parse(output: Output) -> Self {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let time = stderr
            .lines()
            .find_map(|line| line.strip_prefix("@time_total="))
            .and_then(|seconds| seconds.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or_default();
        let (head, body) = stdout.split_once("\r\n\r\n").unwrap_or((&stdout, ""));
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or("").trim().to_owned();
        let status = Some(status_line.as_str())
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Curl {
            exit: output.status.code().unwrap_or(-1),
            status_line,
            status,
            headers,
            body: body.to_owned(),
            time,
            stderr,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The demo app's JSON body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {self:?}"))
    }
}

/// Outcomes of many requests: `status pod skein-error` per request.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_status: BTreeMap<String, usize>,
    pub by_pod: BTreeMap<String, usize>,
    pub by_error: BTreeMap<String, usize>,
}

impl Tally {
    fn parse(text: &str) -> Self {
        let mut tally = Tally::default();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let mut fields = line.split(' ');
            let status = fields.next().unwrap_or("").to_owned();
            let pod = fields
                .next()
                .filter(|p| !p.is_empty())
                .unwrap_or("-")
                .to_owned();
            let error = fields
                .next()
                .filter(|e| !e.is_empty())
                .unwrap_or("-")
                .to_owned();
            *tally.by_status.entry(status).or_default() += 1;
            *tally.by_pod.entry(pod).or_default() += 1;
            *tally.by_error.entry(error).or_default() += 1;
        }
        tally
    }

    pub fn total(&self) -> usize {
        self.by_status.values().sum()
    }

    pub fn status(&self, status: &str) -> usize {
        self.by_status.get(status).copied().unwrap_or(0)
    }

    pub fn pod(&self, pod: &str) -> usize {
        self.by_pod.get(pod).copied().unwrap_or(0)
    }

    /// Requests not answered 200.
    pub fn failed(&self) -> usize {
        self.total() - self.status("200")
    }

    pub fn add(&mut self, other: &Tally) {
        for (mine, theirs) in [
            (&mut self.by_status, &other.by_status),
            (&mut self.by_pod, &other.by_pod),
            (&mut self.by_error, &other.by_error),
        ] {
            for (key, count) in theirs {
                *mine.entry(key.clone()).or_default() += count;
            }
        }
    }
}

/// Requests sent continuously by `curl` (batches of 20 on a kept-alive connection) from a
/// background thread.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    const BATCH: usize = 20;

    fn start(ns: &str, url: &str, extra: &[&str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (ns, extra) = (
            ns.to_owned(),
            extra.iter().map(|&e| e.to_owned()).collect::<Vec<_>>(),
        );
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}load=[1-{}]", Self::BATCH);
        let thread = {
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut args = vec![
                        "curl",
                        "-s",
                        "--max-time",
                        "10",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %header{x-demo-pod} %header{x-skein-error}\n",
                    ];
                    args.extend(extra.iter().map(String::as_str));
                    args.push(&url);
                    let command = exec_args(&ns, Some(APP_UID), &args);
                    let command: Vec<&str> = command.iter().map(String::as_str).collect();
                    let output = run(command[0], &command[1..]);
                    let batch = Tally::parse(&String::from_utf8_lossy(&output.stdout));
                    lock(&tally).add(&batch);
                }
            })
        };
        Load {
            stop,
            tally,
            thread: Some(thread),
        }
    }

    /// What was counted so far (finished batches only).
    pub fn so_far(&self) -> Tally {
        lock(&self.tally).clone()
    }

    /// Waits until at least `more` requests beyond what was counted now have finished
    /// (bounded by [`SETTLE_TIMEOUT`]).
    pub fn wait_for_more(&self, more: usize) -> Tally {
        let target = self.so_far().total() + more;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = self.so_far();
            if now.total() >= target {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the load made only {} of {target} requests in {SETTLE_TIMEOUT:?}: {now:?}",
                now.total()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops after the current batch; everything counted.
    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.so_far()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A response read by [`http_request`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close` from namespace `ns` as `uid`, read to the end.
pub fn http_request(
    ns: &str,
    uid: Option<u32>,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut stream = connect_in(ns, uid, to)?;
    stream.write_all(request.as_bytes())?;
    let response = read_to_end_or_reset(&mut stream)?;
    parse_response(&response)
}

/// Parses a whole HTTP/1.x response (status line, head, body as sent).
pub fn parse_response(response: &[u8]) -> std::io::Result<HttpResponse> {
    let response = String::from_utf8_lossy(response).into_owned();
    let status = response
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok(HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// Reads until EOF; a reset after some bytes still returns them.
pub fn read_to_end_or_reset(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(response),
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset && !response.is_empty() => {
                return Ok(response);
            }
            Err(err) => return Err(err),
        }
    }
}

/// A TCP server on its own thread, calling `handler` on one more thread per connection (blocking,
/// with [`COMMAND_TIMEOUT`] on reads and writes); stops accepting when dropped.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
}

impl TcpServer {
    pub fn start(
        listener: TcpListener,
        handler: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Self {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handler = Arc::new(handler);
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        thread::spawn(move || {
                            if stream.set_nonblocking(false).is_ok()
                                && stream.set_read_timeout(Some(COMMAND_TIMEOUT)).is_ok()
                                && stream.set_write_timeout(Some(COMMAND_TIMEOUT)).is_ok()
                            {
                                handler(stream);
                            }
                        });
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        TcpServer { stop }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Writes back every chunk as it arrives; half-closes after EOF.
pub fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads an HTTP/1 request head (up to the blank line) byte by byte, so nothing after it is
/// consumed; `None` on EOF or error first.
pub fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The value of header `name` (case-insensitive) in an HTTP/1 head.
pub fn head_value<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A connection from `ns` (as `uid` when given) to `to`, bounded by [`NET_TIMEOUT`].
pub fn connect_in(ns: &str, uid: Option<u32>, to: SocketAddr) -> std::io::Result<TcpStream> {
    connect_within(ns, uid, to, NET_TIMEOUT)
}

/// Closes `stream` with a TCP reset (SO_LINGER 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a properly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// Prometheus text.
pub struct Metrics(pub String);

impl Metrics {
    /// The series of `name` with their labels and values.
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut found = Vec::new();
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
            let labels = label_text
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.trim_matches('"').to_owned()))
                .collect();
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad metric value in {line:?}"));
            found.push((labels, value));
        }
        found
    }

    /// The sum over the series of `name` whose labels include `labels` (0 if there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name)
            .into_iter()
            .filter(|(found, _)| {
                labels
                    .iter()
                    .all(|(key, value)| found.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|(_, value)| value)
            .fold(0.0, |sum, value| sum + value)
    }

    /// The lines of `name`, for failure messages.
    pub fn matching(&self, name: &str) -> String {
        self.0
            .lines()
            .filter(|line| line.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and files.

/// Fails the test (with what is missing) unless it runs as root with the tools it needs.
fn require_environment() {
    super::netns::require_environment(
        "data-plane",
        &[
            ("ip", "-V"),
            ("iptables", "--version"),
            ("setpriv", "--version"),
            ("curl", "--version"),
            ("ss", "--version"),
        ],
        "iproute2, iptables, util-linux and curl",
    );
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The text of a configuration file: JSON, which the proxy reads like YAML.
pub fn yaml(config: &serde_json::Value) -> String {
    config.to_string()
}

/// `{name: value}`: an enum variant with data, as the configuration spells it
/// (`value: {exact: "1"}`).
pub fn tag(name: &str, value: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ name: value })
}

fn pretty(config: &serde_json::Value) -> String {
    yaml(config) + "\n"
}

/// Writes `text` to a temporary file next to `path`, then renames it over `path`: a reader sees
/// the old content or the new, never half of it. World-readable (the proxy has its own UID).
pub fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .unwrap_or_else(|err| panic!("writing {}: {err}", temporary.display()));
    set_mode(&temporary, 0o644);
    std::fs::rename(&temporary, path)
        .unwrap_or_else(|err| panic!("renaming to {}: {err}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("chmod {}: {err}", path.display()));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// RFC 6455's example: the accept value of key `dGhlIHNhbXBsZSBub25jZQ==`.
pub const WEBSOCKET_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket server as far as the proxy can tell: answers the handshake with 101, then
/// echoes raw bytes (no framing needed: the proxy only copies).
pub fn websocket_echo(mut stream: std::net::TcpStream) {
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    if !head_value(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        let _ = stream.write_all(
            b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        return;
    }
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {WEBSOCKET_ACCEPT}\r\n\r\n"
    );
    if stream.write_all(answer.as_bytes()).is_ok() {
        echo(stream);
    }
}
