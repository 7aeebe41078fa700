//! The traffic rules' status, written by a real `skein control-plane` against the real
//! apiserver (the shared test cluster, no node needed): accepted, invalid (a rule the
//! validating webhook would have refused, applied while no webhook is registered — its failure
//! policy is Ignore, so this happens whenever the control plane is down), conflicted, and a
//! Service that does not exist yet. The traffic those rules steer is in `traffic.rs`.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skein::api::{EgressRule, RouteRule, TrafficPolicy};
use support::TestContext;
use support::control_plane::ControlPlane;
use support::node::eventually;

const WAIT: Duration = Duration::from_secs(30);

async fn create<K>(ctx: &TestContext, object: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(object).expect("a well-formed object");
    Api::<K>::namespaced(ctx.client.clone(), &ctx.namespace)
        .create(&PostParams::default(), &object)
        .await
        .expect("creating the object");
}

/// The conditions of a RouteRule once its status describes its current generation.
async fn route_rule_conditions(ctx: &TestContext, name: &str) -> Vec<Condition> {
    let api: Api<RouteRule> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    eventually(&format!("RouteRule {name}'s status"), WAIT, || async {
        let rule = api.get_opt(name).await.ok()??;
        let status = rule.status?;
        (status.observed_generation == rule.metadata.generation).then_some(status.conditions)
    })
    .await
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

fn service(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80}]}})
}

fn route_rule(name: &str, service: &str, weights: [u32; 2]) -> serde_json::Value {
    json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": name},
        "spec": {"service": service, "http": [{"route": [
            {"subset": {"version": "v1"}, "weight": weights[0]},
            {"subset": {"version": "v2"}, "weight": weights[1]}]}]}
    })
}

#[tokio::test]
async fn each_rule_reports_whether_proxies_got_it() {
    let ctx = TestContext::new().await;
    let _control_plane = ControlPlane::start().await;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(service("backend")).unwrap(),
        )
        .await
        .expect("creating a Service");

    create::<RouteRule>(&ctx, route_rule("good", "backend", [90, 10])).await;
    let good = route_rule_conditions(&ctx, "good").await;
    assert_eq!(condition(&good, "Accepted").status, "True", "{good:?}");
    assert_eq!(condition(&good, "ResolvedRefs").status, "True", "{good:?}");
    assert_eq!(
        condition(&good, "FieldsNotActing").status,
        "False",
        "{good:?}"
    );

    // Weights adding up to 70: no webhook here to refuse it, so the control plane does.
    create::<RouteRule>(&ctx, route_rule("bad", "frontend", [50, 20])).await;
    let bad = route_rule_conditions(&ctx, "bad").await;
    let accepted = condition(&bad, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "Invalid")
    );
    assert!(accepted.message.contains("100"), "{}", accepted.message);

    // A second valid rule for the same Service: the older one keeps it.
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has 1 s steps
    create::<RouteRule>(&ctx, route_rule("later", "backend", [50, 50])).await;
    let later = route_rule_conditions(&ctx, "later").await;
    let accepted = condition(&later, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "Conflicted")
    );
    assert!(accepted.message.contains("good"), "{}", accepted.message);

    // A Service that does not exist yet: accepted, with the reference unresolved until it does.
    create::<RouteRule>(&ctx, route_rule("early", "payments", [100, 0])).await;
    let early = route_rule_conditions(&ctx, "early").await;
    assert_eq!(condition(&early, "Accepted").status, "True", "{early:?}");
    let resolved = condition(&early, "ResolvedRefs");
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("False", "ServiceNotFound")
    );
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(service("payments")).unwrap(),
        )
        .await
        .expect("creating the Service");
    let api: Api<RouteRule> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    eventually(
        "ResolvedRefs to turn True once the Service exists",
        WAIT,
        || async {
            let rule = api.get_opt("early").await.ok()??;
            let status = rule.status?;
            (status.condition("ResolvedRefs")?.status == "True").then_some(())
        },
    )
    .await;

    // Fixing the invalid rule (a new generation) makes it accepted.
    api.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"http": [{"route": [
            {"subset": {"version": "v1"}, "weight": 50},
            {"subset": {"version": "v2"}, "weight": 50}]}]}})),
    )
    .await
    .expect("fixing the rule");
    let fixed = route_rule_conditions(&ctx, "bad").await;
    assert_eq!(condition(&fixed, "Accepted").status, "True", "{fixed:?}");

    // EgressRules and TrafficPolicies report the same way; every field of theirs acts (a
    // policy's mtlsMode decides whether its callers originate mTLS), and status says so.
    create::<EgressRule>(
        &ctx,
        json!({"apiVersion": "skein.dev/v1alpha1", "kind": "EgressRule",
               "metadata": {"name": "partner"}, "spec": {"hosts": ["api.partner.example"]}}),
    )
    .await;
    create::<TrafficPolicy>(
        &ctx,
        json!({"apiVersion": "skein.dev/v1alpha1", "kind": "TrafficPolicy",
               "metadata": {"name": "backend"},
               "spec": {"service": "backend", "loadBalancer": "RoundRobin", "mtlsMode": "Strict"}}),
    )
    .await;
    let egress: Api<EgressRule> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let policies: Api<TrafficPolicy> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    eventually(
        "the EgressRule and TrafficPolicy to be accepted",
        WAIT,
        || async {
            let e = egress.get_opt("partner").await.ok()??.status?;
            let p = policies.get_opt("backend").await.ok()??.status?;
            (e.condition("Accepted")?.status == "True" && p.condition("Accepted")?.status == "True")
                .then_some(())
        },
    )
    .await;
    let status = policies.get("backend").await.unwrap().status.unwrap();
    let not_acting = condition(&status.conditions, "FieldsNotActing");
    assert_eq!(
        (not_acting.status.as_str(), not_acting.reason.as_str()),
        ("False", "AllFieldsAct"),
        "{}",
        not_acting.message
    );
}

/// What users copy must work: every object of `config/samples/traffic-rules.yaml` passes the
/// real apiserver's schema and CEL rules, and the control plane accepts it.
#[tokio::test]
async fn the_sample_rules_are_accepted() {
    let ctx = TestContext::new().await;
    let _control_plane = ControlPlane::start().await;
    Api::<Service>::namespaced(ctx.client.clone(), &ctx.namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(service("backend")).unwrap(),
        )
        .await
        .expect("creating the Service the samples name");
    let text =
        std::fs::read_to_string(support::source_dir().join("config/samples/traffic-rules.yaml"))
            .expect("reading the samples");
    let mut created = Vec::new();
    for object in skein::yaml::documents::<serde_json::Value>(&text).unwrap() {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "RouteRule" => create::<RouteRule>(&ctx, object).await,
            "EgressRule" => create::<EgressRule>(&ctx, object).await,
            "TrafficPolicy" => create::<TrafficPolicy>(&ctx, object).await,
            other => panic!("unexpected kind {other} in the samples"),
        }
        created.push((kind, name));
    }
    assert_eq!(created.len(), 3, "{created:?}");
    let namespace = ctx.namespace.clone();
    eventually("every sample to be accepted", WAIT, || async {
        let mut accepted = 0;
        for (kind, name) in &created {
            let status = match kind.as_str() {
                "RouteRule" => {
                    Api::<RouteRule>::namespaced(ctx.client.clone(), &namespace)
                        .get_opt(name)
                        .await
                        .ok()??
                        .status
                }
                "EgressRule" => {
                    Api::<EgressRule>::namespaced(ctx.client.clone(), &namespace)
                        .get_opt(name)
                        .await
                        .ok()??
                        .status
                }
                _ => {
                    Api::<TrafficPolicy>::namespaced(ctx.client.clone(), &namespace)
                        .get_opt(name)
                        .await
                        .ok()??
                        .status
                }
            };
            if status?.condition("Accepted")?.status == "True" {
                accepted += 1;
            }
        }
        (accepted == created.len()).then_some(())
    })
    .await;
}
