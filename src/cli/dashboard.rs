//! `skein dashboard`: where the control plane's web dashboard is
//! ([`crate::controlplane::dashboard`]). With `--url` or `--cluster` (the control plane `skein
//! dev up` runs on this machine) the debug server is already reachable: the command checks that
//! it serves the page and prints the URL. Otherwise it forwards a local port to a Running
//! control-plane pod's loopback debug port, one port-forward per browser connection (so a
//! long-lived tap stream does not hold up the page), prints the URL and serves until Ctrl-C.
//! The port-forward is what protects the page: it takes `pods/portforward` in `skein-system`.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::cli::debug_server::{self, DebugForward, DebugServerArgs};
use crate::controlplane::dashboard;

/// The local port `skein dashboard` forwards by default.
pub const DEFAULT_PORT: u16 = 50750;

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub server: DebugServerArgs,
    /// The local port (on 127.0.0.1) to forward to the control plane; 0 picks a free one.
    /// Only when port-forwarding (not with --url or --cluster, which need no forward).
    #[arg(long, default_value_t = DEFAULT_PORT, conflicts_with_all = ["url", "cluster"])]
    pub port: u16,
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
        return forward(args).await;
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
