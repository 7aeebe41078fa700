//! Writes what the translation decided about each traffic rule (accepted, invalid, conflicted,
//! Service not found) into the rule's `status`, after every rebuild of the mesh view. A status
//! is only written when it differs from what the object already says, and a condition keeps its
//! `lastTransitionTime` while its status stays the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::index::Index;
use super::push::ConfigSource;
use super::translate::{RuleKind, RuleReport};
use crate::api::{AccessPolicy, EgressRule, MtlsPolicy, RouteRule, RuleStatus, TrafficPolicy};

/// Keeps rule statuses in step with the mesh view, until the process ends. A status written
/// here comes back through the watch (and a rebuild), is then found equal, and is left alone.
pub async fn run(client: Client, index: Index) {
    let mut changes = index.changes();
    loop {
        let view = index.view();
        for report in view.rule_reports() {
            let current = index.rule_status(report.kind, &report.namespace, &report.name);
            let desired = desired_status(report, current.as_ref());
            if current.as_ref().is_some_and(|c| same_status(c, &desired)) {
                continue;
            }
            if let Err(err) = write(&client, report, &desired).await {
                tracing::warn!(
                    kind = ?report.kind,
                    namespace = %report.namespace,
                    name = %report.name,
                    error = %err,
                    "writing the rule's status"
                );
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The status to write: the report's conditions, each keeping the transition time the object
/// already has for it when its status did not change.
fn desired_status(report: &RuleReport, current: Option<&RuleStatus>) -> RuleStatus {
    let now = Time(Timestamp::now());
    let conditions = report
        .conditions
        .iter()
        .map(|condition| {
            let previous = current.and_then(|c| c.condition(&condition.type_));
            let last_transition_time = match previous {
                Some(p) if p.status == condition.status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                last_transition_time,
                observed_generation: report.generation,
                ..condition.clone()
            }
        })
        .collect();
    RuleStatus {
        observed_generation: report.generation,
        conditions,
    }
}

/// Equal but for transition times.
fn same_status(a: &RuleStatus, b: &RuleStatus) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    a.observed_generation == b.observed_generation
        && a.conditions.len() == b.conditions.len()
        && a.conditions
            .iter()
            .map(key)
            .eq(b.conditions.iter().map(key))
}

async fn write(client: &Client, report: &RuleReport, status: &RuleStatus) -> kube::Result<()> {
    match report.kind {
        RuleKind::RouteRule => patch::<RouteRule>(client, report, status).await,
        RuleKind::EgressRule => patch::<EgressRule>(client, report, status).await,
        RuleKind::TrafficPolicy => patch::<TrafficPolicy>(client, report, status).await,
        RuleKind::AccessPolicy => patch::<AccessPolicy>(client, report, status).await,
        RuleKind::MtlsPolicy => patch::<MtlsPolicy>(client, report, status).await,
    }
}

async fn patch<K>(client: &Client, report: &RuleReport, status: &RuleStatus) -> kube::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), &report.namespace);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&report.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}
