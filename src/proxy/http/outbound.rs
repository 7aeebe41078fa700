//! Requests from the app: which mesh service they are for, whether they may leave the mesh,
//! which route applies, and injected faults.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{ProxyBody, RequestBody};
use super::forward::{self, Forward, Local, Target};
use super::{Prepared, RequestContext, prepare, request_host};
use crate::Direction;
use crate::config::EgressProtocol;
use crate::config::compiled::normalize_host;
use crate::egress;
use crate::reasons::{Reason, service_ref};

pub async fn handle(
    request: Request<Incoming>,
    context: &RequestContext,
    started: Instant,
) -> Response<ProxyBody> {
    let config = context.shared.config.current();
    let original = context.connection.target;
    let mut rng = fastrand::Rng::new();
    let Prepared {
        mut parts,
        body,
        upgrade,
        grpc,
        span,
        tap,
    } = prepare(request, context, &mut rng);
    let host = request_host(&parts)
        .map(str::to_owned)
        .unwrap_or_else(|| original.ip().to_string());
    let service = config
        .service_at(original)
        .or_else(|| config.service_for_host(&host, original.port()))
        .cloned();
    let source = Some(&config.source.workload).filter(|w| !w.name.is_empty());
    // For the metrics label and the blocked message: the host without its port.
    let host_name = normalize_host(&host);

    let Some(service) = service else {
        // Not a mesh service: out of the mesh, if the policy lets it go.
        let labels = forward::labels(Direction::Outbound, grpc, source, &host_name, None);
        // Only to an address of the allowed host, whatever the client connected to.
        let routed = egress::route(
            &context.shared,
            &config,
            &host,
            original,
            EgressProtocol::Http,
            "http",
        )
        .await;
        let address = match routed {
            Ok(address) => address,
            Err(reason) => {
                let blocked = Local::new(
                    StatusCode::BAD_GATEWAY,
                    Reason::EgressBlocked,
                    egress::blocked_message_for(&host_name, reason)
                        .trim_end()
                        .to_owned(),
                );
                return forward::refuse(
                    context,
                    None,
                    labels,
                    started,
                    (span, tap),
                    &parts,
                    blocked,
                );
            }
        };
        let body = RequestBody::streaming(super::body::boxed(body));
        let request = Forward {
            parts,
            body,
            target: Target::Fixed(address),
            route: None,
            labels,
            started,
            upgrade,
            span,
            tap,
        };
        return forward::forward(context, request).await;
    };

    let labels = forward::labels(Direction::Outbound, grpc, source, &service.name, None);
    let route = service.routes.select(&parts);
    if let Some(route) = route {
        if let Some(fault) = &route.fault {
            if let Some(delay) = &fault.delay
                && rng.f64() * 100.0 < delay.percent
            {
                tokio::time::sleep(delay.duration.as_std()).await;
            }
            if let Some(abort) = &fault.abort
                && rng.f64() * 100.0 < abort.percent
            {
                let status =
                    StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let local = Local::new(
                    status,
                    Reason::FaultAbort,
                    format!(
                        "fault injected by route {:?} of {}:{} (abort {}% of requests with {})",
                        route.name,
                        service_ref(&service.name),
                        service.port,
                        abort.percent,
                        abort.status,
                    ),
                );
                return forward::refuse(
                    context,
                    Some(route),
                    labels,
                    started,
                    (span, tap),
                    &parts,
                    local,
                );
            }
        }
        route.edit_request_headers(&mut parts.headers);
    }
    let subset = route.and_then(|r| r.pick_backend(&mut rng)).cloned();
    let want_replay = route.is_some_and(|r| r.retry.is_some() || r.mirror.is_some());
    let body = super::body::boxed(body);
    let body = if want_replay && upgrade.is_none() {
        RequestBody::replayable(body)
    } else {
        RequestBody::streaming(body)
    };
    let request = Forward {
        parts,
        body,
        target: Target::Balanced {
            service: Arc::clone(&service),
            subset,
        },
        route,
        labels,
        started,
        upgrade,
        span,
        tap,
    };
    forward::forward(context, request).await
}
