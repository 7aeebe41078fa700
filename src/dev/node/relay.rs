//! TCP relays from the node's network namespace to the machine's loopback: how pods, kube-proxy
//! and CoreDNS reach the local apiserver (and other host services a pod should see at the
//! node's address) without adding any interface, route or rule to the machine's namespace.
//!
//! The listening socket is created inside the node namespace; the relay task itself runs in
//! the machine's namespace, so its outgoing connections reach the machine's loopback.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::netns::{Netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("listening on {addr} in network namespace {netns}: {source}")]
    Listen {
        addr: SocketAddr,
        netns: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Listens on `listen` inside `netns` and forwards every connection to `target` (an address of
/// the machine's namespace). The relay runs until the returned task is aborted.
pub async fn start(
    netns: &Netns,
    listen: SocketAddr,
    target: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>, RelayError> {
    let std_listener = netns
        .run_async(move || {
            let listener = std::net::TcpListener::bind(listen)?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })
        .await?
        .map_err(|source| RelayError::Listen {
            addr: listen,
            netns: netns.name.clone(),
            source,
        })?;
    let listener = TcpListener::from_std(std_listener).map_err(|source| RelayError::Listen {
        addr: listen,
        netns: netns.name.clone(),
        source,
    })?;
    Ok(tokio::spawn(async move {
        loop {
            let (mut inbound, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%listen, error = %err, "relay accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                match TcpStream::connect(target).await {
                    Ok(mut outbound) => {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        if let Err(err) =
                            tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                        {
                            tracing::debug!(%peer, %target, error = %err, "relayed connection ended");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%peer, %target, error = %err, "relay cannot reach its target")
                    }
                }
            });
        }
    }))
}
