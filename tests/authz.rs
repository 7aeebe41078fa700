//! AccessPolicy end to end (issue 13): `skein dev up` on a cluster of its own
//! (`skein-test-authz`) runs the meshed demo, and AccessPolicies selecting the backend pods
//! change what real requests from the frontend pod get, through the real webhook, control
//! plane, configuration stream and proxies.
//!
//! The frontend reaches the backends over mutual TLS, so its requests carry its identity
//! (`spiffe://cluster.local/ns/demo/sa/default`: the demo runs as the default service account)
//! and the policies match on it. The kubelet's probes (`/readyz`, `/healthz`) are plaintext,
//! unauthenticated, so the Allow policies here let them through, as a user's must. Needs root,
//! iproute2 and iptables.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use skein::api::AccessPolicy;
use support::node::{eventually, exec, exec_ok, pod_ready};

const CLUSTER: &str = "skein-test-authz";
const DEMO: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time changes the demo's policies.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one request got: status, `x-skein-error`, body.
#[derive(Debug)]
struct Reply {
    status: u16,
    error: String,
    body: String,
}

struct Demo {
    client: Client,
    frontend: String,
    backends: Vec<String>,
    backend_ip: String,
}

impl Demo {
    async fn new() -> Self {
        support::demo_up(CLUSTER);
        let client = support::client().await;
        // Each test starts without policies, whatever an earlier (failed) one left.
        let policies: Api<AccessPolicy> = Api::namespaced(client.clone(), DEMO);
        let _ = policies
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        eventually("the demo's AccessPolicies to be gone", WAIT, || async {
            policies
                .list(&ListParams::default())
                .await
                .ok()
                .filter(|list| list.items.is_empty())
                .map(|_| ())
        })
        .await;
        let pods = Api::<Pod>::namespaced(client.clone(), DEMO);
        let ready = |app: &'static str| {
            let pods = pods.clone();
            async move {
                pods.list(&ListParams::default().labels(&format!("app={app}")))
                    .await
                    .expect("listing the demo's pods")
                    .items
                    .into_iter()
                    .filter(pod_ready)
                    .map(|p| p.name_any())
                    .collect::<Vec<_>>()
            }
        };
        let frontend = ready("frontend").await.pop().expect("a Ready frontend pod");
        let backends = ready("backend").await;
        assert_eq!(backends.len(), 2, "backend v1 and v2: {backends:?}");
        let backend_ip = Api::<Service>::namespaced(client.clone(), DEMO)
            .get("backend")
            .await
            .expect("the backend Service")
            .spec
            .and_then(|s| s.cluster_ip)
            .expect("a ClusterIP");
        Self {
            client,
            frontend,
            backends,
            backend_ip,
        }
    }

    /// GET `http://backend<path>` from the frontend pod, through its sidecar.
    fn get(&self, path: &str) -> Reply {
        let script = format!(
            "curl -s --max-time 10 -w '\\n%{{http_code}} %header{{x-skein-error}}' http://backend{path}"
        );
        let out = exec_ok(
            DEMO,
            &self.frontend,
            Some("frontend"),
            &["sh", "-c", &script],
        );
        let (body, last) = out.rsplit_once('\n').unwrap_or(("", &out));
        let (status, error) = last.split_once(' ').unwrap_or((last, ""));
        Reply {
            status: status.trim().parse().unwrap_or(0),
            error: error.trim().to_owned(),
            body: body.to_owned(),
        }
    }

    /// Opens a TCP connection to the backend Service from the frontend pod, sends bytes that
    /// are not HTTP (so both proxies forward it as opaque TCP) and returns what came back.
    fn raw_tcp(&self) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{}/80 || exit 0; printf 'HELLO, NOT HTTP\\r\\n\\r\\n' >&3; timeout 5 cat <&3 2>/dev/null; true",
            self.backend_ip
        );
        let out = exec(
            DEMO,
            &self.frontend,
            Some("frontend"),
            &["bash", "-c", &script],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A counter summed over both backend pods' sidecars, for the series with every label.
    fn backend_counter(&self, name: &str, labels: &[&str]) -> f64 {
        self.backends
            .iter()
            .map(|pod| {
                let metrics = exec_ok(
                    DEMO,
                    pod,
                    Some("backend"),
                    &[
                        "curl",
                        "-s",
                        "--max-time",
                        "5",
                        "http://127.0.0.1:16000/metrics",
                    ],
                );
                metrics
                    .lines()
                    .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            })
            .sum()
    }

    fn api(&self) -> Api<AccessPolicy> {
        Api::namespaced(self.client.clone(), DEMO)
    }

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        let object: AccessPolicy = serde_json::from_value(json!({
            "apiVersion": "skein.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": name, "namespace": DEMO},
            "spec": spec,
        }))
        .expect("a valid AccessPolicy");
        self.api()
            .patch(
                name,
                &PatchParams::apply("skein-test").force(),
                &Patch::Apply(&object),
            )
            .await
            .expect("applying the AccessPolicy");
    }

    async fn delete(&self, name: &str) {
        let _ = self.api().delete(name, &DeleteParams::default()).await;
    }

    /// Waits until the policy's current generation reports `type_` with `status`; returns
    /// (reason, message).
    async fn condition(&self, name: &str, type_: &str, status: &str) -> (String, String) {
        let api = self.api();
        eventually(
            &format!("AccessPolicy {name} to report {type_}={status}"),
            WAIT,
            || async {
                let policy = api.get_opt(name).await.ok()??;
                let st = policy.status.as_ref()?;
                if st.observed_generation != policy.metadata.generation {
                    return None;
                }
                let c = st.condition(type_)?;
                (c.status == status).then(|| (c.reason.clone(), c.message.clone()))
            },
        )
        .await
    }
}

/// The probes' paths for unauthenticated peers (the kubelet) and `/public/` for the frontend's
/// identity: with `Allow`, everything else
/// is denied.
fn public_only() -> serde_json::Value {
    json!([
        {"from": [{"unauthenticated": true}],
         "to": [{"paths": [{"exact": "/readyz"}, {"exact": "/healthz"}]}]},
        {"from": [{"serviceAccounts": ["default"]}],
         "to": [{"paths": [{"prefix": "/public/"}]}]}
    ])
}

#[tokio::test]
async fn a_deny_by_path_answers_403_naming_the_policy_and_leaves_other_paths() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    // No policy (an earlier test's may still be leaving the proxies).
    eventually("/admin to pass without a policy", WAIT, || async {
        (demo.get("/admin/users").status == 200).then_some(())
    })
    .await;

    demo.apply(
        "deny-admin",
        json!({"selector": {"matchLabels": {"app": "backend"}}, "action": "Deny",
               "rules": [{"to": [{"ports": [8080], "paths": [{"prefix": "/admin"}]}]}]}),
    )
    .await;
    let (reason, _) = demo.condition("deny-admin", "Accepted", "True").await;
    assert_eq!(reason, "Accepted");
    let (_, message) = demo.condition("deny-admin", "ResolvedRefs", "True").await;
    assert!(message.contains("2 pod(s)"), "{message}");

    let denied = eventually("/admin to be denied", WAIT, || async {
        Some(demo.get("/admin/users")).filter(|r| r.status == 403)
    })
    .await;
    assert_eq!(denied.error, "access-denied", "{denied:?}");
    assert!(
        denied
            .body
            .contains("denied by AccessPolicy demo/deny-admin: rules[0] denies spiffe://cluster.local/ns/demo/sa/default (GET /admin/users, port 8080)"),
        "{denied:?}"
    );
    // An encoded path is the same path to the policy.
    assert_eq!(demo.get("/%61dmin").status, 403);
    for _ in 0..5 {
        assert_eq!(demo.get("/orders").status, 200, "other paths pass");
    }
    let counted = demo.backend_counter(
        "skein_proxy_authz_denied_total",
        &["policy=\"demo/deny-admin\"", "protocol=\"http\""],
    );
    assert!(counted >= 2.0, "denials counted per policy: {counted}");

    demo.delete("deny-admin").await;
    eventually("/admin to pass again", WAIT, || async {
        (demo.get("/admin/users").status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn audit_passes_what_it_would_deny_and_counts_it() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    demo.apply(
        "try-public-only",
        json!({"selector": {"matchLabels": {"app": "backend"}}, "action": "Audit",
               "rules": public_only()}),
    )
    .await;
    demo.condition("try-public-only", "Accepted", "True").await;
    let series = ["policy=\"demo/try-public-only\"", "protocol=\"http\""];
    eventually("a would-deny to be counted", WAIT, || async {
        let reply = demo.get("/private");
        assert_eq!(reply.status, 200, "audit never denies: {reply:?}");
        (demo.backend_counter("skein_proxy_authz_audit_would_deny_total", &series) >= 1.0)
            .then_some(())
    })
    .await;
    let before = demo.backend_counter("skein_proxy_authz_audit_would_deny_total", &series);
    assert_eq!(demo.get("/public/x").status, 200);
    for _ in 0..3 {
        assert_eq!(demo.get("/private").status, 200);
    }
    let after = demo.backend_counter("skein_proxy_authz_audit_would_deny_total", &series);
    // The probes' paths and /public/ are allowed: only the three /private requests count.
    assert!((after - before - 3.0).abs() < 0.5, "{before} -> {after}");
    demo.delete("try-public-only").await;
}

#[tokio::test]
async fn an_allow_policy_denies_what_it_does_not_allow_http_and_tcp() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    // Without a policy the app answers the bytes (an earlier test's policy may still be
    // leaving the proxies).
    eventually("the app to answer opaque bytes", WAIT, || async {
        demo.raw_tcp().starts_with("HTTP/1.1 400").then_some(())
    })
    .await;

    demo.apply(
        "allow-public",
        json!({"selector": {"matchLabels": {"app": "backend"}}, "action": "Allow",
               "rules": public_only()}),
    )
    .await;
    demo.condition("allow-public", "Accepted", "True").await;
    let denied = eventually("/private to be denied", WAIT, || async {
        Some(demo.get("/private")).filter(|r| r.status == 403)
    })
    .await;
    assert_eq!(denied.error, "access-denied", "{denied:?}");
    assert!(
        denied.body.contains(
            "denied by AccessPolicy demo/allow-public: no rule allows spiffe://cluster.local/ns/demo/sa/default (GET /private, port 8080)"
        ),
        "{denied:?}"
    );
    assert_eq!(demo.get("/public/orders").status, 200);

    // Opaque TCP has no path, so no rule allows it: the connection is closed unanswered.
    let tcp_series = ["policy=\"demo/allow-public\"", "protocol=\"tcp\""];
    let before = demo.backend_counter("skein_proxy_authz_denied_total", &tcp_series);
    let answer = demo.raw_tcp();
    assert!(
        !answer.contains("HTTP/"),
        "the app never saw it: {answer:?}"
    );
    let after = demo.backend_counter("skein_proxy_authz_denied_total", &tcp_series);
    assert!(
        after > before,
        "the TCP denial is counted: {before} -> {after}"
    );

    // The probes are allowed: the backends stay Ready.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = Api::<Pod>::namespaced(demo.client.clone(), DEMO);
    for name in &demo.backends {
        let pod = pods.get(name).await.expect("the backend pod");
        assert!(pod_ready(&pod), "{name} stays Ready under the policy");
    }

    demo.delete("allow-public").await;
    eventually("/private to pass again", WAIT, || async {
        (demo.get("/private").status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_webhook_refuses_a_malformed_policy_and_status_says_what_a_valid_one_selects() {
    let _turn = TURN.lock().await;
    let demo = Demo::new().await;
    let bad: AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "skein.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "bad", "namespace": DEMO},
        "spec": {"action": "Deny", "rules": [{
            "from": [{"serviceAccounts": ["Batch"], "unauthenticated": true}],
            "to": [{"methods": ["FETCH"], "paths": [{"prefix": "admin"}]}]
        }]}
    }))
    .unwrap();
    let refused = demo
        .api()
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("the webhook refuses it")
        .to_string();
    for want in [
        "AccessPolicy demo/bad is invalid",
        "spec.rules[0].from[0].serviceAccounts[0]",
        "cannot be combined with serviceAccounts",
        "\"FETCH\" is not an HTTP method",
        "\"admin\" does not start with /",
    ] {
        assert!(refused.contains(want), "{want:?} not in {refused}");
    }

    demo.apply(
        "nobody-yet",
        json!({"selector": {"matchLabels": {"app": "not-deployed"}}, "action": "Allow",
               "rules": [{"from": [{"namespaces": ["demo"]}]}]}),
    )
    .await;
    let (reason, message) = demo.condition("nobody-yet", "ResolvedRefs", "False").await;
    assert_eq!(reason, "NoPodsSelected", "{message}");
    // Identities match what peers prove with mTLS: every field acts.
    demo.condition("nobody-yet", "FieldsNotActing", "False")
        .await;
    demo.delete("nobody-yet").await;
}
