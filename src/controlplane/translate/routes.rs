//! RouteRule → a destination's routes, and the checks a RouteRule must pass first.
//!
//! The mapping is field for field: `match` → `matches` (a string match with none of `exact`,
//! `prefix`, `regex` is "present" for headers and query parameters and no condition for the
//! path), `route` → `backends`, `simpleRetry` → `retry` (with the proxy's default back-off and
//! budget), `fault.delay.fixedDelay` → `fault.delay.duration`, `fault.abort.httpStatus` →
//! `fault.abort.status`, `mirror.percent` unset → 100, `headers.request`/`response` →
//! `requestHeaders`/`responseHeaders`.

use std::collections::HashSet;

use http::header::{HeaderName, HeaderValue};

use crate::api::Duration;
use crate::api::meshconfig::{RetryOn as ApiRetryOn, TrafficSpec};
use crate::api::route_rule::{self as api, HttpRoute, RouteRuleSpec};
use crate::proxy::config::types::{
    Fault, FaultAbort, FaultDelay, HeaderEdits, KeyMatch, Mirror, RequestMatch, RetryOn,
    RetryPolicy, Route, StringMatch, WeightedSubset,
};
use crate::proxy::routes::{MAX_RETRY_ATTEMPTS, PROXY_MANAGED_HEADERS, RouteTable};

/// What a retry with an empty `retryOn` retries: failures where the request cannot have reached
/// the application (the RouteRule API's documented default).
const DEFAULT_RETRY_ON: [RetryOn; 4] = [
    RetryOn::ConnectFailure,
    RetryOn::RefusedStream,
    RetryOn::Unavailable,
    RetryOn::Cancelled,
];

/// The MeshConfig's traffic defaults, translated once per build.
pub(super) struct Defaults {
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    /// A policy with the proxy's defaults for what rules cannot set (back-off, budget).
    retry_template: RetryPolicy,
}

impl Defaults {
    pub fn from_mesh(traffic: &TrafficSpec) -> Self {
        let retry_template: RetryPolicy = serde_json::from_str(r#"{"attempts": 0}"#)
            .expect("every RetryPolicy field but attempts has a serde default");
        let attempts = u32::try_from(traffic.retry.attempts)
            .unwrap_or(0)
            .min(MAX_RETRY_ATTEMPTS);
        // Zero attempts, or nothing to retry on, is no retry policy at all.
        let retry = (attempts > 0 && !traffic.retry.retry_on.is_empty()).then(|| RetryPolicy {
            attempts,
            per_try_timeout: traffic.retry.per_try_timeout,
            retry_on: traffic
                .retry
                .retry_on
                .iter()
                .map(|on| retry_on(*on))
                .collect(),
            ..retry_template.clone()
        });
        Self {
            timeout: traffic.timeout,
            retry,
            retry_template,
        }
    }

    /// The route for requests no rule routes: the mesh defaults, or None when there are none
    /// (no route at all behaves the same and costs nothing).
    pub fn catch_all(&self) -> Option<Route> {
        (self.timeout.is_some() || self.retry.is_some()).then(|| Route {
            name: "default".to_owned(),
            timeout: self.timeout,
            retry: self.retry.clone(),
            ..Route::default()
        })
    }
}

fn retry_on(on: ApiRetryOn) -> RetryOn {
    match on {
        ApiRetryOn::ConnectFailure => RetryOn::ConnectFailure,
        ApiRetryOn::RefusedStream => RetryOn::RefusedStream,
        ApiRetryOn::Reset => RetryOn::Reset,
        ApiRetryOn::ServerError => RetryOn::FiveXx,
        ApiRetryOn::GatewayError => RetryOn::GatewayError,
        ApiRetryOn::Unavailable => RetryOn::Unavailable,
        ApiRetryOn::Cancelled => RetryOn::Cancelled,
        ApiRetryOn::DeadlineExceeded => RetryOn::DeadlineExceeded,
    }
}

/// The routes of a valid rule: its own, then (unless one of them already takes every request)
/// the mesh-default catch-all, so requests no route matches still get the mesh's timeout and
/// retries. Compiled as the proxy will, so a rule the proxy would refuse is refused here, and
/// proxies never lose their whole configuration over one rule.
pub(super) fn translate(
    spec: &RouteRuleSpec,
    defaults: &Defaults,
) -> Result<Vec<Route>, Vec<String>> {
    let mut routes: Vec<Route> = spec.http.iter().map(|r| route(r, defaults)).collect();
    if !routes.iter().any(|r| r.matches.is_empty()) {
        routes.extend(defaults.catch_all());
    }
    RouteTable::compile(&routes).map_err(|err| {
        vec![format!(
            "the proxy would refuse the translated routes: {err}"
        )]
    })?;
    Ok(routes)
}

fn route(r: &HttpRoute, defaults: &Defaults) -> Route {
    let edits = |pick: fn(&api::HeaderRules) -> Option<&api::HeaderEdits>| {
        r.headers
            .as_ref()
            .and_then(pick)
            .map(|e| HeaderEdits {
                set: e.set.clone(),
                add: e.add.clone(),
                remove: e.remove.clone(),
            })
            .unwrap_or_default()
    };
    Route {
        name: r.name.clone(),
        matches: r.matches.iter().map(request_match).collect(),
        backends: r
            .route
            .iter()
            .map(|d| WeightedSubset {
                subset: d.subset.clone(),
                weight: d.weight,
            })
            .collect(),
        timeout: r.timeout.or(defaults.timeout),
        retry: match &r.simple_retry {
            Some(simple) => simple_retry(simple, &defaults.retry_template),
            None => defaults.retry.clone(),
        },
        fault: r.fault.as_ref().and_then(|f| {
            let fault = Fault {
                delay: f.delay.as_ref().map(|d| FaultDelay {
                    percent: d.percent,
                    duration: d.fixed_delay,
                }),
                abort: f.abort.as_ref().map(|a| FaultAbort {
                    percent: a.percent,
                    status: a.http_status,
                }),
            };
            (fault.delay.is_some() || fault.abort.is_some()).then_some(fault)
        }),
        mirror: r.mirror.as_ref().map(|m| Mirror {
            subset: m.subset.clone(),
            percent: m.percent.unwrap_or(100.0),
        }),
        request_headers: edits(|h| h.request.as_ref()),
        response_headers: edits(|h| h.response.as_ref()),
    }
}

/// A rule's own retry policy; `attempts: 0` turns retries off (and the mesh default with them).
fn simple_retry(simple: &api::SimpleRetry, template: &RetryPolicy) -> Option<RetryPolicy> {
    if simple.attempts == 0 {
        return None;
    }
    let mut on: Vec<RetryOn> = if simple.retry_on.is_empty() {
        DEFAULT_RETRY_ON.to_vec()
    } else {
        simple.retry_on.iter().map(|on| retry_on(*on)).collect()
    };
    if !simple.retriable_status_codes.is_empty() && !on.contains(&RetryOn::RetriableStatusCodes) {
        on.push(RetryOn::RetriableStatusCodes);
    }
    Some(RetryPolicy {
        attempts: simple.attempts,
        per_try_timeout: simple.per_try_timeout,
        retry_on: on,
        retriable_status_codes: simple.retriable_status_codes.clone(),
        ..template.clone()
    })
}

fn request_match(m: &api::HttpMatch) -> RequestMatch {
    let keys = |keys: &[api::KeyMatch]| {
        keys.iter()
            .map(|k| KeyMatch {
                name: k.name.clone(),
                value: string_match(k.exact.as_ref(), k.prefix.as_ref(), k.regex.as_ref())
                    .unwrap_or(StringMatch::Present),
            })
            .collect()
    };
    RequestMatch {
        path: m
            .path
            .as_ref()
            .and_then(|p| string_match(p.exact.as_ref(), p.prefix.as_ref(), p.regex.as_ref())),
        method: m.method.clone(),
        headers: keys(&m.headers),
        query: keys(&m.query),
    }
}

/// None when none of the three is set.
fn string_match(
    exact: Option<&String>,
    prefix: Option<&String>,
    regex: Option<&String>,
) -> Option<StringMatch> {
    exact
        .map(|s| StringMatch::Exact(s.clone()))
        .or_else(|| prefix.map(|s| StringMatch::Prefix(s.clone())))
        .or_else(|| regex.map(|s| StringMatch::Regex(s.clone())))
}

/// Checks what the CRD schema cannot say (weights adding up to 100, regexes that compile,
/// header names), and what the proxy would refuse: every problem with its field path, e.g.
/// `spec.http[1].route: weights add up to 90, not 100`.
pub fn validate_route_rule(spec: &RouteRuleSpec) -> Vec<String> {
    let mut p = Problems::default();
    if let Err(problem) = super::status::parse_service_ref(&spec.service, "default") {
        p.0.push(problem);
    }
    if spec.http.is_empty() {
        p.add("spec.http", "at least one route is needed");
    }
    for (i, route) in spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            let at = format!("{at}.match[{j}]");
            if let Some(path) = &m.path {
                p.string_match(
                    &format!("{at}.path"),
                    [&path.exact, &path.prefix, &path.regex],
                );
            }
            if let Some(method) = &m.method
                && http::Method::from_bytes(method.as_bytes()).is_err()
            {
                p.add(
                    &format!("{at}.method"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
            for (k, header) in m.headers.iter().enumerate() {
                let at = format!("{at}.headers[{k}]");
                if HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                    p.add(
                        &format!("{at}.name"),
                        format!("{:?} is not a valid header name", header.name),
                    );
                }
                p.string_match(&at, [&header.exact, &header.prefix, &header.regex]);
            }
            for (k, query) in m.query.iter().enumerate() {
                let at = format!("{at}.query[{k}]");
                if query.name.is_empty() {
                    p.add(&format!("{at}.name"), "must not be empty");
                }
                p.string_match(&at, [&query.exact, &query.prefix, &query.regex]);
            }
        }
        if !route.route.is_empty() {
            let total: u64 = route.route.iter().map(|d| u64::from(d.weight)).sum();
            if total != 100 {
                p.add(
                    &format!("{at}.route"),
                    format!("weights add up to {total}, not 100"),
                );
            }
        }
        if let Some(retry) = &route.simple_retry {
            if retry.attempts > MAX_RETRY_ATTEMPTS {
                p.add(
                    &format!("{at}.simpleRetry.attempts"),
                    format!("{} is more than {MAX_RETRY_ATTEMPTS}", retry.attempts),
                );
            }
            for (k, code) in retry.retriable_status_codes.iter().enumerate() {
                if !(100..=599).contains(code) {
                    p.add(
                        &format!("{at}.simpleRetry.retriableStatusCodes[{k}]"),
                        format!("{code} is not an HTTP status (100-599)"),
                    );
                }
            }
        }
        if let Some(fault) = &route.fault {
            if let Some(delay) = &fault.delay {
                p.percent(&format!("{at}.fault.delay.percent"), delay.percent);
            }
            if let Some(abort) = &fault.abort {
                p.percent(&format!("{at}.fault.abort.percent"), abort.percent);
                if !(200..=599).contains(&abort.http_status) {
                    p.add(
                        &format!("{at}.fault.abort.httpStatus"),
                        format!("{} is not between 200 and 599", abort.http_status),
                    );
                }
            }
        }
        if let Some(percent) = route.mirror.as_ref().and_then(|m| m.percent) {
            p.percent(&format!("{at}.mirror.percent"), percent);
        }
        if let Some(headers) = &route.headers {
            if let Some(edits) = &headers.request {
                p.header_edits(&format!("{at}.headers.request"), edits);
            }
            if let Some(edits) = &headers.response {
                p.header_edits(&format!("{at}.headers.response"), edits);
            }
        }
    }
    p.0
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, problem: impl std::fmt::Display) {
        self.0.push(format!("{at}: {problem}"));
    }

    fn string_match(&mut self, at: &str, [exact, prefix, regex]: [&Option<String>; 3]) {
        if [exact, prefix, regex]
            .iter()
            .filter(|s| s.is_some())
            .count()
            > 1
        {
            self.add(at, "set at most one of exact, prefix and regex");
        }
        if let Some(pattern) = regex
            && let Err(problem) = check_regex(pattern)
        {
            self.add(&format!("{at}.regex"), problem);
        }
    }

    fn percent(&mut self, at: &str, value: f64) {
        if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
            self.add(at, format!("{value} is not a percentage between 0 and 100"));
        }
    }

    fn header_edits(&mut self, at: &str, edits: &api::HeaderEdits) {
        let mut set = HashSet::new();
        for (name, value) in &edits.set {
            let at = format!("{at}.set[{name}]");
            self.editable_name(&at, name);
            // `X-A` and `x-a` are one header: which value wins would be arbitrary.
            if !set.insert(name.to_ascii_lowercase()) {
                self.add(
                    &at,
                    "the header is set more than once (names are case-insensitive)",
                );
            }
            self.header_value(&at, value);
        }
        for (name, value) in &edits.add {
            let at = format!("{at}.add[{name}]");
            self.editable_name(&at, name);
            self.header_value(&at, value);
        }
        for (k, name) in edits.remove.iter().enumerate() {
            self.editable_name(&format!("{at}.remove[{k}]"), name);
        }
    }

    fn editable_name(&mut self, at: &str, name: &str) {
        match HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => self.add(at, format!("{name:?} is not a valid header name")),
            Ok(header) if PROXY_MANAGED_HEADERS.contains(&header.as_str()) => self.add(
                at,
                format!("{name} cannot be edited: the proxy manages it per connection"),
            ),
            Ok(_) => {}
        }
    }

    fn header_value(&mut self, at: &str, value: &str) {
        if HeaderValue::from_str(value).is_err() {
            self.add(
                at,
                "the value is not a valid header value (visible ASCII, spaces and tabs only)",
            );
        }
    }
}

/// Whether `pattern` compiles the way the proxy compiles it (`src/proxy/routes.rs`): alone
/// first, since wrapping an invalid pattern can make it valid with another meaning, then
/// anchored at both ends.
fn check_regex(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern)
        .and_then(|_| {
            regex::Regex::new(&format!("^(?:{pattern})$"))
                .or_else(|_| regex::Regex::new(&format!("^(?:{pattern}\n)$")))
        })
        .map(|_| ())
        .map_err(|err| match err {
            // The syntax error's last line says what is wrong; the lines above draw a caret
            // under the pattern, which a one-line condition message cannot show.
            regex::Error::Syntax(text) => format!(
                "invalid regex: {}",
                text.lines()
                    .last()
                    .map(|line| line.trim_start_matches("error: "))
                    .unwrap_or("syntax error")
            ),
            regex::Error::CompiledTooBig(limit) => {
                format!("the regex compiles to more than the limit of {limit} bytes")
            }
            other => format!("invalid regex: {other}"),
        })
}
