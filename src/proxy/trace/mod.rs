//! Distributed tracing in the proxy: a span per sampled HTTP/gRPC request, exported to Zipkin
//! (v2 JSON) and/or an OTLP/HTTP endpoint (Jaeger, an OpenTelemetry collector).
//!
//! **Spans.** Outbound requests (the app calling out) make a `CLIENT` span, inbound ones (a
//! client calling the app) a `SERVER` span. Each is a child of the span named in the incoming
//! trace headers, and its own id is what the forwarded request carries, so with apps that pass
//! on the trace headers they received (as `skein demo-app` does) a chain
//! app1 → proxy(out) → proxy(in) → app2 → proxy(out) → proxy(in) → app3 is one trace, each
//! span nested in the one before. A span runs from the request's arrival at the proxy to the
//! end of its response body ([`span::Span`] lists what it holds).
//!
//! **Sampling.** The caller's decision (W3C `traceparent` flags, B3 `x-b3-sampled`/`b3`/debug)
//! always stands. Only a request that carries no decision (the first meshed hop of a trace) is
//! sampled here, with probability `samplingPercentage` / 100 ([`Sampler`]).
//!
//! **Which headers are written when** ([`crate::headers::propagate_trace`]):
//!
//! | incoming | sampled | headers forwarded |
//! |---|---|---|
//! | none | no | none written: the request is forwarded as it came |
//! | none | yes | a new trace: `traceparent` and `x-b3-*` naming this hop's span |
//! | a context, sampled (or deferred and sampled here) | yes | a child: `traceparent` and `x-b3-*` naming this hop's span |
//! | a context, unsampled (or deferred and not sampled here) | no | untouched: the caller's context goes on as it came |
//!
//! An unsampled hop writes nothing because it records nothing: a span id invented for it would
//! be a parent no backend has, and apps that trace themselves would hang their spans from it.
//! The same holds for a proxy without an exporter (no endpoint set): it samples nothing and
//! passes every trace header on as it came, so apps' own traces stay whole.
//!
//! **Cost.** An unsampled request costs the reading of its trace headers (no allocation) and,
//! when it has no decision, one random number; nothing else is built. A sampled one allocates
//! its [`span::Span`] (method, path, names) and, at its end, hands it to the export queue.
//!
//! **Export** ([`export`]): a bounded queue (2048 spans) drained by one task in batches (512
//! spans or 1 s), POSTed to each endpoint; a full queue or a failed export drops spans and
//! counts them (`skein_proxy_trace_spans_dropped_total{reason}`), never slowing requests.
//! Endpoints are plain `http://` URLs (a collector in the cluster); `https` is refused with an
//! error saying so, as the proxy carries no public CA roots to check a backend's certificate.

pub mod export;
pub mod otlp;
pub mod span;
pub mod zipkin;

use http::Uri;

pub use self::export::{Exporter, SHUTDOWN_FLUSH, Sink, TraceMetrics};
pub use self::span::Span;

/// A bad tracing setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("{text:?} is not a URL: {reason}")]
    NotAUrl { text: String, reason: String },
    #[error(
        "{text:?}: only http:// endpoints are supported (the proxy exports to a collector over plain HTTP)"
    )]
    NotHttp { text: String },
    #[error("{text:?} names no host")]
    NoHost { text: String },
    #[error("the sampling percentage must be between 0 and 100, not {0}")]
    Percentage(String),
}

/// Checks an export endpoint: an absolute `http://host[:port]/path` URL.
pub fn parse_endpoint(text: &str) -> Result<Uri, SettingError> {
    let uri: Uri =
        text.trim()
            .parse()
            .map_err(|err: http::uri::InvalidUri| SettingError::NotAUrl {
                text: text.to_owned(),
                reason: err.to_string(),
            })?;
    match uri.scheme_str() {
        Some("http") => {}
        _ => {
            return Err(SettingError::NotHttp {
                text: text.to_owned(),
            });
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(SettingError::NoHost {
            text: text.to_owned(),
        });
    }
    Ok(uri)
}

/// Checks a sampling percentage (0 to 100, finite).
pub fn check_percentage(percentage: f64) -> Result<f64, SettingError> {
    if percentage.is_finite() && (0.0..=100.0).contains(&percentage) {
        Ok(percentage)
    } else {
        Err(SettingError::Percentage(percentage.to_string()))
    }
}

/// Decides on traces that start here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    percentage: f64,
}

impl Sampler {
    /// `percentage` of new traces, checked by [`check_percentage`].
    pub fn new(percentage: f64) -> Self {
        Self { percentage }
    }

    pub fn sample(&self, rng: &mut fastrand::Rng) -> bool {
        // 0 never draws (and so never samples); 100 always samples.
        self.percentage > 0.0 && rng.f64() * 100.0 < self.percentage
    }
}

/// The proxy's tracing: the sampler for new traces and the exporter. Absent when no endpoint
/// is set.
#[derive(Debug)]
pub struct Tracer {
    pub sampler: Sampler,
    pub exporter: Exporter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls() {
        let uri = parse_endpoint("http://jaeger.tracing:4318/v1/traces").expect("valid");
        assert_eq!(uri.host(), Some("jaeger.tracing"));
        assert_eq!(uri.port_u16(), Some(4318));
        assert!(parse_endpoint(" http://10.0.0.1:9411/api/v2/spans ").is_ok());
        for (bad, says) in [
            ("https://collector:4318/v1/traces", "only http://"),
            ("jaeger:4318", "only http://"),
            ("/v1/traces", "only http://"),
            ("http://", "not a URL"),
            ("http://exa mple/", "not a URL"),
            ("", "not a URL"),
        ] {
            let err = parse_endpoint(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn percentages_are_checked() {
        assert_eq!(check_percentage(0.0), Ok(0.0));
        assert_eq!(check_percentage(100.0), Ok(100.0));
        for bad in [-1.0, 100.5, f64::NAN, f64::INFINITY] {
            assert!(check_percentage(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sampler_samples_its_share() {
        let mut rng = fastrand::Rng::with_seed(7);
        let never = Sampler::new(0.0);
        let always = Sampler::new(100.0);
        assert!((0..10_000).all(|_| !never.sample(&mut rng)));
        assert!((0..10_000).all(|_| always.sample(&mut rng)));
        // 10% of 100,000: mean 10,000, standard deviation about 95; allow 5 of them.
        let tenth = Sampler::new(10.0);
        let sampled = (0..100_000).filter(|_| tenth.sample(&mut rng)).count();
        assert!((9_525..=10_475).contains(&sampled), "{sampled}");
    }
}
