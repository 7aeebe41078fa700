//! `skein dashboard`: opens the control plane's web dashboard
//! ([`crate::controlplane::dashboard`]) and prints its URL.
//!
//! - By default, through the Kubernetes apiserver, as the user: the page is the `dashboard`
//!   resource of the aggregated API `tap.skein.dev` ([`crate::controlplane::tap::api`]). The
//!   command serves 127.0.0.1:PORT and hands each of the browser's requests under `/dashboard`
//!   to the apiserver with the user's credentials (like `kubectl proxy`, limited to the
//!   dashboard), until Ctrl-C. RBAC decides: `skein-dashboard` for the page, `skein-tap` in a
//!   namespace for its tap view.
//! - `--port-forward`: a local port forwarded to a Running control-plane pod's loopback debug
//!   port, one port-forward per browser connection (so a long-lived tap stream does not hold up
//!   the page), until Ctrl-C. It takes `pods/portforward` in `skein-system`, and the page then
//!   sees everything the control plane sees.
//! - `--url` or `--cluster` (the control plane `skein dev up` runs on this machine): the debug
//!   server is already reachable; the command checks that it serves the page and prints the URL.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::cli::debug_server::{self, DebugForward, DebugServerArgs};
use crate::controlplane::dashboard;
use crate::controlplane::tap::api;

/// The local port `skein dashboard` forwards by default.
pub const DEFAULT_PORT: u16 = 50750;

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub server: DebugServerArgs,
    /// The local port (on 127.0.0.1) the browser opens; 0 picks a free one. Not with --url or
    /// --cluster, which print the debug server's own URL.
    #[arg(long, default_value_t = DEFAULT_PORT, conflicts_with_all = ["url", "cluster"])]
    pub port: u16,
    /// Reach a control-plane pod's debug server through port-forwards instead of the apiserver
    /// (RBAC: `pods/portforward` in the mesh namespace instead of `skein-dashboard`).
    #[arg(long, conflicts_with_all = ["url", "cluster"])]
    pub port_forward: bool,
    /// Also open the URL in a browser (`xdg-open`); without one, the URL is still printed.
    #[arg(long)]
    pub open: bool,
}

pub async fn run(args: &DashboardArgs) -> anyhow::Result<()> {
    let base = match (&args.server.url, &args.server.cluster) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(cluster)) => Some(crate::dev::up::control_plane_debug_url(cluster)?),
        (None, None) => None,
    };
    let Some(base) = base else {
        return if args.port_forward {
            forward(args).await
        } else {
            through_apiserver(args).await
        };
    };
    let url = page_url(&base);
    // Say now, not in the browser, when nothing (or an older control plane) serves the page.
    debug_server::ask_all(args.server.target(), dashboard::PATH)
        .await
        .with_context(|| format!("the dashboard at {url} does not answer"))?;
    println!("{url}");
    if args.open {
        open_in_browser(&url).await;
    }
    Ok(())
}

/// The page's URL under a debug server's base URL (which may carry a path prefix).
pub fn page_url(base: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), dashboard::PATH)
}

/// Forwards 127.0.0.1:PORT to the first Running control-plane pod until Ctrl-C.
async fn forward(args: &DashboardArgs) -> anyhow::Result<()> {
    let (pods, names) = debug_server::running_control_plane_pods(&args.server.kube).await?;
    let pod = names[0].clone();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{} (give another --port)", args.port))?;
    let local = listener.local_addr().context("the local address")?;
    // One request through a forward first, so a failing one is reported here and now.
    DebugForward::open(&pods, &pod)
        .await?
        .run(|stream| async move {
            crate::plain_http::get(
                stream,
                "localhost",
                dashboard::PATH,
                debug_server::MAX_ANSWER_BYTES,
            )
            .await
            .map_err(anyhow::Error::from)
        })
        .await
        .with_context(|| format!("asking pod {pod} for the dashboard"))?;
    let url = page_url(&format!("http://{local}"));
    println!("{url}");
    eprintln!(
        "{}",
        forwarding_note(crate::api::names::MESH_NAMESPACE, &pod, names.len())
    );
    if args.open {
        open_in_browser(&url).await;
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((browser, peer)) => {
                    tokio::spawn(serve_connection(pods.clone(), pod.clone(), browser, peer));
                }
                Err(error) => tracing::warn!(%error, "accepting a connection"),
            },
            () = crate::signals::shutdown() => return Ok(()),
        }
    }
}

/// The apiserver path of a local dashboard request (`/dashboard...`, query included); `None`
/// for anything else, which the local server does not pass on.
pub fn api_path(local: &str) -> Option<String> {
    let rest = local.strip_prefix(dashboard::PATH)?;
    if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
        return None;
    }
    Some(format!(
        "/apis/{}/{}/{}{rest}",
        api::GROUP,
        api::VERSION,
        api::DASHBOARD_RESOURCE
    ))
}

/// Whether a browser's `Host` names this local server: a page on another site that resolves
/// its own name to 127.0.0.1 (DNS rebinding) must not read the user's view of the cluster.
fn local_host(headers: &HeaderMap, port: u16) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    ["127.0.0.1", "localhost"]
        .iter()
        .any(|name| host == format!("{name}:{port}"))
}

#[derive(Clone)]
struct LocalProxy {
    client: kube::Client,
    port: u16,
}

/// Serves the dashboard on 127.0.0.1:PORT from the apiserver, as the user, until Ctrl-C.
async fn through_apiserver(args: &DashboardArgs) -> anyhow::Result<()> {
    let client = args.server.kube.client().await?;
    // Ask once first, so a refusal (or a missing API) is said here, with what to do.
    let check = api_path(dashboard::PATH).context("the dashboard's API path")?;
    let answer = client
        .send(
            axum::http::Request::get(check)
                .body(kube::client::Body::empty())
                .context("building the request")?,
        )
        .await
        .context("asking the apiserver for the dashboard")?;
    if !answer.status().is_success() {
        let status = answer.status();
        let body = axum::body::to_bytes(axum::body::Body::new(answer.into_body()), 64 * 1024)
            .await
            .unwrap_or_default();
        anyhow::bail!(refusal(status, &body));
    }
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{} (give another --port)", args.port))?;
    let local = listener.local_addr().context("the local address")?;
    let url = page_url(&format!("http://{local}"));
    println!("{url}");
    eprintln!(
        "serving the dashboard from the apiserver ({}/{} {}) as you; Ctrl-C stops",
        api::GROUP,
        api::VERSION,
        api::DASHBOARD_RESOURCE
    );
    if args.open {
        open_in_browser(&url).await;
    }
    let app = Router::new().fallback(pass_on).with_state(LocalProxy {
        client,
        port: local.port(),
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::signals::shutdown())
        .await
        .context("serving the dashboard")
}

/// One browser request, handed to the apiserver; its answer streamed back (a tap view streams
/// for as long as the page keeps it open).
async fn pass_on(State(proxy): State<LocalProxy>, request: Request) -> Response {
    if !local_host(request.headers(), proxy.port) {
        return (
            StatusCode::FORBIDDEN,
            "this server answers only 127.0.0.1 and localhost",
        )
            .into_response();
    }
    if request.method() != axum::http::Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let local = request
        .uri()
        .path_and_query()
        .map_or(request.uri().path(), |pq| pq.as_str());
    let Some(path) = api_path(local) else {
        return (StatusCode::NOT_FOUND, "only /dashboard is served here").into_response();
    };
    let upstream = match axum::http::Request::get(path).body(kube::client::Body::empty()) {
        Ok(upstream) => upstream,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    let answer = match proxy.client.send(upstream).await {
        Ok(answer) => answer,
        Err(err) => {
            let message = format!("asking the apiserver: {err}");
            return (StatusCode::BAD_GATEWAY, message).into_response();
        }
    };
    let (parts, body) = answer.into_parts();
    let mut response = Response::new(axum::body::Body::new(body));
    *response.status_mut() = parts.status;
    // What the page needs of the answer; nothing of the apiserver's own.
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::CONTENT_SECURITY_POLICY,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Why the apiserver would not serve the dashboard, with what to do about it.
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|status| status["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let hint = match status.as_u16() {
        401 | 403 => format!(
            " (opening the dashboard needs RBAC list and get on dashboard in API group {}: the \
             {} ClusterRole grants it, e.g. kubectl create clusterrolebinding NAME \
             --clusterrole {} --user YOU; its tap view also needs {} in the namespace tapped)",
            api::GROUP,
            api::DASHBOARD_CLUSTER_ROLE,
            api::DASHBOARD_CLUSTER_ROLE,
            api::TAP_CLUSTER_ROLE
        ),
        404 | 503 => format!(
            " (the API that serves it is not registered or not available: see `kubectl get \
             apiservice {}` and `skein check`; `--port-forward` reaches the control plane \
             directly)",
            api::API_SERVICE
        ),
        _ => String::new(),
    };
    format!("the apiserver did not serve the dashboard ({status}): {message}{hint}")
}

/// What the forward reaches: each replica knows only the proxies connected to it.
fn forwarding_note(namespace: &str, pod: &str, replicas: usize) -> String {
    let mut note = format!("forwarding to pod {namespace}/{pod} (its debug port); Ctrl-C stops");
    if replicas > 1 {
        note.push_str(&format!(
            "\nthe page shows the proxies connected to this replica, one of {replicas}"
        ));
    }
    note
}

/// One browser connection, copied both ways over its own port-forward.
async fn serve_connection(
    pods: Api<Pod>,
    pod: String,
    mut browser: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let copied = async {
        DebugForward::open(&pods, &pod)
            .await?
            .run(|mut stream| async move {
                tokio::io::copy_bidirectional(&mut browser, &mut stream)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })
            .await
    };
    if let Err(error) = copied.await {
        tracing::warn!(%peer, error = format!("{error:#}"), "forwarding a browser connection");
    }
}

/// `xdg-open URL`; a machine without it (or without a browser) still has the printed URL.
async fn open_in_browser(url: &str) {
    if let Err(why) = open_with("xdg-open", url).await {
        eprintln!("could not open a browser ({why}); open {url} yourself");
    }
}

async fn open_with(program: &str, url: &str) -> Result<(), String> {
    let status = tokio::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(|error| format!("{program}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_under_the_debug_servers_url() {
        assert_eq!(
            page_url("http://127.0.0.1:9091"),
            "http://127.0.0.1:9091/dashboard"
        );
        assert_eq!(
            page_url("http://debug.example/skein/"),
            "http://debug.example/skein/dashboard"
        );
    }

    #[test]
    fn only_the_dashboard_is_passed_to_the_apiserver() {
        let base = "/apis/tap.skein.dev/v1alpha1/dashboard";
        assert_eq!(api_path("/dashboard").as_deref(), Some(base));
        assert_eq!(
            api_path("/dashboard?namespace=demo").as_deref(),
            Some(format!("{base}?namespace=demo").as_str())
        );
        assert_eq!(
            api_path("/dashboard/tap?namespace=demo&resource=deploy%2Fweb").as_deref(),
            Some(format!("{base}/tap?namespace=demo&resource=deploy%2Fweb").as_str())
        );
        for other in [
            "/",
            "/api/v1/secrets",
            "/dashboards",
            "/debug/stats",
            "dashboard",
        ] {
            assert_eq!(api_path(other), None, "{other}");
        }
    }

    #[test]
    fn only_a_local_host_is_answered() {
        let with = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            headers
        };
        assert!(local_host(&with("127.0.0.1:50750"), 50750));
        assert!(local_host(&with("localhost:50750"), 50750));
        assert!(!local_host(&with("evil.example:50750"), 50750));
        assert!(!local_host(&with("127.0.0.1:50751"), 50750));
        assert!(!local_host(&HeaderMap::new(), 50750));
    }

    #[test]
    fn a_refusal_says_which_role_grants_the_dashboard() {
        let body = br#"{"kind":"Status","message":"dashboard is forbidden: User \"jane\" cannot list resource \"dashboard\""}"#;
        let text = refusal(StatusCode::FORBIDDEN, body);
        assert!(text.contains("User \"jane\" cannot list"), "{text}");
        assert!(text.contains("--clusterrole skein-dashboard"), "{text}");
        let missing = refusal(StatusCode::SERVICE_UNAVAILABLE, b"service unavailable");
        assert!(
            missing.contains("kubectl get apiservice v1alpha1.tap.skein.dev"),
            "{missing}"
        );
    }

    #[test]
    fn several_replicas_are_mentioned() {
        let one = forwarding_note("skein-system", "cp-a", 1);
        assert!(one.contains("skein-system/cp-a") && !one.contains("replica"));
        assert!(forwarding_note("skein-system", "cp-a", 3).contains("one of 3"));
    }

    #[tokio::test]
    async fn no_browser_is_no_failure() {
        let error = open_with("/nonexistent/xdg-open", "http://127.0.0.1:1/dashboard")
            .await
            .unwrap_err();
        assert!(error.contains("/nonexistent/xdg-open"), "{error}");
        assert!(open_with("false", "x").await.is_err());
    }
}
