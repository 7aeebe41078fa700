//! Packaging of the operator: the plain manifests in `config/` and the Helm chart in
//! `charts/skein/` lint, render, are accepted by a real kube-apiserver (server-side dry run, so
//! the schemas, RBAC rules and CRD validation are the server's own), say the same thing, and
//! install exactly the CRDs of `crds/`, which draw no warning from the apiserver; the chart's
//! values schema refuses bad values by name, its optional objects (PodDisruptionBudget,
//! ServiceMonitor) appear when asked and select what they should, and its NOTES tell a user what
//! to do next without pointing into this repository. (The operator's permissions, and that it
//! installs the mesh with exactly them, are tests/rbac.rs's.)
//!
//! helm comes from tests/cluster/build.sh (built from tests/cluster/helm/go.mod).

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use skein::api::{MeshConfig, MeshConfigSpec, names};
use skein::operator::desired;

const CHART: &str = "charts/skein";
const RELEASE: &str = "skein";
const MESH_NAMESPACE: &str = "skein-system";
const PART_OF: &str = "app.kubernetes.io/part-of";

/// Values exercising every optional part of the chart's templates.
const FULL_VALUES: &str = r#"
replicas: 2
leaseDuration: 30s
podAnnotations:
  prometheus.io/scrape: "true"
tolerations:
  - key: node-role.kubernetes.io/control-plane
    operator: Exists
    effect: NoSchedule
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              app.kubernetes.io/name: skein-operator
serviceMonitor:
  enabled: true
  interval: 30s
  labels:
    release: prometheus
meshConfig:
  create: true
  spec:
    mtls:
      mode: Strict
    controlPlane:
      replicas: 2
"#;

fn source(path: &str) -> PathBuf {
    support::source_dir().join(path)
}

/// Runs `command` (feeding it `stdin`), fails the test with its output unless it succeeds, and
/// returns its stdout.
fn run(command: Command, stdin: Option<&str>) -> String {
    run_output(command, stdin).0
}

/// [`run`], returning stdout and stderr.
fn run_output(mut command: Command, stdin: Option<&str>) -> (String, String) {
    let described = format!("{command:?}");
    command
        .current_dir(support::source_dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("starting {described}: {err}"));
    // Written from a thread: the child may fill its stdout before it has read all its input.
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_owned();
        std::thread::spawn(move || pipe.write_all(input.as_bytes()))
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|err| panic!("waiting for {described}: {err}"));
    if let Some(writer) = writer {
        writer
            .join()
            .expect("stdin writer panicked")
            .unwrap_or_else(|err| panic!("writing the input of {described}: {err}"));
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{described} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
    );
    (stdout, stderr)
}

/// Runs `command`, fails the test unless it fails too, and returns what it printed (stdout,
/// then stderr: `helm lint` reports on stdout, `helm template` on stderr).
fn run_failing(mut command: Command) -> String {
    let described = format!("{command:?}");
    let output = command
        .current_dir(support::source_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("running {described}: {err}"));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{described} succeeded:\n{printed}"
    );
    printed
}

/// `helm`, built by tests/cluster/build.sh next to kubectl.
fn helm() -> Command {
    Command::new(support::bin_dir().join("helm"))
}

/// `helm template` of the chart as documented (`-n skein-system`), plus `extra` arguments.
fn render(extra: &[&str]) -> String {
    let mut command = helm();
    command.args(["template", RELEASE, CHART, "-n", MESH_NAMESPACE]);
    command.args(extra);
    run(command, None)
}

/// `render` with the values in `values` (a YAML text) on top of the chart's.
fn render_with_values(values: &str, extra: &[&str]) -> String {
    let file = tempfile::NamedTempFile::new().expect("creating a values file");
    std::fs::write(file.path(), values).expect("writing the values file");
    let path = file.path().to_str().expect("temp paths are UTF-8");
    let mut args = vec!["-f", path];
    args.extend_from_slice(extra);
    render(&args)
}

/// Every object of a multi-document YAML stream (comment-only documents skipped).
fn objects(yaml: &str) -> Vec<Value> {
    skein::yaml::documents(yaml).expect("valid YAML")
}

/// The top-level files of config/, as `kubectl apply -f config/` reads them (not recursive, so
/// config/samples/ is left out), in name order.
fn config_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(source("config"))
        .expect("reading config/")
        .map(|entry| entry.expect("reading config/").path())
        .filter(|path| {
            path.is_file()
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    files
}

fn config_objects() -> Vec<Value> {
    config_files()
        .iter()
        .flat_map(|path| objects(&std::fs::read_to_string(path).expect("reading a config file")))
        .collect()
}

fn kind_and_name(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The label maps of an object: its own, and its pod template's if it has one.
fn label_maps(object: &Value) -> Vec<(&'static str, &Value)> {
    let mut maps = vec![("metadata.labels", &object["metadata"]["labels"])];
    if !object["spec"]["template"].is_null() {
        maps.push((
            "spec.template.metadata.labels",
            &object["spec"]["template"]["metadata"]["labels"],
        ));
    }
    maps
}

fn assert_part_of_skein(objects: &[Value], source: &str) {
    assert!(!objects.is_empty(), "{source} holds no objects");
    for object in objects {
        for (field, labels) in label_maps(object) {
            assert_eq!(
                labels[PART_OF].as_str(),
                Some("skein"),
                "{source}: {} has no {field} {PART_OF}: skein",
                kind_and_name(object)
            );
        }
    }
}

/// An object with what legitimately differs between the chart and config/ taken out: the
/// labels only Helm sets (and the managed-by value), and the operator's default
/// `--lease-duration=15s`, which the chart passes explicitly (it is a value there).
fn comparable(mut object: Value) -> Value {
    const HELM_ONLY_LABELS: [&str; 4] = [
        "helm.sh/chart",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
    ];
    for pointer in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(labels) = object.pointer_mut(pointer).and_then(Value::as_object_mut) {
            for label in HELM_ONLY_LABELS {
                labels.remove(label);
            }
        }
    }
    if let Some(containers) = object
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for container in containers {
            if let Some(args) = container["args"].as_array_mut() {
                args.retain(|arg| arg != "--lease-duration=15s");
            }
        }
    }
    object
}

/// Where `chart` and `config` first differ, as `path: chart value != config value`.
fn first_difference(chart: &Value, config: &Value, path: &str) -> Option<String> {
    match (chart, config) {
        (Value::Object(left), Value::Object(right)) => {
            left.keys()
                .chain(right.keys())
                .find_map(|key| match (left.get(key), right.get(key)) {
                    (Some(l), Some(r)) => first_difference(l, r, &format!("{path}.{key}")),
                    (l, r) => Some(format!("{path}.{key}: {l:?} != {r:?}")),
                })
        }
        (Value::Array(left), Value::Array(right)) if left.len() == right.len() => left
            .iter()
            .zip(right)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        _ if chart == config => None,
        _ => Some(format!("{path}: {chart} != {config}")),
    }
}

fn by_kind_and_name(objects: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    objects
        .into_iter()
        .map(|object| (kind_and_name(&object), comparable(object)))
        .collect()
}

#[test]
fn helm_lint_passes() {
    // --strict: warnings fail too.
    let mut command = helm();
    command.args(["lint", "--strict", CHART]);
    run(command, None);

    let mut command = helm();
    command.args(["lint", "--strict", CHART, "--set", "meshConfig.create=true"]);
    run(command, None);

    // Every option set: the values pass the schema too.
    let file = tempfile::NamedTempFile::new().expect("creating a values file");
    std::fs::write(file.path(), FULL_VALUES).expect("writing the values file");
    let mut command = helm();
    command
        .args(["lint", "--strict", CHART, "-f"])
        .arg(file.path());
    run(command, None);
}

#[test]
fn chart_crds_are_the_crds() {
    let crds = std::fs::read_to_string(source("crds/skein.dev.yaml")).expect("reading crds/");
    // A symlink to ../../../crds/skein.dev.yaml (helm follows it); were it ever a copy, this
    // keeps it equal.
    let chart_crds = std::fs::read_to_string(source("charts/skein/crds/skein.dev.yaml"))
        .expect("reading charts/skein/crds/skein.dev.yaml");
    assert_eq!(
        chart_crds, crds,
        "charts/skein/crds/skein.dev.yaml differs from crds/skein.dev.yaml"
    );
    let chart_dir: Vec<_> = std::fs::read_dir(source("charts/skein/crds"))
        .expect("reading charts/skein/crds")
        .map(|entry| entry.expect("reading charts/skein/crds").file_name())
        .collect();
    assert_eq!(
        chart_dir,
        ["skein.dev.yaml"],
        "charts/skein/crds/ must hold crds/skein.dev.yaml only"
    );

    // And what Helm actually installs from crds/ is exactly those CRDs.
    let rendered: Vec<Value> = objects(&render(&["--include-crds"]))
        .into_iter()
        .filter(|object| object["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(rendered, objects(&crds));
}

#[test]
fn every_object_is_labelled_part_of_skein() {
    assert_part_of_skein(&objects(&render(&[])), "helm template (defaults)");
    assert_part_of_skein(
        &objects(&render_with_values(FULL_VALUES, &[])),
        "helm template (every option)",
    );
    assert_part_of_skein(&config_objects(), "config/");
}

#[test]
fn meshconfig_is_rendered_only_when_asked() {
    let is_meshconfig = |object: &Value| object["kind"] == "MeshConfig";
    assert!(
        !objects(&render(&[])).iter().any(is_meshconfig),
        "meshConfig.create defaults to false"
    );

    let rendered = objects(&render_with_values(FULL_VALUES, &[]));
    let meshconfigs: Vec<&Value> = rendered.iter().filter(|o| is_meshconfig(o)).collect();
    assert_eq!(
        meshconfigs.len(),
        1,
        "one MeshConfig with meshConfig.create"
    );
    let meshconfig = meshconfigs[0];
    assert_eq!(meshconfig["apiVersion"], "skein.dev/v1alpha1");
    assert_eq!(meshconfig["metadata"]["name"], "default");
    assert_eq!(
        meshconfig["spec"],
        serde_json::json!({"mtls": {"mode": "Strict"}, "controlPlane": {"replicas": 2}})
    );

    // An empty spec is still an object (every field defaults in the CRD's schema).
    let rendered = objects(&render(&["--set", "meshConfig.create=true"]));
    let meshconfig = rendered
        .iter()
        .find(|o| is_meshconfig(o))
        .expect("a MeshConfig");
    assert_eq!(meshconfig["spec"], serde_json::json!({}));
}

#[test]
fn values_schema_refuses_bad_values_and_names_them() {
    // (what `--set` gets, what helm's error must say)
    let cases = [
        // A misspelt key, top-level or nested, is refused rather than ignored.
        ("replica=2", "additional properties 'replica' not allowed"),
        (
            "serviceMonitor.enable=true",
            "additional properties 'enable' not allowed",
        ),
        ("replicas=two", "/replicas"),
        ("replicas=0", "/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("leaseDuration=15", "/leaseDuration"),
        ("resources.limits.memory=lots", "/resources/limits/memory"),
        ("meshConfig.create=yes", "/meshConfig/create"),
        ("serviceMonitor.interval=often", "/serviceMonitor/interval"),
    ];
    for (value, named) in cases {
        let mut template = helm();
        template.args([
            "template",
            RELEASE,
            CHART,
            "-n",
            MESH_NAMESPACE,
            "--set",
            value,
        ]);
        let mut lint = helm();
        lint.args(["lint", "--strict", CHART, "--set", value]);
        for command in [template, lint] {
            let described = format!("{command:?}");
            let printed = run_failing(command);
            assert!(
                printed.contains(named),
                "{described}: the error does not say {named:?}:\n{printed}"
            );
        }
    }
}

#[test]
fn disruption_budget_only_with_more_than_one_replica() {
    let is_pdb = |object: &&Value| object["kind"] == "PodDisruptionBudget";
    assert_eq!(
        objects(&render(&[])).iter().filter(is_pdb).count(),
        0,
        "one replica needs no PodDisruptionBudget (it would only block a drain)"
    );

    let rendered = objects(&render_with_values(FULL_VALUES, &[]));
    let pdbs: Vec<&Value> = rendered.iter().filter(is_pdb).collect();
    assert_eq!(pdbs.len(), 1, "replicas: 2 renders one PodDisruptionBudget");
    let pdb = pdbs[0];
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let deployment = rendered
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    assert_selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"],
        "the PodDisruptionBudget's selector, the operator's pods",
    );
}

/// Fails unless every label of `selector` is in `labels`.
fn assert_selects(selector: &Value, labels: &Value, what: &str) {
    let selector = selector.as_object().expect("a label selector");
    assert!(!selector.is_empty(), "{what}: an empty selector");
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "{what}: {key} does not match");
    }
}

#[test]
fn metrics_service_and_service_monitor_reach_the_operators_metrics_port() {
    let rendered = objects(&render_with_values(FULL_VALUES, &[]));
    let find = |kind: &str| {
        let found: Vec<&Value> = rendered.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    };
    let deployment = find("Deployment");
    let service = find("Service");
    let monitor = find("ServiceMonitor");

    // The Service picks the operator's pods and forwards to their metrics port.
    assert_eq!(service["metadata"]["name"], "skein-operator-metrics");
    assert_selects(
        &service["spec"]["selector"],
        &deployment["spec"]["template"]["metadata"]["labels"],
        "the metrics Service's selector, the operator's pods",
    );
    let port = &service["spec"]["ports"][0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let container_port = container["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .unwrap_or_else(|| panic!("no container port named {}", port["targetPort"]));
    assert_eq!(container_port["containerPort"], 8080);
    assert_eq!(port["port"], 8080);

    // The ServiceMonitor picks that Service, by its labels, and scrapes its port by name.
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], MESH_NAMESPACE);
    assert_selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"],
        "the ServiceMonitor's selector, the metrics Service",
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "30s");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");

    // Off by default: it needs the Prometheus Operator's CRDs.
    assert!(
        !objects(&render(&[]))
            .iter()
            .any(|o| o["kind"] == "ServiceMonitor"),
        "serviceMonitor.enabled defaults to false"
    );
}

#[test]
fn chart_values_reach_the_deployment() {
    let rendered = objects(&render_with_values(
        FULL_VALUES,
        &["--set", "image.tag=9.9.9"],
    ));
    let deployment = rendered
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(container["image"], "ghcr.io/skein-mesh/skein:9.9.9");
    assert_eq!(
        container["args"],
        serde_json::json!(["operator", "--lease-duration=30s"])
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(
        pod["spec"]["tolerations"][0]["key"],
        "node-role.kubernetes.io/control-plane"
    );
    assert!(pod["spec"]["affinity"]["podAntiAffinity"].is_object());
}

#[test]
fn chart_and_config_say_the_same() {
    let chart = by_kind_and_name(objects(&render(&[])));
    // The chart leaves the namespace to `helm install -n skein-system --create-namespace`.
    let config = by_kind_and_name(
        config_objects()
            .into_iter()
            .filter(|object| object["kind"] != "Namespace"),
    );
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        config.keys().collect::<Vec<_>>(),
        "the chart and config/ create different objects"
    );
    for (key, chart_object) in &chart {
        if let Some(difference) = first_difference(chart_object, &config[key], "") {
            panic!("{key} differs between charts/skein and config/: {difference}");
        }
    }
}

/// The mesh namespace during a dry run: namespaced objects cannot be dry-run into a namespace
/// that does not exist. When missing it is created for real from config/namespace.yaml, and
/// deleted again on drop, waiting until it is gone so that later tests can create it afresh; an
/// existing one is left alone.
struct MeshNamespace {
    created: bool,
}

impl MeshNamespace {
    fn ensure() -> Self {
        let mut get = support::kubectl();
        get.args([
            "get",
            "namespace",
            MESH_NAMESPACE,
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        if !run(get, None).trim().is_empty() {
            return Self { created: false };
        }
        let mut apply = support::kubectl();
        apply.args(["apply", "--server-side", "-f", "config/namespace.yaml"]);
        run(apply, None);
        Self { created: true }
    }
}

impl Drop for MeshNamespace {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let status = support::kubectl()
            .args([
                "delete",
                "namespace",
                MESH_NAMESPACE,
                "--ignore-not-found",
                "--wait",
                "--timeout=120s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("cleanup: deleting namespace {MESH_NAMESPACE}: {status:?}");
        }
    }
}

/// `kubectl apply --server-side --dry-run=server` of `stdin` or of the given files: everything
/// is validated (strictly: unknown fields are errors) and admitted by the apiserver, nothing is
/// stored.
fn dry_run_apply(files: &[&Path], stdin: Option<&str>) -> String {
    let mut command = support::kubectl();
    command.args(["apply", "--server-side", "--dry-run=server"]);
    for file in files {
        command.arg("-f").arg(file);
    }
    if stdin.is_some() {
        command.args(["-f", "-"]);
    }
    run(command, stdin)
}

#[tokio::test]
async fn config_and_chart_are_accepted_by_the_apiserver() {
    // The CRDs must exist for real for a MeshConfig to be dry-run.
    support::client().await;
    let _namespace = MeshNamespace::ensure();

    // The documented install: kubectl apply --server-side -f crds/ -f config/
    let output = dry_run_apply(&[&source("crds"), &source("config")], None);
    for object in config_objects() {
        let name = object["metadata"]["name"].as_str().unwrap();
        assert!(
            output.contains(&format!("/{name} ")),
            "{} not applied:\n{output}",
            kind_and_name(&object)
        );
    }

    // helm install skein charts/skein -n skein-system --create-namespace, as the objects Helm
    // would create (the CRDs included), with the defaults and with every option set, except the
    // ServiceMonitor: the test cluster has no Prometheus Operator, so no such kind
    // (metrics_service_and_service_monitor_reach_the_operators_metrics_port checks it).
    for rendered in [
        render(&["--include-crds"]),
        render(&["--include-crds", "--set", "meshConfig.create=true"]),
        render_with_values(
            FULL_VALUES,
            &["--include-crds", "--set", "serviceMonitor.enabled=false"],
        ),
    ] {
        let output = dry_run_apply(&[], Some(&rendered));
        assert_eq!(
            output.lines().count(),
            objects(&rendered).len(),
            "one line per object applied:\n{output}"
        );
    }
}

#[test]
fn the_crds_draw_no_warning_from_the_apiserver() {
    // The apiserver warns about a schema (an unrecognised format, say) only where it is new to
    // it: re-applying CRDs that exist says nothing. So the committed CRDs are created, as a
    // dry run, under a group of this test's own, which no cluster holds.
    const GROUP: &str = "warning-check.skein.dev";
    let crds =
        objects(&std::fs::read_to_string(source("crds/skein.dev.yaml")).expect("reading crds/"));
    // As YAML, like crds/: kubectl's client-side validation refuses a JSON List holding the
    // `null` of a nullable enum.
    let renamed: String = crds
        .iter()
        .cloned()
        .map(|mut crd| {
            let plural = crd["spec"]["names"]["plural"].as_str().expect("a plural");
            crd["metadata"]["name"] = format!("{plural}.{GROUP}").into();
            crd["spec"]["group"] = GROUP.into();
            let yaml = skein::yaml::to_string(&crd).expect("a CRD renders as YAML");
            format!("---\n{yaml}")
        })
        .collect();
    let mut create = support::kubectl();
    create.args(["create", "--dry-run=server", "-f", "-"]);
    let (stdout, stderr) = run_output(create, Some(&renamed));
    assert_eq!(
        stdout.lines().count(),
        crds.len(),
        "one line per CRD created:\n{stdout}"
    );
    assert!(
        !stderr.contains("Warning"),
        "the apiserver warns about crds/skein.dev.yaml:\n{stderr}"
    );
}

/// The NOTES `helm install` prints, from a client-side dry run against the test cluster (helm
/// reads the cluster's version and kinds, and changes nothing).
fn install_notes(extra: &[&str]) -> String {
    let mut command = helm();
    command
        .env("KUBECONFIG", support::kubeconfig())
        .args([
            "install",
            RELEASE,
            CHART,
            "-n",
            MESH_NAMESPACE,
            "--dry-run=client",
        ])
        .args(extra);
    let output = run(command, None);
    let (_, notes) = output
        .split_once("\nNOTES:\n")
        .unwrap_or_else(|| panic!("no NOTES in:\n{output}"));
    notes.to_owned()
}

#[tokio::test]
async fn install_notes_say_what_was_installed_and_what_to_do_next() {
    // The MeshConfig kind must exist for helm to map meshConfig.create's object.
    support::client().await;
    let defaults = install_notes(&[]);
    let every_option = install_notes(&["--set", "meshConfig.create=true", "--set", "replicas=2"]);
    for notes in [&defaults, &every_option] {
        for expected in [
            "namespace skein-system",
            "image ghcr.io/skein-mesh/skein:0.1.0",
            "kubectl -n skein-system rollout status deployment/skein-operator",
            "kubectl get meshconfig default -w",
            "kubectl label namespace <namespace> injection=enabled",
            "skein proxy-status --url http://127.0.0.1:9091",
            "helm uninstall skein -n skein-system",
        ] {
            assert!(
                notes.contains(expected),
                "the NOTES lack {expected:?}:\n{notes}"
            );
        }
        // A user installs from a chart repository, with no checkout of this one at hand.
        for repository_path in ["config/", "charts/", "crds/", "samples/", ".yaml"] {
            assert!(
                !notes.contains(repository_path),
                "the NOTES point into the repository ({repository_path}):\n{notes}"
            );
        }
    }
    assert!(every_option.contains("replicas: 2, one leader at a time"));

    // The MeshConfig the NOTES suggest when the release made none is one the apiserver takes.
    assert!(!every_option.contains("| kubectl apply -f -"));
    let (_, rest) = defaults
        .split_once("echo '")
        .unwrap_or_else(|| panic!("no MeshConfig to create in:\n{defaults}"));
    let (meshconfig, _) = rest
        .split_once("' | kubectl apply -f -")
        .expect("the MeshConfig is piped to kubectl apply");
    let output = dry_run_apply(&[], Some(meshconfig));
    assert!(output.contains("meshconfig.skein.dev/default"), "{output}");
}

#[test]
fn config_namespace_agrees_with_the_operator() {
    // Both apply skein-system with server-side apply; a label with two values would make
    // re-applying config/ conflict with the operator (and the two fight over it).
    let config = objects(
        &std::fs::read_to_string(source("config/namespace.yaml"))
            .expect("reading config/namespace.yaml"),
    );
    let config_labels = config[0]["metadata"]["labels"]
        .as_object()
        .expect("labels on config/namespace.yaml");
    let install = desired::desired(&test_meshconfig(), &TEST_INPUTS).expect("the desired install");
    let operator = install
        .objects
        .iter()
        .find(|o| o.resource.kind == "Namespace")
        .expect("the operator applies the mesh namespace");
    assert_eq!(operator.name, MESH_NAMESPACE);
    for (key, value) in config_labels {
        let theirs = &operator.object["metadata"]["labels"][key];
        assert!(
            theirs.is_null() || theirs == value,
            "config/namespace.yaml labels {key}={value}, the operator {key}={theirs}"
        );
    }
}

/// A MeshConfig as the apiserver would hand it to the operator (defaults, a uid).
fn test_meshconfig() -> MeshConfig {
    let mut meshconfig = MeshConfig::new(names::ACTIVE_MESHCONFIG, MeshConfigSpec::default());
    meshconfig.metadata.uid = Some("00000000-0000-0000-0000-000000000001".to_owned());
    meshconfig
}

const TEST_INPUTS: desired::Inputs<'static> = desired::Inputs {
    ca_cert_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    settings_hash: "test",
};
