//! A duration field as Kubernetes users write it (`250ms`, `5s`, `1h30m`: Go's
//! `time.ParseDuration` syntax), parsed by kube's `Duration` and printed back in its shortest
//! exact form so defaults read `24h`, not `86400s`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A non-negative duration in Go syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(time::Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("invalid duration {input:?}: {source}")]
    Parse {
        input: String,
        source: kube::core::duration::ParseError,
    },
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(time::Duration::from_millis(millis))
    }

    pub const fn as_std(&self) -> time::Duration {
        self.0
    }
}

impl From<time::Duration> for Duration {
    fn from(value: time::Duration) -> Self {
        Self(value)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let parsed: kube::core::Duration =
            input.parse().map_err(|source| DurationError::Parse {
                input: input.to_owned(),
                source,
            })?;
        if parsed.is_negative() {
            return Err(DurationError::Negative(input.to_owned()));
        }
        Ok(Self(parsed.into()))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u128); 6] = [
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ];
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        // The largest unit that represents the value exactly; "ns" always does.
        let (unit, size) = UNITS
            .iter()
            .find(|(_, size)| nanos.is_multiple_of(*size))
            .copied()
            .unwrap_or(("ns", 1));
        write!(f, "{}{unit}", nanos / size)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The apiserver checks the syntax itself (CEL's duration() parses Go durations), so a
        // bad value is refused at `kubectl apply` instead of breaking every reader later.
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": "duration(self) >= duration('0s')",
                "message": "must be a non-negative duration such as 250ms, 5s, 1m30s or 24h",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!("250ms".parse(), Ok(Duration::from_millis(250)));
        assert_eq!("1h30m".parse(), Ok(Duration::from_secs(5400)));
        assert_eq!("0s".parse(), Ok(Duration::from_secs(0)));
    }

    #[test]
    fn rejects_garbage_and_negative() {
        assert!(matches!(
            "5".parse::<Duration>(),
            Err(DurationError::Parse { .. })
        ));
        assert!(matches!(
            "soon".parse::<Duration>(),
            Err(DurationError::Parse { .. })
        ));
        assert_eq!(
            "-1s".parse::<Duration>(),
            Err(DurationError::Negative("-1s".into()))
        );
    }

    #[test]
    fn prints_shortest_exact_form_and_round_trips() {
        for (value, text) in [
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(0), "0s"),
            (Duration::from(time::Duration::from_nanos(7)), "7ns"),
        ] {
            assert_eq!(value.to_string(), text);
            assert_eq!(text.parse(), Ok(value));
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let json = serde_json::to_string(&Duration::from_secs(5)).unwrap();
        assert_eq!(json, r#""5s""#);
        let back: Duration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Duration::from_secs(5));
        assert!(serde_json::from_str::<Duration>(r#""tomorrow""#).is_err());
    }
}
