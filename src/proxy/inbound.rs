//! Inbound connections, before any protocol: mutual TLS is terminated here, plaintext is
//! admitted or refused by the port's mTLS mode, and what remains goes to the HTTP proxy or is
//! forwarded as opaque TCP to the app at the pod IP the client connected to (not loopback: see
//! [`super::listen`]).
//!
//! A connection is the mesh's mTLS when its ClientHello asks for a Skein identity as server
//! name (anything else, including an app's own TLS, is the app's business). Modes, per port:
//!
//! - `Permissive`: mTLS and plaintext;
//! - `Strict`: mTLS only. Plaintext is reset, counted
//!   (`skein_proxy_tcp_connections_rejected_total{reason="plaintext_refused"}`) and logged with
//!   the client's address, except the kubelet's probes: plaintext from the pod's node to a port
//!   its probes use (and, for HTTP probes, only their paths: [`probe_path_allowed`]);
//! - `Disabled`: as `Permissive` here; the control plane does not tell callers to use mTLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use bytes::Bytes;

use super::authz::{self, Decision, RequestFacts};
use super::config::{InboundMtls, MtlsMode};
use super::detect::{Detected, Detection, PrefixedIo, detect, detect_unless_opaque};
use super::metrics::RejectReason;
use super::mtls::Carries;
use super::server_first::{self, FirstWord};
use super::tcp::{self, OnTcp, Upstream};
use super::{Direction, Shared, http};
use skein_core::identity::SpiffeId;

/// Whether plaintext may come in from `peer` to `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    Admitted,
    /// Only as the kubelet's probe (Strict port, from the node).
    ProbeOnly,
    Refused,
}

/// Pure: the plaintext decision of a port's mode.
pub fn plaintext(mtls: &InboundMtls, peer: IpAddr, port: u16) -> Plaintext {
    if mtls.mode_for(port) != MtlsMode::Strict {
        return Plaintext::Admitted;
    }
    let from_node = mtls
        .node_ip
        .is_some_and(|node| node.to_canonical() == peer.to_canonical());
    if from_node && mtls.probes.iter().any(|probe| probe.port == port) {
        Plaintext::ProbeOnly
    } else {
        Plaintext::Refused
    }
}

/// Pure: whether a plaintext HTTP request admitted as a probe asks for a probe's path (a TCP
/// probe's port lets any request through: the kubelet only connects).
pub fn probe_path_allowed(mtls: &InboundMtls, port: u16, path: &str) -> bool {
    mtls.probes
        .iter()
        .filter(|probe| probe.port == port)
        .any(|probe| probe.http_paths.is_empty() || probe.http_paths.iter().any(|p| p == path))
}

/// Serves one accepted inbound connection whose target (the app, at the pod's address) is known.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    shared: &Arc<Shared>,
) {
    let config = shared.config.current();
    let mode = config.source.inbound_mtls.mode_for(target.port());
    // A meshed client always speaks first (its ClientHello), so waiting for its first bytes
    // costs it nothing. Only a Disabled opaque port skips that wait: nobody sends mTLS there,
    // and its server-first plaintext clients must not wait. A quiet client elsewhere may be
    // waiting for the app's greeting ([`server_first`]).
    let skip_detection = mode == MtlsMode::Disabled && config.opaque_ports.contains(&target.port());
    if !skip_detection && !server_first::client_spoke_within(&stream, server_first::QUIET).await {
        // Boxed, as `terminate` below: each connection's task is as large as its largest
        // branch, and these two would triple it for every connection (outbound ones too, which
        // share the accept loop's task type).
        Box::pin(quiet_client(stream, peer, target, shared)).await;
        return;
    }
    let timeout = config.source.detect_timeout.as_std();
    let detection = match detect_unless_opaque(skip_detection, &mut stream, timeout).await {
        Ok(detection) => detection,
        Err(err) => {
            tracing::debug!(%peer, error = %err, "inbound connection failed during protocol detection");
            tcp::reset(&stream);
            return;
        }
    };
    route(stream, detection, peer, target, shared, None).await;
}

/// Routes a connection whose first bytes are known: the mesh's mTLS is terminated; plaintext
/// the port's mode admits goes to the HTTP proxy or, opaque, to the app. `app`: a connection to
/// the app already open for a quiet client, whose opaque bytes it carries if they are opaque
/// (the access policies were checked before it was opened).
async fn route(
    stream: TcpStream,
    detection: Detection,
    peer: SocketAddr,
    target: SocketAddr,
    shared: &Arc<Shared>,
    app: Option<(tcp::Connected, Decision<'_>)>,
) {
    let config = shared.config.current();
    let mtls = &config.source.inbound_mtls;
    let mesh_tls = detection.protocol == Detected::Tls
        && detection
            .sni
            .as_deref()
            .is_some_and(SpiffeId::is_identity_server_name);
    let opaque_port = config.opaque_ports.contains(&target.port());
    let client = PrefixedIo::new(detection.prefix, stream);
    if mesh_tls {
        drop(app);
        Box::pin(terminate(client, peer, target, shared)).await;
        return;
    }
    if plaintext(mtls, peer.ip(), target.port()) == Plaintext::Refused {
        shared
            .metrics
            .tcp(Direction::Inbound)
            .rejected(RejectReason::PlaintextRefused)
            .inc();
        tracing::info!(%peer, port = target.port(), reason = %super::reasons::Reason::MtlsRequired, "refusing plaintext: the port's mTLS mode is Strict: resetting the TCP connection");
        tcp::reset(client.tcp());
        return;
    }
    match (detection.protocol, app) {
        (Detected::Http1 | Detected::Http2, app) if !opaque_port => {
            drop(app);
            let http2 = detection.protocol == Detected::Http2;
            http::serve(
                client,
                http2,
                connection(peer, target, None),
                shared.clone(),
            )
            .await;
        }
        (_, Some((app, decision))) => {
            authz::account(decision, &shared.metrics.http, "tcp", peer);
            tcp::forward_connected(client, app, peer, Direction::Inbound, target, shared).await;
        }
        (_, None) => forward_opaque(client, peer, None, target, shared).await,
    }
}

/// A plaintext client that sent nothing within [`server_first::QUIET`]: if it may reach the
/// app as opaque TCP, connect to the app and let whoever speaks first decide
/// ([`server_first`]); if not, wait for its bytes as for any other.
async fn quiet_client(
    mut stream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    shared: &Arc<Shared>,
) {
    let config = shared.config.current();
    let timeout = config.source.detect_timeout.as_std();
    let deadline = tokio::time::Instant::now() + timeout;
    let decision = opaque_decision(&config.source.access_policies, None, target.port());
    let admitted = plaintext(&config.source.inbound_mtls, peer.ip(), target.port())
        == Plaintext::Admitted
        && decision.denied.is_none();
    if !admitted {
        // The app must not greet a client that may not reach it.
        wait_then_route(stream, timeout, peer, target, shared).await;
        return;
    }
    let mut app = match tcp::open(
        Upstream::plain(target),
        Carries::Opaque,
        &shared.mtls,
        shared.connect_timeout,
    )
    .await
    {
        Ok(app) => app,
        Err(err) => {
            // Said once the client's bytes are known (HTTP gets an answer with the reason).
            tracing::debug!(%peer, error = %tcp::ErrorChain(&err), "the app is unreachable for a quiet client: waiting for the client");
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            wait_then_route(stream, left, peer, target, shared).await;
            return;
        }
    };
    let greeting = match server_first::first_word(&stream, &mut app, deadline).await {
        Ok(FirstWord::Server(greeting)) => {
            shared.metrics.tcp(Direction::Inbound).server_first.inc();
            greeting
        }
        Ok(FirstWord::Neither) => Bytes::new(),
        Ok(FirstWord::Client) => {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match detect(&mut stream, left).await {
                Ok(detection) => {
                    route(
                        stream,
                        detection,
                        peer,
                        target,
                        shared,
                        Some((app, decision)),
                    )
                    .await;
                }
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "inbound connection failed during protocol detection");
                    tcp::reset(&stream);
                    tcp::reset(app.tcp());
                }
            }
            return;
        }
        Err(err) => {
            tracing::debug!(%peer, error = %err, "the app's connection failed before anyone spoke");
            tcp::reset(&stream);
            return;
        }
    };
    authz::account(decision, &shared.metrics.http, "tcp", peer);
    let app = PrefixedIo::new(greeting, app);
    tcp::forward_connected(stream, app, peer, Direction::Inbound, target, shared).await;
}

/// Detects the client's bytes (within `timeout`) and routes them as usual.
async fn wait_then_route(
    mut stream: TcpStream,
    timeout: std::time::Duration,
    peer: SocketAddr,
    target: SocketAddr,
    shared: &Arc<Shared>,
) {
    match detect(&mut stream, timeout).await {
        Ok(detection) => route(stream, detection, peer, target, shared, None).await,
        Err(err) => {
            tracing::debug!(%peer, error = %err, "inbound connection failed during protocol detection");
            tcp::reset(&stream);
        }
    }
}

/// What the AccessPolicies say of opaque TCP from `peer_id` (none: plaintext) to `port`: they
/// decide on the port and the peer alone.
fn opaque_decision<'p>(
    policies: &'p [crate::config::AccessPolicy],
    peer_id: Option<&SpiffeId>,
    port: u16,
) -> Decision<'p> {
    let facts = RequestFacts {
        peer: peer_id,
        port,
        method: None,
        path: None,
    };
    authz::decide(policies, &facts)
}

/// Opaque TCP to the app, if the AccessPolicies let the peer reach the port.
async fn forward_opaque<C>(
    client: C,
    peer: SocketAddr,
    peer_id: Option<&SpiffeId>,
    target: SocketAddr,
    shared: &Arc<Shared>,
) where
    C: AsyncRead + AsyncWrite + Unpin + OnTcp,
{
    let config = shared.config.current();
    let decision = opaque_decision(&config.source.access_policies, peer_id, target.port());
    if authz::account(decision, &shared.metrics.http, "tcp", peer).is_some() {
        tcp::reset(client.tcp());
        return;
    }
    tcp::forward(
        client,
        peer,
        Direction::Inbound,
        Upstream::plain(target),
        shared,
    )
    .await;
}

/// Completes the mTLS handshake, then serves what the client sends inside it.
async fn terminate(
    client: PrefixedIo<TcpStream>,
    peer: SocketAddr,
    target: SocketAddr,
    shared: &Arc<Shared>,
) {
    let rejected = |reason| {
        shared
            .metrics
            .tcp(Direction::Inbound)
            .rejected(reason)
            .inc()
    };
    if !shared.mtls.ready() {
        rejected(RejectReason::NoCertificate);
        tracing::warn!(%peer, "refusing mutual TLS: this proxy has no certificate yet");
        tcp::reset(client.tcp());
        return;
    }
    let handshake = shared.mtls.accept(client);
    let accepted = match tokio::time::timeout(shared.connect_timeout, handshake).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => {
            rejected(RejectReason::MtlsHandshakeFailed);
            tracing::info!(%peer, error = %err, "mutual TLS handshake failed");
            return;
        }
        Err(_) => {
            rejected(RejectReason::MtlsHandshakeFailed);
            tracing::info!(%peer, "mutual TLS handshake timed out");
            return;
        }
    };
    shared.metrics.identity.handshake(accepted.resumed);
    let peer_id = accepted.peer;
    let mut stream = accepted.stream;
    tracing::debug!(%peer, peer_id = %peer_id, opaque = accepted.opaque, "mutual TLS established");
    let config = shared.config.current();
    let opaque = accepted.opaque || config.opaque_ports.contains(&target.port());
    let timeout = config.source.detect_timeout.as_std();
    let detection = match detect_unless_opaque(opaque, &mut stream, timeout).await {
        Ok(detection) => detection,
        Err(err) => {
            tracing::debug!(%peer, error = %err, "mTLS connection failed during protocol detection");
            tcp::reset(stream.tcp());
            return;
        }
    };
    let client = PrefixedIo::new(detection.prefix, stream);
    match detection.protocol {
        Detected::Http1 | Detected::Http2 => {
            let http2 = detection.protocol == Detected::Http2;
            let connection = connection(peer, target, Some(peer_id));
            http::serve(client, http2, connection, shared.clone()).await;
        }
        _ => forward_opaque(client, peer, Some(&peer_id), target, shared).await,
    }
}

fn connection(peer: SocketAddr, target: SocketAddr, peer_id: Option<SpiffeId>) -> http::Connection {
    http::Connection {
        direction: Direction::Inbound,
        peer,
        target,
        peer_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProbePort;

    fn mtls(mode: MtlsMode) -> InboundMtls {
        InboundMtls {
            mode,
            port_modes: [(9090, MtlsMode::Permissive)].into(),
            probes: vec![
                ProbePort {
                    port: 8080,
                    http_paths: vec!["/healthz".to_owned()],
                },
                ProbePort {
                    port: 5432,
                    http_paths: vec![],
                },
            ],
            node_ip: Some("10.0.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn strict_refuses_plaintext_but_the_nodes_probes() {
        let node: IpAddr = "10.0.0.1".parse().unwrap();
        let pod: IpAddr = "10.0.0.9".parse().unwrap();
        let strict = mtls(MtlsMode::Strict);
        assert_eq!(plaintext(&strict, pod, 8080), Plaintext::Refused);
        assert_eq!(plaintext(&strict, node, 8080), Plaintext::ProbeOnly);
        // The node's address written as IPv4-mapped IPv6 is still the node.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(plaintext(&strict, mapped, 8080), Plaintext::ProbeOnly);
        // Not a probed port: refused even from the node.
        assert_eq!(plaintext(&strict, node, 8081), Plaintext::Refused);
        // A port override beats the workload's mode.
        assert_eq!(plaintext(&strict, pod, 9090), Plaintext::Admitted);
        for mode in [MtlsMode::Permissive, MtlsMode::Disabled] {
            assert_eq!(plaintext(&mtls(mode), pod, 8080), Plaintext::Admitted);
        }
        // Without the node's address nothing is a probe.
        let unknown_node = InboundMtls {
            node_ip: None,
            ..strict.clone()
        };
        assert_eq!(plaintext(&unknown_node, node, 8080), Plaintext::Refused);
    }

    #[test]
    fn probes_reach_only_their_paths() {
        let strict = mtls(MtlsMode::Strict);
        assert!(probe_path_allowed(&strict, 8080, "/healthz"));
        assert!(!probe_path_allowed(&strict, 8080, "/admin"));
        assert!(probe_path_allowed(&strict, 5432, "/anything"));
        assert!(!probe_path_allowed(&strict, 8081, "/healthz"));
    }
}
