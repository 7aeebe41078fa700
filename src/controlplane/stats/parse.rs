//! The subset of the Prometheus/OpenMetrics text format the proxies' `/metrics` uses: one
//! `name{label="value",...} number` sample a line, `#` lines (HELP, TYPE, EOF) skipped.
//! Written here because `prometheus-client` only encodes; the subset is small and tested below.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// The samples of `text` whose metric name `keep` accepts (the others are not even stored).
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason| ParseError {
            line: index + 1,
            reason,
        };
        let name_end = line.find(['{', ' ']).ok_or(error("no value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(error("no metric name"));
        }
        if !keep(name) {
            continue;
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(inner).map_err(error)?;
            labels = parsed;
            rest = after;
        }
        // The value, then an optional timestamp.
        let value = rest.split_whitespace().next().ok_or(error("no value"))?;
        let value = parse_value(value).ok_or(error("the value is not a number"))?;
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// `a="x",b="y"}` → the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = text.find('=').ok_or("a label without a value")?;
        let name = text[..eq].trim();
        if name.is_empty() {
            return Err("a label without a name");
        }
        let quoted = text[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value is not quoted")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        text = &quoted[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        let text = "# HELP x help\n# TYPE x counter\nx_total 3\n\
                    y_bucket{le=\"0.5\",direction=\"inbound\"} 7 1700000000\n\
                    y_bucket{le=\"+Inf\",direction=\"inbound\"} 9\n# EOF\n";
        let samples = parse(text, |_| true).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "x_total");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("le"), "0.5");
        assert_eq!(samples[1].label("direction"), "inbound");
        assert_eq!(samples[1].value, 7.0);
        assert_eq!(samples[2].label("le"), "+Inf");
        assert_eq!(samples[2].label("absent"), "");
    }

    #[test]
    fn escaped_label_values() {
        let text = r#"m{reason="a \"quoted\", b\\c\nd",empty=""} 1"#;
        let samples = parse(text, |_| true).unwrap();
        assert_eq!(samples[0].label("reason"), "a \"quoted\", b\\c\nd");
        assert_eq!(samples[0].label("empty"), "");
    }

    #[test]
    fn unwanted_metrics_are_skipped() {
        let text = "a 1\nb{x=\"1\"} 2\n";
        let samples = parse(text, |name| name == "b").unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].name, "b");
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for bad in [
            "m{a=\"1\" 2",
            "m{a=1} 2",
            "m{a=\"1\"}",
            "m notanumber",
            "m{=\"x\"} 1",
            "{a=\"1\"} 1",
            "m{a=\"\\",
        ] {
            assert!(parse(bad, |_| true).is_err(), "{bad:?}");
        }
        let error = parse("ok 1\nbroken", |_| true).unwrap_err();
        assert_eq!(error.line, 2);
    }
}
