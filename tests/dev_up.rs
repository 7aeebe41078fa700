//! `skein dev up` / `skein dev down`, the README's main command, on a cluster of their own
//! (`skein-test-devup`): up brings the meshed demo up and is idempotent; a request to the frontend
//! crosses all three tiers; down leaves no processes, network namespaces, veths or mounts behind.
//! Needs root, iproute2 and iptables (tests never skip).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use skein::dev::cluster;

const CLUSTER: &str = "skein-test-devup";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");

fn skein_dev(args: &[&str]) -> Output {
    Command::new(SKEIN)
        .arg("dev")
        .args(args)
        .args(["--cluster", CLUSTER])
        .env("SKEIN_SOURCE_DIR", support::source_dir())
        .env("SKEIN_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("running skein dev")
}

fn assert_success(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// What the node leaves on the machine while it runs: process IDs (with their start times, so a
/// reused PID is not mistaken for a survivor) and network namespace names.
#[derive(Debug, Default)]
struct Footprint {
    processes: Vec<(i32, String)>,
    netns: Vec<String>,
}

impl Footprint {
    /// Reads the node's state directory: every recorded pod and node-level process and netns.
    fn recorded(state_dir: &Path) -> Self {
        let mut footprint = Self::default();
        for file in files_under(state_dir) {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parent = file
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or("");
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            if name == "netns" {
                footprint.netns.push(text.trim().to_owned());
            } else if parent == "pids" || name.ends_with(".pid") {
                let mut fields = text.split_whitespace();
                if let Some(pid) = fields.next().and_then(|p| p.parse().ok()) {
                    footprint
                        .processes
                        .push((pid, fields.next().unwrap_or("").to_owned()));
                }
            }
        }
        footprint
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Pods' volumes hold user data, not the node's records.
            if path.file_name().is_some_and(|n| n == "volumes") {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files
}

/// True if `pid` runs (a zombie does not) and, when known, started at `start_time` (field 22 of
/// /proc/PID/stat).
fn still_running(pid: i32, start_time: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    // Fields after the name start at field 3 (state); start time is field 22. A zombie has
    // exited (only its parent has not collected it yet).
    let mut fields = after_name.split_whitespace();
    if fields.next() == Some("Z") {
        return false;
    }
    let started = fields.nth(18).unwrap_or("");
    start_time.is_empty() || started == start_time
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dev_up_brings_the_meshed_demo_up_and_dev_down_leaves_nothing_behind() {
    assert!(
        nix_is_root(),
        "skein dev up needs root (the node creates network namespaces)"
    );
    let links_before = host_links();

    let printed = assert_success("skein dev up", &skein_dev(&["up"]));
    // Idempotent: a second run reuses everything and succeeds.
    let again = skein_dev(&["up"]);
    let again_stderr = String::from_utf8_lossy(&again.stderr).into_owned();
    assert_success("a second skein dev up", &again);
    assert!(
        again_stderr.contains("the node is already running")
            && again_stderr.contains("the control plane is already running"),
        "{again_stderr}"
    );

    // The demo pods are meshed and Ready.
    support::use_cluster(CLUSTER);
    let client = support::client().await;
    let pods: Api<Pod> = Api::namespaced(client, "demo");
    let list = pods
        .list(&ListParams::default())
        .await
        .expect("listing demo pods");
    assert_eq!(
        list.items.len(),
        4,
        "frontend, middleware, backend v1 and v2"
    );
    for pod in &list.items {
        let containers: Vec<&str> = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            containers.contains(&"skein-proxy") && containers.contains(&"skein-init"),
            "{} is meshed: {containers:?}",
            pod.name_any()
        );
        assert!(support::node::pod_ready(pod), "{} is Ready", pod.name_any());
    }
    let frontend = list
        .items
        .iter()
        .find(|p| p.labels().get("app").map(String::as_str) == Some("frontend"))
        .expect("a frontend pod")
        .name_any();

    // The apiserver reaches the node as on a real cluster: `kubectl logs` through the node's
    // kubelet API, and a Service through the node's network (what an InCluster webhook needs).
    let kubectl_logs = Command::new(support::bin_dir().join("kubectl"))
        .args([
            "-n",
            "demo",
            "logs",
            &frontend,
            "-c",
            "skein-proxy",
            "--tail=20",
        ])
        .env("KUBECONFIG", support::kubeconfig())
        .output()
        .expect("running kubectl logs");
    let proxy_log = assert_success("kubectl logs", &kubectl_logs);
    assert!(
        proxy_log.contains("skein_proxy") && proxy_log.lines().count() <= 20,
        "the last 20 lines of the proxy's log:\n{proxy_log}"
    );
    let through_service = support::client()
        .await
        .request_text(
            http::Request::get("/api/v1/namespaces/demo/services/frontend:80/proxy/")
                .body(Vec::new())
                .expect("a request"),
        )
        .await
        .expect("the apiserver proxies to the frontend Service");
    assert!(
        through_service.contains(r#""role":"backend""#),
        "{through_service}"
    );

    // A user's request: frontend -> middleware -> backend, each hop through the sidecars.
    let exec = Command::new(SKEIN)
        .args(["dev", "exec", "--cluster", CLUSTER])
        .arg(format!("demo/{frontend}"))
        .args(["-c", "frontend", "--", "curl", "-sS", "--max-time", "10"])
        .arg("http://frontend/")
        .output()
        .expect("running skein dev exec");
    let body = assert_success("curl http://frontend/ from the frontend pod", &exec);
    let reply: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let roles: Vec<&str> = reply["chain"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hop| hop["role"].as_str())
        .collect();
    assert_eq!(roles, ["frontend", "middleware", "backend"], "{reply}");

    // Every command of the printed "Next:" block works when pasted as printed, as a newcomer
    // would: in a shell with only the commands' own exports.
    let next = next_block(&printed);
    assert!(
        next.contains("dev exec") && next.contains("export KUBECONFIG="),
        "up tells the user what to do next:\n{printed}"
    );
    let pasted = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &next])
        .env_remove("KUBECONFIG")
        .env_remove("SKEIN_SOURCE_DIR")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("running the Next block");
    let pasted_out = assert_success(&format!("the Next block:\n{next}"), &pasted);
    // proxy-status lists the four proxies; whether each is SYNCED or still STALE depends on
    // whether the push of the rules the block applies a moment earlier has been ACKed yet.
    let proxy_rows = pasted_out
        .lines()
        .filter(|l| l.starts_with("demo ") && (l.contains("SYNCED") || l.contains("STALE")))
        .count();
    assert!(
        pasted_out.contains(r#""role":"backend""#)
            && pasted_out.contains("skein_proxy_")
            && proxy_rows == 4
            && pasted_out.contains("VERDICT"),
        "the demo's chain, the proxy's metrics, proxy-status's four proxies and skein stat's \
         table:\n{pasted_out}"
    );

    // `skein dashboard` printed the web dashboard's URL; it answers with the page.
    let dashboard = pasted_out
        .lines()
        .find(|l| l.starts_with("http://127.0.0.1:") && l.ends_with("/dashboard"))
        .unwrap_or_else(|| panic!("the dashboard's URL:\n{pasted_out}"));
    let authority = dashboard
        .trim_start_matches("http://")
        .trim_end_matches("/dashboard");
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connecting to the dashboard");
    let page = skein::plain_http::get(stream, authority, "/dashboard", 1 << 20)
        .await
        .expect("the dashboard answers 200");
    assert!(
        String::from_utf8_lossy(&page).starts_with("<!doctype html>"),
        "the dashboard is a page"
    );

    // A Deployment whose container crashes fails `up` at once, naming the pod, the container
    // and the end of its log, instead of timing out.
    let deployments: Api<Deployment> = Api::namespaced(support::client().await, "demo");
    let crasher: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "crasher"},
        "spec": {
            "selector": {"matchLabels": {"app": "crasher"}},
            "template": {
                "metadata": {"labels": {"app": "crasher"}},
                "spec": {"containers": [{
                    "name": "crasher",
                    // The node's one image; `sh` comes from the host.
                    "image": "skein",
                    "command": ["sh", "-c", "echo boom-from-the-crasher >&2; exit 3"],
                }]},
            },
        },
    }))
    .expect("a Deployment");
    deployments
        .create(&Default::default(), &crasher)
        .await
        .expect("creating the crashing Deployment");
    let failed = skein_dev(&["up"]);
    let error = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(!failed.status.success(), "up fails: {error}");
    assert!(
        error.contains("pod demo/crasher-")
            && error.contains("container crasher is failing: CrashLoopBackOff")
            && error.contains("exit code 3")
            && error.contains("boom-from-the-crasher")
            && !error.contains("timed out"),
        "the failing container, its exit and its log:\n{error}"
    );
    deployments
        .delete("crasher", &Default::default())
        .await
        .expect("deleting the crashing Deployment");

    // Down: nothing of the node survives.
    let state_dir = cluster::state_dir(CLUSTER);
    let footprint = Footprint::recorded(&state_dir);
    assert!(
        footprint.netns.len() >= 5 && footprint.processes.len() >= 8,
        "the node's records were found: {footprint:?}"
    );
    assert_success("skein dev down", &skein_dev(&["down"]));

    let survivors: Vec<_> = footprint
        .processes
        .iter()
        .filter(|(pid, start)| still_running(*pid, start))
        .collect();
    assert!(
        survivors.is_empty(),
        "processes left running: {survivors:?}"
    );
    let namespaces = netns_list();
    let left: Vec<_> = footprint
        .netns
        .iter()
        .filter(|n| {
            namespaces
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n))
        })
        .collect();
    assert!(left.is_empty(), "network namespaces left: {left:?}");
    assert!(!namespaces.contains(CLUSTER), "{namespaces}");
    let new_links: Vec<_> = host_links()
        .lines()
        .filter(|l| !links_before.contains(l.split(':').nth(1).unwrap_or(l)))
        .map(str::to_owned)
        .collect();
    assert!(new_links.is_empty(), "host links left: {new_links:?}");
    let image_dirs: Vec<_> = std::fs::read_dir("/run/skein-dev-node")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(CLUSTER))
        .map(|e| e.path())
        .collect();
    assert!(image_dirs.is_empty(), "left behind: {image_dirs:?}");
    assert!(!state_dir.exists(), "{} deleted", state_dir.display());
}

/// The commands of the "Next:" block `up` printed, without their comments.
fn next_block(printed: &str) -> String {
    printed
        .lines()
        .skip_while(|l| l.trim() != "Next:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split("   #").next().unwrap_or(l).trim())
        .collect::<Vec<_>>()
        .join("\n")
}

/// On a machine without iptables (a PATH without it, and no apt-get to install it), `up` stops
/// before starting anything, with one line naming the tool and its package.
#[test]
fn dev_up_without_iptables_names_it_and_starts_nothing() {
    const NAME: &str = "skein-test-preflight";
    let bin = tempfile::tempdir().expect("a temporary bin directory");
    for tool in skein::dev::preflight::host_tools() {
        if tool.package == "iptables" {
            continue;
        }
        let found = skein::dev::preflight::SearchPath::from_env()
            .find(&tool.command)
            .unwrap_or_else(|| panic!("{} on this machine", tool.command));
        std::os::unix::fs::symlink(found, bin.path().join(&tool.command)).expect("symlink");
    }
    let out = Command::new(SKEIN)
        .args(["dev", "up", "--cluster", NAME])
        .env("PATH", bin.path())
        .env("SKEIN_SOURCE_DIR", support::source_dir())
        .stdin(Stdio::null())
        .output()
        .expect("running skein dev up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(
        lines[0].contains("missing iptables, ip6tables")
            && lines[0].contains("apt-get install iptables"),
        "{stderr}"
    );
    assert!(
        !cluster::state_dir(NAME).exists(),
        "nothing was started for {NAME}"
    );
}

fn nix_is_root() -> bool {
    // SAFETY: a plain syscall without arguments.
    unsafe { libc::geteuid() == 0 }
}
