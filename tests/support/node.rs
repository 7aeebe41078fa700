//! A real `skein dev node` agent for tests: started (or reused when it runs this build) on the
//! test binary's cluster, with a short crash back-off; plus helpers to wait for pods and run
//! commands in them through `skein dev exec`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::Api;
use skein::dev::background::Background;
use skein::dev::cluster;

pub const SKEIN: &str = env!("CARGO_BIN_EXE_skein");

/// Tests that stop the agent take this for writing; all others for reading.
pub static AGENT: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub fn node_name() -> String {
    format!("{}-node", super::cluster_name())
}

fn cluster_dir() -> PathBuf {
    cluster::state_dir(super::cluster_name())
}

fn agent() -> Background {
    Background {
        name: format!("node-{}", node_name()),
        program: PathBuf::from(SKEIN),
        args: [
            "dev",
            "node",
            "--cluster",
            super::cluster_name(),
            "--crash-backoff",
            "1s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        env: vec![("SKEIN_LOG".to_owned(), "info,skein=debug".to_owned())],
    }
}

fn pid_file() -> PathBuf {
    skein::dev::node::pid_file(super::cluster_name(), &node_name())
}

pub fn agent_pid() -> Option<i32> {
    std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Starts the agent once per test binary: an agent already running this very build is reused,
/// an older one replaced.
pub fn ensure_agent() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        super::kubeconfig();
        let dir = cluster_dir();
        let binary_time = std::fs::metadata(SKEIN)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let agent_time = std::fs::metadata(pid_file())
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if agent().running(&dir) && agent_time < binary_time {
            stop_agent(libc::SIGTERM);
        }
        agent().ensure(&dir).expect("starting skein dev node");
    });
}

/// Stops the agent with `signal` and waits until it is gone.
pub fn stop_agent(signal: libc::c_int) {
    let Some(pid) = agent_pid() else { return };
    // SAFETY: plain syscalls.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if signal == libc::SIGKILL {
        // A killed agent cannot remove its own PID file.
        let _ = std::fs::remove_file(pid_file());
    }
}

/// Starts the agent again (after [`stop_agent`]).
pub fn start_agent() {
    agent()
        .ensure(&cluster_dir())
        .expect("starting skein dev node");
}

/// The agent's log.
pub fn agent_log() -> String {
    std::fs::read_to_string(agent().log_file(&cluster_dir())).unwrap_or_default()
}

/// Ensures the agent runs and waits until its Node is Ready.
pub async fn ready_node(client: &Client) {
    ensure_agent();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        "the dev node to be Ready",
        Duration::from_secs(90),
        || async {
            let node = nodes.get_opt(&node_name()).await.ok()??;
            node.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// [`super::eventually`], adding the agent's log tail to the failure.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let agent_tail = || {
        let log = agent_log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("; agent log tail:\n{}", tail.join("\n"))
    };
    super::eventually_or(what, timeout, agent_tail, probe).await
}

pub fn pod_ready(pod: &Pod) -> bool {
    condition(pod, "Ready") == Some(true)
}

pub fn condition(pod: &Pod, type_: &str) -> Option<bool> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

/// Waits until the pod is Ready and returns it.
pub async fn wait_ready(client: &Client, namespace: &str, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("pod {namespace}/{name} to be Ready"),
        Duration::from_secs(90),
        || async { pods.get_opt(name).await.ok()?.filter(pod_ready) },
    )
    .await
}

/// `skein dev exec NAMESPACE/POD [-c CONTAINER] -- COMMAND...`.
pub fn exec(namespace: &str, pod: &str, container: Option<&str>, command: &[&str]) -> Output {
    let mut cmd = Command::new(SKEIN);
    cmd.args(["dev", "exec", "--cluster", super::cluster_name()])
        .arg(format!("{namespace}/{pod}"));
    if let Some(c) = container {
        cmd.args(["-c", c]);
    }
    cmd.arg("--")
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("running skein dev exec")
}

/// [`exec`] that must succeed; returns stdout.
pub fn exec_ok(namespace: &str, pod: &str, container: Option<&str>, command: &[&str]) -> String {
    let out = exec(namespace, pod, container, command);
    assert!(
        out.status.success(),
        "{command:?} in {namespace}/{pod} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skein dev logs NAMESPACE/POD -c CONTAINER`: the container's log so far.
pub fn logs(namespace: &str, pod: &str, container: &str) -> String {
    let out = Command::new(SKEIN)
        .args(["dev", "logs", "--cluster", super::cluster_name()])
        .arg(format!("{namespace}/{pod}"))
        .args(["-c", container])
        .stdin(Stdio::null())
        .output()
        .expect("running skein dev logs");
    assert!(
        out.status.success(),
        "skein dev logs {namespace}/{pod} -c {container} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The project image: the dev node runs it as the local skein binary.
pub const IMAGE: &str = "ghcr.io/skein-mesh/skein:test";
