//! Every Skein CustomResourceDefinition: generated from the Rust types, rendered as the YAML in
//! `crds/`, and installed into a cluster.

mod formats;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, ResourceExt};

use super::access_policy::AccessPolicy;
use super::egress_rule::EgressRule;
use super::meshconfig::MeshConfig;
use super::mtls_policy::MtlsPolicy;
use super::names;
use super::route_rule::RouteRule;
use super::traffic_policy::TrafficPolicy;

/// How long `install` waits for each CRD to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("rendering CRD {name} as YAML: {source}")]
    Render {
        name: String,
        source: crate::yaml::YamlError,
    },
    #[error("applying CRD {name}: {source}")]
    Apply { name: String, source: kube::Error },
    #[error("CRD {name} did not become Established within {timeout:?}")]
    NotEstablished { name: String, timeout: Duration },
}

/// Every CRD Skein defines, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    [
        with_defaulted_spec(MeshConfig::crd()),
        RouteRule::crd(),
        EgressRule::crd(),
        TrafficPolicy::crd(),
        AccessPolicy::crd(),
        MtlsPolicy::crd(),
    ]
    .into_iter()
    .map(formats::with_kubernetes_formats)
    .collect()
}

/// Every field of a MeshConfig spec is optional, so the spec itself is too: `spec: {}` is
/// defaulted by the apiserver. Without this, a server-side apply that removes the last field a
/// manager owned (say, `federation.clusters: []`) leaves no spec at all and is refused.
fn with_defaulted_spec(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        if let Some(required) = schema.required.as_mut() {
            required.retain(|field| field != "spec");
        }
        schema.required = schema
            .required
            .take()
            .filter(|required| !required.is_empty());
        if let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) {
            spec.default = Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                    serde_json::json!({}),
                ),
            );
        }
    }
    crd
}

/// All CRDs as one multi-document YAML stream: what `skein crds` prints and `crds/` holds.
pub fn render_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in all() {
        let yaml = crate::yaml::to_string(&crd).map_err(|source| CrdError::Render {
            name: crd.name_any(),
            source,
        })?;
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

/// Server-side applies every CRD and waits until the apiserver serves each one.
pub async fn install(client: &Client) -> Result<(), CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    for crd in all() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| CrdError::Apply {
                name: name.clone(),
                source,
            })?;
    }
    for crd in all() {
        let name = crd.name_any();
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(ESTABLISH_TIMEOUT, established).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(CrdError::NotEstablished {
                    name,
                    timeout: ESTABLISH_TIMEOUT,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` is generated; this fails when someone changes a type without regenerating it.
    /// Regenerate with `cargo run -- crds > crds/skein.dev.yaml`.
    #[test]
    fn committed_crds_match_the_types() {
        let committed = include_str!("../../crds/skein.dev.yaml");
        let generated = render_yaml().unwrap();
        assert!(
            committed == generated,
            "crds/skein.dev.yaml is stale: regenerate it with `cargo run -- crds > crds/skein.dev.yaml`"
        );
    }

    /// What `kubectl apply -f crds/` reads is exactly the types' CRDs.
    #[test]
    fn the_rendered_crds_read_back_as_the_types() {
        let read: Vec<CustomResourceDefinition> =
            crate::yaml::documents(&render_yaml().unwrap()).unwrap();
        assert_eq!(read, all());
    }

    #[test]
    fn every_crd_is_in_the_skein_group_and_structural() {
        for crd in all() {
            assert_eq!(crd.spec.group, names::GROUP);
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, names::VERSION);
            assert!(version.schema.is_some(), "{} has no schema", crd.name_any());
        }
    }
}
