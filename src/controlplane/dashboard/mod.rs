//! The web dashboard: one page, a stylesheet and a small script, all compiled into the binary
//! (no CDN, no web fonts, no build step), so it works offline and costs nothing until someone
//! opens it. The page reads everything relative to its own URL, under `dashboard/`, so the same
//! page works wherever it is served:
//!
//! | request | answer |
//! |---|---|
//! | `GET /dashboard` | the page (`text/html`) |
//! | `GET /dashboard/app.js`, `/dashboard/style.css` | the script, the stylesheet |
//! | `GET /dashboard/stats`, `/proxies`, `/rules`, `/tap` | the debug server's `/debug/…` of the same name, query included: golden signals, edges and per-tier verdicts as `skein stat` shows them (read, never recomputed), proxies' sync state, each rule's conditions, a live tap |
//! | `GET /dashboard/settings` | `{"traceUrl": …, "searchUrl": …}`: the active MeshConfig's tracing UI links (`null` when unset), read on every call |
//!
//! Where it is served, and so who may see it:
//! - through the Kubernetes apiserver, as the `dashboard` resource of the aggregated API
//!   `tap.skein.dev` ([`crate::controlplane::tap::api`]): `skein dashboard` opens it there as
//!   the user, so RBAC decides (the `skein-dashboard` ClusterRole for the page, `skein-tap` in
//!   a namespace for its tap view), exactly as for `skein tap`;
//! - by the control plane's debug server, on loopback inside its pod: `skein dashboard
//!   --port-forward` (which takes `pods/portforward` in `skein-system`) and `skein dev up`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tower::ServiceExt;

use crate::api::meshconfig::TracingSpec;

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The page's path, for the URLs `skein dashboard` and `skein dev up` print.
pub const PATH: &str = "/dashboard";

/// The debug server's views the page reads, each at `/dashboard/VIEW` (`/debug/VIEW` there).
pub const VIEWS: [&str; 4] = ["stats", "proxies", "rules", "tap"];

/// The active MeshConfig's tracing settings, asked on every `/dashboard/settings`.
pub type TracingSettings = Arc<dyn Fn() -> TracingSpec + Send + Sync>;

#[derive(Clone)]
struct DashboardState {
    debug: Router,
    tracing: TracingSettings,
}

/// The dashboard's routes: the page, its assets and settings, and its views of `debug` (the
/// debug server's routes, which answer them).
pub fn router(debug: Router, tracing: TracingSettings) -> Router {
    Router::new()
        .route(PATH, get(|| asset("text/html; charset=utf-8", PAGE)))
        // The page's relative URLs need it without the slash.
        .route(
            "/dashboard/",
            get(|| async { Redirect::permanent("../dashboard") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/dashboard/settings", get(settings))
        .route("/dashboard/{view}", get(view))
        .with_state(DashboardState { debug, tracing })
}

async fn settings(State(state): State<DashboardState>) -> Response {
    let tracing = (state.tracing)();
    axum::Json(serde_json::json!({
        "traceUrl": tracing.trace_url,
        "searchUrl": tracing.search_url,
    }))
    .into_response()
}

/// `/dashboard/VIEW?QUERY`: the debug server's `/debug/VIEW?QUERY`, streamed as it answers.
async fn view(
    State(state): State<DashboardState>,
    Path(view): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !VIEWS.contains(&view.as_str()) {
        return (
            StatusCode::NOT_FOUND,
            format!("the dashboard has no {view}"),
        )
            .into_response();
    }
    let uri = match query {
        Some(query) => format!("/debug/{view}?{query}"),
        None => format!("/debug/{view}"),
    };
    let request = match Request::get(uri).body(Body::empty()) {
        Ok(request) => request,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    match state.debug.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new binary's page is picked up at once; the assets are small.
            (header::CACHE_CONTROL, "no-store"),
            // The page loads nothing from elsewhere; the browser enforces it too.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Nothing in the assets names another origin (the SVG namespace is a name, not a request).
    #[test]
    fn the_page_loads_nothing_from_other_origins() {
        for asset in [PAGE, SCRIPT, STYLE] {
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            for needle in ["http:", "https:", "//cdn", "@import", "url("] {
                assert!(!asset.contains(needle), "{needle} in an asset");
            }
        }
        assert!(PAGE.contains(r#"src="dashboard/app.js""#));
        assert!(PAGE.contains(r#"href="dashboard/style.css""#));
    }

    /// A dashboard whose debug routes echo the path and query they were asked for.
    fn serve() -> std::net::SocketAddr {
        let debug = Router::new().route(
            "/debug/{view}",
            get(
                |Path(view): Path<String>, RawQuery(query): RawQuery| async move {
                    format!("debug {view} {}", query.unwrap_or_default())
                },
            ),
        );
        let tracing: TracingSettings = Arc::new(|| TracingSpec {
            trace_url: Some("http://jaeger.example:16686/trace/{traceId}".into()),
            ..TracingSpec::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move { axum::serve(listener, router(debug, tracing)).await });
        addr
    }

    async fn get_text(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn assets_are_served_with_their_content_types() {
        let addr = serve();
        for (path, content_type, body) in [
            ("/dashboard", "text/html", "<!doctype html>"),
            ("/dashboard/app.js", "text/javascript", "use strict"),
            ("/dashboard/style.css", "text/css", "body"),
        ] {
            let answer = get_text(addr, path).await.to_ascii_lowercase();
            assert!(answer.starts_with("http/1.1 200"), "{path}: {answer}");
            assert!(
                answer.contains(&format!("content-type: {content_type}")),
                "{path}: {answer}"
            );
            assert!(answer.contains("cache-control: no-store"), "{path}");
            assert!(answer.contains(body), "{path}");
        }
    }

    #[tokio::test]
    async fn the_pages_views_are_the_debug_servers_and_nothing_else() {
        let addr = serve();
        let stats = get_text(addr, "/dashboard/stats?namespace=demo&window=30s").await;
        assert!(
            stats.ends_with("debug stats namespace=demo&window=30s"),
            "{stats}"
        );
        assert!(
            get_text(addr, "/dashboard/rules")
                .await
                .ends_with("debug rules ")
        );
        let config = get_text(addr, "/dashboard/config?pod=demo/web").await;
        assert!(config.starts_with("HTTP/1.1 404"), "{config}");
        let settings = get_text(addr, "/dashboard/settings").await;
        let body = settings.split("\r\n\r\n").nth(1).unwrap_or_default();
        let settings: serde_json::Value = serde_json::from_str(body).expect(body);
        assert_eq!(
            settings,
            serde_json::json!({
                "traceUrl": "http://jaeger.example:16686/trace/{traceId}",
                "searchUrl": null,
            })
        );
    }

    #[test]
    fn every_view_the_page_reads_is_served() {
        for view in VIEWS {
            assert!(SCRIPT.contains(&format!("\"dashboard/{view}")), "{view}");
        }
        assert!(SCRIPT.contains("\"dashboard/settings\""));
        assert!(
            !SCRIPT.contains("debug/"),
            "the page reads only dashboard/ paths"
        );
    }
}
