//! `SKEIN_LOG` on the real binary: it filters what a role logs, and a value that does not parse
//! costs one warning line, never the process. (An injected proxy logging at the level its pod
//! asks for is in `node.rs`.)

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// A pod that opts out, so `skein inject` logs one info line about skipping it.
const OPTED_OUT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\n  labels: {skein.dev/inject: \"false\"}\nspec:\n  containers: [{name: db, image: postgres}]\n";

/// `skein inject -f -` on [`OPTED_OUT_POD`] with `SKEIN_LOG` set to `filter` (unset: `None`).
fn inject_with(filter: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skein"));
    command
        .args(["inject", "-f", "-"])
        .env_remove("SKEIN_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(filter) = filter {
        command.env("SKEIN_LOG", filter);
    }
    let mut child = command.spawn().expect("starting skein inject");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(OPTED_OUT_POD.as_bytes())
        .expect("writing the pod");
    let output = child.wait_with_output().expect("running skein inject");
    assert!(
        output.status.success(),
        "skein inject failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const SKIPPED: &str = "Pod db: not injected";

#[test]
fn skein_log_filters_every_role_and_defaults_to_info() {
    assert!(stderr(&inject_with(None)).contains(SKIPPED));
    assert!(stderr(&inject_with(Some("info"))).contains(SKIPPED));
    let quiet = stderr(&inject_with(Some("warn")));
    assert!(!quiet.contains(SKIPPED), "{quiet}");
    let by_target = stderr(&inject_with(Some("warn,skein::inject=info")));
    assert!(by_target.contains(SKIPPED), "{by_target}");
}

#[test]
fn a_filter_that_does_not_parse_warns_once_and_logs_at_info() {
    for bad in ["verbose", "info,skein=loud"] {
        let output = inject_with(Some(bad));
        let log = stderr(&output);
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("SKEIN_LOG=")).collect();
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(warnings[0].contains(" WARN "), "{log}");
        assert!(warnings[0].ends_with("logging at info"), "{log}");
        assert!(log.contains(SKIPPED), "info is in force: {log}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("name: db"),
            "the command still did its work"
        );
    }
}
