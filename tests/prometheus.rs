//! The Prometheus path of issue 15: the shipped recording rules pass `promtool`, the Grafana
//! dashboard asks only for metrics the proxies export or the rules record, and
//! `skein stat --prometheus` / `skein edges --prometheus` against a real Prometheus (Debian's
//! `prometheus`, a child process) scraping the real proxies of the meshed demo
//! (`skein dev up` on its own cluster, `skein-test-prom`) say what the embedded source says.
//!
//! The scrape configuration is the shipped `config/prometheus/scrape.yaml` with its documented
//! override for a Prometheus outside the pod network (through the apiserver's pod proxy, with
//! the cluster's admin certificate). Debian builds Prometheus without Kubernetes service
//! discovery, so the test lists the proxy pods itself and hands them to the shipped relabelling
//! through `file_sd_configs`, with the `__meta_kubernetes_pod_*` labels Kubernetes discovery sets.
//! Needs root, iproute2, iptables and prometheus (tests/test-tools.txt; tests never skip).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::demo_load::{self, DEMO, loadgen, remove_loadgen};

const CLUSTER: &str = "skein-test-prom";
const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
const WINDOW: &str = "30s";
const WAIT: Duration = Duration::from_secs(150);
const TIERS: [&str; 4] = ["frontend", "middleware", "backend-v1", "backend-v2"];

fn config_file(name: &str) -> PathBuf {
    support::source_dir().join("config").join(name)
}

#[test]
fn shipped_rules_pass_promtool() {
    let rules = config_file("prometheus/rules.yaml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("running promtool (Debian's prometheus package; tests/test-tools.txt)");
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names the proxies export, as they appear in PromQL (families whose series come
/// with traffic are given one, so that they are encoded).
fn exported_metrics() -> BTreeSet<String> {
    use skein::proxy::Direction;
    use skein::proxy::metrics::{LatencyLabels, Metrics, RequestLabels};
    let metrics = Metrics::new();
    let _ = metrics.http.requests.get_or_create(&RequestLabels {
        direction: Direction::Inbound,
        protocol: "http",
        source_workload: String::new(),
        source_namespace: String::new(),
        source_principal: String::new(),
        tls: "false",
        destination_service: String::new(),
        destination_workload: String::new(),
        destination_namespace: String::new(),
        status_code: 200,
        grpc_status: String::new(),
        classification: "success",
    });
    let _ = metrics.http.latency.get_or_create(&LatencyLabels {
        direction: Direction::Inbound,
        destination_service: String::new(),
        classification: "success",
    });
    metrics.http.local_response(Direction::Inbound, "timeout");
    let text = metrics.encode().expect("encoding the metrics");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    names
}

fn recorded_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string(config_file("prometheus/rules.yaml")).expect("rules.yaml");
    let rules: Value = skein::yaml::from_str(&text).expect("rules.yaml is YAML");
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

/// The metric names an expression mentions: Skein's raw (`skein_...`) and recorded
/// (`level:skein_...:op`) ones.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("skein_") || word.contains(":skein_"))
        .map(str::to_owned)
        .collect()
}

/// Every `expr` and variable query in the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("expr" | "definition", Value::String(text)) => found.push(text.clone()),
                        ("query", Value::String(text)) if text.contains("skein") => {
                            found.push(text.clone());
                        }
                        _ => stack.push(inner),
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    found
}

#[test]
fn grafana_dashboard_asks_only_for_exported_or_recorded_metrics() {
    let text = std::fs::read_to_string(config_file("grafana/skein.json")).expect("skein.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exported = exported_metrics();
    assert!(
        exported.contains("skein_proxy_requests_total"),
        "{exported:?}"
    );
    let recorded = recorded_rules();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 8, "{queries:#?}");
    for query in &queries {
        let metrics = metrics_in(query);
        assert!(!metrics.is_empty(), "{query} names no Skein metric");
        for metric in metrics {
            assert!(
                exported.contains(&metric) || recorded.contains(&metric),
                "the dashboard's {query:?} asks for {metric}, which neither the proxies export \
                 nor config/prometheus/rules.yaml records"
            );
        }
    }
    assert!(
        dashboard["templating"]["list"]
            .as_array()
            .is_some_and(|vars| vars.iter().any(|v| v["name"] == "namespace")),
        "a namespace variable"
    );
    // The rules themselves read only exported metrics or each other.
    let rules: Value = skein::yaml::from_str(
        &std::fs::read_to_string(config_file("prometheus/rules.yaml")).expect("rules.yaml"),
    )
    .expect("rules.yaml is YAML");
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let expr = rule["expr"].as_str().unwrap_or_default();
            for metric in metrics_in(expr) {
                assert!(
                    exported.contains(&metric) || recorded.contains(&metric),
                    "rule {}: {metric} is not exported",
                    rule["record"]
                );
            }
        }
    }
}

/// A Prometheus child process, killed (by its pid) when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The file_sd target of each Running meshed pod of the demo, labelled as Kubernetes pod
/// discovery labels the skein-proxy container's admin port.
fn targets(pods: &[Pod]) -> Value {
    let mut targets = Vec::new();
    for pod in pods {
        let Some(spec) = &pod.spec else { continue };
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let Some(proxy) = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == "skein-proxy")
        else {
            continue;
        };
        let Some(port) = proxy
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("skein-admin"))
        else {
            continue;
        };
        let controller = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        targets.push(json!({
            "targets": [format!("{ip}:{}", port.container_port)],
            "labels": {
                "__meta_kubernetes_namespace": pod.namespace().unwrap_or_default(),
                "__meta_kubernetes_pod_name": pod.name_any(),
                "__meta_kubernetes_pod_phase": if running { "Running" } else { "Pending" },
                "__meta_kubernetes_pod_container_name": proxy.name,
                "__meta_kubernetes_pod_container_port_name": "skein-admin",
                "__meta_kubernetes_pod_container_port_number": port.container_port.to_string(),
                "__meta_kubernetes_pod_controller_kind": controller.map(|o| o.kind.clone()).unwrap_or_default(),
                "__meta_kubernetes_pod_controller_name": controller.map(|o| o.name.clone()).unwrap_or_default(),
            }
        }));
    }
    Value::Array(targets)
}

/// The apiserver's `host:port` and the admin kubeconfig's CA, certificate and key files.
fn apiserver_access(kubeconfig: &Path) -> (String, Value) {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).expect("the kubeconfig");
    let cluster = config.clusters[0].cluster.as_ref().expect("a cluster");
    let user = config.auth_infos[0].auth_info.as_ref().expect("a user");
    let server = cluster.server.as_deref().expect("a server");
    let address = server
        .strip_prefix("https://")
        .expect("an https apiserver")
        .trim_end_matches('/')
        .to_owned();
    let tls = json!({
        "ca_file": cluster.certificate_authority,
        "cert_file": user.client_certificate,
        "key_file": user.client_key,
    });
    (address, tls)
}

/// The shipped scrape configuration with the documented outside-the-pod-network override, the
/// shipped rules and 2 s intervals.
fn prometheus_config(dir: &Path, pods: &[Pod]) -> Value {
    let shipped = std::fs::read_to_string(config_file("prometheus/scrape.yaml")).expect("scrape");
    let mut config: Value = skein::yaml::from_str(&shipped).expect("scrape.yaml is YAML");
    config["global"] = json!({"scrape_interval": "2s", "evaluation_interval": "2s"});
    config["rule_files"] = json!([config_file("prometheus/rules.yaml")]);
    let targets_file = dir.join("proxies.json");
    std::fs::write(&targets_file, targets(pods).to_string()).expect("writing the targets");
    let (apiserver, tls) = apiserver_access(support::kubeconfig());
    let jobs = config["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs");
    let proxy = jobs
        .iter_mut()
        .find(|job| job["job_name"] == "skein-proxy")
        .expect("the skein-proxy job");
    let sd = proxy
        .as_object_mut()
        .and_then(|job| job.remove("kubernetes_sd_configs"));
    assert!(sd.is_some(), "the shipped job discovers pods: {proxy:#}");
    proxy["file_sd_configs"] = json!([{"files": [targets_file]}]);
    proxy["scheme"] = json!("https");
    proxy["tls_config"] = tls;
    let relabel = proxy["relabel_configs"]
        .as_array_mut()
        .expect("relabel_configs");
    relabel.extend([
        json!({
            "source_labels": ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_name", "__meta_kubernetes_pod_container_port_number"],
            "regex": "(.+);(.+);(.+)",
            "target_label": "__metrics_path__",
            "replacement": "/api/v1/namespaces/$1/pods/$2:$3/proxy/metrics",
        }),
        json!({"target_label": "__address__", "replacement": apiserver}),
    ]);
    // `skein dev up` runs the control plane on this machine: its debug server's /metrics.
    let debug = skein::dev::up::control_plane_debug_url(CLUSTER).expect("the control plane");
    let debug = debug.trim_start_matches("http://").trim_end_matches('/');
    jobs.retain(|job| job["job_name"] != "skein-control-plane");
    jobs.push(json!({"job_name": "skein-control-plane", "static_configs": [{"targets": [debug]}]}));
    config
}

fn start_prometheus(pods: &[Pod]) -> Prometheus {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = prometheus_config(dir.path(), pods);
    let config_path = dir.path().join("prometheus.yml");
    // JSON is YAML.
    std::fs::write(&config_path, config.to_string()).expect("writing the configuration");
    let port = support::control_plane::free_port();
    let log = dir.path().join("prometheus.log");
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("the log"))
        .stderr(
            std::fs::File::create(&log)
                .and_then(|f| f.try_clone())
                .expect("the log"),
        )
        .spawn()
        .expect("starting /usr/bin/prometheus (tests/test-tools.txt)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
        _dir: dir,
    }
}

/// `skein ARGS -n demo --window 30s`: (success, stdout, stderr).
fn skein(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(SKEIN)
        .args(args)
        .args(["-n", DEMO, "--window", WINDOW])
        .env("KUBECONFIG", support::kubeconfig())
        .env_remove("SKEIN_PROMETHEUS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("running skein");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn row<'a>(stat: &'a Value, name: &str) -> Option<&'a Value> {
    stat["workloads"]
        .as_array()
        .and_then(|rows| rows.iter().find(|w| w["name"] == name))
}

fn all_tiers(stat: &Value, verdict: &str) -> bool {
    TIERS
        .iter()
        .all(|tier| row(stat, tier).is_some_and(|w| w["verdict"] == verdict))
}

/// Polls `skein ARGS -o json` until `done` holds; panics with the last answer, and Prometheus'
/// log, at the deadline.
async fn until(prometheus: &Prometheus, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, stdout, stderr) = skein(&[args, &["-o", "json"]].concat());
        let answer: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        if ok && done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} on skein {args:?}; last answer:\n{stdout}{stderr}\n\
             Prometheus' log:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// `skein ARGS -o json` as JSON; `null` when it failed.
fn stat_json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = skein(&[args, &["-o", "json"]].concat());
    if !ok {
        eprintln!("skein {args:?}: {stderr}");
    }
    serde_json::from_str(&stdout).unwrap_or(Value::Null)
}

fn verdicts(stat: &Value) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = stat["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| (w["name"].to_string(), w["verdict"].to_string()))
        .collect();
    rows.sort();
    rows
}

/// The same verdict for every workload, and each tier's RPS within a factor 2.
fn sources_agree(ours: &Value, theirs: &Value) -> bool {
    let rps = |stat: &Value, tier| row(stat, tier).and_then(|w| w["rps"].as_f64());
    verdicts(ours) == verdicts(theirs)
        && TIERS
            .iter()
            .all(|tier| match (rps(ours, tier), rps(theirs, tier)) {
                (Some(a), Some(b)) => a > 0.0 && b > 0.0 && a / b < 2.0 && b / a < 2.0,
                _ => false,
            })
}

async fn meshed_pods(client: &kube::Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), DEMO)
        .list(&ListParams::default())
        .await
        .expect("listing the demo's pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_source_agrees_with_the_embedded_one() {
    support::demo_up(CLUSTER);
    let client = support::client().await;
    let pod = loadgen(&client).await;
    let prometheus = start_prometheus(&meshed_pods(&client).await);
    let url = prometheus.url.clone();

    // The backend fails 30%: both sources see every tier fail, the backend with its 503s.
    let failing = demo_load::load(CLUSTER, &pod, 900, 30, "/");
    // Read back to back (the same window), until the window is full of the failing traffic.
    let deadline = Instant::now() + WAIT;
    let (from_prometheus, embedded) = loop {
        let ours = stat_json(&["stat", "deploy", "--prometheus", &url]);
        let theirs = stat_json(&["stat", "deploy", "--cluster", CLUSTER]);
        if all_tiers(&ours, "FAIL") && sources_agree(&ours, &theirs) {
            break (ours, theirs);
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for both sources to see every tier FAIL with \
             the same verdicts and RPS within a factor 2\nPrometheus:\n{ours:#}\n\
             embedded:\n{theirs:#}\nPrometheus' log:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    for backend in ["backend-v1", "backend-v2"] {
        let row = row(&from_prometheus, backend).expect("a backend row");
        let context = || format!("{from_prometheus:#}\nembedded:\n{embedded:#}");
        assert_eq!(row["topReasons"][0]["detail"], "503", "{}", context());
        assert_eq!(row["topReasons"][0]["kind"], "status", "{}", context());
        assert_eq!(
            (row["proxies"].as_u64(), row["pods"].as_u64()),
            (Some(1), Some(1)),
            "{}",
            context()
        );
        assert!(row["p50Ms"].as_f64().is_some(), "{}", context());
    }

    // The table people read, from Prometheus.
    let (ok, table, stderr) = skein(&["stat", "deploy", "--prometheus", &url]);
    assert!(ok, "{table}{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("backend-v1 ") && l.ends_with("FAIL"))
        .unwrap_or_else(|| panic!("no failing backend-v1 row:\n{table}"));
    assert!(
        lines[at + 1].starts_with("  FAIL  backend-v1: ")
            && lines[at + 1].contains("% failing — 503 x"),
        "{table}"
    );

    // Edges from Prometheus: the chain over mutual TLS.
    let edges = until(
        &prometheus,
        &["edges", "deploy", "--prometheus", &url],
        |e| {
            e["edges"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|e| e["source"] == "middleware" && e["destination"] == "backend-v1")
            })
        },
    )
    .await;
    let edge = edges["edges"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|e| e["source"] == "middleware" && e["destination"] == "backend-v1")
        })
        .expect("the edge");
    assert_eq!(edge["secured"], "yes", "{edges:#}");
    assert_eq!(
        edge["sourceIdentity"], "spiffe://cluster.local/ns/demo/sa/default",
        "{edges:#}"
    );

    // The recording rules ran over the same series.
    let http = reqwest::Client::new();
    let answer: Value = http
        .get(format!(
            "{url}/api/v1/query?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair(
                    "query",
                    "workload:skein_requests:rate1m{namespace=\"demo\"} > 0"
                )
                .finish()
        ))
        .send()
        .await
        .expect("asking Prometheus")
        .json()
        .await
        .expect("a JSON answer");
    let recorded: BTreeSet<&str> = answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["metric"]["workload"].as_str())
        .collect();
    for tier in TIERS {
        assert!(
            recorded.contains(tier),
            "no workload:skein_requests:rate1m for {tier}: {answer:#}\n{}",
            prometheus.log_tail()
        );
    }
    // Enough seen: the load's pod goes with the loadgen Deployment.
    demo_load::stop(failing);

    // A Prometheus that is not there: one clear line, no table.
    let (ok, stdout, stderr) = skein(&["stat", "deploy", "--prometheus", "http://127.0.0.1:1"]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("no answer from Prometheus at http://127.0.0.1:1")
            && stderr.contains("onnection refused"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    remove_loadgen(&client).await;
}
