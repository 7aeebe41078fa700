//! The validating admission webhook for RouteRule, EgressRule, TrafficPolicy, AccessPolicy and
//! MtlsPolicy: what the CRD schema cannot say (weights adding up to 100, regexes that compile,
//! header names) is refused at `kubectl apply` with every problem and its field path, and so is
//! what the namespace model forbids (an EgressRule outside `skein-system` naming other
//! namespaces or `*`). A rule for a Service that does not exist is allowed with a warning:
//! Services and rules are often applied in either order; so is a consumer rule (for another
//! namespace's Service), warned that it applies to its own namespace's callers only.
//!
//! Pure apart from the lookup of Services it is given; the HTTP route is in `server`.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde::de::DeserializeOwned;

use super::translate;
use crate::api::{
    AccessPolicySpec, EgressRuleSpec, MtlsPolicySpec, RouteRuleSpec, TrafficPolicySpec,
};

/// Answers one admission request. `service_exists(namespace, name)` says whether a Service is
/// known.
pub fn review(
    request: &AdmissionRequest<DynamicObject>,
    service_exists: impl Fn(&str, &str) -> bool,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let Some(object) = &request.object else {
        return response.deny("the request carries no object");
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| object.metadata.namespace.clone())
        .unwrap_or_default();
    let (problems, service) = match request.kind.kind.as_str() {
        "RouteRule" => match spec::<RouteRuleSpec>(object) {
            Ok(spec) => (translate::validate_route_rule(&spec), Some(spec.service)),
            Err(problem) => (vec![problem], None),
        },
        "EgressRule" => match spec::<EgressRuleSpec>(object) {
            Ok(spec) => {
                let mut problems = translate::validate_egress_rule(&spec);
                problems.extend(translate::egress_scope_problems(&namespace, &spec));
                (problems, None)
            }
            Err(problem) => (vec![problem], None),
        },
        "TrafficPolicy" => match spec::<TrafficPolicySpec>(object) {
            Ok(spec) => (
                translate::validate_traffic_policy(&spec),
                Some(spec.service),
            ),
            Err(problem) => (vec![problem], None),
        },
        "AccessPolicy" => match spec::<AccessPolicySpec>(object) {
            Ok(spec) => (translate::validate_access_policy(&spec), None),
            Err(problem) => (vec![problem], None),
        },
        "MtlsPolicy" => match spec::<MtlsPolicySpec>(object) {
            Ok(spec) => (translate::validate_mtls_policy(&spec), None),
            Err(problem) => (vec![problem], None),
        },
        // Not ours to judge (a misconfigured registration): let it through.
        _ => return response,
    };
    if !problems.is_empty() {
        return response.deny(format!(
            "{} {}/{} is invalid: {}",
            request.kind.kind,
            namespace,
            request.name,
            problems.join("; ")
        ));
    }
    let mut response = response;
    let mut warnings = Vec::new();
    if let Some(service) = service {
        let (name, service_namespace) = match service.split_once('.') {
            Some((name, ns)) => (name, ns),
            None => (service.as_str(), namespace.as_str()),
        };
        // Allowed, but it may not do what its author expects of it: say so now.
        if service_namespace != namespace {
            warnings.push(format!(
                "consumer rule: it applies to callers in namespace {namespace} only, not to \
                 other callers of Service {service_namespace}/{name} (only a rule in namespace \
                 {service_namespace} applies to all of them)"
            ));
        }
        if !service_exists(service_namespace, name) {
            warnings.push(format!(
                "Service {service_namespace}/{name} does not exist (yet): the rule takes effect when it does"
            ));
        }
    }
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

fn spec<T: DeserializeOwned>(object: &DynamicObject) -> Result<T, String> {
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    serde_json::from_value(spec).map_err(|err| format!("spec: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    fn request(kind: &str, spec: serde_json::Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "skein.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "skein.dev", "version": "v1alpha1", "resource": "x"},
                "name": "r",
                "namespace": "demo",
                "operation": "CREATE",
                "userInfo": {},
                "object": {
                    "apiVersion": "skein.dev/v1alpha1",
                    "kind": kind,
                    "metadata": {"name": "r", "namespace": "demo"},
                    "spec": spec
                }
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn weights_that_do_not_add_up_are_refused_with_their_path() {
        let req = request(
            "RouteRule",
            serde_json::json!({"service": "backend", "http": [{"route": [
                {"subset": {"version": "v1"}, "weight": 80},
                {"subset": {"version": "v2"}, "weight": 10}
            ]}]}),
        );
        let response = review(&req, |_, _| true);
        assert!(!response.allowed);
        let message = response.result.message;
        assert!(message.contains("spec.http[0]"), "{message}");
        assert!(message.contains("90"), "{message}");
    }

    #[test]
    fn a_valid_rule_for_a_missing_service_is_allowed_with_a_warning() {
        let req = request(
            "RouteRule",
            serde_json::json!({"service": "nowhere", "http": [{"route": [
                {"subset": {"version": "v1"}, "weight": 100}
            ]}]}),
        );
        let response = review(&req, |_, _| false);
        assert!(response.allowed);
        let warnings = response.warnings.unwrap_or_default();
        assert!(warnings[0].contains("demo/nowhere"), "{warnings:?}");
        assert!(review(&req, |_, _| true).warnings.is_none());
    }

    #[test]
    fn a_regex_that_does_not_compile_is_refused() {
        let req = request(
            "RouteRule",
            serde_json::json!({"service": "backend", "http": [{"match": [{"path": {"regex": "(" }}]}]}),
        );
        let response = review(&req, |_, _| true);
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("spec.http[0]"),
            "{}",
            response.result.message
        );
    }

    /// What users copy must pass: every object of config/samples/traffic-rules.yaml.
    #[test]
    fn the_sample_rules_are_valid() {
        let text = include_str!("../../config/samples/traffic-rules.yaml");
        let mut kinds = Vec::new();
        for object in crate::yaml::documents::<serde_json::Value>(text).unwrap() {
            let kind = object["kind"].as_str().unwrap().to_owned();
            let req = request(&kind, object["spec"].clone());
            let response = review(&req, |_, _| true);
            assert!(response.allowed, "{kind}: {}", response.result.message);
            kinds.push(kind);
        }
        assert_eq!(kinds, ["RouteRule", "EgressRule", "TrafficPolicy"]);
    }

    #[test]
    fn a_malformed_access_policy_is_refused_naming_each_problem() {
        let req = request(
            "AccessPolicy",
            serde_json::json!({"action": "Deny", "rules": [{
                "from": [{"serviceAccounts": ["Batch"]}],
                "to": [{"ports": [0], "methods": ["FETCH"], "paths": [{"prefix": "admin"}]}]
            }]}),
        );
        let response = review(&req, |_, _| true);
        assert!(!response.allowed);
        let message = response.result.message;
        for want in [
            "AccessPolicy demo/r is invalid",
            "spec.rules[0].from[0].serviceAccounts[0]",
            "spec.rules[0].to[0].ports[0]: 0 is not a port",
            "\"FETCH\" is not an HTTP method",
            "\"admin\" does not start with /",
        ] {
            assert!(message.contains(want), "{want:?} not in {message}");
        }
        let req = request(
            "AccessPolicy",
            serde_json::json!({"action": "Allow", "rules": [{"from": [{"unauthenticated": true}],
                               "to": [{"paths": [{"exact": "/healthz"}]}]}]}),
        );
        let response = review(&req, |_, _| false);
        assert!(response.allowed, "{}", response.result.message);
        assert!(response.warnings.is_none());
    }

    #[test]
    fn the_sample_access_policies_are_valid() {
        let text = include_str!("../../config/samples/access-policies.yaml");
        let objects = crate::yaml::documents::<serde_json::Value>(text).unwrap();
        assert_eq!(objects.len(), 2);
        for object in objects {
            let req = request("AccessPolicy", object["spec"].clone());
            let response = review(&req, |_, _| true);
            assert!(response.allowed, "{}", response.result.message);
        }
    }

    #[test]
    fn a_malformed_mtls_policy_is_refused_naming_each_problem() {
        let req = request(
            "MtlsPolicy",
            serde_json::json!({"selector": {"matchLabels": {"app/x/y": "db"}},
                               "ports": [{"port": 8080, "mode": "Strict"},
                                         {"port": 8080, "mode": "Disabled"}]}),
        );
        let response = review(&req, |_, _| true);
        assert!(!response.allowed);
        let message = response.result.message;
        for want in [
            "MtlsPolicy demo/r is invalid",
            "spec.selector.matchLabels: \"app/x/y\" is not a label key",
            "spec.ports[1].port: 8080 is already set by spec.ports[0]",
        ] {
            assert!(message.contains(want), "{want:?} not in {message}");
        }
        let response = review(&request("MtlsPolicy", serde_json::json!({})), |_, _| true);
        assert!(response.result.message.contains("spec: sets nothing"));
        let req = request(
            "MtlsPolicy",
            serde_json::json!({"mode": "Strict", "ports": [{"port": 9090, "mode": "Permissive"}]}),
        );
        let response = review(&req, |_, _| false);
        assert!(response.allowed, "{}", response.result.message);
    }

    fn request_in(
        namespace: &str,
        kind: &str,
        spec: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let mut req = request(kind, spec);
        req.namespace = Some(namespace.to_owned());
        if let Some(object) = req.object.as_mut() {
            object.metadata.namespace = Some(namespace.to_owned());
        }
        req
    }

    #[test]
    fn an_egress_rule_outside_the_mesh_namespace_may_not_name_other_namespaces() {
        for namespaces in [
            serde_json::json!(["*"]),
            serde_json::json!(["demo", "billing"]),
        ] {
            let spec = serde_json::json!({"hosts": ["api.example"], "namespaces": namespaces});
            let response = review(&request_in("demo", "EgressRule", spec.clone()), |_, _| true);
            assert!(!response.allowed, "{namespaces}");
            let message = response.result.message;
            assert!(
                message.contains("EgressRule demo/r is invalid")
                    && message
                        .contains("only EgressRules in skein-system may apply to other namespaces"),
                "{message}"
            );
            assert!(
                !message.contains("\"demo\""),
                "its own namespace is fine: {message}"
            );
            // The mesh namespace may open egress for others.
            let response = review(&request_in("skein-system", "EgressRule", spec), |_, _| true);
            assert!(response.allowed, "{}", response.result.message);
        }
        let own = serde_json::json!({"hosts": ["api.example"], "namespaces": ["demo"]});
        assert!(review(&request_in("demo", "EgressRule", own), |_, _| true).allowed);
        let none = serde_json::json!({"hosts": ["api.example"]});
        assert!(review(&request_in("demo", "EgressRule", none), |_, _| true).allowed);
    }

    #[test]
    fn a_consumer_rule_is_allowed_with_a_warning_about_whom_it_affects() {
        let spec = serde_json::json!({"service": "backend.payments", "http": [{"timeout": "1s"}]});
        for kind in ["RouteRule", "TrafficPolicy"] {
            let spec = if kind == "RouteRule" {
                spec.clone()
            } else {
                serde_json::json!({"service": "backend.payments", "loadBalancer": "RoundRobin"})
            };
            let response = review(&request(kind, spec), |_, _| true);
            assert!(response.allowed, "{}", response.result.message);
            let warnings = response.warnings.unwrap_or_default();
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(
                warnings[0]
                    .starts_with("consumer rule: it applies to callers in namespace demo only"),
                "{warnings:?}"
            );
        }
        // The Service's own namespace: a producer rule, no warning.
        let own = serde_json::json!({"service": "backend.demo", "http": [{"timeout": "1s"}]});
        assert!(
            review(&request("RouteRule", own), |_, _| true)
                .warnings
                .is_none()
        );
    }

    #[test]
    fn a_spec_of_the_wrong_shape_is_refused_not_a_panic() {
        let req = request("EgressRule", serde_json::json!({"hosts": 7}));
        let response = review(&req, |_, _| true);
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("spec"),
            "{}",
            response.result.message
        );
    }
}
