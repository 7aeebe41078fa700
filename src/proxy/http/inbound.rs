//! Requests to the app: checked against the pod's AccessPolicies (a denied one is answered
//! `403` with `x-skein-error: access-denied` and a body naming the policy and why, and never
//! reaches the app), then forwarded to it at the pod IP and port the client asked for, with
//! server-side metrics.

use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{ProxyBody, RequestBody, boxed};
use super::forward::{self, Forward, Local, Target};
use super::{Prepared, RequestContext, prepare, request_host};
use crate::Direction;
use crate::authz::{self, RequestFacts};
use crate::config::compiled::normalize_host;
use crate::inbound::{self, Plaintext};
use crate::reasons::Reason;

pub async fn handle(
    mut request: Request<Incoming>,
    context: &RequestContext,
    started: Instant,
) -> Response<ProxyBody> {
    // An HTTP/1 request the caller's proxy carried over HTTP/2 is the HTTP/1 request again,
    // for the policies, the metrics and the app.
    super::multiplex::restore(&mut request);
    let config = context.shared.config.current();
    let connection = &context.connection;
    let Prepared {
        parts,
        body,
        upgrade,
        grpc,
        span,
        tap,
    } = prepare(request, context, &mut fastrand::Rng::new());
    let service = request_host(&parts).map(normalize_host).unwrap_or_default();
    let peer_id = connection.peer_id.as_ref();
    let source = config.workload_at(connection.peer.ip(), peer_id);
    let own = Some(&config.source.workload).filter(|w| !w.name.is_empty());
    let mut labels = forward::labels(Direction::Inbound, grpc, source, &service, own);
    if let Some(peer_id) = peer_id {
        labels.source_principal = peer_id.to_string();
        // The namespace is proven even when the workload is not known.
        labels.source_namespace.clone_from(&peer_id.namespace);
    }
    labels.tls = if peer_id.is_some() { "true" } else { "false" };

    // Plaintext let into a Strict port only as the kubelet's probe: only the probes' paths.
    let mtls = &config.source.inbound_mtls;
    let port = connection.target.port();
    if peer_id.is_none()
        && inbound::plaintext(mtls, connection.peer.ip(), port) == Plaintext::ProbeOnly
        && !inbound::probe_path_allowed(mtls, port, parts.uri.path())
    {
        tracing::info!(peer = %connection.peer, port, path = parts.uri.path(), "refusing plaintext: the port's mTLS mode is Strict and this is not a probe's path");
        let workload = &config.source.workload;
        let refused = Local::new(
            StatusCode::FORBIDDEN,
            Reason::MtlsRequired,
            format!(
                "port {port} of workload {}/{} takes mutual TLS only (mTLS mode Strict); plaintext from the node ({}) reaches the probes' paths only, not {}",
                workload.namespace,
                workload.name,
                connection.peer.ip(),
                parts.uri.path(),
            ),
        );
        return forward::refuse(context, None, labels, started, (span, tap), &parts, refused);
    }

    let path = authz::normalize_path(parts.uri.path());
    let facts = RequestFacts {
        peer: connection.peer_id.as_ref(),
        port: connection.target.port(),
        method: Some(&parts.method),
        path: Some(&path),
    };
    let decision = authz::decide(&config.source.access_policies, &facts);
    let metrics = &context.shared.metrics.http;
    if let Some(denial) = authz::account(decision, metrics, labels.protocol, connection.peer) {
        let local = Local::new(
            StatusCode::FORBIDDEN,
            Reason::AccessDenied,
            denial.to_string(),
        );
        return forward::refuse(context, None, labels, started, (span, tap), &parts, local);
    }

    let request = Forward {
        parts,
        body: RequestBody::streaming(boxed(body)),
        target: Target::Fixed(connection.target),
        route: None,
        labels,
        started,
        upgrade,
        span,
        tap,
    };
    forward::forward(context, request).await
}
