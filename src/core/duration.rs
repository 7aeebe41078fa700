//! A duration field as Kubernetes users write it (`250ms`, `5s`, `1h30m`: Go's
//! `time.ParseDuration` syntax, which the apiserver's CEL `duration()` checks too), printed back in
//! its shortest exact form so defaults read `24h`, not `86400s`.

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
    #[error("invalid duration {input:?}: {problem}")]
    Parse {
        input: String,
        problem: &'static str,
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
        let (negative, nanos) = parse_go(input).map_err(|problem| DurationError::Parse {
            input: input.to_owned(),
            problem,
        })?;
        if negative && nanos > 0 {
            return Err(DurationError::Negative(input.to_owned()));
        }
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or_default();
        Ok(Self(time::Duration::new(secs, subsec)))
    }
}

/// Go's duration syntax: an optional sign, then one or more `NUMBER[.FRACTION]UNIT` (`1h30m`,
/// `1.5s`, `.5ms`), or a bare `0`. Returns the sign and the magnitude in nanoseconds, which, as in
/// Go, must fit an `int64` (about 292 years).
fn parse_go(input: &str) -> Result<(bool, u128), &'static str> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("\u{b5}s", 1_000),  // µ, micro sign
        ("\u{3bc}s", 1_000), // μ, Greek mu
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok((negative, 0));
    }
    if rest.is_empty() {
        return Err("empty; write a number and a unit, such as 250ms or 5s");
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = |text: &str| text.bytes().take_while(u8::is_ascii_digit).count();
        let whole_len = digits(rest);
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(digits(after)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err("expected a number, such as the 5 of 5s");
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err("a number needs a unit: ns, us, ms, s, m or h");
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err("unknown unit; use ns, us, ms, s, m or h");
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| "too large")?
        };
        // Digits beyond the 19th cannot change a value that fits 64 bits of nanoseconds.
        let fraction = &fraction[..fraction.len().min(19)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let numerator: u128 = fraction.parse().map_err(|_| "too large")?;
            numerator * scale / 10u128.pow(u32::try_from(fraction.len()).unwrap_or(19))
        };
        total = whole
            .checked_mul(scale)
            .and_then(|nanos| nanos.checked_add(fraction_nanos))
            .and_then(|nanos| nanos.checked_add(total))
            .filter(|nanos| *nanos <= i64::MAX as u128)
            .ok_or("too large: at most about 292 years")?;
        rest = after;
    }
    Ok((negative, total))
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
        assert_eq!("0".parse(), Ok(Duration::from_secs(0)));
        assert_eq!("1.5s".parse(), Ok(Duration::from_millis(1500)));
        assert_eq!(
            ".5ms".parse(),
            Ok(Duration::from(time::Duration::from_micros(500)))
        );
        assert_eq!("+2m".parse(), Ok(Duration::from_secs(120)));
        assert_eq!("1h0m0.25s".parse(), Ok(Duration::from_millis(3_600_250)));
        assert_eq!("3us".parse(), "3\u{b5}s".parse::<Duration>());
        assert_eq!("-0s".parse(), Ok(Duration::from_secs(0)));
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
        for garbage in [
            "",
            "-",
            "s",
            "5x",
            "1.s.",
            "1h 30m",
            "..5s",
            "9999999999h",
            "5s5",
        ] {
            let err = garbage.parse::<Duration>().unwrap_err();
            assert!(
                matches!(err, DurationError::Parse { .. }),
                "{garbage:?}: {err}"
            );
        }
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
