//! Requests to the app: forwarded to it on loopback, at the port the client asked for, with
//! server-side metrics.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::{ProxyBody, RequestBody, boxed};
use super::forward::{self, Forward, Target};
use super::{Prepared, RequestContext, prepare, request_host};
use crate::proxy::Direction;
use crate::proxy::config::compiled::normalize_host;

pub async fn handle(
    request: Request<Incoming>,
    context: &RequestContext,
    started: Instant,
) -> Response<ProxyBody> {
    let config = context.shared.config.current();
    let connection = &context.connection;
    let Prepared {
        parts,
        body,
        upgrade,
        grpc,
    } = prepare(request, &mut fastrand::Rng::new());
    let service = request_host(&parts).map(normalize_host).unwrap_or_default();
    let source = config.workload_at(connection.peer.ip());
    let own = Some(&config.source.workload).filter(|w| !w.name.is_empty());
    let labels = forward::labels(Direction::Inbound, grpc, source, &service, own);

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
