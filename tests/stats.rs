//! `skein stat` and `skein edges` on the real meshed demo (`skein dev up` on a cluster of its
//! own, `skein-test-stats`): the real control plane scrapes the real proxies (through the
//! apiserver's pod proxy, as `dev up` runs it outside the pod network) while real requests flow
//! loadgen → frontend → middleware → backend over mTLS. The backend is made to fail 30% of
//! requests (the demo's `x-demo-backend-fail-percent` knob, passed down the chain): `skein stat`
//! shows each tier's verdict as it really is and the backend's reason; once the failures stop,
//! every tier PASSes again. `skein edges` shows the chain with its real mTLS state.
//! Needs root, iproute2 and iptables (tests never skip).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::demo_load::{DEMO, finish, load, loadgen, remove_loadgen, stop};

const CLUSTER: &str = "skein-test-stats";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
/// Short, so the recovery shows within a minute (the collector scrapes every 10 s).
const WINDOW: &str = "30s";
const WAIT: Duration = Duration::from_secs(120);
const TIERS: [&str; 4] = ["frontend", "middleware", "backend-v1", "backend-v2"];

/// `skein ARGS --cluster CLUSTER -n demo --window 30s`: stdout, asserting success.
fn skein(args: &[&str]) -> String {
    let out = Command::new(SKEIN)
        .args(args)
        .args(["--cluster", CLUSTER, "-n", DEMO, "--window", WINDOW])
        .env("KUBECONFIG", support::kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("running skein");
    assert!(
        out.status.success(),
        "skein {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(args: &[&str]) -> Value {
    let text = skein(args);
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{args:?}: {err}: {text}"))
}

fn row<'a>(stat: &'a Value, name: &str) -> &'a Value {
    stat["workloads"]
        .as_array()
        .and_then(|rows| rows.iter().find(|w| w["name"] == name))
        .unwrap_or_else(|| panic!("no row {name} in {stat:#}"))
}

fn verdict<'a>(stat: &'a Value, name: &str) -> &'a str {
    row(stat, name)["verdict"].as_str().unwrap_or_default()
}

/// The reasons under a row, as `kind detail`.
fn reasons(stat: &Value, name: &str) -> Vec<String> {
    row(stat, name)["topReasons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap_or(""),
                r["detail"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Polls `skein stat -o json` until `done` holds for it; returns that answer.
async fn stat_until(what: &str, done: impl Fn(&Value) -> bool) -> Value {
    until(what, || {
        let stat = json_of(&["stat", "deploy", "-o", "json"]);
        (done(&stat), stat)
    })
    .await
}

/// Polls `probe` until it says done; returns its last answer.
async fn until(what: &str, probe: impl Fn() -> (bool, Value)) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (done, stat) = probe();
        if done {
            return stat;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; last answer:\n{stat:#}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tier_fails_with_its_reason_then_passes() {
    support::demo_up(CLUSTER);
    let client = support::client().await;
    let pod = loadgen(&client).await;

    // The backend fails 30%: every tier on the path fails with it, each saying where from.
    let failing = load(CLUSTER, &pod, 400, 30, "/");
    // A FAIL row carries one recent failing request, read from its proxy's recent errors after
    // a scrape that counted failures (so it may come a scrape after the verdict).
    let stat = stat_until("every tier to FAIL, the backends with a sample", |stat| {
        TIERS.iter().all(|tier| {
            stat["workloads"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|w| w["name"] == *tier && w["verdict"] == "FAIL")
            })
        }) && ["backend-v1", "backend-v2"]
            .iter()
            .all(|backend| row(stat, backend)["sample"].is_object())
    })
    .await;
    for backend in ["backend-v1", "backend-v2"] {
        let row = row(&stat, backend);
        let rate = row["successRate"].as_f64().expect("a success rate");
        assert!((0.3..0.95).contains(&rate), "{backend}: {row:#}");
        assert_eq!(reasons(&stat, backend)[0], "status 503", "{row:#}");
        assert_eq!(
            (row["proxies"].as_u64(), row["pods"].as_u64()),
            (Some(1), Some(1)),
            "{row:#}"
        );
        assert!(
            row["p50Ms"].as_f64().is_some() && row["rps"].as_f64() > Some(0.0),
            "{row:#}"
        );
        // The backend app's own 503 (no proxy reason), as its proxy answered it inbound.
        let sample = &row["sample"];
        assert_eq!(sample["status"], 503, "{row:#}");
        assert_eq!(sample["direction"], "inbound", "{row:#}");
        assert_eq!(sample["method"], "GET", "{row:#}");
        assert_eq!(sample["path"], "/", "{row:#}");
        assert!(sample.get("reason").is_none(), "the app's own 503: {row:#}");
        assert!(
            sample["pod"]
                .as_str()
                .is_some_and(|pod| pod.starts_with(&format!("{backend}-"))),
            "{row:#}"
        );
        let age = sample["ageSeconds"].as_f64().expect("an age");
        assert!((0.0..=30.0).contains(&age), "within the window: {row:#}");
    }
    let middleware = reasons(&stat, "middleware");
    assert!(
        middleware
            .iter()
            .any(|r| r == "upstream demo/backend-v1" || r == "upstream demo/backend-v2"),
        "the middleware's failures come from the backend: {middleware:?}"
    );
    let frontend = reasons(&stat, "frontend");
    assert!(
        frontend.contains(&"upstream demo/middleware".to_owned()),
        "the frontend's failures come from the middleware: {frontend:?}"
    );
    assert_eq!(
        verdict(&stat, "loadgen"),
        "NO_TRAFFIC",
        "nobody calls the load generator (it has no probes)"
    );

    // The table people read: the verdict column, and the reason under a FAIL row.
    let table = skein(&["stat", "deploy"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("MESHED")
            && lines[0].ends_with("VERDICT"),
        "{table}"
    );
    let at = lines
        .iter()
        .position(|l| l.starts_with("backend-v1 ") && l.ends_with("FAIL"))
        .unwrap_or_else(|| panic!("no failing backend-v1 row:\n{table}"));
    assert!(
        lines[at + 1].starts_with("  FAIL  backend-v1: ")
            && lines[at + 1].contains("% failing — 503 x"),
        "{table}"
    );
    let sample = lines[at + 2].trim_start();
    assert!(
        sample.starts_with("sample: GET ")
            && sample.contains("/ 503 (backend-v1-")
            && sample.contains(", inbound, ")
            && sample.ends_with("s ago)"),
        "{table}"
    );
    // One workload, and only the requests to the backend (as its callers saw them).
    let one = json_of(&["stat", "deploy", "deploy/backend-v1", "-o", "json"]);
    assert_eq!(
        one["workloads"].as_array().map(Vec::len),
        Some(1),
        "{one:#}"
    );
    // The verdict is the user's threshold: at 20% a backend failing 30% passes.
    let lenient = json_of(&[
        "stat",
        "deploy",
        "deploy/backend-v1",
        "--threshold",
        "20",
        "-o",
        "json",
    ]);
    assert_eq!(verdict(&lenient, "backend-v1"), "PASS", "{lenient:#}");
    let to = json_of(&["stat", "deploy", "--to", "deploy/backend-v1", "-o", "json"]);
    let callers: Vec<&str> = to["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(callers, ["middleware"], "{to:#}");

    // The chain, over mutual TLS with each side's identity; the kubelet's probes in plaintext.
    // A new client is named once the callee's proxy has its endpoints (a push away).
    let chain = [
        ("loadgen", "frontend"),
        ("frontend", "middleware"),
        ("middleware", "backend-v1"),
    ];
    let edges = until("the chain's edges", || {
        let edges = json_of(&["edges", "deploy", "-o", "json"]);
        let found = chain.iter().all(|(source, destination)| {
            edges["edges"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|e| e["source"] == *source && e["destination"] == *destination)
            })
        });
        (found, edges)
    })
    .await;
    let edge = |source: &str, destination: &str| {
        edges["edges"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|e| e["source"] == source && e["destination"] == destination)
            })
            .unwrap_or_else(|| panic!("no edge {source} -> {destination}: {edges:#}"))
            .clone()
    };
    let identity = "spiffe://cluster.local/ns/demo/sa/default";
    for (source, destination) in [
        ("loadgen", "frontend"),
        ("frontend", "middleware"),
        ("middleware", "backend-v1"),
    ] {
        let e = edge(source, destination);
        assert_eq!(e["secured"], "yes", "{e:#}");
        assert_eq!(e["sourceIdentity"], identity, "{e:#}");
    }
    assert_eq!(edge("loadgen", "frontend")["destinationIdentity"], identity);
    let probes = edge("", "backend-v1");
    assert_eq!(
        probes["secured"], "no",
        "the kubelet probes in plaintext: {probes:#}"
    );
    let table = skein(&["edges", "deploy"]);
    assert!(table.starts_with("SRC "), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("demo/middleware")
            && l.contains("demo/backend-v1")
            && l.contains(" yes ")),
        "{table}"
    );
    finish(failing);

    // The backend recovers: once the failures are out of the window, every tier passes.
    let healthy = load(CLUSTER, &pod, 700, 0, "/");
    let stat = stat_until("every tier to PASS", |stat| {
        TIERS.iter().all(|tier| {
            stat["workloads"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|w| w["name"] == *tier && w["verdict"] == "PASS")
            })
        })
    })
    .await;
    for tier in TIERS {
        let rate = row(&stat, tier)["successRate"].as_f64();
        assert!(rate >= Some(0.95), "{tier} recovered: {stat:#}");
    }
    stop(healthy);
    remove_loadgen(&client).await;
}
