//! Where an outbound connection (the app calling out) goes once its protocol is known: HTTP to
//! the HTTP proxy; anything else as opaque TCP, to a mesh Service's endpoint (over mutual TLS
//! when the endpoint is meshed) or, outside the mesh, to its original destination if the egress
//! policy lets it out. A client that says nothing at first may be talking to a server that
//! speaks first ([`server_first`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::balance::{Outcome, Pick};
use super::config::compiled::Service;
use super::config::{Compiled, EgressProtocol, Protocol};
use super::detect::{Detected, Detection, PrefixedIo, detect, detect_unless_opaque};
use super::mtls::Carries;
use super::server_first::{self, FirstWord};
use super::tcp::{self, OnTcp, Upstream};
use super::{Direction, Shared, egress, http};

/// Serves one accepted outbound connection to `target`, its original destination.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    shared: &Arc<Shared>,
) {
    // Before the control plane's first configuration nothing can be classified: wait for it
    // (bounded; see `ConfigStore::first`).
    let config = shared.config.first().await;
    let service = config.service_at(target).cloned();
    let opaque = config.opaque_ports.contains(&target.port())
        || service
            .as_ref()
            .is_some_and(|s| s.protocol == Protocol::Opaque)
        || shared
            .server_first
            .speaks_first(target, tokio::time::Instant::now());
    if !opaque && !server_first::client_spoke_within(&stream, server_first::QUIET).await {
        // Boxed: a rare branch that would otherwise size every connection's task.
        Box::pin(quiet_client(stream, peer, target, service, &config, shared)).await;
        return;
    }
    let timeout = config.source.detect_timeout.as_std();
    let detection = match detect_unless_opaque(opaque, &mut stream, timeout).await {
        Ok(detection) => detection,
        Err(err) => {
            tracing::debug!(%peer, error = %err, "outbound connection failed during protocol detection");
            tcp::reset(&stream);
            return;
        }
    };
    route(stream, detection, peer, target, service, &config, shared).await;
}

/// Routes a connection whose protocol is known.
async fn route(
    stream: TcpStream,
    detection: Detection,
    peer: SocketAddr,
    target: SocketAddr,
    service: Option<Arc<Service>>,
    config: &Compiled,
    shared: &Arc<Shared>,
) {
    let client = PrefixedIo::new(detection.prefix, stream);
    let protocol = detection.protocol;
    if matches!(protocol, Detected::Http1 | Detected::Http2) {
        let connection = http::Connection {
            direction: Direction::Outbound,
            peer,
            target,
            peer_id: None,
        };
        http::serve(
            client,
            protocol == Detected::Http2,
            connection,
            shared.clone(),
        )
        .await;
        return;
    }
    // TLS with a name goes out by that name; anything else by the address it was sent to.
    let (host, egress_protocol) = match (&detection.sni, protocol) {
        (Some(sni), Detected::Tls) => (sni.as_str(), EgressProtocol::Tls),
        _ => ("", EgressProtocol::Tcp),
    };
    let Some((upstream, pick)) = opaque_route(
        service.as_deref(),
        (host, egress_protocol),
        peer,
        target,
        config,
        shared,
    )
    .await
    else {
        tcp::reset(client.get_ref());
        return;
    };
    let reached = tcp::forward(client, peer, Direction::Outbound, upstream, shared).await;
    let outcome = if reached {
        Outcome::Cancelled
    } else {
        Outcome::ConnectFailure
    };
    finish(pick, outcome);
}

/// Tells the balancer how an opaque connection to its pick went. A connection's lifetime says
/// nothing about the endpoint's latency; only a failed connect is worth telling it.
fn finish(pick: Option<Pick>, outcome: Outcome) {
    if let Some(pick) = pick {
        pick.finish(outcome, Instant::now());
    }
}

/// Where opaque bytes to `target` go: a mesh Service's endpoint, as the balancer picks it (the
/// pick returned, to be told how it went); outside the mesh, `target` itself (or the name a TLS
/// client asked for: `host`) when the egress policy lets it out. `None` when they cannot go
/// anywhere, having said why.
async fn opaque_route<'c>(
    service: Option<&Service>,
    (host, egress_protocol): (&str, EgressProtocol),
    peer: SocketAddr,
    target: SocketAddr,
    config: &'c Compiled,
    shared: &Shared,
) -> Option<(Upstream<'c>, Option<Pick>)> {
    if let Some(service) = service {
        let mut rng = fastrand::Rng::new();
        let Some(pick) = service.balancer.pick(None, &[], Instant::now(), &mut rng) else {
            let message = http::forward::no_endpoints_message(
                &super::reasons::service_ref(&service.name),
                service.port,
                None,
                "opaque TCP",
                service.balancer.len(),
                service.not_ready,
            );
            tracing::info!(%peer, reason = %super::reasons::Reason::NoEndpoints, "{message}: resetting the TCP connection");
            return None;
        };
        let upstream = Upstream {
            address: pick.address(),
            identity: shared.mtls.identity_for(config, pick.address()),
        };
        return Some((upstream, Some(pick)));
    }
    let (host, label) = match egress_protocol {
        EgressProtocol::Tls => (host.to_owned(), "tls"),
        _ => (target.ip().to_string(), "tcp"),
    };
    match egress::route(shared, config, &host, target, egress_protocol, label).await {
        Ok(address) => Some((Upstream::plain(address), None)),
        Err(_) => {
            tracing::debug!(%peer, %target, "egress blocked: resetting the connection");
            None
        }
    }
}

/// A client that sent nothing within [`server_first::QUIET`]: open the way opaque bytes would
/// take and let whoever speaks first decide ([`server_first`]).
async fn quiet_client(
    mut stream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    service: Option<Arc<Service>>,
    config: &Compiled,
    shared: &Arc<Shared>,
) {
    let timeout = config.source.detect_timeout.as_std();
    let deadline = tokio::time::Instant::now() + timeout;
    // Where opaque bytes could not go, the client's bytes may yet go elsewhere (HTTP gets its
    // 503 with the reason; TLS may name an allowed host): wait for them as for any other.
    let reachable = match &service {
        Some(service) => !service.balancer.is_empty(),
        None => {
            let ip = target.ip().to_string();
            egress::decide(shared, config, &ip, target, EgressProtocol::Tcp)
                .await
                .is_ok()
        }
    };
    if !reachable {
        wait_then_route(stream, timeout, peer, target, service, config, shared).await;
        return;
    }
    let Some((upstream, pick)) = opaque_route(
        service.as_deref(),
        ("", EgressProtocol::Tcp),
        peer,
        target,
        config,
        shared,
    )
    .await
    else {
        tcp::reset(&stream);
        return;
    };
    let mut connected = match tcp::open(
        upstream,
        Carries::Opaque,
        &shared.mtls,
        shared.connect_timeout,
    )
    .await
    {
        Ok(connected) => connected,
        Err(err) => {
            // Said once the client's bytes are known: HTTP tries elsewhere and says why.
            tracing::debug!(%peer, error = %tcp::ErrorChain(&err), "a quiet client's upstream is unreachable: waiting for the client");
            finish(pick, Outcome::ConnectFailure);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            wait_then_route(stream, left, peer, target, service, config, shared).await;
            return;
        }
    };
    let greeting = match server_first::first_word(&stream, &mut connected, deadline).await {
        Ok(FirstWord::Server(greeting)) => {
            shared.metrics.tcp(Direction::Outbound).server_first.inc();
            if shared
                .server_first
                .learn(target, tokio::time::Instant::now())
            {
                tracing::info!(%target, "the server spoke first: connections to it are opaque TCP from now on, without waiting for the client");
            }
            greeting
        }
        Ok(FirstWord::Neither) => Bytes::new(),
        Ok(FirstWord::Client) => {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let detection = match detect(&mut stream, left).await {
                Ok(detection) => detection,
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "outbound connection failed during protocol detection");
                    tcp::reset(&stream);
                    tcp::reset(connected.tcp());
                    finish(pick, Outcome::Cancelled);
                    return;
                }
            };
            if detection.protocol != Detected::Opaque {
                // HTTP, or TLS routed by its name: the usual way; the open connection is unused.
                drop(connected);
                finish(pick, Outcome::Cancelled);
                route(stream, detection, peer, target, service, config, shared).await;
                return;
            }
            let client = PrefixedIo::new(detection.prefix, stream);
            tcp::forward_connected(
                client,
                connected,
                peer,
                Direction::Outbound,
                upstream.address,
                shared,
            )
            .await;
            finish(pick, Outcome::Cancelled);
            return;
        }
        Err(err) => {
            tracing::debug!(%peer, %target, error = %err, "a quiet client's upstream failed before anyone spoke");
            tcp::reset(&stream);
            finish(pick, Outcome::Cancelled);
            return;
        }
    };
    let upstream_io = PrefixedIo::new(greeting, connected);
    tcp::forward_connected(
        stream,
        upstream_io,
        peer,
        Direction::Outbound,
        upstream.address,
        shared,
    )
    .await;
    finish(pick, Outcome::Cancelled);
}

/// Detects the client's bytes (within `timeout`) and routes them as usual.
async fn wait_then_route(
    mut stream: TcpStream,
    timeout: std::time::Duration,
    peer: SocketAddr,
    target: SocketAddr,
    service: Option<Arc<Service>>,
    config: &Compiled,
    shared: &Arc<Shared>,
) {
    match detect(&mut stream, timeout).await {
        Ok(detection) => route(stream, detection, peer, target, service, config, shared).await,
        Err(err) => {
            tracing::debug!(%peer, error = %err, "outbound connection failed during protocol detection");
            tcp::reset(&stream);
        }
    }
}
