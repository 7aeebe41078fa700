//! `skein proxy-status`: the proxies connected to the control plane, as a table — like
//! `istioctl proxy-status` — read from the control plane's `/debug/proxies`.

use anyhow::Context;

use super::push::ProxyStatus;
use crate::cli::ProxyStatusArgs;

pub async fn run(args: &ProxyStatusArgs) -> anyhow::Result<()> {
    let base = match &args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => crate::dev::up::control_plane_debug_url(&args.cluster)?,
    };
    let url = format!("{base}/debug/proxies");
    let body = http_get(&url)
        .await
        .with_context(|| format!("asking the control plane at {url}"))?;
    let proxies: Vec<ProxyStatus> = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer with a list of proxies"))?;
    print!("{}", table(&proxies));
    Ok(())
}

/// The table `run` prints: one row per proxy, the columns aligned.
pub fn table(proxies: &[ProxyStatus]) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_owned(),
        "POD".to_owned(),
        "IP".to_owned(),
        "SENT".to_owned(),
        "ACKED".to_owned(),
        "STATUS".to_owned(),
        "RESOURCES".to_owned(),
        "CONNECTED".to_owned(),
    ]];
    for p in proxies {
        let status = match &p.last_nack {
            Some(error) => format!("NACK: {error}"),
            None if p.acked_version == p.sent_version => "SYNCED".to_owned(),
            None => "STALE".to_owned(),
        };
        rows.push([
            p.namespace.clone(),
            p.pod.clone(),
            p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            p.sent_version.clone(),
            p.acked_version.clone(),
            status,
            p.resources.to_string(),
            p.connected_since.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A plain GET over HTTP/1.1 (the debug server is loopback HTTP).
async fn http_get(url: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let uri: http::Uri = url.parse().context("not a URL")?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri))
        .await
        .context("no answer within 10s")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    anyhow::ensure!(status.is_success(), "answered {status}: {}", text.trim());
    Ok(text)
}
