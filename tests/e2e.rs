//! The users' end-to-end suite (`tests/e2e/run.sh`, the one users run against kind or any
//! cluster) against a local cluster of its own (`skein-test-e2e`) whose apiserver reaches the
//! node's pods and Services, with a real `skein dev node`: the Helm chart's default InCluster
//! mode for real (the operator and the control plane as pods, the apiserver calling the webhook
//! through its Service). Every check of the suite runs on every submission.

mod support;

use std::process::{Command, Stdio};

const CLUSTER: &str = "skein-test-e2e";

#[test]
fn the_e2e_suite_passes_against_the_local_cluster() {
    support::use_cluster_through_node(CLUSTER);
    support::node::ensure_agent();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let junit = dir.path().join("junit.xml");
    // kubectl and helm of the cluster's version first on PATH, as a user would have them.
    let path = format!(
        "{}:{}",
        support::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(support::source_dir().join("tests/e2e/run.sh"))
        .arg("--kubeconfig")
        .arg(support::kubeconfig())
        .arg("--junit")
        .arg(&junit)
        // The CLI of this very build, for `skein proxy-status`.
        .args(["--skein", support::node::SKEIN])
        .env("PATH", path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("running tests/e2e/run.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the e2e suite failed:\n{stderr}");
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed, 0 failed in "),
        "the summary line: {summary}"
    );
    let report = std::fs::read_to_string(&junit).expect("the JUnit report");
    let cases = report.matches("<testcase ").count();
    assert!(
        cases >= 9 && report.contains(r#"failures="0""#) && !report.contains("<failure"),
        "every check in the JUnit report passed:\n{report}"
    );
}
