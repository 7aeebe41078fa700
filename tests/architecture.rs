//! The shape of the workspace that users feel: the data plane (`skein-proxy`) builds without a
//! Kubernetes client, so the sidecar binary every meshed pod runs carries none of its code, and
//! nothing in it reaches back into the control plane.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// The packages `skein-proxy` is built from (normal and build dependencies, transitively; not
/// its dev-dependencies, which only its tests use), from `cargo metadata`.
fn proxy_dependencies() -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let name_of: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|package| Some((package["id"].as_str()?, package["name"].as_str()?)))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("the resolved graph")
        .iter()
        .filter_map(|node| Some((node["id"].as_str()?, node)))
        .collect();
    let root = name_of
        .iter()
        .find(|(_, name)| **name == "skein-proxy")
        .map(|(id, _)| *id)
        .expect("skein-proxy in the workspace");

    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let not_dev_only = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|kind| kind["kind"].as_str() != Some("dev"));
            let Some(dep_id) = dep["pkg"].as_str() else {
                continue;
            };
            if not_dev_only && seen.insert(name_of[dep_id].to_owned()) {
                todo.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn the_data_plane_builds_without_a_kubernetes_client_or_the_control_plane() {
    let deps = proxy_dependencies();
    // Sanity: the walk found the proxy's own stack.
    for expected in ["hyper", "rustls", "tokio", "skein-core"] {
        assert!(deps.contains(expected), "{expected} missing from {deps:?}");
    }
    let unwanted: Vec<&String> = deps
        .iter()
        .filter(|name| {
            name.starts_with("kube") || name.starts_with("k8s-openapi") || *name == "skein"
        })
        .collect();
    assert!(
        unwanted.is_empty(),
        "skein-proxy depends on {unwanted:?}: the sidecar would carry that code"
    );
}

/// Whether `needle` occurs in the file at `path` (a crate's name occurs in its symbols).
fn file_contains(path: &str, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("reading {path}: {err}"));
    bytes.windows(needle.len()).any(|window| window == needle)
}

#[test]
fn the_sidecar_binary_holds_no_kubernetes_client() {
    let (lean, full) = (
        env!("CARGO_BIN_EXE_skein-proxy"),
        env!("CARGO_BIN_EXE_skein"),
    );
    // The probe finds the client where it is linked in.
    assert!(
        file_contains(full, b"kube_client"),
        "{full} has no kube_client symbols"
    );
    assert!(
        !file_contains(lean, b"kube_client"),
        "{lean} links kube_client: every sidecar would map its code"
    );
}
