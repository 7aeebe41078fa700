//! YAML in and out, for every role: one parser and one printer (serde-saphyr, pure Rust, the
//! one kube uses for kubeconfigs), configured once here.
//!
//! Reading follows Kubernetes' own YAML (YAML 1.1, as `kubectl` reads manifests), so a manifest
//! means the same to `skein inject` as to the apiserver: `0644` is octal (420), `yes`/`on` are
//! booleans. Errors are one line with the line and column, fit for logs and admission messages.
//!
//! Writing uses two-space indentation with list items at their key's level (as `kubectl get -o
//! yaml` prints them), literal block scalars (`|`) for multi-line strings, one line for every
//! other string, and quotes for any string another reader could take for a number, boolean or
//! null.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Boxed: serde-saphyr's errors carry their location and are large, and these travel inside
/// other errors.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{0}")]
    Parse(Box<serde_saphyr::Error>),
    #[error("{0}")]
    Print(Box<serde_saphyr::SerializeError>),
}

impl From<serde_saphyr::Error> for YamlError {
    fn from(err: serde_saphyr::Error) -> Self {
        Self::Parse(Box::new(err))
    }
}

impl From<serde_saphyr::SerializeError> for YamlError {
    fn from(err: serde_saphyr::SerializeError) -> Self {
        Self::Print(Box::new(err))
    }
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        legacy_octal_numbers: true,
        with_snippet: false,
    }
}

/// One YAML (or JSON) document as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    Ok(serde_saphyr::from_str_with_options(text, options())?)
}

/// Every document of a multi-document stream (`---`-separated, as `kubectl apply -f` reads),
/// in order; empty documents are skipped.
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, YamlError> {
    Ok(serde_saphyr::from_multiple_with_options(text, options())?)
}

/// `value` as one YAML document, ending with a newline.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    // Long one-line strings (descriptions, CEL rules) stay on one line rather than folded: a
    // reader greps for them, and a folded rule is harder to read.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    Ok(serde_saphyr::to_string_with_options(value, options)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn manifests_read_as_kubectl_reads_them() {
        let value: Value = from_str("mode: 0644\nenabled: yes\nport: 8080\nname: web\n").unwrap();
        assert_eq!(
            value,
            json!({"mode": 420, "enabled": true, "port": 8080, "name": "web"})
        );
    }

    #[test]
    fn a_stream_yields_each_document_and_skips_empty_ones() {
        let docs: Vec<Value> =
            documents("---\na: 1\n---\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs, [json!({"a": 1}), json!({"b": 2})]);
    }

    #[test]
    fn an_error_is_one_line_with_its_position() {
        let err = documents::<Value>("a: 1\n---\nb: [1, 2\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    /// What is printed reads back the same, whatever the strings hold.
    #[test]
    fn printed_values_read_back_unchanged() {
        let long = "word ".repeat(40);
        let value = json!({
            "multi": "line one\nline two\n",
            "long": long,
            "spaced": "two  spaces  and a long enough sentence to be folded by the printer  ok",
            "looks_like": ["yes", "on", "0644", "1.5", "null", "~", "", "-", "a: b", "#x"],
            "number": 1.5,
            "empty": {},
            "list": [{"name": "a", "value": "1"}],
        });
        let text = to_string(&value).unwrap();
        let back: Value = from_str(&text).unwrap();
        assert_eq!(back, value, "{text}");
    }
}
