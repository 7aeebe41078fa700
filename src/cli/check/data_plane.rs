//! The `skein-data-plane` group: every pod that should have the proxy has it, every connected
//! proxy holds the configuration last sent to it, and their certificates are valid.
//!
//! When was a namespace labelled? Kubernetes keeps no history, but the namespace's
//! `managedFields` record, per field manager, when it last wrote the fields it owns: the entry
//! owning the injection label gives the time (or a later one, if that manager changed another
//! of its fields since). A pod without the proxy created before then was created before the
//! label; one created after was admitted while the webhook was not acting.
//!
//! Certificates: the control plane's `/debug/proxies` gives, per proxy, the expiry of the last
//! workload certificate it issued to the pod while that is still valid, nothing once it has
//! expired. A proxy listed without one may have an expired certificate, one issued by another
//! replica than the one it streams from, or none (mTLS not in use): that is a warning naming
//! it, not a failure; a listed expiry in the past fails.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::control_plane::Proxies;
use super::result::{Check, CheckResult};
use crate::api::MeshConfig;
use crate::api::meshconfig::InjectionSpec;
use crate::inject::decide::{Decision, decide};
use crate::operator::federation::describe;

const GROUP: &str = "skein-data-plane";
pub const INJECTED: Check = Check {
    id: "pods-injected",
    group: GROUP,
    description: "every pod of a meshed namespace has the proxy",
};
pub const SYNCED: Check = Check {
    id: "proxies-synced",
    group: GROUP,
    description: "every connected proxy holds its latest configuration",
};
pub const CERTS: Check = Check {
    id: "proxy-certificates",
    group: GROUP,
    description: "every connected proxy has a valid certificate",
};

/// At most this many pods are named in one message; the rest are counted.
const NAMED: usize = 5;

/// When `label_key` was last written on the namespace, from its managedFields.
pub fn labelled_at(namespace: &Namespace, label_key: &str) -> Option<Timestamp> {
    let key = format!("f:{label_key}");
    namespace
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:metadata")?.get("f:labels")?.get(&key))
                .is_some()
        })
        .filter_map(|entry| entry.time.as_ref().map(|t| t.0))
        .max()
}

/// A pod that should have the proxy and has not, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uninjected {
    pub namespace: String,
    pub pod: String,
    pub cause: &'static str,
    pub fix: String,
}

/// Pure: the pods of `namespace` (with its labels, labelled at `labelled`) that the injector
/// would inject now and that have no proxy.
pub fn uninjected(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    labelled: Option<Timestamp>,
    pods: &[Pod],
    injection: &InjectionSpec,
) -> Vec<Uninjected> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        // The injector's own rule, so the check and the webhook agree on who needs the proxy
        // (an opted-out or host-network pod does not; an injected one is skipped there too).
        .filter(|pod| matches!(decide(pod, namespace, labels, injection), Decision::Inject(_)))
        .map(|pod| {
            let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let before = matches!((created, labelled), (Some(c), Some(l)) if c < l);
            let cause = if before {
                "created before the namespace was labelled"
            } else if labelled.is_none() {
                "created before the namespace was labelled, or while the webhook was not acting"
            } else {
                "created after the label while the webhook was not acting (failurePolicy Ignore, or it was not registered)"
            };
            Uninjected {
                namespace: namespace.to_owned(),
                pod: pod.name_any(),
                cause,
                fix: restart(namespace, pod),
            }
        })
        .collect()
}

/// How to get `pod` recreated through the webhook: restart its workload, else recreate it.
fn restart(namespace: &str, pod: &Pod) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let workload = owner.and_then(|owner| match owner.kind.as_str() {
        // A ReplicaSet of a Deployment is named DEPLOYMENT-HASH.
        "ReplicaSet" => owner
            .name
            .rsplit_once('-')
            .map(|(deployment, _)| format!("deployment/{deployment}")),
        "StatefulSet" => Some(format!("statefulset/{}", owner.name)),
        "DaemonSet" => Some(format!("daemonset/{}", owner.name)),
        _ => None,
    });
    match workload {
        Some(workload) => format!("kubectl -n {namespace} rollout restart {workload}"),
        None => format!(
            "delete and re-create it: kubectl -n {namespace} get pod {} -o yaml > pod.yaml && \
             kubectl -n {namespace} replace --force -f pod.yaml",
            pod.name_any()
        ),
    }
}

/// Pure: every pod found without the proxy, in `namespaces` namespaces checked.
pub fn injected(namespaces: usize, missing: &[Uninjected]) -> CheckResult {
    if missing.is_empty() {
        return CheckResult::ok(
            INJECTED,
            format!("{namespaces} meshed namespace(s) checked"),
        );
    }
    let mut named: Vec<String> = missing
        .iter()
        .take(NAMED)
        .map(|m| format!("{}/{}: {}", m.namespace, m.pod, m.cause))
        .collect();
    if missing.len() > NAMED {
        named.push(format!("and {} more", missing.len() - NAMED));
    }
    let mut fixes: Vec<String> = Vec::new();
    for m in missing {
        if !fixes.contains(&m.fix) {
            fixes.push(m.fix.clone());
        }
    }
    CheckResult::fail(
        INJECTED,
        format!(
            "{} pod(s) without the proxy: {}",
            missing.len(),
            named.join("; ")
        ),
        format!("restart them: {}", fixes.join("; ")),
    )
}

/// The namespaces to look at: `only`, else every one labelled for injection.
pub async fn check_injected(
    client: &Client,
    mc: Option<&MeshConfig>,
    only: Option<&str>,
) -> CheckResult {
    let injection = mc.map(|mc| mc.spec.injection.clone()).unwrap_or_default();
    let label = &injection.namespace_label;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let listed = match only {
        Some(name) => namespaces
            .get_opt(name)
            .await
            .map(|ns| ns.into_iter().collect::<Vec<_>>()),
        None => namespaces
            .list(&ListParams::default().labels(&format!("{}={}", label.key, label.value)))
            .await
            .map(|list| list.items),
    };
    let listed = match listed {
        Ok(listed) => listed,
        Err(err) => {
            return CheckResult::fail(
                INJECTED,
                format!("reading namespaces: {}", describe(&err)),
                "check that you may list namespaces",
            );
        }
    };
    let mut missing = Vec::new();
    for namespace in &listed {
        let name = namespace.name_any();
        let pods = match Api::<Pod>::namespaced(client.clone(), &name)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(err) => {
                return CheckResult::fail(
                    INJECTED,
                    format!("listing the pods of {name}: {}", describe(&err)),
                    "check that you may list pods",
                );
            }
        };
        let labels = namespace.metadata.labels.clone().unwrap_or_default();
        let labelled = labelled_at(namespace, &label.key);
        missing.extend(uninjected(&name, &labels, labelled, &pods, &injection));
    }
    injected(listed.len(), &missing)
}

/// Pure: the proxies' configuration versions (`None`: the control plane was not asked).
pub fn synced(proxies: Option<&Proxies>) -> CheckResult {
    let proxies = match proxies {
        Some(Ok(proxies)) => proxies,
        Some(Err(_)) | None => {
            return CheckResult::warning(
                SYNCED,
                "not checked: the control plane's debug server was not reached",
                "see the control-plane check",
            );
        }
    };
    let behind: Vec<String> = proxies
        .iter()
        .filter_map(|p| {
            let name = format!("{}/{}", p.namespace, p.pod);
            match &p.last_nack {
                Some(nack) => Some(format!("{name} rejected {nack}")),
                None if p.acked_version != p.sent_version => Some(format!(
                    "{name} acknowledged {:?} but was sent {:?}",
                    p.acked_version, p.sent_version
                )),
                None => None,
            }
        })
        .collect();
    if behind.is_empty() {
        return CheckResult::ok(SYNCED, format!("{} proxies synced", proxies.len()));
    }
    CheckResult::fail(
        SYNCED,
        format!(
            "{} of {} proxies not synced: {}",
            behind.len(),
            proxies.len(),
            behind.join("; ")
        ),
        "a rejection names the bad rule: fix it; a proxy stuck behind: see its log \
         (kubectl logs POD -c skein-proxy) and restart it",
    )
}

/// Pure: the proxies' certificates.
pub fn certificates(proxies: Option<&Proxies>) -> CheckResult {
    let proxies = match proxies {
        Some(Ok(proxies)) => proxies,
        Some(Err(_)) | None => {
            return CheckResult::warning(
                CERTS,
                "not checked: the control plane's debug server was not reached",
                "see the control-plane check",
            );
        }
    };
    let names = |keep: &dyn Fn(Option<i64>) -> bool| -> Vec<String> {
        proxies
            .iter()
            .filter(|p| keep(p.cert_expires_in_seconds))
            .map(|p| format!("{}/{}", p.namespace, p.pod))
            .collect()
    };
    let expired = names(&|left| left.is_some_and(|left| left <= 0));
    let unknown = names(&|left| left.is_none());
    let renew = "the proxy renews it from the control plane: check the ca-certificate check and \
                 the proxy's log (kubectl logs POD -c skein-proxy)";
    if !expired.is_empty() {
        return CheckResult::fail(
            CERTS,
            format!(
                "{} of {} proxies hold an expired certificate: {}",
                expired.len(),
                proxies.len(),
                expired.join(", ")
            ),
            renew,
        );
    }
    if !unknown.is_empty() {
        return CheckResult::warning(
            CERTS,
            format!(
                "{} of {} proxies have no valid certificate from the control plane they stream \
                 from (expired, issued by another replica, or mTLS not in use): {}",
                unknown.len(),
                proxies.len(),
                unknown.join(", ")
            ),
            renew,
        );
    }
    let soonest = proxies
        .iter()
        .filter_map(|p| p.cert_expires.as_deref())
        .min();
    CheckResult::ok(
        CERTS,
        match soonest {
            Some(at) => format!(
                "{} proxies, the first certificate to renew expires at {at}",
                proxies.len()
            ),
            None => "no proxy connected".to_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::result::Status;
    use crate::controlplane::push::ProxyStatus;

    fn namespace(managed: serde_json::Value) -> Namespace {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "shop", "managedFields": managed}}),
        )
        .unwrap()
    }

    #[test]
    fn the_label_time_comes_from_managed_fields() {
        let ns = namespace(serde_json::json!([
            {"manager": "kubectl-create", "operation": "Update", "time": "2026-01-01T00:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:team": {}}}}},
            {"manager": "kubectl-label", "operation": "Update", "time": "2026-01-02T00:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:injection": {}}}}},
        ]));
        assert_eq!(
            labelled_at(&ns, "injection"),
            Some("2026-01-02T00:00:00Z".parse().unwrap())
        );
        assert_eq!(labelled_at(&ns, "other"), None);
    }

    fn pod(name: &str, created: &str, extra: serde_json::Value) -> Pod {
        let mut value = serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running"},
        });
        json_merge(&mut value, extra);
        serde_json::from_value(value).unwrap()
    }

    fn json_merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
                for (k, v) in from {
                    json_merge(into.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (into, from) => *into = from,
        }
    }

    #[test]
    fn pods_without_the_proxy_are_named_with_the_restart_that_fixes_them() {
        let labels: BTreeMap<String, String> =
            [("injection".to_owned(), "enabled".to_owned())].into();
        let labelled = Some("2026-01-02T00:00:00Z".parse().unwrap());
        let pods = [
            pod(
                "old-7d9f-abc",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"metadata": {"ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "u", "controller": true}]}}),
            ),
            pod("bare", "2026-01-03T00:00:00Z", serde_json::json!({})),
            pod(
                "opted-out",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"metadata": {"annotations": {"skein.dev/inject": "false"}}}),
            ),
            pod(
                "meshed",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"spec": {"initContainers": [{"name": "skein-proxy"}]}}),
            ),
            pod(
                "done",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"status": {"phase": "Succeeded"}}),
            ),
        ];
        let missing = uninjected("shop", &labels, labelled, &pods, &InjectionSpec::default());
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert_eq!(missing[0].pod, "old-7d9f-abc");
        assert_eq!(
            missing[0].cause,
            "created before the namespace was labelled"
        );
        assert_eq!(
            missing[0].fix,
            "kubectl -n shop rollout restart deployment/web"
        );
        assert!(
            missing[1].cause.starts_with("created after the label"),
            "{:?}",
            missing[1]
        );
        assert!(
            missing[1].fix.contains("replace --force"),
            "{:?}",
            missing[1]
        );

        let result = injected(1, &missing);
        assert_eq!(result.status, Status::Fail);
        assert!(
            result
                .message
                .starts_with("2 pod(s) without the proxy: shop/old-7d9f-abc: created before"),
            "{}",
            result.message
        );
        assert_eq!(injected(3, &[]).status, Status::Ok);
    }

    fn proxy(pod: &str, sent: &str, acked: &str, cert: Option<i64>) -> ProxyStatus {
        ProxyStatus {
            pod: pod.to_owned(),
            namespace: "shop".to_owned(),
            ip: None,
            connected_since: "2026-01-01T00:00:00Z".to_owned(),
            sent_version: sent.to_owned(),
            acked_version: acked.to_owned(),
            last_nack: None,
            resources: 1,
            pushes: 1,
            cert_expires: cert.map(|_| "2026-01-02T00:00:00Z".to_owned()),
            cert_expires_in_seconds: cert,
        }
    }

    #[test]
    fn stale_or_rejecting_proxies_and_missing_certificates_fail() {
        let good = proxy("a", "v2", "v2", Some(3600));
        assert_eq!(synced(Some(&Ok(vec![good.clone()]))).status, Status::Ok);
        let stale = synced(Some(&Ok(vec![
            good.clone(),
            proxy("b", "v2", "v1", Some(3600)),
        ])));
        assert_eq!(stale.status, Status::Fail);
        assert!(
            stale
                .message
                .contains("shop/b acknowledged \"v1\" but was sent \"v2\""),
            "{}",
            stale.message
        );
        let mut nacked = good.clone();
        nacked.last_nack = Some("v3: bad route".to_owned());
        assert!(
            synced(Some(&Ok(vec![nacked])))
                .message
                .contains("rejected v3: bad route")
        );
        assert_eq!(synced(None).status, Status::Warning);

        assert_eq!(
            certificates(Some(&Ok(vec![good.clone()]))).status,
            Status::Ok
        );
        let unknown = certificates(Some(&Ok(vec![good.clone(), proxy("c", "v", "v", None)])));
        assert_eq!(unknown.status, Status::Warning);
        assert!(unknown.message.contains("shop/c"), "{}", unknown.message);
        let expired = certificates(Some(&Ok(vec![good, proxy("d", "v", "v", Some(0))])));
        assert_eq!(expired.status, Status::Fail);
        assert!(
            expired.message.contains("expired certificate: shop/d"),
            "{}",
            expired.message
        );
        assert_eq!(
            certificates(Some(&Err("down".to_owned()))).status,
            Status::Warning
        );
    }
}
