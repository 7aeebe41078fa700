//! The traffic rules' status, written by a real `skein control-plane` against the real
//! apiserver (the shared test cluster, no node needed): accepted, invalid (a rule the
//! validating webhook would have refused, applied while no webhook is registered — its failure
//! policy is Ignore, so this happens whenever the control plane is down), conflicted, and a
//! Service that does not exist yet. The traffic those rules steer is in `traffic.rs`.
//!
//! Rules across namespaces (producer and consumer rules, mesh-wide EgressRules only from
//! `skein-system`): the configuration the control plane computes for proxies of three
//! namespaces (`/debug/config`, with real proxy clients connected), the validating webhook's
//! refusals through the real apiserver, and the status of a rule the model limits.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skein::api::{EgressRule, RouteRule, TrafficPolicy, names};
use skein::proxy::config::types::{ProxyConfig, Route};
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

// ---------------------------------------------------------------------------------------------
// Rules across namespaces: what the control plane computes for proxies of three namespaces
// (its /debug/config), and what the validating webhook refuses.

/// The Service every case is about: `backend` in the producer namespace (the test's own).
const BACKEND: &str = "backend";

/// Three tenants of one control plane: the test's namespace (the producer, which owns
/// `backend`), a consumer namespace and a third one, each with a connected proxy (the real
/// proxy client, authenticated with a token bound to a pod of its namespace).
struct Tenants {
    ctx: TestContext,
    control_plane: ControlPlane,
    consumer: String,
    third: String,
    proxies: Vec<tokio::task::JoinHandle<()>>,
    _tokens: Vec<tempfile::NamedTempFile>,
}

impl Drop for Tenants {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.abort();
        }
    }
}

impl Tenants {
    async fn new() -> Self {
        let ctx = TestContext::new().await;
        let control_plane = ControlPlane::start().await;
        let consumer = extra_namespace(&ctx, "consumer").await;
        let third = extra_namespace(&ctx, "third").await;
        let mut tenants = Tenants {
            ctx,
            control_plane,
            consumer,
            third,
            proxies: Vec::new(),
            _tokens: Vec::new(),
        };
        for namespace in tenants.namespaces() {
            tenants.connect(&namespace).await;
        }
        tenants
    }

    fn producer(&self) -> &str {
        &self.ctx.namespace
    }

    fn namespaces(&self) -> [String; 3] {
        [
            self.producer().to_owned(),
            self.consumer.clone(),
            self.third.clone(),
        ]
    }

    /// Pod `web` in `namespace` and a proxy client for it.
    async fn connect(&mut self, namespace: &str) {
        use skein::controlplane::push::ProxyIdentity;
        use skein::proxy::client::{self, ClientSettings};
        use skein::proxy::config::{Compiled, ConfigStore};
        let token = support::identity::pod_token(&self.ctx.client, namespace, "web").await;
        let file = tempfile::NamedTempFile::new().expect("a token file");
        std::fs::write(file.path(), token).expect("writing the token");
        let settings = ClientSettings {
            address: format!("127.0.0.1:{}", self.control_plane.xds_port),
            identity: ProxyIdentity {
                pod: "web".to_owned(),
                namespace: namespace.to_owned(),
                ip: None,
            },
            token_path: Some(file.path().to_owned()),
            trust: Default::default(),
        };
        let store = std::sync::Arc::new(ConfigStore::new(Compiled::passthrough()));
        self.proxies
            .push(tokio::spawn(client::run(settings, store, |_| {})));
        self._tokens.push(file);
    }

    /// The route table of `backend` that the control plane computes for the proxy in
    /// `namespace` once `ready` holds for it.
    async fn routes_when(
        &self,
        namespace: &str,
        what: &str,
        ready: impl Fn(&[Route]) -> bool,
    ) -> Vec<Route> {
        let url = format!(
            "http://127.0.0.1:{}/debug/config?pod={namespace}/web",
            self.control_plane.debug_port
        );
        let name = format!("{BACKEND}.{}.svc.cluster.local", self.producer());
        let http = reqwest::Client::new();
        let mut last = None;
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(response) = http.get(&url).send().await
                    && response.status().is_success()
                    && let Ok(config) = response.json::<ProxyConfig>().await
                    && let Some(destination) =
                        config.destinations.into_iter().find(|d| d.name == name)
                {
                    if ready(&destination.routes) {
                        return destination.routes;
                    }
                    last = Some(destination.routes);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "the proxy in {namespace} never got {what} for {name}; last routes: {last:?}\n\
                 control plane log:\n{}",
                self.control_plane.log()
            )
        })
    }

    async fn create_service(&self) {
        Api::<Service>::namespaced(self.ctx.client.clone(), self.producer())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": BACKEND},
                    "spec": {"ports": [{"name": "http", "port": 80}]}
                }))
                .expect("a Service"),
            )
            .await
            .expect("creating the Service");
    }

    /// A RouteRule in `namespace` for `backend` that sets `x-rule-from: <namespace>` on
    /// requests and, if `abort`, fails every request with 503.
    async fn route_rule(&self, namespace: &str, name: &str, abort: bool) {
        let mut route = json!({"headers": {"request": {"set": {"x-rule-from": namespace}}}});
        if abort {
            route["fault"] = json!({"abort": {"percent": 100.0, "httpStatus": 503}});
        }
        let rule: RouteRule = serde_json::from_value(json!({
            "apiVersion": "skein.dev/v1alpha1", "kind": "RouteRule",
            "metadata": {"name": name},
            "spec": {"service": format!("{BACKEND}.{}", self.producer()), "http": [route]}
        }))
        .expect("a RouteRule");
        Api::<RouteRule>::namespaced(self.ctx.client.clone(), namespace)
            .create(&PostParams::default(), &rule)
            .await
            .expect("creating the RouteRule");
    }

    async fn rule_accepted(&self, namespace: &str, name: &str) -> Condition {
        let api: Api<RouteRule> = Api::namespaced(self.ctx.client.clone(), namespace);
        eventually(
            &format!("RouteRule {namespace}/{name}'s status"),
            WAIT,
            || async {
                let status = api.get_opt(name).await.ok()??.status?;
                status.condition("Accepted").cloned()
            },
        )
        .await
    }
}

async fn extra_namespace(ctx: &TestContext, suffix: &str) -> String {
    let name = ctx.unique_name(suffix);
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": ctx.owner_labels()}
    }))
    .expect("a namespace");
    Api::<Namespace>::all(ctx.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("creating a namespace");
    name
}

/// Whom a route table comes from: the `x-rule-from` its rule sets (None: no rule's).
fn rule_from(routes: &[Route]) -> Option<&str> {
    routes
        .first()
        .and_then(|r| r.request_headers.set.get("x-rule-from"))
        .map(String::as_str)
}

fn aborts(routes: &[Route]) -> bool {
    routes
        .iter()
        .any(|r| r.fault.as_ref().is_some_and(|f| f.abort.is_some()))
}

/// A consumer rule (another namespace's rule for the producer's Service) changes its own
/// namespace's calls only: the producer's and a third namespace's callers are untouched.
#[tokio::test]
async fn a_consumer_rule_does_not_affect_other_namespaces_callers() {
    let tenants = Tenants::new().await;
    tenants.create_service().await;
    tenants
        .route_rule(&tenants.consumer, "fault-everyone", true)
        .await;
    let consumer = &tenants.consumer;
    let routes = tenants
        .routes_when(consumer, "the consumer rule", |r| rule_from(r).is_some())
        .await;
    assert_eq!(rule_from(&routes), Some(consumer.as_str()));
    assert!(aborts(&routes), "{routes:?}");
    // Computed from the same (or a later) view as the consumer's: the others get no rule.
    for namespace in [tenants.producer(), tenants.third.as_str()] {
        let routes = tenants.routes_when(namespace, "its routes", |_| true).await;
        // Only the mesh defaults' catch-all route: no rule's.
        assert!(
            rule_from(&routes).is_none() && !aborts(&routes),
            "{namespace}: {routes:?}"
        );
    }
    let accepted = tenants.rule_accepted(consumer, "fault-everyone").await;
    assert_eq!(accepted.status, "True");
    assert!(
        accepted.message.starts_with(&format!(
            "consumer rule: applies to callers in namespace {consumer} only"
        )),
        "{}",
        accepted.message
    );
}

/// The Service's own rule applies to every caller but the consumer namespace's, even though
/// the consumer's rule is older (before the producer/consumer model the oldest rule won for
/// everyone).
#[tokio::test]
async fn the_services_own_rule_is_not_overridden_by_an_older_rule_elsewhere() {
    let tenants = Tenants::new().await;
    tenants.create_service().await;
    tenants.route_rule(&tenants.consumer, "older", true).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has 1 s steps
    let producer = tenants.producer().to_owned();
    tenants.route_rule(&producer, "own", false).await;
    for namespace in [producer.as_str(), tenants.third.as_str()] {
        let routes = tenants
            .routes_when(namespace, "the producer's rule", |r| rule_from(r).is_some())
            .await;
        assert_eq!(rule_from(&routes), Some(producer.as_str()), "{namespace}");
        assert!(!aborts(&routes), "{namespace}: {routes:?}");
    }
    let routes = tenants
        .routes_when(&tenants.consumer, "its own rule", |r| {
            rule_from(r).is_some()
        })
        .await;
    assert_eq!(rule_from(&routes), Some(tenants.consumer.as_str()));
    let own = tenants.rule_accepted(&producer, "own").await;
    assert_eq!(
        (own.status.as_str(), own.reason.as_str()),
        ("True", "Accepted")
    );
    assert!(own.message.starts_with("producer rule"), "{}", own.message);
    let older = tenants.rule_accepted(&tenants.consumer, "older").await;
    assert_eq!(older.status, "True", "{}", older.message);
}

/// A rule written in another namespace before the Service exists does not claim it for the
/// Service's namespace (or anyone else) once it appears.
#[tokio::test]
async fn a_rule_in_another_namespace_cannot_claim_a_service_before_it_exists() {
    let tenants = Tenants::new().await;
    tenants
        .route_rule(&tenants.consumer, "squatter", true)
        .await;
    let accepted = tenants.rule_accepted(&tenants.consumer, "squatter").await;
    assert_eq!(accepted.status, "True", "{}", accepted.message);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tenants.create_service().await;
    for namespace in [tenants.producer(), tenants.third.as_str()] {
        let routes = tenants
            .routes_when(namespace, "the Service", |_| true)
            .await;
        // Only the mesh defaults' catch-all route: no rule's.
        assert!(
            rule_from(&routes).is_none() && !aborts(&routes),
            "{namespace}: {routes:?}"
        );
    }
    let routes = tenants
        .routes_when(&tenants.consumer, "its own rule", |r| {
            rule_from(r).is_some()
        })
        .await;
    assert!(aborts(&routes), "{routes:?}");
}

/// A ValidatingWebhookConfiguration for the control plane's `/validate`, for `namespaces` only
/// (tests run in parallel), failing closed so a refusal can only come from the webhook.
async fn register_validator(ctx: &TestContext, control_plane: &ControlPlane, namespaces: &[&str]) {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use skein::controlplane::registration::validating_webhook_configuration;
    use skein::inject::registration::WebhookTarget;
    let mut config = validating_webhook_configuration(
        &WebhookTarget::Url(control_plane.url("/validate")),
        control_plane.ca.cert_pem.as_bytes(),
        10,
    );
    config.metadata.name = Some(ctx.unique_name("validator"));
    config
        .metadata
        .labels
        .get_or_insert_default()
        .extend(ctx.owner_labels());
    for webhook in config.webhooks.iter_mut().flatten() {
        webhook.failure_policy = Some("Fail".to_owned());
        webhook.namespace_selector = Some(
            serde_json::from_value(json!({"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]}))
            .expect("a selector"),
        );
    }
    Api::<ValidatingWebhookConfiguration>::all(ctx.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("registering the validating webhook");
}

fn egress_rule(name: &str, spec: serde_json::Value) -> EgressRule {
    serde_json::from_value(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "EgressRule",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("an EgressRule")
}

/// `kubectl apply` of an EgressRule opening egress for every namespace (or another one) is
/// refused outside `skein-system` and allowed in it (dry runs there: a real mesh-wide rule
/// would reach the proxies of every other test on the shared cluster).
#[tokio::test]
async fn mesh_wide_egress_rules_are_refused_outside_skein_system() {
    let ctx = TestContext::new().await;
    let control_plane = ControlPlane::start().await;
    let mesh_namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": names::MESH_NAMESPACE}})).unwrap();
    let _ = Api::<Namespace>::all(ctx.client.clone())
        .create(&PostParams::default(), &mesh_namespace)
        .await;
    register_validator(
        &ctx,
        &control_plane,
        &[&ctx.namespace, names::MESH_NAMESPACE],
    )
    .await;
    let here: Api<EgressRule> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let everyone = json!({"hosts": ["time.example"], "namespaces": ["*"]});

    // The apiserver picks new webhook configurations up after a moment.
    let refusal = eventually("the validating webhook to answer", WAIT, || async {
        match here
            .create(
                &PostParams::default(),
                &egress_rule("everyone", everyone.clone()),
            )
            .await
        {
            Err(kube::Error::Api(status)) => Some(status.message),
            Ok(_) => {
                let _ = here.delete("everyone", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    assert!(
        refusal.contains("only EgressRules in skein-system may apply to other namespaces"),
        "{refusal}"
    );
    let other = here
        .create(
            &PostParams::default(),
            &egress_rule(
                "billing",
                json!({"hosts": ["db.example"], "namespaces": ["billing"]}),
            ),
        )
        .await
        .expect_err("naming another namespace is refused too");
    assert!(
        format!("{other}").contains("spec.namespaces[0]: \"billing\""),
        "{other}"
    );
    // Its own namespace, named or implied, is fine.
    here.create(
        &PostParams::default(),
        &egress_rule(
            "mine",
            json!({"hosts": ["db.example"], "namespaces": [ctx.namespace]}),
        ),
    )
    .await
    .expect("an EgressRule for its own namespace is allowed");

    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mesh: Api<EgressRule> = Api::namespaced(ctx.client.clone(), names::MESH_NAMESPACE);
    let name = ctx.unique_name("everyone");
    // The webhook does judge skein-system's rules: an invalid one is refused there.
    let invalid = mesh
        .create(
            &dry_run,
            &egress_rule(
                &name,
                json!({"hosts": ["10.1.2.4"], "ports": [{"port": 80, "protocol": "http"}]}),
            ),
        )
        .await
        .expect_err("an invalid rule is refused in skein-system too");
    assert!(format!("{invalid}").contains("is invalid"), "{invalid}");
    mesh.create(&dry_run, &egress_rule(&name, everyone.clone()))
        .await
        .expect("skein-system may open egress for every namespace");
}

/// An EgressRule outside skein-system that asks for every namespace, written while no webhook
/// refuses it (the webhook fails open, or the rule predates the model): it applies to its own
/// namespace only, and its status says so.
#[tokio::test]
async fn an_egress_rule_limited_to_its_namespace_says_so() {
    let ctx = TestContext::new().await;
    let _control_plane = ControlPlane::start().await;
    let api: Api<EgressRule> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    api.create(
        &PostParams::default(),
        &egress_rule(
            "everyone",
            json!({"hosts": ["time.example"], "namespaces": ["*"]}),
        ),
    )
    .await
    .expect("creating the rule (no webhook)");
    let accepted = eventually("the EgressRule's status", WAIT, || async {
        let status = api.get_opt("everyone").await.ok()??.status?;
        status.condition("Accepted").cloned()
    })
    .await;
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("True", "NamespacesLimited")
    );
    assert!(
        accepted.message.ends_with(&format!(
            "the rule applies to pods in namespace {} only",
            ctx.namespace
        )),
        "{}",
        accepted.message
    );
}
