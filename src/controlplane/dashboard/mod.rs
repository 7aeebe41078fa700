//! The web dashboard, served by the control plane's debug server: one page, a stylesheet and a
//! small script, all compiled into the binary (no CDN, no web fonts, no build step), so it
//! works offline and costs nothing until someone opens it.
//!
//! | request | answer |
//! |---|---|
//! | `GET /dashboard` | the page (`text/html`) |
//! | `GET /dashboard/app.js` | the script (`text/javascript`) |
//! | `GET /dashboard/style.css` | the stylesheet (`text/css`) |
//!
//! The page reads only the debug server's JSON routes, from its own origin: `/debug/stats`
//! (golden signals, edges and the per-tier verdicts, as `skein stat` shows them: read, never
//! recomputed), `/debug/proxies` (sync state), `/debug/rules` (each traffic rule's conditions)
//! and `/debug/tap` (a live NDJSON stream, where the control plane serves it).
//!
//! Protection: the debug server listens on loopback inside the control-plane pod, so the
//! dashboard is not open to the cluster. Reaching it takes a port-forward (`skein dashboard`
//! makes one), which Kubernetes RBAC grants per user (`pods/portforward` in `skein-system`),
//! as it does for tap.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The page's path, for the URLs `skein dashboard` and `skein dev up` print.
pub const PATH: &str = "/dashboard";

/// The dashboard's routes, merged into the debug server's.
pub fn router() -> Router {
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

    #[tokio::test]
    async fn assets_are_served_with_their_content_types() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router()).await });
        for (path, content_type, body) in [
            ("/dashboard", "text/html", "<!doctype html>"),
            ("/dashboard/app.js", "text/javascript", "use strict"),
            ("/dashboard/style.css", "text/css", "body"),
        ] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            let answer = answer.to_ascii_lowercase();
            assert!(answer.starts_with("http/1.1 200"), "{path}: {answer}");
            assert!(
                answer.contains(&format!("content-type: {content_type}")),
                "{path}: {answer}"
            );
            assert!(answer.contains("cache-control: no-store"), "{path}");
            assert!(answer.contains(body), "{path}");
        }
    }
}
