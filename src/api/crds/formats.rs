//! Schema formats the apiserver recognises. schemars names an integer's Rust type in its format
//! (`uint8`, `uint16`, `uint32`, ...), but Kubernetes knows only `int32` and `int64` for
//! integers: it ignores any other and warns about it on every `kubectl apply` of a new CRD.
//! So each integer schema gets the Kubernetes format wide enough for its Rust type, and that
//! type's range stays as `minimum`/`maximum` (a narrower one from `#[schemars(range)]` is kept).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    JSONSchemaPropsOrStringArray,
};

/// Gives every integer schema of every version of `crd` a format Kubernetes recognises.
pub(super) fn with_kubernetes_formats(
    mut crd: CustomResourceDefinition,
) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            for_each_schema(schema, &mut kubernetes_integer_format);
        }
    }
    crd
}

/// Calls `f` on `schema` and on every schema nested in it, depth first.
fn for_each_schema(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    let maps = [
        schema.properties.as_mut(),
        schema.pattern_properties.as_mut(),
        schema.definitions.as_mut(),
    ];
    for child in maps.into_iter().flatten().flat_map(|map| map.values_mut()) {
        for_each_schema(child, f);
    }
    let lists = [
        schema.all_of.as_mut(),
        schema.any_of.as_mut(),
        schema.one_of.as_mut(),
    ];
    for child in lists.into_iter().flatten().flatten() {
        for_each_schema(child, f);
    }
    if let Some(child) = schema.not.as_deref_mut() {
        for_each_schema(child, f);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(child)) => for_each_schema(child, f),
        Some(JSONSchemaPropsOrArray::Schemas(children)) => {
            for child in children {
                for_each_schema(child, f);
            }
        }
        None => {}
    }
    for child in [
        schema.additional_properties.as_mut(),
        schema.additional_items.as_mut(),
    ] {
        if let Some(JSONSchemaPropsOrBool::Schema(child)) = child {
            for_each_schema(child, f);
        }
    }
    for child in schema.dependencies.iter_mut().flat_map(|d| d.values_mut()) {
        if let JSONSchemaPropsOrStringArray::Schema(child) = child {
            for_each_schema(child, f);
        }
    }
}

/// Replaces a schemars integer format (named after a Rust type) with `int32` or `int64`, adding
/// the type's bounds where the schema has none.
fn kubernetes_integer_format(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() != Some("integer") {
        return;
    }
    let Some((format, minimum, maximum)) = schema.format.as_deref().and_then(integer_range) else {
        return;
    };
    schema.format = Some(format.to_owned());
    schema.minimum = schema.minimum.or(minimum);
    schema.maximum = schema.maximum.or(maximum);
}

/// The Kubernetes format (`int32` or `int64`) and the bounds of a schemars integer format, or
/// None for one Kubernetes already knows. Types wider than int64 (`uint64`, `usize`, ...) get
/// int64 and only their lower bound: the apiserver holds no larger integer anyway.
fn integer_range(format: &str) -> Option<(&'static str, Option<f64>, Option<f64>)> {
    Some(match format {
        "int32" | "int64" => return None,
        "int8" => ("int32", Some(i8::MIN.into()), Some(i8::MAX.into())),
        "int16" => ("int32", Some(i16::MIN.into()), Some(i16::MAX.into())),
        "uint8" => ("int32", Some(0.0), Some(u8::MAX.into())),
        "uint16" => ("int32", Some(0.0), Some(u16::MAX.into())),
        "uint32" => ("int64", Some(0.0), Some(u32::MAX.into())),
        unsigned if unsigned.starts_with("uint") => ("int64", Some(0.0), None),
        _ => ("int64", None, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crds::all;
    use kube::ResourceExt;
    use serde_json::Value;

    /// Whether the apiserver recognises `format` on a schema of type `type_`, by the rules of
    /// k8s.io/apiextensions-apiserver/pkg/apiserver/validation/formats.go (Kubernetes 1.34+):
    /// it warns about, and ignores, any other.
    fn recognised_by_kubernetes(type_: Option<&str>, format: &str) -> bool {
        // Compared with '-' removed, as the apiserver does (`date-time` is `datetime`).
        const STRING_FORMATS: [&str; 26] = [
            "bsonobjectid",
            "uri",
            "email",
            "hostname",
            "ipv4",
            "ipv6",
            "cidr",
            "mac",
            "uuid",
            "uuid3",
            "uuid4",
            "uuid5",
            "isbn",
            "isbn10",
            "isbn13",
            "creditcard",
            "ssn",
            "hexcolor",
            "rgbcolor",
            "byte",
            "password",
            "date",
            "duration",
            "datetime",
            "k8sshortname",
            "k8slongname",
        ];
        match type_ {
            None | Some("string") => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
            Some("integer") => matches!(format, "int32" | "int64"),
            Some("number") => matches!(format, "float" | "double"),
            Some(_) => false,
        }
    }

    /// Every (path, type, format) in `value`, a CRD as JSON. Walked apart from
    /// [`for_each_schema`], so a kind of nesting that walk misses is still checked here. Values
    /// (defaults, examples, enums) are not schemas and are skipped.
    fn formats(value: &Value, path: &str, found: &mut Vec<(String, Option<String>, String)>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(format)) = map.get("format") {
                    let type_ = map.get("type").and_then(Value::as_str).map(str::to_owned);
                    found.push((path.to_owned(), type_, format.clone()));
                }
                for (key, child) in map {
                    if !matches!(key.as_str(), "default" | "example" | "enum") {
                        formats(child, &format!("{path}.{key}"), found);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    formats(child, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_format_is_one_kubernetes_recognises() {
        let mut found = Vec::new();
        for crd in all() {
            let json = serde_json::to_value(&crd).expect("a CRD serialises");
            formats(&json, &crd.name_any(), &mut found);
        }
        assert!(
            found
                .iter()
                .any(|(_, type_, _)| type_.as_deref() == Some("integer")),
            "the walk found no integer schema"
        );
        for (path, type_, format) in found {
            assert!(
                recognised_by_kubernetes(type_.as_deref(), &format),
                "{path}: type {type_:?} has format {format:?}, which Kubernetes does not recognise"
            );
        }
    }

    #[test]
    fn unsigned_integers_keep_their_range() {
        let schema = |format: &str, minimum: Option<f64>, maximum: Option<f64>| {
            let mut schema = JSONSchemaProps {
                type_: Some("integer".to_owned()),
                format: Some(format.to_owned()),
                minimum,
                maximum,
                ..Default::default()
            };
            kubernetes_integer_format(&mut schema);
            (schema.format.unwrap(), schema.minimum, schema.maximum)
        };
        // u16 and u8 fit an int32; a range attribute's narrower bounds stay.
        assert_eq!(
            schema("uint16", Some(0.0), Some(65535.0)),
            ("int32".to_owned(), Some(0.0), Some(65535.0))
        );
        assert_eq!(
            schema("uint8", None, None),
            ("int32".to_owned(), Some(0.0), Some(255.0))
        );
        assert_eq!(
            schema("uint8", Some(0.0), Some(100.0)),
            ("int32".to_owned(), Some(0.0), Some(100.0))
        );
        // u32 needs an int64, bounded by u32::MAX (schemars gives it only a minimum).
        assert_eq!(
            schema("uint32", Some(1.0), None),
            ("int64".to_owned(), Some(1.0), Some(4294967295.0))
        );
        assert_eq!(
            schema("int32", None, None),
            ("int32".to_owned(), None, None)
        );
    }
}
