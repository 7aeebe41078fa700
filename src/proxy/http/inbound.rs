//! Requests to the app: forwarded to it on loopback, at the port the client asked for, with
//! server-side metrics.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::{ProxyBody, RequestBody, boxed};
use super::forward::{self, Forward, Target};
use super::{RequestContext, is_grpc, request_host, requested_upgrade};
use crate::proxy::Direction;
use crate::proxy::config::compiled::normalize_host;
use crate::proxy::headers;

pub async fn handle(
    mut request: Request<Incoming>,
    context: &RequestContext,
    started: Instant,
) -> Response<ProxyBody> {
    let config = context.shared.config.current();
    let connection = &context.connection;
    let upgrade = requested_upgrade(request.headers())
        .map(|protocol| (protocol, hyper::upgrade::on(&mut request)));
    let (mut parts, body) = request.into_parts();
    let grpc = is_grpc(&parts.headers);
    let service = request_host(&parts).map(normalize_host).unwrap_or_default();
    let source = config.workload_at(connection.peer.ip());
    let own = Some(&config.source.workload).filter(|w| !w.name.is_empty());
    let labels = forward::labels(Direction::Inbound, grpc, source, &service, own);

    let mut rng = fastrand::Rng::new();
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::ensure_request_id(&mut parts.headers, &mut rng);
    headers::propagate_trace(&mut parts.headers, false, &mut rng);
    let request = Forward {
        parts,
        body: RequestBody::streaming(boxed(body)),
        target: Target::Fixed(connection.target),
        route: None,
        labels,
        started,
        upgrade,
    };
    forward::forward(context, request).await
}
