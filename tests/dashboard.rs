//! The web dashboard in a real browser: headless Chromium, driven through chromedriver, opens
//! the page the real control plane serves for the meshed demo of `skein dev up` (a cluster of
//! its own, `skein-test-dash`), through the real apiserver as `skein dashboard` serves it,
//! while real requests flow loadgen → frontend → middleware → backend. The backends sample
//! every trace and the MeshConfig names a tracing UI. The backend is made to fail 30% (the
//! demo's `x-demo-backend-fail-percent` knob): the page shows the backend tier FAIL with its
//! reason (the 503s) and a sample failing request linked to its trace, and the chain's edges;
//! once the failures stop it shows PASS. The page loads nothing from other origins and logs no
//! console error. Screenshots of both states are kept in `target/test-artifacts/`.
//! Needs root, iproute2, iptables, chromium and chromedriver (tests never skip).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use skein::api::MeshConfig;
use skein::api::names::ACTIVE_MESHCONFIG;
use support::dashboard::Dashboard;
use support::demo_load::{self, finish, loadgen};
use support::node::pod_ready;
use support::webdriver::{Chromedriver, Session};

const CLUSTER: &str = "skein-test-dash";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
/// Short, so the recovery shows within a minute (the collector scrapes every 10 s).
const WINDOW: &str = "30s";
const WAIT: Duration = Duration::from_secs(150);
const BACKENDS: [&str; 2] = ["backend-v1", "backend-v2"];
const TIERS: [&str; 4] = ["frontend", "middleware", "backend-v1", "backend-v2"];

/// What the page shows now: each verdict cell and reason, each edge, the problems box.
const READ_PAGE: &str = r##"
const tiers = {};
for (const cell of document.querySelectorAll("td.verdict[data-workload]")) {
  const reasons = document.querySelector(`td[data-reasons="${cell.dataset.workload}"]`);
  const sample = document.querySelector(`[data-sample="${cell.dataset.workload}"]`);
  const trace = document.querySelector(`a[data-trace="${cell.dataset.workload}"]`);
  const traces = document.querySelector(`a[data-traces="${cell.dataset.workload}"]`);
  tiers[cell.dataset.workload] = {verdict: cell.dataset.verdict, text: cell.textContent,
    reasons: reasons ? reasons.textContent : "", sample: sample ? sample.textContent : "",
    trace: trace ? trace.getAttribute("href") : "", traces: traces ? traces.getAttribute("href") : ""};
}
const edges = [...document.querySelectorAll("#graph path.edge")].map((e) => ({
  source: e.dataset.source, destination: e.dataset.destination, secured: e.dataset.secured,
  health: e.getAttribute("class")}));
const problems = document.getElementById("problems");
return {tiers, edges, problems: problems.hidden ? "" : problems.textContent,
  proxies: document.querySelectorAll("#proxies tr[data-status]").length,
  refreshed: Number(document.body.dataset.refreshed || 0)};
"##;

fn artifacts() -> PathBuf {
    // The target directory (CARGO_TARGET_DIR honoured): its `tmp` is this one's sibling.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating the artifacts directory");
    dir
}

async fn keep_screenshot(session: &Session, name: &str) {
    let path = artifacts().join(format!("{name}.png"));
    let png = session.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(&path, png).expect("writing the screenshot");
    println!("screenshot: {}", path.display());
}

/// Reads the page until `done` holds for it; returns that reading.
async fn page_until(session: &Session, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = session.execute(READ_PAGE, json!([])).await;
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; the page shows:\n{page:#}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn verdict<'a>(page: &'a Value, workload: &str) -> &'a str {
    page["tiers"][workload]["verdict"].as_str().unwrap_or("")
}

fn edge<'a>(page: &'a Value, source: &str, destination: &str) -> Option<&'a Value> {
    page["edges"].as_array().and_then(|edges| {
        edges
            .iter()
            .find(|e| e["source"] == source && e["destination"] == destination)
    })
}

/// The tracing UI the MeshConfig names (nothing serves it: the page only links to it).
const TRACE_UI: &str = "http://traces.example:16686";

/// The backends trace every request (to a collector that is not there: spans are dropped and
/// counted, which is all this test needs of them), and the MeshConfig names a tracing UI. The
/// proxies read tracing settings when their pods are created, so both backends are restarted.
async fn trace_the_backends(client: &kube::Client) {
    Api::<MeshConfig>::all(client.clone())
        .patch(
            ACTIVE_MESHCONFIG,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tracing": {
                "zipkinEndpoint": "http://127.0.0.1:9/api/v2/spans",
                "samplingPercentage": 100.0,
                "traceUrl": format!("{TRACE_UI}/trace/{{traceId}}"),
                "searchUrl": format!("{TRACE_UI}/search?service={{service}}&namespace={{namespace}}"),
            }}})),
        )
        .await
        .expect("setting the MeshConfig's tracing");
    let pods: Api<Pod> = Api::namespaced(client.clone(), demo_load::DEMO);
    let backend = ListParams::default().labels("app=backend");
    let before: Vec<String> = pods
        .list(&backend)
        .await
        .expect("listing the backends")
        .iter()
        .map(|p| p.name_any())
        .collect();
    for deployment in BACKENDS {
        demo_load::rollout_restart(client, demo_load::DEMO, deployment).await;
    }
    support::eventually("the backends restarted with tracing", WAIT, || async {
        let now = pods.list(&backend).await.ok()?;
        let done = now.items.len() == BACKENDS.len()
            && now
                .iter()
                .all(|p| !before.contains(&p.name_any()) && pod_ready(p));
        done.then_some(())
    })
    .await;
}

/// The console's errors (a failed request, a script error, a blocked resource), as text.
async fn console_errors(session: &Session) -> Vec<String> {
    session
        .console()
        .await
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_backend_fail_with_its_reason_then_pass() {
    support::demo_up(CLUSTER);
    let client = support::client().await;
    let pod = loadgen(&client).await;
    trace_the_backends(&client).await;
    let dashboard = Dashboard::start(support::kubeconfig())
        .unwrap_or_else(|err| panic!("skein dashboard: {err}"));
    let url = dashboard.url.clone();
    // A flag that could not act is refused rather than ignored.
    let refused = Command::new(SKEIN)
        .args(["dashboard", "--cluster", CLUSTER, "--port", "50751"])
        .stdin(Stdio::null())
        .output()
        .expect("running skein dashboard");
    assert!(!refused.status.success(), "--port needs a port-forward");

    let driver = Chromedriver::start(&artifacts().join("chromedriver.log")).await;
    let session = driver.session().await;

    // The backend fails 30%: the page shows its tier FAIL, and why.
    let failing = demo_load::load(CLUSTER, &pod, 400, 30, "/");
    session
        .goto(&format!(
            "{url}?namespace={}&window={WINDOW}",
            demo_load::DEMO
        ))
        .await;
    let page = page_until(
        &session,
        "the backends to FAIL with a sample request, and the chain's edges",
        |page| {
            BACKENDS
                .iter()
                .all(|b| verdict(page, b) == "FAIL" && page["tiers"][b]["trace"] != "")
                && edge(page, "demo/frontend", "demo/middleware").is_some()
                && edge(page, "demo/middleware", "demo/backend-v1").is_some()
        },
    )
    .await;
    for backend in BACKENDS {
        let tier = &page["tiers"][backend];
        assert_eq!(tier["text"], "FAIL", "{page:#}");
        let reasons = tier["reasons"].as_str().unwrap_or("");
        assert!(
            reasons.contains("% failing — 503 x"),
            "{backend}'s reason is the 503s: {page:#}"
        );
        let sample = tier["sample"].as_str().unwrap_or("");
        assert!(
            sample.starts_with("sample: GET ")
                && sample.contains("/ 503 (")
                && sample.contains(&format!("({backend}-")),
            "{backend}'s sample is one of its 503s: {page:#}"
        );
        // Linked to its trace, and the tier to its traces, in the MeshConfig's tracing UI.
        let trace = tier["trace"].as_str().unwrap_or("");
        let id = trace
            .strip_prefix(&format!("{TRACE_UI}/trace/"))
            .unwrap_or_else(|| panic!("{backend}'s sample links its trace: {page:#}"));
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{trace}"
        );
        assert_eq!(
            tier["traces"],
            format!("{TRACE_UI}/search?service={backend}&namespace=demo"),
            "{page:#}"
        );
    }
    assert_eq!(page["problems"], "", "{page:#}");
    assert!(page["proxies"].as_u64() >= Some(5), "{page:#}");
    // The chain over mutual TLS, the failing hop drawn as failing; the probes in plaintext.
    for (source, destination) in [
        ("demo/loadgen", "demo/frontend"),
        ("demo/frontend", "demo/middleware"),
        ("demo/middleware", "demo/backend-v1"),
    ] {
        if let Some(e) = edge(&page, source, destination) {
            assert_eq!(e["secured"], "yes", "{e:#}");
        }
    }
    let to_backend = edge(&page, "demo/middleware", "demo/backend-v1").expect("an edge");
    assert_eq!(to_backend["health"], "edge bad", "{to_backend:#}");
    let probes = edge(&page, "(outside the mesh)", "demo/backend-v1").expect("the probes");
    assert_eq!(probes["secured"], "no", "{probes:#}");
    keep_screenshot(&session, "dashboard-fail").await;

    // Everything the page loaded came from its own origin, and nothing went wrong.
    let foreign = session
        .execute(
            "const all = performance.getEntriesByType('resource').map((e) => e.name);
             return {all: all.length,
                     foreign: all.filter((n) => new URL(n).origin !== location.origin)};",
            json!([]),
        )
        .await;
    assert!(foreign["all"].as_u64() >= Some(3), "{foreign:#}");
    assert_eq!(foreign["foreign"], json!([]), "{foreign:#}");
    let errors = console_errors(&session).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The backend recovers: once the failures are out of the window, the page shows PASS.
    finish(failing);
    let healthy = demo_load::load(CLUSTER, &pod, 900, 0, "/");
    let page = page_until(&session, "every tier to PASS", |page| {
        TIERS.iter().all(|t| verdict(page, t) == "PASS")
    })
    .await;
    for backend in BACKENDS {
        assert_eq!(page["tiers"][backend]["reasons"], "", "{page:#}");
    }
    keep_screenshot(&session, "dashboard-pass").await;
    let errors = console_errors(&session).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The tap view: a live stream, tapped as the user through the apiserver.
    let status = session
        .execute(
            "document.getElementById('tap-resource').value = 'deploy/backend-v1';
             document.getElementById('tap-start').click();
             return true;",
            json!([]),
        )
        .await;
    assert_eq!(status, json!(true));
    let deadline = Instant::now() + WAIT;
    let tap = loop {
        let tap = session
            .execute(
                "const s = document.getElementById('tap-status');
                 return {state: s.dataset.state || '', text: s.textContent,
                         events: document.querySelectorAll('#tap-events tbody tr').length};",
                json!([]),
            )
            .await;
        if tap["state"] == "tapping" && tap["events"].as_u64() > Some(0) {
            break tap;
        }
        assert!(Instant::now() < deadline, "the tap view: {tap:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("tap view: {tap}");

    session.quit().await;
    drop(driver);
    drop(dashboard);
    demo_load::stop(healthy);
    demo_load::remove_loadgen(&client).await;
}
