//! Thin I/O: server-side apply of the desired objects, deletion of the absent ones, and the
//! ordered teardown on uninstall.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::FIELD_MANAGER;
use super::desired::{AbsentObject, DesiredObject};

#[derive(Debug, thiserror::Error)]
#[error("{action} {kind} {name}: {source}")]
pub struct ApplyError {
    pub action: &'static str,
    pub kind: String,
    pub name: String,
    pub source: kube::Error,
}

/// What changed, for events: `(verb, kind, "Kind namespace/name")`. Events are aggregated by
/// reason, so the kind goes into the reason to keep one event per kind of step.
pub type Changes = Vec<(&'static str, String, String)>;

fn api(
    client: &Client,
    resource: &kube::api::ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn display(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Applies every object (one field manager, forcing ownership of our fields) and reports which
/// were created or changed.
pub async fn apply_all(client: &Client, objects: &[DesiredObject]) -> Result<Changes, ApplyError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut changes = Vec::new();
    for object in objects {
        let api = api(client, &object.resource, object.namespace.as_deref());
        let error = |action, source| ApplyError {
            action,
            kind: object.resource.kind.clone(),
            name: object.name.clone(),
            source,
        };
        let before = api
            .get_opt(&object.name)
            .await
            .map_err(|e| error("reading", e))?;
        let after = api
            .patch(&object.name, &params, &Patch::Apply(&object.object))
            .await
            .map_err(|e| error("applying", e))?;
        let what = display(
            &object.resource.kind,
            object.namespace.as_deref(),
            &object.name,
        );
        match before {
            None => changes.push(("Created", object.resource.kind.clone(), what)),
            Some(before) if before.resource_version() != after.resource_version() => {
                changes.push(("Updated", object.resource.kind.clone(), what))
            }
            Some(_) => {}
        }
    }
    Ok(changes)
}

/// Deletes objects that must not exist; already gone is fine.
pub async fn delete_all(client: &Client, absent: &[AbsentObject]) -> Result<Changes, ApplyError> {
    let mut changes = Vec::new();
    for object in absent {
        let api = api(client, &object.resource, object.namespace.as_deref());
        match api.delete(&object.name, &DeleteParams::background()).await {
            Ok(_) => changes.push((
                "Deleted",
                object.resource.kind.clone(),
                display(
                    &object.resource.kind,
                    object.namespace.as_deref(),
                    &object.name,
                ),
            )),
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(source) => {
                return Err(ApplyError {
                    action: "deleting",
                    kind: object.resource.kind.clone(),
                    name: object.name.clone(),
                    source,
                });
            }
        }
    }
    Ok(changes)
}
