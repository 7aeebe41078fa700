//! Fault knobs (latency, dropped connections, failures): parsing flag and header values, and the
//! per-request decision. Everything here is pure so the odds can be tested without a network or
//! a random number generator: the caller passes the random draw in.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// The knob values in force for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knobs {
    /// Share of requests answered with `fail_status`, 0–100.
    pub fail_percent: f64,
    pub fail_status: StatusCode,
    /// Added before answering (before the drop and fail decisions, like a slow application).
    pub latency: Duration,
    /// Share of requests whose connection is closed without a response, 0–100.
    pub drop_percent: f64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            fail_percent: 0.0,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            latency: Duration::ZERO,
            drop_percent: 0.0,
        }
    }
}

/// Per-request replacements for the flag values, read from `x-demo-<role>-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    pub fail_percent: Option<f64>,
    pub fail_status: Option<StatusCode>,
    pub latency: Option<Duration>,
    pub drop_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnobError {
    #[error("{0:?} is not a percentage between 0 and 100")]
    Percent(String),
    #[error("{0:?} is not an HTTP status between 200 and 599")]
    Status(String),
    #[error("{0:?} is not a whole number of milliseconds")]
    Millis(String),
    #[error("invalid header {header}: {source}")]
    Header {
        header: String,
        #[source]
        source: Box<KnobError>,
    },
}

/// A percentage in `[0, 100]`; NaN and infinities are refused.
pub fn parse_percent(text: &str) -> Result<f64, KnobError> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && (0.0..=100.0).contains(&value) => Ok(value),
        _ => Err(KnobError::Percent(text.to_owned())),
    }
}

/// A final response status; 1xx cannot end a request, so they are refused.
pub fn parse_status(text: &str) -> Result<StatusCode, KnobError> {
    text.trim()
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| KnobError::Status(text.to_owned()))
}

pub fn parse_millis(text: &str) -> Result<Duration, KnobError> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| KnobError::Millis(text.to_owned()))
}

/// The override header names of one role: `x-demo-<role>-<knob>`, role lowercased so one header
/// set sent at the frontend targets exactly one tier down the chain.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    fail_percent: String,
    fail_status: String,
    latency_ms: String,
    drop_percent: String,
}

impl HeaderNames {
    pub fn for_role(role: &str) -> Self {
        let prefix = format!("x-demo-{}-", role.to_lowercase());
        Self {
            fail_percent: format!("{prefix}fail-percent"),
            fail_status: format!("{prefix}fail-status"),
            latency_ms: format!("{prefix}latency-ms"),
            drop_percent: format!("{prefix}drop-percent"),
        }
    }

    /// Reads this role's overrides; the first invalid header is reported by name.
    pub fn overrides(&self, headers: &HeaderMap) -> Result<Overrides, KnobError> {
        Ok(Overrides {
            fail_percent: read(headers, &self.fail_percent, parse_percent)?,
            fail_status: read(headers, &self.fail_status, parse_status)?,
            latency: read(headers, &self.latency_ms, parse_millis)?,
            drop_percent: read(headers, &self.drop_percent, parse_percent)?,
        })
    }
}

fn read<T>(
    headers: &HeaderMap,
    name: &str,
    parse: fn(&str) -> Result<T, KnobError>,
) -> Result<Option<T>, KnobError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let wrap = |source| KnobError::Header {
        header: name.to_owned(),
        source: Box::new(source),
    };
    // Non-ASCII bytes never parse as a number, so a lossy copy yields the right error.
    let text = String::from_utf8_lossy(value.as_bytes());
    parse(&text).map(Some).map_err(wrap)
}

impl Knobs {
    /// The flag values with this request's overrides applied.
    pub fn with(self, overrides: Overrides) -> Self {
        Self {
            fail_percent: overrides.fail_percent.unwrap_or(self.fail_percent),
            fail_status: overrides.fail_status.unwrap_or(self.fail_status),
            latency: overrides.latency.unwrap_or(self.latency),
            drop_percent: overrides.drop_percent.unwrap_or(self.drop_percent),
        }
    }

    /// What to do with one request, given a uniform draw in `[0, 100)`.
    ///
    /// One draw split into adjacent ranges (`[0, drop)` drops, `[drop, drop + fail)` fails) makes
    /// each knob's share exact on its own: 10% drop and 10% fail give 10% and 10%, not 10% and 9%
    /// as independent draws would.
    pub fn decide(&self, draw: f64) -> Plan {
        let outcome = if draw < self.drop_percent {
            Outcome::Drop
        } else if draw < self.drop_percent + self.fail_percent {
            Outcome::Fail(self.fail_status)
        } else {
            Outcome::Proceed
        };
        Plan {
            latency: self.latency,
            outcome,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Waited before the outcome is carried out.
    pub latency: Duration,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Close the connection without answering.
    Drop,
    /// Answer with this status and an "injected failure" error.
    Fail(StatusCode),
    /// Serve normally (and call the next tier, if any).
    Proceed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn parses_percentages() {
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        assert_eq!(parse_percent(" 100 "), Ok(100.0));
        for bad in ["-1", "100.1", "NaN", "inf", "", "ten"] {
            assert_eq!(
                parse_percent(bad),
                Err(KnobError::Percent(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_statuses() {
        assert_eq!(parse_status("503"), Ok(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(parse_status("200"), Ok(StatusCode::OK));
        for bad in ["100", "600", "abc", "", "-503"] {
            assert_eq!(
                parse_status(bad),
                Err(KnobError::Status(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_millis() {
        assert_eq!(parse_millis("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_millis("1.5"), Err(KnobError::Millis("1.5".into())));
        assert_eq!(parse_millis("-1"), Err(KnobError::Millis("-1".into())));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn reads_only_this_roles_headers() {
        let names = HeaderNames::for_role("Backend");
        let map = headers(&[
            ("x-demo-backend-fail-percent", "100"),
            ("x-demo-backend-fail-status", "500"),
            ("x-demo-backend-latency-ms", "20"),
            ("x-demo-frontend-drop-percent", "100"),
        ]);
        assert_eq!(
            names.overrides(&map),
            Ok(Overrides {
                fail_percent: Some(100.0),
                fail_status: Some(StatusCode::INTERNAL_SERVER_ERROR),
                latency: Some(Duration::from_millis(20)),
                drop_percent: None,
            })
        );
        assert_eq!(
            HeaderNames::for_role("middleware").overrides(&map),
            Ok(Overrides::default())
        );
    }

    #[test]
    fn invalid_header_is_named() {
        let names = HeaderNames::for_role("backend");
        let err = names
            .overrides(&headers(&[("x-demo-backend-fail-percent", "lots")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid header x-demo-backend-fail-percent: \"lots\" is not a percentage between 0 and 100"
        );
    }

    #[test]
    fn overrides_replace_flag_values() {
        let flags = Knobs {
            fail_percent: 5.0,
            fail_status: StatusCode::BAD_GATEWAY,
            latency: Duration::from_millis(10),
            drop_percent: 1.0,
        };
        let merged = flags.with(Overrides {
            fail_percent: Some(0.0),
            latency: Some(Duration::ZERO),
            ..Overrides::default()
        });
        assert_eq!(
            merged,
            Knobs {
                fail_percent: 0.0,
                latency: Duration::ZERO,
                ..flags
            }
        );
    }

    #[test]
    fn decision_splits_one_draw() {
        let knobs = Knobs {
            fail_percent: 20.0,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            latency: Duration::from_millis(7),
            drop_percent: 10.0,
        };
        let outcome = |draw| knobs.decide(draw).outcome;
        assert_eq!(outcome(0.0), Outcome::Drop);
        assert_eq!(outcome(9.99), Outcome::Drop);
        assert_eq!(
            outcome(10.0),
            Outcome::Fail(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            outcome(29.99),
            Outcome::Fail(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(outcome(30.0), Outcome::Proceed);
        assert_eq!(outcome(99.99), Outcome::Proceed);
        assert_eq!(knobs.decide(50.0).latency, Duration::from_millis(7));
    }

    #[test]
    fn zero_never_and_hundred_always() {
        let quiet = Knobs::default();
        let broken = Knobs {
            fail_percent: 100.0,
            ..Knobs::default()
        };
        let dropping = Knobs {
            drop_percent: 100.0,
            fail_percent: 100.0,
            ..Knobs::default()
        };
        for draw in [0.0, 50.0, 99.999_999] {
            assert_eq!(quiet.decide(draw).outcome, Outcome::Proceed);
            assert_eq!(
                broken.decide(draw).outcome,
                Outcome::Fail(StatusCode::SERVICE_UNAVAILABLE)
            );
            assert_eq!(dropping.decide(draw).outcome, Outcome::Drop);
        }
    }
}
