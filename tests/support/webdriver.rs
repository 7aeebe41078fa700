//! A real, headless Chromium driven through `chromedriver` (W3C WebDriver over HTTP), for
//! tests of the web dashboard. A small client over `reqwest` rather than a WebDriver crate:
//! the tests need seven commands, and no new dependency tree has to be built for them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// `chromedriver --port=FREE`, with Chromium under it; both are killed when this is dropped.
pub struct Chromedriver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it is ready; its log goes to `log`.
    pub async fn start(log: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log_file = std::fs::File::create(log).expect("creating the chromedriver log");
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("the log file"))
                .stderr(log_file),
            // Its own process group, so dropping it ends Chromium's processes too.
            0,
        )
        .spawn()
        .expect("starting chromedriver (Debian's chromium-driver; tests/install-deps.sh)");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .map(reqwest::Response::json::<Value>);
            if let Some(answer) = ready
                && answer
                    .await
                    .ok()
                    .and_then(|v| v["value"]["ready"].as_bool())
                    == Some(true)
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not get ready; its log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless Chromium session (`--no-sandbox`: tests run as root), keeping the
    /// browser's console log.
    pub async fn session(&self) -> Session {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1400",
            ]},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let answer: Value = self
            .http
            .post(format!("{}/session", self.url))
            .json(&capabilities)
            .send()
            .await
            .expect("asking chromedriver for a session")
            .json()
            .await
            .expect("chromedriver's answer");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer:#}"));
        Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.url),
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: a signal to the process group this test started.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let value = answer["value"].clone();
        assert!(
            value.get("error").is_none(),
            "WebDriver {path} failed: {value:#}"
        );
        value
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; what it returns.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a base64 screenshot"))
            .expect("a base64 screenshot")
    }

    /// The browser console's entries since the last call (chromedriver's log endpoint):
    /// `{level, message, ...}` each.
    pub async fn console(&self) -> Vec<Value> {
        let entries = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        entries.as_array().cloned().unwrap_or_default()
    }

    pub async fn quit(self) {
        let _ = self.http.delete(&self.url).send().await;
    }
}
