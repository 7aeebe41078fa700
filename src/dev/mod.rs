//! `skein dev`: a local playground on one machine, no containers needed — a real Kubernetes
//! control plane on loopback (`cluster`), a node running pods as processes in network
//! namespaces (`node`), and `up`/`down` to bring the whole mesh and its demo up.

pub mod background;
pub mod cluster;
pub mod node;
pub mod pod_failures;
pub mod preflight;
pub mod up;

use std::path::Path;

pub use up::{down, up};

/// The last `lines` lines of a log file, if it can be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// `text` indented by four spaces, for a log quoted inside an error.
pub(crate) fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
