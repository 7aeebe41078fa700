//! The `skein` command line as a user meets it, run as the real binary: the top-level help (the
//! roles hidden but still runnable), shell completion, `skein version`, and the choice of cluster
//! with `--kubeconfig`/`--context` between two real local apiservers (`skein-test-cli` and
//! `skein-test-cli2`, which have no node: pods are marked Running through their status).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::config::Kubeconfig;
use kube::{Client, Resource};
use serde_json::{Value, json};
use skein::api::MeshConfig;
use skein::dev::cluster;

const SKEIN: &str = env!("CARGO_BIN_EXE_skein");
const FIRST: &str = "skein-test-cli";
const SECOND: &str = "skein-test-cli2";
/// Namespace of the meshed pod each cluster gets.
const APP_NAMESPACE: &str = "skein-cli-test";
const MANAGER: &str = "skein-cli-test";

/// The binary as a user runs it: default logging (some tests count stderr lines).
fn skein(args: &[&str]) -> Output {
    Command::new(SKEIN)
        .args(args)
        .env_remove("SKEIN_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running skein")
}

fn stdout_of(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `Commands:` section of a help text (not the roles named after it).
fn command_list(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn help_lists_what_people_run_and_the_roles_stay_runnable() {
    let help = stdout_of("skein --help", &skein(&["--help"]));
    let commands = command_list(&help);
    for shown in [
        "version",
        "proxy-status",
        "check",
        "stat",
        "edges",
        "inject",
        "federation",
        "dev",
        "completion",
    ] {
        assert!(
            commands.iter().any(|c| c == shown),
            "{shown} in {commands:?}"
        );
    }
    for hidden in ["operator", "control-plane", "proxy", "init", "demo-app"] {
        assert!(
            !commands.iter().any(|c| c == hidden),
            "{hidden} in {commands:?}"
        );
        // Named after the list, so they can still be found.
        assert!(help.contains(hidden), "{hidden} not mentioned in:\n{help}");
        let own = stdout_of(hidden, &skein(&[hidden, "--help"]));
        assert!(own.contains("Usage: skein"), "{own}");
    }
    let dev = stdout_of("skein dev --help", &skein(&["dev", "--help"]));
    assert!(!command_list(&dev).iter().any(|c| c == "node"), "{dev}");
    assert!(dev.contains("skein dev node"), "{dev}");
    stdout_of("skein dev node --help", &skein(&["dev", "node", "--help"]));

    // A hidden role really runs: the init container's rules, printed instead of applied.
    let rules = stdout_of("skein init --dry-run", &skein(&["init", "--dry-run"]));
    assert!(rules.contains("SKEIN_OUTPUT"), "{rules}");
}

#[test]
fn the_dev_cluster_is_named_by_cluster_everywhere() {
    for command in [
        &["dev", "up"][..],
        &["dev", "down"],
        &["dev", "node"],
        &["dev", "exec"],
        &["dev", "logs"],
        &["dev", "connect"],
        &["proxy-status"],
        &["check"],
        &["stat"],
        &["edges"],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let help = stdout_of(&command.join(" "), &skein(&args));
        assert!(help.contains("--cluster <"), "{command:?}:\n{help}");
    }
    let up = stdout_of("dev up --help", &skein(&["dev", "up", "--help"]));
    assert!(!up.contains("--name"), "{up}");
}

#[test]
fn bash_completes_the_subcommands_and_their_flags() {
    let script = stdout_of("completion bash", &skein(&["completion", "bash"]));
    for command in ["version", "proxy-status", "federation", "completion", "dev"] {
        assert!(
            script.contains(command),
            "{command} missing from the bash script"
        );
    }
    // What a user gets on <TAB>, from the script loaded into a real bash.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source /dev/stdin; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT={point}; _skein skein '{current}' '{previous}'; echo \"${{COMPREPLY[@]}}\"",
            words = words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            cword = words.len() - 1,
            point = line.len(),
            current = words[words.len() - 1],
            previous = words[words.len() - 2],
        );
        let mut child = Command::new("bash")
            .args(["-c", &program])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running bash");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
            .expect("writing the script");
        stdout_of("bash", &child.wait_with_output().expect("bash"))
    };
    let words = complete("skein proxy-s");
    assert_eq!(words.trim(), "proxy-status");
    let flags = complete("skein version --");
    for flag in ["--client", "--kubeconfig", "--context", "--output"] {
        assert!(
            flags.split_whitespace().any(|f| f == flag),
            "{flag} in {flags}"
        );
    }

    for shell in ["zsh", "fish"] {
        let script = stdout_of(shell, &skein(&["completion", shell]));
        assert!(script.contains("proxy-status"), "{shell}: {script}");
    }
}

#[test]
fn version_without_a_cluster_prints_the_client_only() {
    let home = tempfile::tempdir().expect("temporary directory");
    let out = Command::new(SKEIN)
        .args(["version", "-o", "json"])
        .env("HOME", home.path())
        .env_remove("SKEIN_LOG")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("running skein version");
    let stdout = stdout_of("version -o json", &out);
    let printed: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(printed, json!({"clientVersion": env!("CARGO_PKG_VERSION")}));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on why:\n{stderr}");

    // An apiserver that refuses connections: the same, and no log lines of the kube client.
    let kubeconfig = home.path().join("refused.kubeconfig");
    std::fs::write(
        &kubeconfig,
        r#"
apiVersion: v1
kind: Config
current-context: gone
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: someone, user: {token: abc}}]
contexts: [{name: gone, context: {cluster: gone, user: someone}}]
"#,
    )
    .expect("writing a kubeconfig");
    let out = skein(&[
        "version",
        "-o",
        "json",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ]);
    let printed: Value = serde_json::from_str(&stdout_of("version", &out)).expect("JSON");
    assert_eq!(printed, json!({"clientVersion": env!("CARGO_PKG_VERSION")}));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on why:\n{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");

    let table = stdout_of("version", &skein(&["version", "--client"]));
    assert_eq!(
        table,
        format!("client version: {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Admin kubeconfig of a local cluster, started if needed.
async fn start(name: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || {
        cluster::ensure_up(
            support::source_dir(),
            name,
            cluster::ApiserverNetwork::LoopbackOnly,
        )
        .unwrap_or_else(|err| panic!("starting the {name} cluster: {err}"))
    })
    .await
    .expect("the start-up thread")
}

/// One kubeconfig holding both clusters, each under a context named after it (the first is
/// current). Each user is renamed after its cluster: both files call theirs `admin`.
fn merged_kubeconfig(dir: &Path, clusters: &[(&str, &Path)]) -> PathBuf {
    let mut merged = Kubeconfig::default();
    for (name, path) in clusters {
        let mut config = Kubeconfig::read_from(path).expect("reading a kubeconfig");
        let user = format!("admin-{name}");
        for auth in &mut config.auth_infos {
            auth.name = user.clone();
        }
        for context in &mut config.contexts {
            if let Some(context) = &mut context.context {
                context.user = Some(user.clone());
            }
        }
        merged = merged.merge(config).expect("merging kubeconfigs");
    }
    merged.current_context = Some(clusters[0].0.to_owned());
    let path = dir.join("kubeconfig");
    let yaml = skein::yaml::to_string(&merged).expect("kubeconfig YAML");
    std::fs::write(&path, yaml).expect("writing the kubeconfig");
    path
}

/// Server-side applies `object` (a pod) and marks it Running: these clusters have no node.
async fn running_pod(client: &Client, object: Value) {
    let pod: Pod = serde_json::from_value(object).expect("a pod");
    let (namespace, name) = (
        pod.meta().namespace.clone().expect("a namespace"),
        pod.meta().name.clone().expect("a name"),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&pod),
    )
    .await
    .expect("applying the pod");
    let running = json!({"status": {"phase": "Running"}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
        .await
        .expect("marking the pod Running");
}

/// In `client`'s cluster: a control-plane pod `skein-control-plane-<suffix>` and a meshed pod,
/// both on image tag `tag`.
async fn seed(client: &Client, suffix: &str, tag: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for namespace in ["skein-system", APP_NAMESPACE] {
        let object =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        namespaces
            .patch(
                namespace,
                &PatchParams::apply(MANAGER),
                &Patch::Apply(&object),
            )
            .await
            .expect("creating a namespace");
    }
    let image = format!("ghcr.io/skein-mesh/skein:{tag}");
    // No scheduler owns these pods, so nothing but this test changes them.
    running_pod(
        client,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("skein-control-plane-{suffix}"),
                "namespace": "skein-system",
                "labels": {"app.kubernetes.io/name": "skein-control-plane"},
            },
            "spec": {
                "schedulerName": "skein-test-none",
                "containers": [{"name": "control-plane", "image": image}],
            },
        }),
    )
    .await;
    running_pod(
        client,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "meshed", "namespace": APP_NAMESPACE},
            "spec": {
                "schedulerName": "skein-test-none",
                "initContainers": [
                    {"name": "skein-proxy", "image": image, "restartPolicy": "Always"},
                ],
                "containers": [{"name": "app", "image": "app:1"}],
            },
        }),
    )
    .await;
}

fn version_json(kubeconfig: &Path, context: Option<&str>) -> Value {
    let mut args = vec!["version", "-o", "json", "--kubeconfig"];
    let kubeconfig = kubeconfig.to_string_lossy();
    args.push(&kubeconfig);
    if let Some(context) = context {
        args.extend(["--context", context]);
    }
    let out = skein(&args);
    let stdout = stdout_of("skein version", &out);
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"))
}

#[tokio::test]
async fn commands_talk_to_the_context_chosen() {
    support::use_cluster(FIRST);
    let first = support::client().await; // with Skein's CRDs, for the MeshConfig
    let second_kubeconfig = start(SECOND).await;
    let second = cluster::client(&second_kubeconfig)
        .await
        .expect("a client for the second cluster");
    seed(&first, "first", "1.0.0-first").await;
    seed(&second, "second", "2.0.0-second").await;
    let meshconfigs: Api<MeshConfig> = Api::all(first.clone());
    let mesh = json!({"apiVersion": "skein.dev/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "default"}});
    meshconfigs
        .patch(
            "default",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&mesh),
        )
        .await
        .expect("applying the MeshConfig");
    let status = json!({"status": {"version": "1.0.0-first"}});
    meshconfigs
        .patch_status("default", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("writing the MeshConfig's status");

    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = merged_kubeconfig(
        dir.path(),
        &[(FIRST, support::kubeconfig()), (SECOND, &second_kubeconfig)],
    );

    // The current context, then each one named.
    let current = version_json(&kubeconfig, None);
    assert_eq!(version_json(&kubeconfig, Some(FIRST)), current);
    assert_eq!(current["clientVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(current["meshVersion"], "1.0.0-first");
    assert_eq!(
        current["controlPlane"],
        json!([{"version": "1.0.0-first", "count": 1}])
    );
    assert_eq!(
        current["dataPlane"],
        json!([{"version": "1.0.0-first", "count": 1}])
    );
    let other = version_json(&kubeconfig, Some(SECOND));
    assert_eq!(other.get("meshVersion"), None, "{other}");
    assert_eq!(
        other["dataPlane"],
        json!([{"version": "2.0.0-second", "count": 1}])
    );
    let table = stdout_of(
        "skein version",
        &skein(&[
            "version",
            "--context",
            SECOND,
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
        ]),
    );
    assert!(
        table.contains("control plane version: 2.0.0-second (1 pod)\n")
            && table.contains("data plane version: 2.0.0-second (1 proxy)\n"),
        "{table}"
    );

    // proxy-status finds the chosen cluster's control-plane pod on its own. These clusters have
    // no kubelet to port-forward through, so it stops there, naming the pod.
    let out = skein(&[
        "proxy-status",
        "--context",
        SECOND,
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pod skein-system/skein-control-plane-second port 9091"),
        "{stderr}"
    );

    // create-secret exports the chosen context's apiserver.
    let out = skein(&[
        "federation",
        "create-secret",
        "--name",
        "other",
        "--context",
        SECOND,
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ]);
    let secret: k8s_openapi::api::core::v1::Secret =
        skein::yaml::from_str(&stdout_of("create-secret", &out)).expect("a Secret");
    let exported = Kubeconfig::from_yaml(
        std::str::from_utf8(&secret.data.expect("data")["kubeconfig"].0).expect("UTF-8"),
    )
    .expect("a kubeconfig");
    let server = |config: &Kubeconfig| {
        config.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
    };
    let second_config = Kubeconfig::read_from(&second_kubeconfig).expect("kubeconfig");
    assert_eq!(server(&exported), server(&second_config));
}
