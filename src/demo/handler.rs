//! The routes: health and readiness, the admin switches, and the demo path that applies this
//! tier's knobs and calls the next tier.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::downstream::{Answer, Downstream};
use super::knobs::{HeaderNames, Knobs, Outcome};
use super::report::{Report, Tier, chain_of};

/// Exit code of `POST /admin/crash`, distinct from a normal failure (1).
pub const CRASH_EXIT_CODE: i32 = 3;
/// Time for the crash answer to reach the client before the process exits.
const CRASH_DELAY: Duration = Duration::from_millis(100);

/// Returned by the service to make hyper close the connection without answering: an HTTP/1
/// connection is closed, an HTTP/2 stream is reset.
#[derive(Debug, thiserror::Error)]
#[error("dropping the connection (injected)")]
pub struct Dropped;

pub struct App {
    pub tier: Tier,
    pub knobs: Knobs,
    pub downstream: Option<Downstream>,
    header_names: HeaderNames,
    version_header: HeaderValue,
    pod_header: HeaderValue,
    ready: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("the {what} {value:?} cannot be sent as an HTTP header value")]
pub struct HeaderValueError {
    what: &'static str,
    value: String,
}

impl App {
    pub fn new(
        tier: Tier,
        knobs: Knobs,
        downstream: Option<Downstream>,
    ) -> Result<Self, HeaderValueError> {
        let header = |what, value: &str| {
            HeaderValue::from_str(value).map_err(|_| HeaderValueError {
                what,
                value: value.to_owned(),
            })
        };
        Ok(Self {
            header_names: HeaderNames::for_role(&tier.role),
            version_header: header("version", &tier.version)?,
            pod_header: header("pod name", &tier.pod)?,
            tier,
            knobs,
            downstream,
            ready: AtomicBool::new(true),
        })
    }
}

pub async fn handle<B>(
    app: Arc<App>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = route(&app, request).await;
    match &result {
        Ok(response) => tracing::debug!(%method, %path, status = %response.status(), "answered"),
        Err(_) => tracing::debug!(%method, %path, "dropped the connection"),
    }
    result.map(|mut response| {
        let headers = response.headers_mut();
        headers.insert("x-demo-version", app.version_header.clone());
        headers.insert("x-demo-pod", app.pod_header.clone());
        response
    })
}

async fn route<B>(app: &App, request: Request<B>) -> Result<Response<Full<Bytes>>, Dropped> {
    let method = request.method();
    Ok(match (method, request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if app.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            }
        }
        (&Method::POST, "/admin/ready") => {
            app.ready.store(true, Ordering::Relaxed);
            tracing::info!("marked ready");
            text(StatusCode::OK, "ready")
        }
        (&Method::POST, "/admin/unready") => {
            app.ready.store(false, Ordering::Relaxed);
            tracing::info!("marked not ready");
            text(StatusCode::OK, "not ready")
        }
        (&Method::POST, "/admin/crash") => {
            tracing::warn!(code = CRASH_EXIT_CODE, "crashing on request");
            tokio::spawn(async {
                tokio::time::sleep(CRASH_DELAY).await;
                std::process::exit(CRASH_EXIT_CODE);
            });
            text(StatusCode::OK, "crashing")
        }
        _ => return demo(app, request).await,
    })
}

/// Latency, then drop, then fail; otherwise this tier's report, with the next tier's chain.
async fn demo<B>(app: &App, request: Request<B>) -> Result<Response<Full<Bytes>>, Dropped> {
    let overrides = match app.header_names.overrides(request.headers()) {
        Ok(overrides) => overrides,
        Err(err) => {
            return Ok(json(
                StatusCode::BAD_REQUEST,
                &Report::error(&app.tier, err.to_string()),
            ));
        }
    };
    let plan = app.knobs.with(overrides).decide(fastrand::f64() * 100.0);
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    match plan.outcome {
        Outcome::Drop => return Err(Dropped),
        Outcome::Fail(status) => {
            return Ok(json(status, &Report::error(&app.tier, "injected failure")));
        }
        Outcome::Proceed => {}
    }

    let Some(downstream) = &app.downstream else {
        return Ok(json(StatusCode::OK, &Report::ok(&app.tier, Vec::new())));
    };
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    Ok(
        match downstream.call(path_and_query, request.headers()).await {
            Ok(Answer::Chain(chain)) => json(StatusCode::OK, &Report::ok(&app.tier, chain)),
            Ok(Answer::Status(status, body)) => {
                // Same status as the next tier, so a backend failure is visible at the frontend.
                let mut report = Report::error(
                    &app.tier,
                    format!(
                        "calling {}: answered {status}",
                        downstream.url_for(path_and_query)
                    ),
                );
                if let Some(rest) = body.as_ref().and_then(chain_of) {
                    report.chain.extend(rest);
                }
                report.downstream = body;
                json(status, &report)
            }
            Err(err) => {
                tracing::debug!(error = %err, "next tier failed");
                json(
                    StatusCode::BAD_GATEWAY,
                    &Report::error(&app.tier, err.to_string()),
                )
            }
        },
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(status: StatusCode, report: &Report<'_>) -> Response<Full<Bytes>> {
    respond(status, "application/json", report.to_json())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
