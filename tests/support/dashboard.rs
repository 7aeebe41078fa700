//! `skein dashboard` as a user runs it: the local server that hands the browser's requests to
//! the apiserver, started with a kubeconfig and stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long `skein dashboard` may take to print its URL (it asks the apiserver first).
const START: Duration = Duration::from_secs(30);

pub struct Dashboard {
    child: Child,
    /// Its stderr: a file, so that a long run's log never fills a pipe and stalls it.
    _log: tempfile::NamedTempFile,
    /// The page's URL, as printed.
    pub url: String,
}

impl Dashboard {
    /// `skein dashboard --port 0` with `kubeconfig`: its URL once it serves, or what it said
    /// when it exited instead (a refusal).
    pub fn start(kubeconfig: &Path) -> Result<Self, String> {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args(["dashboard", "--port", "0"])
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .expect("running skein dashboard");
        let stdout = child.stdout.take().expect("its stdout");
        let (sender, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let url = first_line.recv_timeout(START).unwrap_or_default();
        let url = url.trim();
        if url.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::fs::read_to_string(log.path()).unwrap_or_default());
        }
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with("/dashboard"),
            "{url}"
        );
        Ok(Dashboard {
            url: url.to_owned(),
            child,
            _log: log,
        })
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
