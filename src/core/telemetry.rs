//! Process-wide logging and the `/metrics` response, shared by every role.
//!
//! Logging: every role logs to stderr, filtered by [`LOG_ENV`] (`SKEIN_LOG`), in
//! tracing-subscriber's `EnvFilter` syntax: a level (`debug`), or comma-separated
//! `target=level` directives (`warn,skein_proxy=debug`). Unset or empty means `info`. The
//! injector sets it in the sidecar from MeshConfig `proxy.logLevel` or the pod annotation
//! `skein.dev/proxy-log-level`. A value that does not parse is reported in one line and
//! `info` is used instead: a typo in a log level never stops a proxy.

use std::io::IsTerminal;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// The one environment variable that sets every role's log filter.
pub const LOG_ENV: &str = "SKEIN_LOG";
/// The filter when [`LOG_ENV`] is invalid (a command's own default applies when it is unset).
pub const DEFAULT_LOG_FILTER: &str = "info";

/// The levels a bare word may name; anything else needs `target=level`.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Why a log filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error(
        "{0:?} is neither a level ({levels}) nor a target=level directive",
        levels = LEVELS.join(", ")
    )]
    NotALevel(String),
    #[error("{0}")]
    Syntax(#[from] tracing_subscriber::filter::ParseError),
}

/// Parses a log filter as [`LOG_ENV`] and `skein.dev/proxy-log-level` spell it.
///
/// Stricter than `EnvFilter` on one point: a bare word must be a level. `EnvFilter` would take
/// `SKEIN_LOG=verbose` for "everything from the target `verbose`", which silences every log
/// line, the opposite of what whoever wrote it wanted.
pub fn parse_log_filter(filter: &str) -> Result<EnvFilter, LogFilterError> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(LogFilterError::NotALevel(directive.to_owned()));
        }
    }
    Ok(EnvFilter::builder().parse(filter)?)
}

/// The filter for a [`LOG_ENV`] value (`None`: unset, then `unset`), and the warning to log
/// when the value had to be replaced by [`DEFAULT_LOG_FILTER`].
fn log_filter(value: Option<&str>, unset: &str) -> (EnvFilter, Option<String>) {
    let default = || EnvFilter::new(DEFAULT_LOG_FILTER);
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (EnvFilter::new(unset), None),
        Some(value) => match parse_log_filter(value) {
            Ok(filter) => (filter, None),
            Err(err) => (
                default(),
                Some(format!(
                    "{LOG_ENV}={value:?} is not a log filter ({err}); logging at {DEFAULT_LOG_FILTER}"
                )),
            ),
        },
    }
}

/// Logs to stderr, filtered by [`LOG_ENV`], else by `default` (an `EnvFilter` directive: roles
/// log at `info`, commands a person runs more quietly).
pub fn init_logging(default: &str) {
    let value = std::env::var(LOG_ENV).ok();
    let (filter, warning) = log_filter(value.as_deref(), default);
    // A second initialisation (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in container logs.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
}

/// The content type of every `/metrics` response: the OpenMetrics text that prometheus-client
/// writes (it ends with `# EOF`), which Prometheus negotiates and parses.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `/metrics` response for `registry`, the same for every role.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(value: Option<&str>) -> bool {
        log_filter(value, DEFAULT_LOG_FILTER).1.is_none()
    }

    #[test]
    fn levels_and_directives_are_filters() {
        for value in [
            "debug",
            "WARN",
            "info,skein_proxy=debug",
            "warn,skein=trace,hyper=off",
            "skein[request]=debug",
        ] {
            assert!(parse_log_filter(value).is_ok(), "{value}");
        }
        assert!(accepted(None));
        assert!(accepted(Some("")));
        assert!(accepted(Some("  ")));
    }

    #[test]
    fn a_bad_filter_falls_back_to_info_and_says_why_in_one_line() {
        for value in ["verbose", "debgu", "info,skein=loud", "skein=debug=x"] {
            let (filter, warning) = log_filter(Some(value), DEFAULT_LOG_FILTER);
            let warning = warning.unwrap_or_else(|| panic!("{value} was accepted"));
            assert!(!warning.contains('\n'), "{warning}");
            assert!(warning.starts_with("SKEIN_LOG="), "{warning}");
            assert!(warning.ends_with("logging at info"), "{warning}");
            assert_eq!(filter.to_string(), "info", "{value}");
        }
        let warning = log_filter(Some("verbose"), DEFAULT_LOG_FILTER).1.unwrap();
        assert!(
            warning.contains("\"verbose\" is neither a level"),
            "{warning}"
        );
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("skein_example", "An example", counter.clone());
        counter.inc();
        let response = metrics_response(&registry);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("skein_example_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
