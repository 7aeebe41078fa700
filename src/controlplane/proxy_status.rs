//! `skein proxy-status`: the proxies connected to the control plane — like
//! `istioctl proxy-status` — read from the control plane's `/debug/proxies`.
//!
//! Where the debug server is and how it is reached: [`debug_server`]. Each replica knows only
//! the proxies connected to it, so every Running replica is asked and the lists are merged.

use std::time::Duration;

use anyhow::Context;

use super::push::ProxyStatus;
use crate::cli::ProxyStatusArgs;
use crate::cli::debug_server::{self, DebugTarget};
use crate::cli::output;

const PROXIES_PATH: &str = "/debug/proxies";
/// Bound of the whole query, port-forward included.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: &ProxyStatusArgs) -> anyhow::Result<()> {
    let mut proxies = tokio::time::timeout(TIMEOUT, connected_proxies(args))
        .await
        .with_context(|| format!("no answer from the control plane within {TIMEOUT:?}"))??;
    if let Some(namespace) = &args.namespace {
        proxies.retain(|proxy| &proxy.namespace == namespace);
    }
    print!(
        "{}",
        output::render(args.output.format, &proxies, |p| table(p))?
    );
    Ok(())
}

async fn connected_proxies(args: &ProxyStatusArgs) -> anyhow::Result<Vec<ProxyStatus>> {
    query(args.server.target()).await
}

/// Every proxy connected to the control plane at `target`, from every replica (shared with
/// `skein check`). Not bounded in time: callers wrap it in their own timeout.
pub async fn query(target: DebugTarget<'_>) -> anyhow::Result<Vec<ProxyStatus>> {
    let mut proxies = Vec::new();
    for (asked, body) in debug_server::ask_all(target, PROXIES_PATH).await? {
        proxies.extend(parse_proxies(&body).with_context(|| asked)?);
    }
    Ok(super::debug::sorted(proxies))
}

fn parse_proxies(body: &[u8]) -> anyhow::Result<Vec<ProxyStatus>> {
    serde_json::from_slice(body).context("the answer is not a list of proxies")
}

/// The table `run` prints: one row per proxy, the columns aligned.
pub fn table(proxies: &[ProxyStatus]) -> String {
    let header = [
        "NAMESPACE",
        "POD",
        "IP",
        "SENT",
        "ACKED",
        "STATUS",
        "RESOURCES",
        "CERT EXPIRES",
        "CONNECTED",
    ]
    .map(str::to_owned);
    let mut rows = vec![header];
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
            p.cert_expires_in_seconds
                .map_or_else(|| "-".to_owned(), time_left),
            p.connected_since.clone(),
        ]);
    }
    output::columns(&rows)
}

/// `23h59m`, `4m10s`, `9s`, or `expired`: a certificate's time left, at a glance.
fn time_left(seconds: i64) -> String {
    if seconds <= 0 {
        return "expired".to_owned();
    }
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::*;
    use crate::controlplane::identity::authn::FixedTokens;
    use crate::controlplane::identity::{IdentityService, IssuedCerts};
    use crate::controlplane::push::{ConfigSource, ProxyIdentity, PushServer};
    use crate::plain_http;
    use crate::proxy::client::{self, ClientSettings};
    use crate::proxy::config::types::ProxyConfig;
    use crate::proxy::config::{Compiled, ConfigStore};

    /// The same (empty) configuration for every proxy.
    struct Unchanging(watch::Sender<u64>);

    impl ConfigSource for Unchanging {
        fn config_for(&self, _: &ProxyIdentity) -> ProxyConfig {
            ProxyConfig::default()
        }

        fn changes(&self) -> watch::Receiver<u64> {
            self.0.subscribe()
        }
    }

    async fn listener() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        (listener, addr)
    }

    /// A real configuration stream and debug server with one real proxy client connected,
    /// queried with `get` over a plain TCP stream (what a port-forward's stream stands in for).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_debug_server_answers_over_a_stream() {
        let source: Arc<dyn ConfigSource> = Arc::new(Unchanging(watch::channel(0).0));
        let authn = Arc::new(FixedTokens::pod("web-1-token", "demo", "web-1"));
        let issued = Arc::new(IssuedCerts::default());
        let expiry = std::time::SystemTime::now() + Duration::from_secs(7230);
        issued.record("demo", "web-1", expiry);
        let push = PushServer::new(source.clone(), authn.clone(), &mut Default::default())
            .with_identity(IdentityService {
                ca: Arc::default(),
                authn,
                mtls: Arc::new(crate::api::meshconfig::MtlsSpec::default),
                issued,
            });
        let token = FixedTokens::file("web-1-token");
        let (xds, xds_addr) = listener().await;
        tokio::spawn(
            push.clone()
                .serve_with_listener(xds, std::future::pending()),
        );
        let (debug, debug_addr) = listener().await;
        let router = crate::controlplane::debug::router(push.clone(), source);
        tokio::spawn(async move { axum::serve(debug, router).await });
        let identity = ProxyIdentity {
            pod: "web-1".to_owned(),
            namespace: "demo".to_owned(),
            ip: "198.18.0.7".parse().ok(),
        };
        let store = Arc::new(ConfigStore::new(Compiled::passthrough()));
        // The proxy is listed from the moment its stream opens, before its first push.
        let pushed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(client::run(
            ClientSettings {
                address: xds_addr,
                identity,
                token_path: Some(token.path().to_owned()),
                trust: Default::default(),
            },
            store,
            {
                let pushed = pushed.clone();
                move |_| pushed.notify_one()
            },
        ));
        pushed.notified().await;

        let stream = tokio::net::TcpStream::connect(&debug_addr)
            .await
            .expect("connect");
        let body = plain_http::get(stream, &debug_addr, PROXIES_PATH, 1 << 20)
            .await
            .expect("GET");
        let proxies = parse_proxies(&body).expect("a list of proxies");
        let text = table(&proxies);
        assert!(text.starts_with("NAMESPACE  POD"), "{text}");
        assert!(text.contains("demo       web-1  198.18.0.7"), "{text}");
        assert!(
            text.contains("CERT EXPIRES") && text.contains(" 2h0m "),
            "{text}"
        );

        let stream = tokio::net::TcpStream::connect(&debug_addr)
            .await
            .expect("connect");
        let error = plain_http::get(stream, &debug_addr, "/debug/config", 1 << 20)
            .await
            .expect_err("a 400");
        assert!(
            matches!(&error, plain_http::GetError::Status { status, .. } if status.as_u16() == 400),
            "{error}"
        );
    }

    #[test]
    fn certificate_lifetimes_read_at_a_glance() {
        assert_eq!(time_left(86_399), "23h59m");
        assert_eq!(time_left(250), "4m10s");
        assert_eq!(time_left(9), "9s");
        assert_eq!(time_left(0), "expired");
        assert_eq!(time_left(-5), "expired");
    }
}
