//! Reading `skein proxy --config FILE` and noticing when it changes.
//!
//! The file is YAML or JSON (JSON is YAML). It is polled rather than watched with inotify:
//! editors and Kubernetes ConfigMap mounts replace files by renaming, which a poll of the
//! content handles without special cases, and a second of delay is fine for a static file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::types::ProxyConfig;
use super::{Compiled, ConfigError, ConfigStore};

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid proxy configuration: {source}")]
    Parse { path: PathBuf, source: ParseError },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// Parses a configuration from YAML or JSON text. YAML is read into JSON values first, so both
/// spell everything the same way (`value: {exact: "1"}`), with no YAML-only tags.
pub fn parse(text: &str) -> Result<ProxyConfig, ParseError> {
    if text.trim().is_empty() {
        return Ok(ProxyConfig::default());
    }
    let value: serde_json::Value = skein_core::yaml::from_str(text).map_err(ParseError::Syntax)?;
    serde_json::from_value(value).map_err(ParseError::Structure)
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Syntax(skein_core::yaml::YamlError),
    #[error("{0}")]
    Structure(serde_json::Error),
}

fn read(path: &Path) -> Result<(String, ProxyConfig), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse(&text).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok((text, config))
}

/// Reads and compiles the file for start-up: an error here stops the proxy.
pub fn initial(path: &Path) -> Result<(String, Compiled), LoadError> {
    let (text, config) = read(path)?;
    let compiled = Compiled::new(config, None).map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok((text, compiled))
}

/// Re-reads `path` whenever its content changes and swaps the new configuration in. A file
/// that cannot be read, parsed or compiled is reported through `on_result`, and the active
/// configuration stays.
pub async fn watch(
    path: PathBuf,
    mut last_text: String,
    store: Arc<ConfigStore>,
    on_result: impl Fn(Result<&Compiled, &LoadError>),
) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let reading = path.clone();
        let Ok(read) = tokio::task::spawn_blocking(move || read(&reading)).await else {
            continue;
        };
        match read {
            Ok((text, _)) if text == last_text => {}
            Ok((text, config)) => {
                last_text = text;
                match store.replace(config) {
                    Ok(compiled) => on_result(Ok(&compiled)),
                    Err(source) => on_result(Err(&LoadError::Invalid {
                        path: path.clone(),
                        source,
                    })),
                }
            }
            Err(err) => {
                // Forget the last text, so that fixing the file is noticed even if it goes
                // back to what it was.
                last_text.clear();
                on_result(Err(&err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StringMatch;

    #[test]
    fn yaml_and_json_spell_matches_the_same_way() {
        let yaml = "destinations: [{name: a, ports: [{port: 80, endpoints: []}], routes: [{matches: [{path: {prefix: /api}, headers: [{name: x-canary, value: {exact: '1'}}, {name: x-debug}]}]}]}]";
        let json = r#"{"destinations": [{"name": "a", "ports": [{"port": 80, "endpoints": []}], "routes": [{"matches": [{"path": {"prefix": "/api"}, "headers": [{"name": "x-canary", "value": {"exact": "1"}}, {"name": "x-debug"}]}]}]}]}"#;
        let from_yaml = parse(yaml).expect("yaml");
        assert_eq!(from_yaml, parse(json).expect("json"));
        let matches = &from_yaml.destinations[0].routes[0].matches[0];
        assert_eq!(matches.path, Some(StringMatch::Prefix("/api".to_owned())));
        assert_eq!(matches.headers[1].value, StringMatch::Present);
    }

    #[test]
    fn mistakes_are_reported_not_ignored() {
        assert!(matches!(
            parse("destinations: ["),
            Err(ParseError::Syntax(_))
        ));
        let err = parse("destinatons: []").unwrap_err();
        assert!(err.to_string().contains("destinatons"), "{err}");
        let err = parse("detectTimeout: soon").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
