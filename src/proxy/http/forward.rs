//! Sending a request upstream: the tries, retries with back-off under a budget, per-try and
//! overall timeouts, endpoint choice, mirroring, WebSocket upgrades, and the request metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;

use super::body::{self, Metered, OnResponseEnd, ProxyBody, RequestBody};
use super::upstream::{UpstreamBody, UpstreamError};
use super::{RequestContext, local_response};
use crate::Direction;
use crate::balance::{self, Pick};
use crate::config::compiled::Service;
use crate::config::{RetryOn, RetryPolicy, Workload};
use crate::limits::Activity;
use crate::metrics::{CutReason, HttpMetrics, LatencyLabels, RequestLabels, RetryLabels};
use crate::reasons::{Reason, service_ref};
use crate::recent::RequestLine;
use crate::retry::{self, AttemptOutcome};
use crate::routes::CompiledRoute;
use crate::tap::{self, TapHub, TapRequest};
use crate::trace::Span;
use skein_core::xds::tap::TapEvent;

/// Where a request goes.
pub enum Target {
    /// One address: the app (inbound) or an original destination outside the mesh.
    Fixed(SocketAddr),
    /// A mesh service's endpoints, optionally only those with these labels.
    Balanced {
        service: Arc<Service>,
        subset: Option<BTreeMap<String, String>>,
    },
}

/// Everything [`forward`] needs about one request.
pub struct Forward<'a> {
    pub parts: Parts,
    pub body: RequestBody,
    pub target: Target,
    pub route: Option<&'a CompiledRoute>,
    /// The labels the request's metrics carry; the destination workload is filled in from the
    /// endpoint chosen, when it is known.
    pub labels: RequestLabels,
    pub started: Instant,
    /// The client's side of an HTTP/1.1 upgrade it asked for.
    pub upgrade: Option<(HeaderValue, OnUpgrade)>,
    /// The request's span, when it is sampled.
    pub span: Option<Box<Span>>,
    /// The request as a running tap sees it; `None` when nobody taps.
    pub tap: Option<Box<TapRequest>>,
}

/// Sends the request and returns the response to give the client (the upstream's, or one the
/// proxy made when there was none), with its metrics recorded when its body ends.
pub async fn forward(context: &RequestContext, request: Forward<'_>) -> Response<ProxyBody> {
    let Forward {
        parts,
        body,
        target,
        route,
        mut labels,
        started,
        upgrade,
        mut span,
        mut tap,
    } = request;
    let overall = route.and_then(|r| r.timeout);
    let mut line = RequestLine::of(&parts);
    let tries = Tries {
        context,
        grpc: labels.protocol == "grpc",
        parts,
        body,
        target: &target,
        route,
        upgrade,
    };
    let result = match overall {
        Some(limit) => {
            let run = tries.run(&mut labels, &mut span, &mut line, &mut tap);
            match tokio::time::timeout(limit, run).await {
                Ok(result) => result,
                Err(_) => Err(Local::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    Reason::Timeout,
                    timeout_message(
                        &destination(context, &target, &labels),
                        limit,
                        route,
                        line.attempts,
                    ),
                )),
            }
        }
        None => tries.run(&mut labels, &mut span, &mut line, &mut tap).await,
    };
    finish(
        context,
        route,
        labels,
        started,
        Observers {
            span,
            tap,
            line: &line,
        },
        result,
    )
}

/// The destination as a message names it: `demo/backend:8080`, `the app at 10.0.0.5:8080`,
/// `api.example.com (203.0.113.7:443)`. Built only on the error path.
fn destination(context: &RequestContext, target: &Target, labels: &RequestLabels) -> String {
    match target {
        Target::Balanced { service, .. } => {
            format!("{}:{}", service_ref(&service.name), service.port)
        }
        Target::Fixed(address) if context.connection.direction == Direction::Inbound => {
            format!("the app at {address}")
        }
        Target::Fixed(address) => format!("{} ({address})", labels.destination_service),
    }
}

/// `route "slow"`, or `no route` for a request no RouteRule routes.
fn route_words(route: Option<&CompiledRoute>) -> String {
    match route {
        Some(route) if !route.name.is_empty() => format!("route {:?}", route.name),
        Some(route) => format!("route #{}", route.index),
        None => "no route".to_owned(),
    }
}

/// `demo/backend:8080 did not answer within 2s (route "slow", 3 attempts)`.
fn timeout_message(
    destination: &str,
    limit: Duration,
    route: Option<&CompiledRoute>,
    attempts: u32,
) -> String {
    format!(
        "{destination} did not answer within {} ({}, {})",
        skein_core::Duration::from(limit),
        route_words(route),
        attempts_words(attempts),
    )
}

fn attempts_words(attempts: u32) -> String {
    if attempts == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{attempts} attempts")
    }
}

/// The `no-endpoints` message: what the proxy knows of the Service's endpoints (`not_ready`:
/// the ones the control plane saw but that cannot take requests).
pub(crate) fn no_endpoints_message(
    service: &str,
    port: u16,
    subset: Option<&BTreeMap<String, String>>,
    route: &str,
    ready: usize,
    not_ready: u32,
) -> String {
    let total = u64::from(not_ready) + u64::try_from(ready).unwrap_or(u64::MAX);
    match subset {
        Some(subset) if ready > 0 => {
            let labels: Vec<String> = subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "Service {service} port {port} has no ready endpoint with labels {} ({route} picked them; {ready} ready without them, {not_ready} not ready)",
                labels.join(","),
            )
        }
        _ => {
            format!("Service {service} port {port} has no ready endpoints ({total} pods, 0 ready)")
        }
    }
}

/// What watches a request besides its metrics: its trace span (if sampled), the running taps'
/// view of it (if any), and its line for the recent-errors ring.
pub struct Observers<'a> {
    pub span: Option<Box<Span>>,
    pub tap: Option<Box<TapRequest>>,
    pub line: &'a RequestLine,
}

/// The proxy's own answer to a request it refuses before forwarding it (strict mTLS, an access
/// policy, egress, an injected fault), observed and recorded like any other response.
pub fn refuse(
    context: &RequestContext,
    route: Option<&CompiledRoute>,
    labels: RequestLabels,
    started: Instant,
    (span, tap): (Option<Box<Span>>, Option<Box<TapRequest>>),
    parts: &http::request::Parts,
    local: Local,
) -> Response<ProxyBody> {
    let line = RequestLine::of(parts);
    let observers = Observers {
        span,
        tap,
        line: &line,
    };
    finish(context, route, labels, started, observers, Err(local))
}

/// The response the client gets, wrapped so that its metrics are recorded when its body ends:
/// the upstream's (with the route's header edits), or the proxy's own when there was none.
pub fn finish(
    context: &RequestContext,
    route: Option<&CompiledRoute>,
    mut labels: RequestLabels,
    started: Instant,
    observers: Observers<'_>,
    result: Result<Response<ProxyBody>, Local>,
) -> Response<ProxyBody> {
    let Observers {
        mut span,
        tap,
        line,
    } = observers;
    let direction = context.connection.direction;
    let metrics = &context.shared.metrics.http;
    let mut proxy_error = "";
    let trace_id = span.as_ref().map(|span| span.context.trace_id);
    let (response, grpc_status) = match result {
        Ok(response) => {
            let grpc = retry::grpc_status(response.headers());
            if response.status().is_server_error() {
                // An upstream proxy's reason, if one answered for the upstream.
                let reason = response
                    .headers()
                    .get(super::ERROR_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let status = response.status().as_u16();
                let error = line.error(direction, status, reason, None, trace_id.as_ref());
                context.shared.recent_errors.record(error);
            }
            (response, grpc)
        }
        Err(local) => {
            proxy_error = local.reason.name();
            if let Some(span) = &mut span {
                span.proxy_error = Some(local.reason.name());
            }
            metrics.local_response(direction, local.reason.name());
            tracing::debug!(
                %direction,
                destination = %labels.destination_service,
                reason = local.reason.name(),
                message = %local.message,
                "answering with a proxy response"
            );
            let error = line.error(
                direction,
                local.status.as_u16(),
                Some(local.reason.name().to_owned()),
                Some(local.text()),
                trace_id.as_ref(),
            );
            context.shared.recent_errors.record(error);
            (local.into_response(), None)
        }
    };
    let (mut parts, body) = response.into_parts();
    if let Some(route) = route {
        route.edit_response_headers(&mut parts.headers);
    }
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        crate::headers::remove_hop_by_hop(&mut parts.headers);
    }
    labels.status_code = parts.status.as_u16();
    let span = span.map(|mut span| {
        span.status_code = labels.status_code;
        span.destination.clone_from(&labels.destination_service);
        (span, context.shared.clone())
    });
    let tap = tap.map(|request| {
        let event = tap_event(context, &labels, *request, &parts.headers, proxy_error);
        (Box::new(event), context.shared.tap.clone())
    });
    let recorder = Recorder {
        metrics: metrics.clone(),
        labels,
        span,
        tap,
    };
    let body = Metered::new(body, started, grpc_status, Box::new(recorder));
    Response::from_parts(parts, body::boxed(body))
}

/// A response the proxy makes because there is no upstream one.
pub struct Local {
    status: StatusCode,
    reason: Reason,
    /// What happened, with the names (the body's text after `REASON: `).
    message: String,
}

impl Local {
    pub fn new(status: StatusCode, reason: Reason, message: String) -> Self {
        Self {
            status,
            reason,
            message,
        }
    }

    /// The body's text: `REASON: message`.
    fn text(&self) -> String {
        super::local_text(self.reason, &self.message)
    }

    fn into_response(self) -> Response<ProxyBody> {
        let mut response = local_response(self.status, self.reason, &self.message);
        if self.reason == Reason::Overloaded {
            response.headers_mut().insert(
                "x-skein-overloaded",
                HeaderValue::from_static("max-pending-requests"),
            );
        }
        response
    }

    /// `destination`: as [`destination`] names it; `context`: the route and the attempts.
    fn from_upstream_error(err: &UpstreamError, destination: &str, context: &str) -> Self {
        match err {
            UpstreamError::Connect { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ConnectFailure,
                format!("{destination}: {err} ({context})"),
            ),
            _ => Self::new(
                StatusCode::BAD_GATEWAY,
                Reason::UpstreamReset,
                format!("{destination}: {err} ({context})"),
            ),
        }
    }
}

/// The tries of one request.
struct Tries<'a> {
    context: &'a RequestContext,
    /// A gRPC call (its status may decide a retry).
    grpc: bool,
    parts: Parts,
    body: RequestBody,
    target: &'a Target,
    route: Option<&'a CompiledRoute>,
    upgrade: Option<(HeaderValue, OnUpgrade)>,
}

impl Tries<'_> {
    /// Tries until there is a response to give; `span` (if sampled) learns the endpoint and the
    /// retries.
    async fn run(
        mut self,
        labels: &mut RequestLabels,
        span: &mut Option<Box<Span>>,
        line: &mut RequestLine,
        tap: &mut Option<Box<TapRequest>>,
    ) -> Result<Response<ProxyBody>, Local> {
        let shared = &self.context.shared;
        let metrics = &shared.metrics.http;
        let policy = self.route.and_then(|r| r.retry.as_ref());
        let budget = match (self.target, self.route) {
            (Target::Balanced { service, .. }, Some(route)) if policy.is_some() => {
                service.retry_budgets.get(route.index).cloned()
            }
            _ => None,
        };
        if let Some(budget) = &budget {
            budget.record_request(Instant::now());
        }
        let _pending = match self.target {
            Target::Balanced { service, .. } => Some(admit(service, self.route)?),
            Target::Fixed(_) => None,
        };

        if policy.is_some() && self.upgrade.is_none() {
            // A retried request's small body is read first, so no try can lose it.
            if let Err(err) = self.body.read_small().await {
                return Err(Local::new(
                    StatusCode::BAD_REQUEST,
                    Reason::ClientBodyError,
                    format!(
                        "reading the request body for {}: {err}",
                        destination(self.context, self.target, labels)
                    ),
                ));
            }
        }
        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retries = 0;
        loop {
            let Some(body) = self.body.take() else {
                // A streamed body was already sent on an earlier try; nothing to retry with.
                return Err(Local::new(
                    StatusCode::BAD_GATEWAY,
                    Reason::UpstreamReset,
                    format!(
                        "{} failed and the request body, already streamed, cannot be replayed for a retry ({}, {})",
                        destination(self.context, self.target, labels),
                        route_words(self.route),
                        attempts_words(line.attempts),
                    ),
                ));
            };
            let (address, pick) = match self.target {
                Target::Fixed(address) => (*address, None),
                Target::Balanced { service, subset } => {
                    let Some(pick) =
                        service
                            .balancer
                            .pick(subset.as_ref(), &tried, Instant::now(), &mut rng)
                    else {
                        return Err(Local::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            Reason::NoEndpoints,
                            no_endpoints_message(
                                &service_ref(&service.name),
                                service.port,
                                subset.as_ref(),
                                &route_words(self.route),
                                service.balancer.len(),
                                service.not_ready,
                            ),
                        ));
                    };
                    (pick.address(), Some(pick))
                }
            };
            if let Some(workload) = pick.as_ref().and_then(Pick::workload) {
                set_destination(labels, workload);
            }
            tried.push(address);
            line.upstream = Some(address);
            line.attempts += 1;
            if let Some(span) = span.as_mut() {
                // Inbound, the peer is the client (set when the span started).
                if self.context.connection.direction == Direction::Outbound {
                    span.peer = Some(address);
                }
                span.retries = retries;
            }
            if let Some(tap) = tap.as_mut() {
                tap.upstream = Some(address);
                tap.retries = retries;
            }
            let sent = Instant::now();
            // The request head is cloned only if a retry or a mirror may need it again.
            let needed_again = policy.is_some_and(|p| retries < p.attempts)
                || (tried.len() == 1 && self.route.is_some_and(|r| r.mirror.is_some()));
            let mut parts = if needed_again {
                self.parts.clone()
            } else {
                std::mem::replace(&mut self.parts, http::Request::new(()).into_parts().0)
            };
            if let Some((protocol, _)) = &self.upgrade {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(UPGRADE, protocol.clone());
            }
            let wait_for_grpc_status = self.grpc && policy.is_some_and(retries_on_grpc_status);
            let attempt = async {
                let response = shared.upstreams.send(address, parts, body).await?;
                Ok::<_, UpstreamError>(if wait_for_grpc_status {
                    with_grpc_status(response).await
                } else {
                    (response.map(body::boxed), None)
                })
            };
            let attempt = match policy.and_then(|p| p.per_try_timeout) {
                Some(limit) => match tokio::time::timeout(limit.as_std(), attempt).await {
                    Ok(result) => result.map_err(Some),
                    Err(_) => Err(None),
                },
                None => attempt.await.map_err(Some),
            };
            let latency = sent.elapsed();
            let outcome = match &attempt {
                Ok((response, trailer_status)) => AttemptOutcome::Response {
                    status: response.status(),
                    grpc_status: retry::grpc_status(response.headers()).or(*trailer_status),
                },
                Err(Some(err)) => err.outcome(),
                Err(None) => AttemptOutcome::PerTryTimeout,
            };
            if let Some(pick) = pick {
                report(metrics, pick, &outcome, latency, labels);
            }
            if tried.len() == 1 {
                // After the first try, when the request body has been read (and copied).
                self.mirror();
            }

            tracing::trace!(
                destination = %labels.destination_service,
                %address,
                ?outcome,
                replayable = self.body.is_replayable(),
                "try finished"
            );
            let response_headers = attempt.as_ref().ok().map(|(r, _)| r.headers());
            let retry_as = retry::retried_as(outcome, response_headers);
            let retry = policy.filter(|p| {
                retries < p.attempts
                    && self.body.is_replayable()
                    && self.upgrade.is_none()
                    && retry::should_retry(p, &retry_as)
            });
            if let Some(policy) = retry {
                let allowed = budget
                    .as_ref()
                    .is_none_or(|b| b.try_withdraw(Instant::now()));
                let result = if allowed { "sent" } else { "budget_exhausted" };
                metrics
                    .retries
                    .get_or_create(&RetryLabels {
                        destination_service: labels.destination_service.clone(),
                        result,
                    })
                    .inc();
                if allowed {
                    retries += 1;
                    tracing::debug!(
                        destination = %labels.destination_service,
                        %address,
                        ?outcome,
                        retry = retries,
                        "retrying"
                    );
                    tokio::time::sleep(retry::backoff(policy, retries, &mut rng)).await;
                    continue;
                }
            }
            return match attempt {
                Ok((mut response, _)) => {
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let Some((_, client_side)) = self.upgrade.take() else {
                            // Switching to a protocol nobody asked the proxy to tunnel would
                            // hand the client's connection to the app unrouted.
                            return Err(Local::new(
                                StatusCode::BAD_GATEWAY,
                                Reason::UpstreamProtocolSwitch,
                                format!(
                                    "{}: endpoint {address} switched protocols (101) without a WebSocket upgrade being asked for",
                                    destination(self.context, self.target, labels)
                                ),
                            ));
                        };
                        let direction = self.context.connection.direction;
                        tunnel(
                            client_side,
                            hyper::upgrade::on(&mut response),
                            shared.limits.idle_timeout,
                            shared
                                .metrics
                                .tcp(direction)
                                .cut(CutReason::IdleTimeout)
                                .clone(),
                        );
                    }
                    Ok(response)
                }
                Err(Some(err)) => Err(Local::from_upstream_error(
                    &err,
                    &destination(self.context, self.target, labels),
                    &format!(
                        "{}, {}",
                        route_words(self.route),
                        attempts_words(line.attempts)
                    ),
                )),
                Err(None) => Err(Local::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    Reason::Timeout,
                    format!(
                        "{}: endpoint {address} did not answer within the per-try timeout of {} ({}, {})",
                        destination(self.context, self.target, labels),
                        policy
                            .and_then(|p| p.per_try_timeout)
                            .map_or_else(String::new, |t| t.to_string()),
                        route_words(self.route),
                        attempts_words(line.attempts),
                    ),
                )),
            };
        }
    }

    /// Sends a copy of the request to the route's mirror endpoints and forgets it (only when
    /// the body could be kept: see [`RequestBody`]).
    fn mirror(&self) {
        let (Some(route), Target::Balanced { service, .. }) = (self.route, self.target) else {
            return;
        };
        let Some(mirror) = &route.mirror else { return };
        let Some(body) = self.body.replay() else {
            return;
        };
        if fastrand::f64() * 100.0 >= mirror.percent {
            return;
        }
        let subset = (!mirror.subset.is_empty()).then_some(&mirror.subset);
        let mut rng = fastrand::Rng::new();
        let Some(pick) = service.balancer.pick(subset, &[], Instant::now(), &mut rng) else {
            return;
        };
        let shared = self.context.shared.clone();
        let parts = self.parts.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = match shared.upstreams.send(pick.address(), parts, body).await {
                Ok(response) => balance::Outcome::Response {
                    latency: sent.elapsed(),
                    failure: response.status().is_server_error(),
                },
                Err(UpstreamError::Connect { .. }) => balance::Outcome::ConnectFailure,
                Err(_) => balance::Outcome::Response {
                    latency: sent.elapsed(),
                    failure: true,
                },
            };
            pick.finish(outcome, Instant::now());
        });
    }
}

/// Holds one of the service's pending-request slots, or refuses the request when none is free.
fn admit(service: &Arc<Service>, route: Option<&CompiledRoute>) -> Result<PendingSlot, Local> {
    let limit = service
        .limits
        .max_pending_requests
        .into_iter()
        .chain(service.limits.max_connections)
        .min();
    let now = service.pending.fetch_add(1, Ordering::AcqRel) + 1;
    let slot = PendingSlot(service.clone());
    if let Some(limit) = limit
        && now > limit
    {
        let which = if service.limits.max_pending_requests == Some(limit) {
            "maxPendingRequests"
        } else {
            "maxConnections"
        };
        return Err(Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Overloaded,
            format!(
                "Service {}:{} has {limit} requests in flight, its TrafficPolicy's {which}: refused without sending ({})",
                service_ref(&service.name),
                service.port,
                route_words(route),
            ),
        ));
    }
    Ok(slot)
}

struct PendingSlot(Arc<Service>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn set_destination(labels: &mut RequestLabels, workload: &Workload) {
    if labels.destination_workload != workload.name {
        labels.destination_workload.clone_from(&workload.name);
    }
    if labels.destination_namespace != workload.namespace {
        labels.destination_namespace.clone_from(&workload.namespace);
    }
}

/// Tells the balancer how the try went, and counts an ejection it caused.
fn report(
    metrics: &HttpMetrics,
    pick: Pick,
    outcome: &AttemptOutcome,
    latency: Duration,
    labels: &RequestLabels,
) {
    let outcome = match outcome {
        AttemptOutcome::ConnectFailure => balance::Outcome::ConnectFailure,
        AttemptOutcome::Response { status, .. } => balance::Outcome::Response {
            latency,
            failure: status.is_server_error(),
        },
        AttemptOutcome::RefusedStream | AttemptOutcome::Reset | AttemptOutcome::PerTryTimeout => {
            balance::Outcome::Response {
                latency,
                failure: true,
            }
        }
    };
    if let Some(ejection) = pick.finish(outcome, Instant::now()) {
        metrics
            .outlier_ejections
            .get_or_create(&crate::metrics::ServiceLabels {
                destination_service: labels.destination_service.clone(),
            })
            .inc();
        tracing::info!(
            destination = %labels.destination_service,
            endpoint = %ejection.address,
            times = ejection.times,
            "endpoint ejected by outlier detection"
        );
    }
}

/// Whether the policy retries on a gRPC status (which usually comes in trailers).
fn retries_on_grpc_status(policy: &RetryPolicy) -> bool {
    policy.retry_on.iter().any(|on| {
        matches!(
            on,
            RetryOn::Unavailable | RetryOn::Cancelled | RetryOn::DeadlineExceeded
        )
    })
}

/// A gRPC error without messages is headers then trailers; to retry on its status the proxy
/// waits for the first frame of the body: trailers give the status (and the response is
/// rebuilt from them), a message means the call is answering and is streamed on untouched.
async fn with_grpc_status(response: Response<UpstreamBody>) -> (Response<ProxyBody>, Option<i32>) {
    let (parts, mut incoming) = response.into_parts();
    let first = incoming.frame().await;
    let status = match &first {
        Some(Ok(frame)) => frame.trailers_ref().and_then(retry::grpc_status),
        _ => None,
    };
    let first = first.map(|frame| frame.map_err(body::BoxError::from));
    let rest = body::boxed(incoming);
    let rebuilt =
        StreamBody::new(futures::stream::iter(first).chain(http_body_util::BodyStream::new(rest)));
    (Response::from_parts(parts, body::boxed(rebuilt)), status)
}

/// Copies bytes between the client and the upstream once both sides have switched protocols,
/// until both are done or no byte moved either way for `idle_timeout` (counted in `cut`).
fn tunnel(client: OnUpgrade, upstream: OnUpgrade, idle_timeout: Duration, cut: Counter) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let activity = Activity::default();
        let mut client = activity.wrap(TokioIo::new(client));
        let mut upstream = activity.wrap(TokioIo::new(upstream));
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(err) = copied {
                    tracing::debug!(error = %err, "upgraded connection ended with an error");
                }
            }
            () = activity.expired(idle_timeout) => {
                cut.inc();
                tracing::info!(timeout = ?idle_timeout, "closing an upgraded connection idle for the idle timeout");
            }
        }
    });
}

/// Records a request's metrics (and ends its span) when its response body ends.
struct Recorder {
    metrics: HttpMetrics,
    labels: RequestLabels,
    /// The span, and the proxy state holding its exporter.
    span: Option<(Box<Span>, Arc<crate::Shared>)>,
    /// The tap event, finished and published when the response ends.
    tap: Option<(Box<TapEvent>, Arc<TapHub>)>,
}

impl OnResponseEnd for Recorder {
    fn ended(mut self: Box<Self>, grpc_status: Option<i32>, completed: bool, elapsed: Duration) {
        if let Some((mut span, shared)) = self.span.take()
            && let Some(tracer) = &shared.tracer
        {
            span.grpc_status = grpc_status;
            span.completed = completed;
            span.duration = elapsed;
            tracer.exporter.submit(*span);
        }
        if let Some((mut event, hub)) = self.tap.take() {
            event.grpc_status = grpc_status;
            event.completed = completed;
            event.latency_micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            hub.publish(&event);
        }
        let labels = &mut self.labels;
        if let Some(status) = grpc_status {
            labels.grpc_status = status.to_string();
        }
        let failed = labels.status_code >= 500
            || labels.status_code == 0
            || grpc_status.is_some_and(|s| s != 0)
            || !completed;
        labels.classification = if failed { "failure" } else { "success" };
        self.metrics.requests.get_or_create(labels).inc();
        self.metrics
            .latency
            .get_or_create(&LatencyLabels {
                direction: labels.direction,
                destination_service: labels.destination_service.clone(),
                classification: labels.classification,
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The tap event of a request whose response head is known (latency, gRPC status and
/// completion come when its body ends). Made only while a tap runs.
fn tap_event(
    context: &RequestContext,
    labels: &RequestLabels,
    request: TapRequest,
    response_headers: &http::HeaderMap,
    proxy_error: &str,
) -> TapEvent {
    let shared = &context.shared;
    let own_identity = || {
        shared
            .credentials
            .current()
            .map(|loaded| loaded.id.to_string())
    };
    let (tls, source_identity, destination_identity) = match context.connection.direction {
        Direction::Inbound => {
            let peer = context.connection.peer_id.as_ref().map(ToString::to_string);
            let tls = peer.is_some();
            (tls, peer, own_identity().filter(|_| tls))
        }
        Direction::Outbound => {
            let config = shared.config.current();
            let upstream = request
                .upstream
                .and_then(|address| shared.mtls.identity_for(&config, address))
                .map(ToString::to_string);
            let tls = upstream.is_some();
            (tls, own_identity().filter(|_| tls), upstream)
        }
    };
    TapEvent {
        direction: labels.direction.as_str().to_owned(),
        source: Some(tap::peer(
            &labels.source_workload,
            &labels.source_namespace,
            source_identity,
        )),
        destination: Some(tap::peer(
            &labels.destination_workload,
            &labels.destination_namespace,
            destination_identity,
        )),
        destination_service: labels.destination_service.clone(),
        tls,
        method: request.method,
        authority: request.authority,
        path: request.path,
        status: u32::from(labels.status_code),
        request_bytes: request.request_bytes,
        response_bytes: tap::content_length(response_headers),
        retries: request.retries,
        error: proxy_error.to_owned(),
        started_unix_ms: request.started_unix_ms,
        ..TapEvent::default()
    }
}

/// The request labels before the response is known.
pub fn labels(
    direction: Direction,
    grpc: bool,
    source: Option<&Workload>,
    destination_service: &str,
    destination: Option<&Workload>,
) -> RequestLabels {
    RequestLabels {
        direction,
        protocol: if grpc { "grpc" } else { "http" },
        source_workload: source.map(|w| w.name.clone()).unwrap_or_default(),
        source_namespace: source.map(|w| w.namespace.clone()).unwrap_or_default(),
        source_principal: String::new(),
        tls: "",
        destination_service: destination_service.to_owned(),
        destination_workload: destination.map(|w| w.name.clone()).unwrap_or_default(),
        destination_namespace: destination.map(|w| w.namespace.clone()).unwrap_or_default(),
        status_code: 0,
        grpc_status: String::new(),
        classification: "failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoints_names_the_service_and_its_counts() {
        assert_eq!(
            no_endpoints_message("demo/backend", 8080, None, "no route", 0, 2),
            "Service demo/backend port 8080 has no ready endpoints (2 pods, 0 ready)"
        );
        let subset: BTreeMap<String, String> = [("version".to_owned(), "v2".to_owned())].into();
        assert_eq!(
            no_endpoints_message("demo/backend", 80, Some(&subset), "route \"canary\"", 3, 1),
            "Service demo/backend port 80 has no ready endpoint with labels version=v2 \
             (route \"canary\" picked them; 3 ready without them, 1 not ready)"
        );
        // A subset of a Service with nothing ready at all is the plain case.
        assert_eq!(
            no_endpoints_message("demo/backend", 80, Some(&subset), "no route", 0, 0),
            "Service demo/backend port 80 has no ready endpoints (0 pods, 0 ready)"
        );
    }

    #[test]
    fn attempts_read_as_counted() {
        assert_eq!(attempts_words(0), "0 attempts");
        assert_eq!(attempts_words(1), "1 attempt");
        assert_eq!(attempts_words(3), "3 attempts");
        assert_eq!(route_words(None), "no route");
    }

    #[test]
    fn timeouts_and_failures_name_the_destination_route_and_attempts() {
        let table = crate::routes::RouteTable::compile(&[crate::config::Route {
            name: "slow".to_owned(),
            ..crate::config::Route::default()
        }])
        .expect("a route");
        let parts = http::Request::get("/")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let route = table.select(&parts);
        assert_eq!(
            timeout_message("demo/backend:8080", Duration::from_secs(2), route, 3),
            "demo/backend:8080 did not answer within 2s (route \"slow\", 3 attempts)"
        );
        let refused = UpstreamError::Connect {
            address: "10.0.0.5:8080".parse().expect("address"),
            reason: "Connection refused".to_owned(),
        };
        let local =
            Local::from_upstream_error(&refused, "demo/backend:8080", "no route, 1 attempt");
        assert_eq!(
            local.text(),
            "connect-failure: demo/backend:8080: cannot connect to 10.0.0.5:8080: Connection refused (no route, 1 attempt)"
        );
    }

    #[test]
    fn a_local_response_says_its_reason_first_and_in_the_header() {
        let local = Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::NoEndpoints,
            "Service demo/backend port 80 has no ready endpoints (2 pods, 0 ready)".to_owned(),
        );
        assert_eq!(
            local.text(),
            "no-endpoints: Service demo/backend port 80 has no ready endpoints (2 pods, 0 ready)"
        );
        let response = local.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(super::super::ERROR_HEADER),
            Some(&HeaderValue::from_static("no-endpoints"))
        );
        let overloaded = Local::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Overloaded,
            String::new(),
        );
        assert!(
            overloaded
                .into_response()
                .headers()
                .contains_key("x-skein-overloaded")
        );
    }
}
