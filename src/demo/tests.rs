//! End-to-end: real instances on loopback, chained frontend → middleware → backend.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory, Parser};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{DemoAppArgs, server};

/// The shape the integrator wires in: `skein demo-app` under a parser with `version` set.
#[derive(Debug, Parser)]
#[command(name = "skein", version)]
struct TestCli {
    #[command(subcommand)]
    command: TestCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TestCommand {
    DemoApp(DemoAppArgs),
}

fn parse(flags: &[&str]) -> DemoAppArgs {
    let argv = ["skein", "demo-app"].iter().chain(flags);
    match TestCli::try_parse_from(argv) {
        Ok(TestCli {
            command: TestCommand::DemoApp(args),
        }) => args,
        Err(err) => panic!("{err}"),
    }
}

struct Instance {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<bool>,
}

impl Instance {
    async fn start(flags: &[&str]) -> Self {
        let app = parse(flags).app().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, app, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the shutdown; the task's result says whether the drain finished in time.
    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// frontend v1 → middleware v2 → backend v3, with extra flags for the frontend. Bind every
/// instance: dropping one stops it.
async fn chain(frontend_flags: &[&str]) -> [Instance; 3] {
    let backend =
        Instance::start(&["--role", "backend", "--version", "v3", "--pod", "backend-0"]).await;
    let backend_url = backend.url("");
    let middleware = Instance::start(&[
        "--role",
        "middleware",
        "--version",
        "v2",
        "--pod",
        "middleware-0",
        "--next",
        &backend_url,
    ])
    .await;
    let middleware_url = middleware.url("/");
    let mut flags = vec![
        "--role",
        "frontend",
        "--version",
        "v1",
        "--pod",
        "frontend-0",
        "--next",
        &middleware_url,
    ];
    flags.extend_from_slice(frontend_flags);
    let frontend = Instance::start(&flags).await;
    [frontend, middleware, backend]
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn http1() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(&http1(), Method::GET, url, headers).await.unwrap()
}

fn roles_and_versions(chain: &Value) -> Vec<(String, String)> {
    chain
        .as_array()
        .unwrap()
        .iter()
        .map(|tier| {
            (
                tier["role"].as_str().unwrap().to_owned(),
                tier["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn full_chain() -> Vec<(String, String)> {
    [("frontend", "v1"), ("middleware", "v2"), ("backend", "v3")]
        .map(|(r, v)| (r.to_owned(), v.to_owned()))
        .to_vec()
}

#[test]
fn cli_flags_do_not_clash_with_the_version_flag() {
    TestCli::command().debug_assert();
    let args = parse(&[
        "--version",
        "v7",
        "--fail-percent",
        "12.5",
        "--latency",
        "250ms",
    ]);
    assert_eq!(args.app_version, "v7");
    assert_eq!(args.fail_percent, 12.5);
    assert_eq!(args.latency, crate::api::Duration::from_millis(250));
    assert_eq!(args.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(args.fail_status, StatusCode::SERVICE_UNAVAILABLE);
    // The binary's own `skein --version` still works.
    let err = TestCli::try_parse_from(["skein", "--version"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
    for bad in [
        &["--fail-percent", "101"][..],
        &["--fail-status", "42"],
        &["--next-timeout", "5"],
    ] {
        let argv = ["skein", "demo-app"].iter().chain(bad);
        assert!(TestCli::try_parse_from(argv).is_err(), "{bad:?}");
    }
    assert!(parse(&["--next", "https://x"]).app().is_err());
}

#[tokio::test]
async fn chain_reports_every_tier_in_order() {
    let [frontend, _middleware, _backend] = chain(&[]).await;
    let reply = get(&frontend.url("/hello?x=1"), &[("x-request-id", "abc")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["x-demo-version"], "v1");
    assert_eq!(reply.headers["x-demo-pod"], "frontend-0");
    let body = reply.json();
    assert_eq!(body["role"], "frontend");
    assert_eq!(body["pod"], "frontend-0");
    assert_eq!(roles_and_versions(&body["chain"]), full_chain());
    assert_eq!(body["chain"][2]["pod"], "backend-0");
}

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let [frontend, _middleware, _backend] = chain(&[]).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let reply = send(&client, Method::GET, &frontend.url("/"), &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(roles_and_versions(&reply.json()["chain"]), full_chain());
}

#[tokio::test]
async fn backend_failure_is_visible_at_the_frontend() {
    let [frontend, _middleware, _backend] = chain(&[]).await;
    let reply = get(
        &frontend.url("/"),
        &[
            ("x-demo-backend-fail-percent", "100"),
            ("x-demo-backend-fail-status", "503"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = reply.json();
    assert_eq!(body["role"], "frontend");
    let middleware = &body["downstream"];
    assert_eq!(middleware["role"], "middleware");
    let backend = &middleware["downstream"];
    assert_eq!(backend["role"], "backend");
    assert_eq!(backend["version"], "v3");
    assert_eq!(backend["error"], "injected failure");
    assert_eq!(roles_and_versions(&body["chain"]), full_chain());
    assert!(
        body["error"].as_str().unwrap().contains("answered 503"),
        "{body}"
    );
}

#[tokio::test]
async fn dead_next_tier_gives_502_naming_the_url() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let frontend = Instance::start(&["--role", "frontend", "--next", &dead_url]).await;
    let reply = get(&frontend.url("/a?b=c"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body = reply.json();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("calling {dead_url}/a?b=c: ")),
        "{error}"
    );
    assert_eq!(body["chain"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn slow_next_tier_times_out() {
    let [frontend, _middleware, _backend] = chain(&["--next-timeout", "100ms"]).await;
    let reply = get(&frontend.url("/"), &[("x-demo-backend-latency-ms", "1000")]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(error.ends_with("no answer within 100ms"), "{error}");
}

#[tokio::test]
async fn dropped_connection_is_a_502_upstream() {
    let [frontend, _middleware, backend] = chain(&[]).await;
    let drop = [("x-demo-backend-drop-percent", "100")];
    assert!(
        send(&http1(), Method::GET, &backend.url("/"), &drop)
            .await
            .is_err()
    );
    // The middleware gets no answer from the backend (502), which the frontend passes up.
    let reply = get(&frontend.url("/"), &drop).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let middleware = &reply.json()["downstream"];
    assert_eq!(middleware["role"], "middleware");
    let error = middleware["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("calling {}/: ", backend.url(""))),
        "{error}"
    );
}

#[tokio::test]
async fn readiness_can_be_toggled() {
    let backend = Instance::start(&["--role", "backend"]).await;
    let client = http1();
    let readyz_url = backend.url("/readyz");
    let readyz = || send(&client, Method::GET, &readyz_url, &[]);
    assert_eq!(readyz().await.unwrap().text(), "ready");
    let healthz = get(&backend.url("/healthz"), &[]).await;
    assert_eq!((healthz.status, healthz.text()), (StatusCode::OK, "ok"));

    let flip = send(&client, Method::POST, &backend.url("/admin/unready"), &[])
        .await
        .unwrap();
    assert_eq!(flip.status, StatusCode::OK);
    let reply = readyz().await.unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    );
    assert_eq!(reply.headers["x-demo-version"], "v1");

    send(&client, Method::POST, &backend.url("/admin/ready"), &[])
        .await
        .unwrap();
    let reply = readyz().await.unwrap();
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ready"));
}

#[tokio::test]
async fn invalid_override_header_is_a_400_naming_it() {
    let [frontend, _middleware, _backend] = chain(&[]).await;
    let reply = get(
        &frontend.url("/"),
        &[("x-demo-frontend-fail-status", "abc")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("x-demo-frontend-fail-status"), "{error}");
    // A bad header for a lower tier is reported by that tier, with its 400 passed up.
    let reply = get(&frontend.url("/"), &[("x-demo-backend-latency-ms", "-5")]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let backend = &reply.json()["downstream"]["downstream"];
    assert!(
        backend["error"]
            .as_str()
            .unwrap()
            .contains("x-demo-backend-latency-ms")
    );
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let mut backend = Instance::start(&["--role", "backend", "--latency", "300ms"]).await;
    let url = backend.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    backend.shut_down();
    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
    assert!(backend.task.await.unwrap(), "drained in time");
    assert!(
        tokio::net::TcpStream::connect(backend.addr).await.is_err(),
        "no longer accepting"
    );
}
