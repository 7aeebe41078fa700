//! HTTP route matching for the data plane: which configured [`Route`] a request takes, which
//! backend subset it goes to, and the header edits it gets. Pure logic without I/O.
//!
//! Everything that can be wrong in a route (regexes, header names and values, weights,
//! percentages) is checked once by [`RouteTable::compile`], so the per-request path never
//! fails and never parses configuration again.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use regex::Regex;

use crate::config::{self, HeaderEdits, KeyMatch, RequestMatch, Route, StringMatch};

/// Upper bound on a route's total backend weight: keeps the cumulative sums in `u32` and the
/// split readable (a million is finer than any traffic split needs).
pub const MAX_TOTAL_WEIGHT: u64 = 1_000_000;

/// More retries than this only multiplies load on an upstream that is already failing.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Headers that describe one connection (or, for `Host`, the upstream the proxy picks): the
/// proxy manages them itself, so a route editing them would break the forwarding.
pub const PROXY_MANAGED_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
];

/// Where in the configuration an error is, so the operator can find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLocation {
    /// Position of the route in the destination's `routes`.
    pub index: usize,
    /// The route's `name`, possibly empty.
    pub name: String,
    /// The offending field, in the config's camelCase spelling (`matches[0].path`).
    pub field: String,
}

impl fmt::Display for RouteLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "route {} (unnamed), {}", self.index, self.field)
        } else {
            write!(f, "route {} ({:?}), {}", self.index, self.name, self.field)
        }
    }
}

/// A route that cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{at}: invalid regex: {source}")]
    Regex {
        at: RouteLocation,
        source: regex::Error,
    },
    #[error("{at}: {method:?} is not a valid HTTP method")]
    Method { at: RouteLocation, method: String },
    #[error("{at}: {name:?} is not a valid header name")]
    HeaderName { at: RouteLocation, name: String },
    #[error(
        "{at}: the value for {name:?} is not a valid header value (visible ASCII, spaces and tabs only)"
    )]
    HeaderValue { at: RouteLocation, name: String },
    #[error(
        "{at}: {name} may not be edited: the proxy manages it per connection (hop-by-hop or Host)"
    )]
    ProxyManagedHeader { at: RouteLocation, name: String },
    #[error("{at}: {name} is set more than once (header names are case-insensitive)")]
    DuplicateHeader { at: RouteLocation, name: String },
    #[error("{at}: the query parameter name must not be empty")]
    EmptyQueryName { at: RouteLocation },
    #[error("{at}: the total weight is {total}; it must be between 1 and {MAX_TOTAL_WEIGHT}")]
    TotalWeight { at: RouteLocation, total: u64 },
    #[error("{at}: {value} is not a percentage between 0 and 100")]
    Percent { at: RouteLocation, value: f64 },
    #[error("{at}: status {status} is not between 200 and 599")]
    AbortStatus { at: RouteLocation, status: u16 },
    #[error("{at}: {attempts} retries is more than the limit of {MAX_RETRY_ATTEMPTS}")]
    RetryAttempts { at: RouteLocation, attempts: u32 },
}

impl RouteError {
    /// The route and field at fault.
    pub fn location(&self) -> &RouteLocation {
        match self {
            RouteError::Regex { at, .. }
            | RouteError::Method { at, .. }
            | RouteError::HeaderName { at, .. }
            | RouteError::HeaderValue { at, .. }
            | RouteError::ProxyManagedHeader { at, .. }
            | RouteError::DuplicateHeader { at, .. }
            | RouteError::EmptyQueryName { at }
            | RouteError::TotalWeight { at, .. }
            | RouteError::Percent { at, .. }
            | RouteError::AbortStatus { at, .. }
            | RouteError::RetryAttempts { at, .. } => at,
        }
    }
}

/// The compiled routes of one destination, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
}

impl RouteTable {
    /// Validates and compiles; errors name the route (by index and name) and the field.
    pub fn compile(routes: &[Route]) -> Result<Self, RouteError> {
        let routes = routes
            .iter()
            .enumerate()
            .map(|(index, route)| CompiledRoute::compile(index, route))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { routes })
    }

    /// First route whose matches hold for the request (a route with no matches matches all);
    /// None when none does.
    pub fn select(&self, request: &Parts) -> Option<&CompiledRoute> {
        // The query is parsed at most once per request, and only if some route asks for it.
        let view = RequestView::new(request);
        self.routes.iter().find(|route| route.matches_view(&view))
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }
}

/// One route, ready for the request path.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Position in the destination's `routes`, for logs and metrics.
    pub index: usize,
    pub name: String,
    /// The whole request, retries included.
    pub timeout: Option<std::time::Duration>,
    pub retry: Option<config::RetryPolicy>,
    pub fault: Option<config::Fault>,
    pub mirror: Option<config::Mirror>,
    matches: Vec<CompiledMatch>,
    backends: Vec<Backend>,
    /// Sum of all backend weights: the exclusive upper bound of the random pick.
    total_weight: u32,
    request_headers: CompiledHeaderEdits,
    response_headers: CompiledHeaderEdits,
}

impl CompiledRoute {
    fn compile(index: usize, route: &Route) -> Result<Self, RouteError> {
        let ctx = Ctx {
            index,
            name: &route.name,
        };
        let matches = route
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| CompiledMatch::compile(&ctx, i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let (backends, total_weight) = compile_backends(&ctx, &route.backends)?;
        if let Some(retry) = &route.retry
            && retry.attempts > MAX_RETRY_ATTEMPTS
        {
            return Err(RouteError::RetryAttempts {
                at: ctx.at("retry.attempts"),
                attempts: retry.attempts,
            });
        }
        if let Some(fault) = &route.fault {
            if let Some(delay) = &fault.delay {
                check_percent(&ctx, "fault.delay.percent", delay.percent)?;
            }
            if let Some(abort) = &fault.abort {
                check_percent(&ctx, "fault.abort.percent", abort.percent)?;
                if !(200..=599).contains(&abort.status) {
                    return Err(RouteError::AbortStatus {
                        at: ctx.at("fault.abort.status"),
                        status: abort.status,
                    });
                }
            }
        }
        if let Some(mirror) = &route.mirror {
            check_percent(&ctx, "mirror.percent", mirror.percent)?;
        }
        Ok(Self {
            index,
            name: route.name.clone(),
            timeout: route.timeout.map(|t| t.as_std()),
            retry: route.retry.clone(),
            fault: route.fault.clone(),
            mirror: route.mirror.clone(),
            matches,
            backends,
            total_weight,
            request_headers: CompiledHeaderEdits::compile(
                &ctx,
                "requestHeaders",
                &route.request_headers,
            )?,
            response_headers: CompiledHeaderEdits::compile(
                &ctx,
                "responseHeaders",
                &route.response_headers,
            )?,
        })
    }

    /// Whether this route alone would take the request (ignoring earlier routes).
    pub fn matches(&self, request: &Parts) -> bool {
        self.matches_view(&RequestView::new(request))
    }

    fn matches_view(&self, view: &RequestView<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(view))
    }

    /// The backend subset (labels) for one request, chosen by weight with `rng`; None when the
    /// route has no backends (= all endpoints).
    pub fn pick_backend(&self, rng: &mut fastrand::Rng) -> Option<&BTreeMap<String, String>> {
        if self.backends.is_empty() || self.total_weight == 0 {
            return None;
        }
        let ticket = rng.u32(0..self.total_weight);
        // The first backend whose range ends after the ticket; a zero-weight backend has an
        // empty range, so the one before it (or none) always wins first.
        let i = self.backends.partition_point(|b| b.end <= ticket);
        self.backends.get(i).map(|b| &b.subset)
    }

    /// The configured backends and their weights, in configuration order.
    pub fn backends(&self) -> impl Iterator<Item = (&BTreeMap<String, String>, u32)> {
        let mut start = 0;
        self.backends.iter().map(move |b| {
            let weight = b.end - start;
            start = b.end;
            (&b.subset, weight)
        })
    }

    /// So callers can skip work (and header map clones) when a route edits nothing.
    pub fn request_header_edits(&self) -> &CompiledHeaderEdits {
        &self.request_headers
    }

    pub fn response_header_edits(&self) -> &CompiledHeaderEdits {
        &self.response_headers
    }

    pub fn edit_request_headers(&self, headers: &mut HeaderMap) {
        self.request_headers.apply(headers);
    }

    pub fn edit_response_headers(&self, headers: &mut HeaderMap) {
        self.response_headers.apply(headers);
    }
}

/// The route being compiled, for error locations.
struct Ctx<'a> {
    index: usize,
    name: &'a str,
}

impl Ctx<'_> {
    fn at(&self, field: impl Into<String>) -> RouteLocation {
        RouteLocation {
            index: self.index,
            name: self.name.to_owned(),
            field: field.into(),
        }
    }
}

fn check_percent(ctx: &Ctx<'_>, field: &str, value: f64) -> Result<(), RouteError> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(RouteError::Percent {
            at: ctx.at(field),
            value,
        })
    }
}

/// A backend with the exclusive end of its range in `0..total_weight`.
#[derive(Debug, Clone)]
struct Backend {
    subset: BTreeMap<String, String>,
    end: u32,
}

fn compile_backends(
    ctx: &Ctx<'_>,
    backends: &[config::WeightedSubset],
) -> Result<(Vec<Backend>, u32), RouteError> {
    if backends.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    let in_range = (1..=MAX_TOTAL_WEIGHT).contains(&total);
    let total = match u32::try_from(total) {
        Ok(total) if in_range => total,
        _ => {
            return Err(RouteError::TotalWeight {
                at: ctx.at("backends"),
                total,
            });
        }
    };
    let mut end = 0u32;
    let compiled = backends
        .iter()
        .map(|b| {
            // Cannot overflow: the total fits in u32.
            end = end.saturating_add(b.weight);
            Backend {
                subset: b.subset.clone(),
                end,
            }
        })
        .collect();
    Ok((compiled, total))
}

/// One `RequestMatch`: all its conditions must hold.
#[derive(Debug, Clone)]
struct CompiledMatch {
    path: Option<Matcher>,
    method: Option<http::Method>,
    headers: Vec<(HeaderName, Matcher)>,
    query: Vec<(String, Matcher)>,
}

impl CompiledMatch {
    fn compile(ctx: &Ctx<'_>, i: usize, m: &RequestMatch) -> Result<Self, RouteError> {
        let field = |rest: &str| format!("matches[{i}].{rest}");
        let path = m
            .path
            .as_ref()
            .map(|p| Matcher::compile(ctx, field("path"), p))
            .transpose()?;
        let method = m
            .method
            .as_ref()
            .map(|method| {
                http::Method::from_bytes(method.as_bytes()).map_err(|_| RouteError::Method {
                    at: ctx.at(field("method")),
                    method: method.clone(),
                })
            })
            .transpose()?;
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(j, KeyMatch { name, value })| {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    RouteError::HeaderName {
                        at: ctx.at(field(&format!("headers[{j}].name"))),
                        name: name.clone(),
                    }
                })?;
                let matcher = Matcher::compile(ctx, field(&format!("headers[{j}].value")), value)?;
                Ok((header, matcher))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let query = m
            .query
            .iter()
            .enumerate()
            .map(|(j, KeyMatch { name, value })| {
                if name.is_empty() {
                    return Err(RouteError::EmptyQueryName {
                        at: ctx.at(field(&format!("query[{j}].name"))),
                    });
                }
                let matcher = Matcher::compile(ctx, field(&format!("query[{j}].value")), value)?;
                Ok((name.clone(), matcher))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path,
            method,
            headers,
            query,
        })
    }

    fn matches(&self, view: &RequestView<'_>) -> bool {
        let parts = view.parts;
        if let Some(method) = &self.method
            && parts.method != *method
        {
            return false;
        }
        if let Some(path) = &self.path
            && !path.matches(parts.uri.path())
        {
            return false;
        }
        let headers_hold = self.headers.iter().all(|(name, matcher)| {
            if matches!(matcher, Matcher::Present) {
                return parts.headers.contains_key(name);
            }
            parts
                .headers
                .get_all(name)
                .iter()
                .any(|v| std::str::from_utf8(v.as_bytes()).is_ok_and(|s| matcher.matches(s)))
        });
        if !headers_hold {
            return false;
        }
        self.query.iter().all(|(name, matcher)| {
            view.query()
                .iter()
                .filter(|(key, _)| key == name)
                .any(|(_, value)| match (matcher, value) {
                    (Matcher::Present, _) => true,
                    (_, Some(value)) => matcher.matches(value),
                    (_, None) => false,
                })
        })
    }
}

/// A compiled [`StringMatch`].
#[derive(Debug, Clone)]
enum Matcher {
    Present,
    Exact(String),
    Prefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

impl Matcher {
    fn compile(ctx: &Ctx<'_>, field: String, m: &StringMatch) -> Result<Self, RouteError> {
        Ok(match m {
            StringMatch::Present => Matcher::Present,
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            StringMatch::Regex(pattern) => Matcher::Regex(whole_match_regex(pattern).map_err(
                |source| RouteError::Regex {
                    at: ctx.at(field),
                    source,
                },
            )?),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Present => true,
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(s) => value.starts_with(s.as_str()),
            Matcher::Regex(re) => re.is_match(value),
        }
    }
}

/// Compiles `pattern` so that it must match the whole value.
///
/// The pattern is first compiled alone: wrapping an invalid one could turn it valid with another
/// meaning (`a)|(b`, or a trailing `\` escaping the wrapper's `)`). A pattern ending in a
/// `(?x)` comment swallows the wrapper's `)$`; a newline (whitespace in that mode) ends it.
fn whole_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(pattern)?;
    Regex::new(&format!("^(?:{pattern})$")).or_else(|_| Regex::new(&format!("^(?:{pattern}\n)$")))
}

/// A request plus its query, parsed on first use.
struct RequestView<'a> {
    parts: &'a Parts,
    query: OnceCell<Vec<QueryPair<'a>>>,
}

/// A decoded query parameter; the value is None when it does not decode to UTF-8.
type QueryPair<'a> = (Cow<'a, str>, Option<Cow<'a, str>>);

impl<'a> RequestView<'a> {
    fn new(parts: &'a Parts) -> Self {
        Self {
            parts,
            query: OnceCell::new(),
        }
    }

    fn query(&self) -> &[QueryPair<'a>] {
        self.query
            .get_or_init(|| parse_query(self.parts.uri.query().unwrap_or("")))
    }
}

/// Splits `a=1&b=2` into decoded pairs; `flag` without `=` has the empty value. Keys that do
/// not decode to UTF-8 are dropped (no configured name can equal them).
fn parse_query(query: &str) -> Vec<QueryPair<'_>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = utf8(decode_query_component(key))?;
            Some((key, utf8(decode_query_component(value))))
        })
        .collect()
}

fn utf8(bytes: Cow<'_, [u8]>) -> Option<Cow<'_, str>> {
    match bytes {
        Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a `%` not
/// followed by two hex digits is kept as it is, since rejecting the request is not our call.
pub fn decode_query_component(s: &str) -> Cow<'_, [u8]> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&h| hex_value(h));
                let lo = bytes.get(i + 2).and_then(|&l| hex_value(l));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push((hi << 4) | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Header edits with names and values parsed once.
#[derive(Debug, Clone, Default)]
pub struct CompiledHeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledHeaderEdits {
    fn compile(ctx: &Ctx<'_>, prefix: &str, edits: &HeaderEdits) -> Result<Self, RouteError> {
        let remove = edits
            .remove
            .iter()
            .enumerate()
            .map(|(i, name)| editable_name(ctx, format!("{prefix}.remove[{i}]"), name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut set: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(edits.set.len());
        for (name, value) in &edits.set {
            let field = format!("{prefix}.set[{name:?}]");
            let header = editable_name(ctx, field.clone(), name)?;
            // `X-A` and `x-a` are the same header: which value wins would be arbitrary.
            if set.iter().any(|(existing, _)| *existing == header) {
                return Err(RouteError::DuplicateHeader {
                    at: ctx.at(field),
                    name: header.as_str().to_owned(),
                });
            }
            let value = header_value(ctx, field, name, value)?;
            set.push((header, value));
        }
        let add = edits
            .add
            .iter()
            .map(|(name, value)| {
                let field = format!("{prefix}.add[{name:?}]");
                let header = editable_name(ctx, field.clone(), name)?;
                Ok((header, header_value(ctx, field, name, value)?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { remove, set, add })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Remove, then set, then add: so `set` can replace what `remove` cleared and `add` can
    /// append to what `set` wrote.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn editable_name(ctx: &Ctx<'_>, field: String, name: &str) -> Result<HeaderName, RouteError> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| RouteError::HeaderName {
        at: ctx.at(field.clone()),
        name: name.to_owned(),
    })?;
    if PROXY_MANAGED_HEADERS.contains(&header.as_str()) {
        return Err(RouteError::ProxyManagedHeader {
            at: ctx.at(field),
            name: header.as_str().to_owned(),
        });
    }
    Ok(header)
}

fn header_value(
    ctx: &Ctx<'_>,
    field: String,
    name: &str,
    value: &str,
) -> Result<HeaderValue, RouteError> {
    HeaderValue::from_str(value).map_err(|_| RouteError::HeaderValue {
        at: ctx.at(field),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Fault, FaultAbort, FaultDelay, Mirror, RetryPolicy, WeightedSubset};
    use skein_core::Duration;

    fn req(method: &str, uri: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn get(uri: &str) -> Parts {
        req("GET", uri, &[])
    }

    fn route(name: &str, matches: Vec<RequestMatch>) -> Route {
        Route {
            name: name.to_owned(),
            matches,
            ..Route::default()
        }
    }

    fn path(m: StringMatch) -> RequestMatch {
        RequestMatch {
            path: Some(m),
            ..RequestMatch::default()
        }
    }

    fn header(name: &str, value: StringMatch) -> RequestMatch {
        RequestMatch {
            headers: vec![KeyMatch {
                name: name.to_owned(),
                value,
            }],
            ..RequestMatch::default()
        }
    }

    fn query(name: &str, value: StringMatch) -> RequestMatch {
        RequestMatch {
            query: vec![KeyMatch {
                name: name.to_owned(),
                value,
            }],
            ..RequestMatch::default()
        }
    }

    fn exact(s: &str) -> StringMatch {
        StringMatch::Exact(s.to_owned())
    }

    fn prefix(s: &str) -> StringMatch {
        StringMatch::Prefix(s.to_owned())
    }

    fn regex(s: &str) -> StringMatch {
        StringMatch::Regex(s.to_owned())
    }

    /// Whether a single route with this one match takes the request.
    fn one(m: RequestMatch, request: &Parts) -> bool {
        let table = RouteTable::compile(&[route("r", vec![m])]).unwrap();
        table.select(request).is_some()
    }

    fn compile_err(route: Route) -> RouteError {
        RouteTable::compile(&[Route::default(), route]).unwrap_err()
    }

    fn subset(version: &str, weight: u32) -> WeightedSubset {
        WeightedSubset {
            subset: BTreeMap::from([("version".to_owned(), version.to_owned())]),
            weight,
        }
    }

    fn counts(route: &CompiledRoute, picks: usize, seed: u64) -> BTreeMap<String, usize> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            let labels = route.pick_backend(&mut rng).unwrap();
            *counts.entry(labels["version"].clone()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn empty_table_selects_nothing() {
        let table = RouteTable::compile(&[]).unwrap();
        assert!(table.is_empty());
        assert!(table.select(&get("/")).is_none());
    }

    #[test]
    fn route_without_matches_matches_all() {
        let table = RouteTable::compile(&[route("all", vec![])]).unwrap();
        assert!(!table.is_empty());
        assert_eq!(table.len(), 1);
        assert_eq!(table.select(&get("/x?y=1")).unwrap().name, "all");
        assert!(table.select(&req("DELETE", "/", &[])).is_some());
    }

    #[test]
    fn path_exact_ignores_query() {
        let m = || path(exact("/api"));
        assert!(one(m(), &get("/api")));
        assert!(one(m(), &get("/api?x=1")));
        assert!(one(m(), &get("http://example.com/api?x=1")));
        assert!(!one(m(), &get("/api/")));
        assert!(!one(m(), &get("/API")));
    }

    #[test]
    fn path_prefix() {
        let m = || path(prefix("/api/"));
        assert!(one(m(), &get("/api/")));
        assert!(one(m(), &get("/api/v1/users")));
        assert!(!one(m(), &get("/api")));
        assert!(!one(m(), &get("/?q=/api/")));
    }

    #[test]
    fn path_regex_matches_whole_path() {
        let m = || path(regex("/users/[0-9]+"));
        assert!(one(m(), &get("/users/42")));
        assert!(one(m(), &get("/users/42?page=2")));
        assert!(!one(m(), &get("/users/42/posts")));
        assert!(!one(m(), &get("/v1/users/42")));
        // Alternation stays inside the anchors.
        let alt = || path(regex("/a|/b"));
        assert!(one(alt(), &get("/a")));
        assert!(one(alt(), &get("/b")));
        assert!(!one(alt(), &get("/a/x")));
        assert!(!one(alt(), &get("/x/b")));
    }

    #[test]
    fn regex_ending_in_verbose_comment_is_still_anchored() {
        let m = || path(regex("(?x) /a  # the a path"));
        assert!(one(m(), &get("/a")));
        assert!(!one(m(), &get("/a/b")));
    }

    #[test]
    fn path_present_matches_everything() {
        assert!(one(path(StringMatch::Present), &get("/anything")));
    }

    #[test]
    fn method_is_exact_and_case_sensitive() {
        let m = |method: &str| RequestMatch {
            method: Some(method.to_owned()),
            ..RequestMatch::default()
        };
        assert!(one(m("POST"), &req("POST", "/", &[])));
        assert!(!one(m("POST"), &req("GET", "/", &[])));
        assert!(!one(m("post"), &req("POST", "/", &[])));
        assert!(one(m("PURGE"), &req("PURGE", "/", &[])));
    }

    #[test]
    fn header_name_is_case_insensitive() {
        let m = || header("X-User", exact("alice"));
        assert!(one(m(), &req("GET", "/", &[("x-user", b"alice")])));
        assert!(!one(m(), &req("GET", "/", &[("x-user", b"Alice")])));
        assert!(!one(m(), &req("GET", "/", &[])));
    }

    #[test]
    fn header_kinds() {
        let r = req("GET", "/", &[("x-env", b"canary-eu")]);
        assert!(one(header("x-env", StringMatch::Present), &r));
        assert!(!one(header("x-other", StringMatch::Present), &r));
        assert!(one(header("x-env", prefix("canary")), &r));
        assert!(!one(header("x-env", prefix("eu")), &r));
        assert!(one(header("x-env", regex("canary-(eu|us)")), &r));
        assert!(!one(header("x-env", regex("canary")), &r));
    }

    #[test]
    fn repeated_header_matches_any_value() {
        let r = req("GET", "/", &[("x-tag", b"a"), ("x-tag", b"b")]);
        assert!(one(header("x-tag", exact("a")), &r));
        assert!(one(header("x-tag", exact("b")), &r));
        assert!(!one(header("x-tag", exact("a, b")), &r));
    }

    #[test]
    fn non_utf8_header_only_matches_present() {
        let r = req("GET", "/", &[("x-bin", b"\xff\xfe")]);
        assert!(one(header("x-bin", StringMatch::Present), &r));
        assert!(!one(header("x-bin", regex(".*")), &r));
        assert!(!one(header("x-bin", prefix("")), &r));
        // UTF-8 beyond ASCII is still a string.
        let r = req("GET", "/", &[("x-name", "zoë".as_bytes())]);
        assert!(one(header("x-name", exact("zoë")), &r));
    }

    #[test]
    fn query_kinds() {
        let r = get("/search?q=rust+lang&page=12&flag&empty=");
        assert!(one(query("q", exact("rust lang")), &r));
        assert!(one(query("page", regex("[0-9]+")), &r));
        assert!(!one(query("page", regex("[0-9]")), &r));
        assert!(one(query("q", prefix("rust")), &r));
        assert!(one(query("flag", StringMatch::Present), &r));
        assert!(one(query("flag", exact("")), &r));
        assert!(one(query("empty", StringMatch::Present), &r));
        assert!(!one(query("missing", StringMatch::Present), &r));
        assert!(!one(query("Q", StringMatch::Present), &r));
        assert!(!one(query("q", StringMatch::Present), &get("/search")));
    }

    #[test]
    fn repeated_query_key_matches_any_value() {
        let r = get("/?v=1&v=2&&v=3");
        assert!(one(query("v", exact("1")), &r));
        assert!(one(query("v", exact("3")), &r));
        assert!(!one(query("v", exact("4")), &r));
    }

    #[test]
    fn query_keys_and_values_are_decoded() {
        let r = get("/?na%6De=a%20b%2Bc&x=%ff");
        assert!(one(query("name", exact("a b+c")), &r));
        // Not UTF-8 once decoded: only presence can match.
        assert!(one(query("x", StringMatch::Present), &r));
        assert!(!one(query("x", regex(".*")), &r));
    }

    #[test]
    fn query_decoding() {
        let d = |s: &str| decode_query_component(s).into_owned();
        assert!(matches!(decode_query_component("plain"), Cow::Borrowed(_)));
        assert_eq!(d("a+b"), b"a b");
        assert_eq!(d("%41%62%2f"), b"Ab/");
        assert_eq!(d("100%"), b"100%");
        assert_eq!(d("%zz%4"), b"%zz%4");
        assert_eq!(d("%%41"), b"%A");
        assert_eq!(d("%2B+"), b"+ ");
        assert_eq!(d("caf%C3%A9"), "café".as_bytes());
        assert_eq!(d(""), b"");
    }

    #[test]
    fn parse_query_pairs() {
        let pairs = parse_query("a=1&b&=x&c=d=e&");
        let pairs: Vec<(&str, Option<&str>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_deref()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a", Some("1")),
                ("b", Some("")),
                ("", Some("x")),
                ("c", Some("d=e"))
            ]
        );
    }

    #[test]
    fn conditions_in_one_match_are_anded() {
        let m = || RequestMatch {
            path: Some(prefix("/api")),
            method: Some("GET".to_owned()),
            headers: vec![KeyMatch {
                name: "x-canary".to_owned(),
                value: exact("1"),
            }],
            query: vec![KeyMatch {
                name: "debug".to_owned(),
                value: StringMatch::Present,
            }],
        };
        let h: &[(&str, &[u8])] = &[("x-canary", b"1")];
        assert!(one(m(), &req("GET", "/api/x?debug", h)));
        assert!(!one(m(), &req("POST", "/api/x?debug", h)));
        assert!(!one(m(), &req("GET", "/web?debug", h)));
        assert!(!one(m(), &req("GET", "/api/x?debug", &[])));
        assert!(!one(m(), &req("GET", "/api/x", h)));
    }

    #[test]
    fn matches_in_a_route_are_ored() {
        let table = RouteTable::compile(&[route(
            "either",
            vec![path(exact("/a")), header("x-b", StringMatch::Present)],
        )])
        .unwrap();
        assert!(table.select(&get("/a")).is_some());
        assert!(table.select(&req("GET", "/z", &[("x-b", b"")])).is_some());
        assert!(table.select(&get("/z")).is_none());
    }

    #[test]
    fn first_matching_route_wins() {
        let table = RouteTable::compile(&[
            route("exact", vec![path(exact("/api/v1"))]),
            route("prefix", vec![path(prefix("/api"))]),
            route("catch-all", vec![]),
            route("never", vec![path(prefix("/"))]),
        ])
        .unwrap();
        let pick = |uri: &str| {
            let r = table.select(&get(uri)).unwrap();
            (r.index, r.name.clone())
        };
        assert_eq!(pick("/api/v1"), (0, "exact".to_owned()));
        assert_eq!(pick("/api/v2"), (1, "prefix".to_owned()));
        assert_eq!(pick("/other"), (2, "catch-all".to_owned()));
        let route = table.routes()[0].clone();
        assert!(route.matches(&get("/api/v1")));
        assert!(!route.matches(&get("/api/v2")));
    }

    #[test]
    fn route_fields_are_carried() {
        let r = Route {
            timeout: Some(Duration::from_millis(1500)),
            mirror: Some(Mirror {
                subset: BTreeMap::new(),
                percent: 10.0,
            }),
            ..route("r", vec![])
        };
        let table = RouteTable::compile(&[r]).unwrap();
        let compiled = &table.routes()[0];
        assert_eq!(
            compiled.timeout,
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(compiled.mirror.as_ref().unwrap().percent, 10.0);
        assert!(compiled.retry.is_none() && compiled.fault.is_none());
    }

    #[test]
    fn no_backends_picks_none() {
        let table = RouteTable::compile(&[route("r", vec![])]).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(table.routes()[0].pick_backend(&mut rng).is_none());
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let r = Route {
            backends: vec![subset("v1", 90), subset("v2", 10)],
            ..route("split", vec![])
        };
        let table = RouteTable::compile(&[r]).unwrap();
        let counts = counts(&table.routes()[0], 10_000, 42);
        let v1 = counts["v1"];
        let v2 = counts["v2"];
        assert_eq!(v1 + v2, 10_000);
        // Expected 9000 with a standard deviation of 30: 300 is ten sigmas.
        assert!((8_700..=9_300).contains(&v1), "v1 = {v1}");
        assert!((700..=1_300).contains(&v2), "v2 = {v2}");
        let weights: Vec<u32> = table.routes()[0].backends().map(|(_, w)| w).collect();
        assert_eq!(weights, [90, 10]);
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let r = Route {
            backends: vec![
                subset("zero-first", 0),
                subset("a", 1),
                subset("zero-mid", 0),
                subset("b", 1),
                subset("zero-last", 0),
            ],
            ..route("r", vec![])
        };
        let table = RouteTable::compile(&[r]).unwrap();
        let counts = counts(&table.routes()[0], 10_000, 7);
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn single_backend_always_chosen() {
        let r = Route {
            backends: vec![subset("only", 1_000_000)],
            ..route("r", vec![])
        };
        let table = RouteTable::compile(&[r]).unwrap();
        assert_eq!(counts(&table.routes()[0], 1_000, 3)["only"], 1_000);
    }

    #[test]
    fn error_names_route_and_field() {
        let err = compile_err(route("bad", vec![path(regex("("))]));
        let at = err.location();
        assert_eq!((at.index, at.name.as_str()), (1, "bad"));
        assert_eq!(at.field, "matches[0].path");
        let message = err.to_string();
        assert!(message.starts_with("route 1 (\"bad\"), matches[0].path: invalid regex"));
        let err = RouteTable::compile(&[route("", vec![path(regex("["))])]).unwrap_err();
        assert!(err.to_string().starts_with("route 0 (unnamed), "), "{err}");
    }

    #[test]
    fn invalid_regexes_are_rejected() {
        // Wrapping these in ^(?:...)$ would make them valid with another meaning.
        for pattern in ["(", "a)|(b", "a\\"] {
            let err = compile_err(route("r", vec![header("x", regex(pattern))]));
            assert!(matches!(err, RouteError::Regex { .. }), "{pattern}: {err}");
            assert_eq!(err.location().field, "matches[0].headers[0].value");
        }
        let err = compile_err(route("r", vec![query("q", regex("*"))]));
        assert_eq!(err.location().field, "matches[0].query[0].value");
    }

    #[test]
    fn invalid_method_is_rejected() {
        for method in ["", "GE T", "GET\n"] {
            let m = RequestMatch {
                method: Some(method.to_owned()),
                ..RequestMatch::default()
            };
            let err = compile_err(route("r", vec![RequestMatch::default(), m]));
            assert!(matches!(err, RouteError::Method { .. }), "{err}");
            assert_eq!(err.location().field, "matches[1].method");
        }
    }

    #[test]
    fn invalid_header_match_name_is_rejected() {
        let err = compile_err(route("r", vec![header("bad name", StringMatch::Present)]));
        assert!(matches!(err, RouteError::HeaderName { .. }), "{err}");
        assert_eq!(err.location().field, "matches[0].headers[0].name");
    }

    #[test]
    fn empty_query_name_is_rejected() {
        let err = compile_err(route("r", vec![query("", StringMatch::Present)]));
        assert!(matches!(err, RouteError::EmptyQueryName { .. }), "{err}");
        assert_eq!(err.location().field, "matches[0].query[0].name");
    }

    #[test]
    fn backend_total_weight_is_checked() {
        for backends in [
            vec![subset("a", 0)],
            vec![subset("a", 0), subset("b", 0)],
            vec![subset("a", 1_000_000), subset("b", 1)],
            vec![subset("a", u32::MAX), subset("b", u32::MAX)],
        ] {
            let err = compile_err(Route {
                backends,
                ..route("r", vec![])
            });
            assert!(matches!(err, RouteError::TotalWeight { .. }), "{err}");
            assert_eq!(err.location().field, "backends");
        }
        let ok = Route {
            backends: vec![subset("a", 999_999), subset("b", 1)],
            ..route("r", vec![])
        };
        assert!(RouteTable::compile(&[ok]).is_ok());
    }

    fn with_fault(delay: Option<f64>, abort: Option<(f64, u16)>) -> Route {
        Route {
            fault: Some(Fault {
                delay: delay.map(|percent| FaultDelay {
                    percent,
                    duration: Duration::from_millis(5),
                }),
                abort: abort.map(|(percent, status)| FaultAbort { percent, status }),
            }),
            ..route("r", vec![])
        }
    }

    #[test]
    fn fault_percents_are_checked() {
        for bad in [-1.0, 100.5, f64::NAN, f64::INFINITY] {
            let err = compile_err(with_fault(Some(bad), None));
            assert!(matches!(err, RouteError::Percent { .. }), "{err}");
            assert_eq!(err.location().field, "fault.delay.percent");
            let err = compile_err(with_fault(None, Some((bad, 503))));
            assert!(matches!(err, RouteError::Percent { .. }), "{err}");
            assert_eq!(err.location().field, "fault.abort.percent");
        }
        assert!(RouteTable::compile(&[with_fault(Some(0.0), Some((100.0, 503)))]).is_ok());
    }

    #[test]
    fn abort_status_is_checked() {
        for status in [0, 199, 600] {
            let err = compile_err(with_fault(None, Some((50.0, status))));
            assert!(matches!(err, RouteError::AbortStatus { .. }), "{err}");
            assert_eq!(err.location().field, "fault.abort.status");
        }
        for status in [200, 599] {
            assert!(RouteTable::compile(&[with_fault(None, Some((50.0, status)))]).is_ok());
        }
    }

    #[test]
    fn mirror_percent_is_checked() {
        let mirror = |percent| Route {
            mirror: Some(Mirror {
                subset: BTreeMap::new(),
                percent,
            }),
            ..route("r", vec![])
        };
        for bad in [-0.5, 101.0, f64::NAN] {
            let err = compile_err(mirror(bad));
            assert!(matches!(err, RouteError::Percent { .. }), "{err}");
            assert_eq!(err.location().field, "mirror.percent");
        }
        assert!(RouteTable::compile(&[mirror(100.0)]).is_ok());
    }

    #[test]
    fn retry_attempts_are_checked() {
        let policy = |attempts| -> RetryPolicy {
            serde_json::from_value(serde_json::json!({ "attempts": attempts })).unwrap()
        };
        let r = |attempts| Route {
            retry: Some(policy(attempts)),
            ..route("r", vec![])
        };
        let err = compile_err(r(11));
        assert!(matches!(err, RouteError::RetryAttempts { .. }), "{err}");
        assert_eq!(err.location().field, "retry.attempts");
        let table = RouteTable::compile(&[r(10)]).unwrap();
        assert_eq!(table.routes()[0].retry.as_ref().unwrap().attempts, 10);
    }

    fn edits(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderEdits {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        HeaderEdits {
            set: map(set),
            add: map(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn with_request_edits(e: HeaderEdits) -> Route {
        Route {
            request_headers: e,
            ..route("r", vec![])
        }
    }

    #[test]
    fn header_edit_names_and_values_are_checked() {
        let err = compile_err(with_request_edits(edits(&[("bad name", "v")], &[], &[])));
        assert!(matches!(err, RouteError::HeaderName { .. }), "{err}");
        assert_eq!(err.location().field, "requestHeaders.set[\"bad name\"]");

        let err = compile_err(with_request_edits(edits(
            &[],
            &[("x-a", "line\nbreak")],
            &[],
        )));
        assert!(matches!(err, RouteError::HeaderValue { .. }), "{err}");
        assert_eq!(err.location().field, "requestHeaders.add[\"x-a\"]");

        let err = compile_err(Route {
            response_headers: edits(&[], &[], &["ok", ""]),
            ..route("r", vec![])
        });
        assert!(matches!(err, RouteError::HeaderName { .. }), "{err}");
        assert_eq!(err.location().field, "responseHeaders.remove[1]");

        let err = compile_err(with_request_edits(edits(
            &[("X-A", "1"), ("x-a", "2")],
            &[],
            &[],
        )));
        assert!(matches!(err, RouteError::DuplicateHeader { .. }), "{err}");
    }

    #[test]
    fn proxy_managed_headers_cannot_be_edited() {
        for name in PROXY_MANAGED_HEADERS {
            let upper = name.to_uppercase();
            for e in [
                edits(&[(&upper, "x")], &[], &[]),
                edits(&[], &[(name, "x")], &[]),
                edits(&[], &[], &[name]),
            ] {
                let err = compile_err(with_request_edits(e));
                assert!(
                    matches!(err, RouteError::ProxyManagedHeader { .. }),
                    "{err}"
                );
                assert!(err.to_string().contains("hop-by-hop"), "{err}");
            }
        }
    }

    #[test]
    fn header_edits_apply_remove_then_set_then_add() {
        let r = Route {
            request_headers: edits(
                &[("X-Set", "new"), ("x-both", "set")],
                &[("x-add", "extra"), ("x-both", "added")],
                &["x-set", "x-gone", "x-both"],
            ),
            response_headers: edits(&[("server", "skein")], &[], &[]),
            ..route("r", vec![])
        };
        let table = RouteTable::compile(&[r]).unwrap();
        let compiled = &table.routes()[0];
        assert!(!compiled.request_header_edits().is_empty());
        assert!(
            RouteTable::compile(&[route("plain", vec![])])
                .unwrap()
                .routes()[0]
                .response_header_edits()
                .is_empty()
        );

        let mut headers = HeaderMap::new();
        headers.append("x-set", HeaderValue::from_static("old1"));
        headers.append("x-set", HeaderValue::from_static("old2"));
        headers.append("x-gone", HeaderValue::from_static("bye"));
        headers.append("x-add", HeaderValue::from_static("kept"));
        headers.append("x-both", HeaderValue::from_static("old"));
        headers.append("x-untouched", HeaderValue::from_static("same"));
        compiled.edit_request_headers(&mut headers);

        let all = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("x-set"), ["new"]);
        assert!(all("x-gone").is_empty());
        assert_eq!(all("x-add"), ["kept", "extra"]);
        // Removed, then set, then appended to.
        assert_eq!(all("x-both"), ["set", "added"]);
        assert_eq!(all("x-untouched"), ["same"]);

        let mut response = HeaderMap::new();
        response.append("server", HeaderValue::from_static("upstream"));
        compiled.edit_response_headers(&mut response);
        assert_eq!(response.get_all("server").iter().count(), 1);
        assert_eq!(response["server"], "skein");
    }

    #[test]
    fn set_replaces_all_values_without_remove() {
        let table =
            RouteTable::compile(&[with_request_edits(edits(&[("x-a", "1")], &[], &[]))]).unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("0"));
        headers.append("x-a", HeaderValue::from_static("00"));
        table.routes()[0].edit_request_headers(&mut headers);
        assert_eq!(headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1"]);
    }
}
