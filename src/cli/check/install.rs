//! The `skein-install` group: the CRDs this binary serves, the operator, the MeshConfig
//! `default` and the mesh CA.
//!
//! The operator counts as running when its Deployment (`skein-system/skein-operator`, as
//! config/ and the Helm chart install it) has an available replica, or, with no Deployment
//! (an operator run as a process, e.g. by `skein dev up`), when its leader Lease there is held
//! and not expired.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::{Client, ResourceExt};
use time::OffsetDateTime;

use super::result::{Check, CheckResult};
use crate::api::{MeshConfig, crds, names};
use crate::operator::desired::CA_SECRET;
use crate::operator::federation::describe;
use crate::pki::{CertInfo, first_cert_pem};

const GROUP: &str = "skein-install";
pub const CRDS: Check = Check {
    id: "crds",
    group: GROUP,
    description: "the Skein CRDs are installed at this binary's version",
};
pub const OPERATOR: Check = Check {
    id: "operator",
    group: GROUP,
    description: "the operator is running",
};
pub const MESHCONFIG: Check = Check {
    id: "meshconfig",
    group: GROUP,
    description: "the MeshConfig default is Ready",
};
pub const CA: Check = Check {
    id: "ca-certificate",
    group: GROUP,
    description: "the mesh CA certificate is valid",
};

/// Name of the operator's Deployment and of its leader-election Lease.
const OPERATOR_NAME: &str = "skein-operator";
const APPLY_CRDS: &str = "skein crds | kubectl apply --server-side -f -";

/// Pure: the CRDs this binary defines against those the cluster has (`None`: not found).
pub fn crds(
    expected: &[CustomResourceDefinition],
    found: &[Option<CustomResourceDefinition>],
) -> CheckResult {
    let mut missing = Vec::new();
    let mut not_served = Vec::new();
    let mut different = Vec::new();
    for (want, have) in expected.iter().zip(found) {
        let name = want.name_any();
        let Some(have) = have else {
            missing.push(name);
            continue;
        };
        let Some(want_version) = want.spec.versions.iter().find(|v| v.name == names::VERSION)
        else {
            continue;
        };
        match have
            .spec
            .versions
            .iter()
            .find(|v| v.name == names::VERSION && v.served)
        {
            None => not_served.push(name),
            Some(have_version)
                if schema_json(&have_version.schema) != schema_json(&want_version.schema) =>
            {
                different.push(name)
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !not_served.is_empty() {
        let mut causes = Vec::new();
        if !missing.is_empty() {
            causes.push(format!("missing: {}", missing.join(", ")));
        }
        if !not_served.is_empty() {
            causes.push(format!(
                "not serving {}: {}",
                names::VERSION,
                not_served.join(", ")
            ));
        }
        return CheckResult::fail(CRDS, causes.join("; "), APPLY_CRDS);
    }
    if !different.is_empty() {
        return CheckResult::warning(
            CRDS,
            format!(
                "the schema of {} differs from this binary's (another Skein version installed them)",
                different.join(", ")
            ),
            format!("use the skein binary of the installed version, or upgrade: {APPLY_CRDS}"),
        );
    }
    CheckResult::ok(
        CRDS,
        format!("{} CRDs serve {}", expected.len(), names::VERSION),
    )
}

/// A schema as JSON with every number as a float: the apiserver stores an integer `default`
/// written as `1.0` as `1`, which is the same schema.
fn schema_json<T: serde::Serialize>(schema: &T) -> serde_json::Value {
    fn normalize(value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::Number(n) => n
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Number(n), Value::Number),
            Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
            }
            other => other,
        }
    }
    normalize(serde_json::to_value(schema).unwrap_or_default())
}

pub async fn check_crds(client: &Client) -> CheckResult {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let expected = crds::all();
    let mut found = Vec::new();
    for crd in &expected {
        match api.get_opt(&crd.name_any()).await {
            Ok(crd) => found.push(crd),
            Err(err) => {
                return CheckResult::fail(
                    CRDS,
                    format!("reading CRD {}: {}", crd.name_any(), describe(&err)),
                    "check that you may get customresourcedefinitions",
                );
            }
        }
    }
    crds(&expected, &found)
}

/// Pure: the operator from its Deployment, else its Lease (see the module comment).
pub fn operator(
    deployment: Option<&Deployment>,
    lease: Option<&Lease>,
    now: OffsetDateTime,
) -> CheckResult {
    if let Some(deployment) = deployment {
        let available = deployment
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        return if available > 0 {
            CheckResult::ok(
                OPERATOR,
                format!("Deployment {OPERATOR_NAME}: {available} available"),
            )
        } else {
            CheckResult::fail(
                OPERATOR,
                format!(
                    "Deployment {}/{OPERATOR_NAME} has no available replica",
                    names::MESH_NAMESPACE
                ),
                format!(
                    "see why its pods do not start: kubectl -n {} describe pods -l app.kubernetes.io/name={OPERATOR_NAME}",
                    names::MESH_NAMESPACE
                ),
            )
        };
    }
    let spec = lease.and_then(|lease| lease.spec.as_ref());
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let renewed = spec
        .and_then(|s| s.renew_time.as_ref())
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok());
    let duration = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(15);
    let no_operator_hint = "install it (kubectl apply -f config/), or start `skein operator` with access to this cluster";
    match (holder, renewed) {
        (Some(holder), Some(renewed))
            if now <= renewed + time::Duration::seconds(i64::from(duration)) =>
        {
            CheckResult::ok(
                OPERATOR,
                format!("running outside the cluster as {holder} (Lease {OPERATOR_NAME})"),
            )
        }
        (Some(holder), _) => CheckResult::fail(
            OPERATOR,
            format!(
                "no Deployment {OPERATOR_NAME}, and its Lease (held by {holder}) was not renewed \
                 within {duration}s: the operator stopped"
            ),
            no_operator_hint,
        ),
        (None, _) => CheckResult::fail(
            OPERATOR,
            format!(
                "no Deployment {}/{OPERATOR_NAME} and no operator holds its Lease",
                names::MESH_NAMESPACE
            ),
            no_operator_hint,
        ),
    }
}

pub async fn check_operator(client: &Client) -> CheckResult {
    let deployment = Api::<Deployment>::namespaced(client.clone(), names::MESH_NAMESPACE)
        .get_opt(OPERATOR_NAME)
        .await;
    let lease = Api::<Lease>::namespaced(client.clone(), names::MESH_NAMESPACE)
        .get_opt(OPERATOR_NAME)
        .await;
    match (deployment, lease) {
        (Ok(deployment), Ok(lease)) => operator(
            deployment.as_ref(),
            lease.as_ref(),
            OffsetDateTime::now_utc(),
        ),
        (Err(err), _) | (_, Err(err)) => CheckResult::fail(
            OPERATOR,
            format!(
                "reading the operator's Deployment and Lease: {}",
                describe(&err)
            ),
            format!(
                "check that you may get deployments and leases in {}",
                names::MESH_NAMESPACE
            ),
        ),
    }
}

/// Pure: the MeshConfig `default` (`None`: there is none) — Ready, or why not, from its
/// conditions.
pub fn meshconfig(mc: Option<&MeshConfig>) -> CheckResult {
    let Some(mc) = mc else {
        return CheckResult::fail(
            MESHCONFIG,
            format!(
                "there is no MeshConfig {}: nothing is installed",
                names::ACTIVE_MESHCONFIG
            ),
            "apply one: kubectl apply -f config/samples/meshconfig.yaml",
        );
    };
    let status = mc.status.as_ref();
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    let stale = status.and_then(|s| s.observed_generation) != mc.metadata.generation;
    match ready {
        Some(ready) if ready.status == "True" && !stale => CheckResult::ok(
            MESHCONFIG,
            format!(
                "Ready ({}), version {}",
                ready.reason,
                status.and_then(|s| s.version.as_deref()).unwrap_or("?")
            ),
        ),
        Some(ready) if ready.status == "True" => CheckResult::warning(
            MESHCONFIG,
            "Ready, but the operator has not yet acted on the latest change",
            "wait, or see the operator's log if it stays so",
        ),
        Some(ready) => {
            // Every condition that is not as it should be: Installed=False often says more.
            let others: Vec<String> = conditions
                .iter()
                .filter(|c| c.type_ != "Ready" && c.status == "False" && c.type_ != "Progressing")
                .map(|c| format!("{}=False ({}): {}", c.type_, c.reason, c.message))
                .collect();
            let mut message = format!(
                "Ready={} ({}): {}",
                ready.status, ready.reason, ready.message
            );
            if !others.is_empty() {
                message.push_str(&format!("; {}", others.join("; ")));
            }
            CheckResult::fail(
                MESHCONFIG,
                message,
                format!(
                    "act on the reason above; details: kubectl describe meshconfig {}",
                    names::ACTIVE_MESHCONFIG
                ),
            )
        }
        None => CheckResult::fail(
            MESHCONFIG,
            "no Ready condition: the operator has not acted on it",
            "check that the operator is running (see the operator check)",
        ),
    }
}

pub async fn check_meshconfig(client: &Client) -> (CheckResult, Option<MeshConfig>) {
    match Api::<MeshConfig>::all(client.clone())
        .get_opt(names::ACTIVE_MESHCONFIG)
        .await
    {
        Ok(mc) => (meshconfig(mc.as_ref()), mc),
        Err(kube::Error::Api(status)) if status.code == 404 => (meshconfig(None), None),
        Err(err) => (
            CheckResult::fail(
                MESHCONFIG,
                format!(
                    "reading MeshConfig {}: {}",
                    names::ACTIVE_MESHCONFIG,
                    describe(&err)
                ),
                "check that you may get meshconfigs.skein.dev",
            ),
            None,
        ),
    }
}

/// Pure: the CA Secret (`None`: there is none) checked at `now`; a certificate with less than
/// `warn_within` left is a warning.
pub fn ca(secret: Option<&Secret>, now: OffsetDateTime, warn_within: Duration) -> CheckResult {
    let location = format!("Secret {}/{CA_SECRET}", names::MESH_NAMESPACE);
    let rotate = "replace tls.crt and tls.key as docs/ca-rotation.md describes";
    let Some(secret) = secret else {
        return CheckResult::fail(
            CA,
            format!("{location} does not exist"),
            "the operator creates it on install: check that the operator is running",
        );
    };
    let pem = secret
        .data
        .as_ref()
        .and_then(|data| data.get("tls.crt"))
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        .unwrap_or_default();
    let info = match CertInfo::parse(&first_cert_pem(&pem)) {
        Ok(info) => info,
        Err(err) => {
            return CheckResult::fail(
                CA,
                format!("{location}: tls.crt is not a certificate: {err}"),
                rotate,
            );
        }
    };
    let at = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    if now >= info.not_after {
        return CheckResult::fail(
            CA,
            format!(
                "{location}: the certificate ({}) expired at {}",
                info.subject,
                at(info.not_after)
            ),
            rotate,
        );
    }
    if now < info.not_before {
        return CheckResult::fail(
            CA,
            format!(
                "{location}: the certificate is not valid before {} (is a clock wrong?)",
                at(info.not_before)
            ),
            "check this machine's and the cluster's clocks",
        );
    }
    let left = info.not_after - now;
    if left < warn_within {
        return CheckResult::warning(
            CA,
            format!(
                "{location}: the certificate expires at {} ({} days left)",
                at(info.not_after),
                left.whole_days()
            ),
            rotate,
        );
    }
    CheckResult::ok(CA, format!("valid until {}", at(info.not_after)))
}

pub async fn check_ca(client: &Client, warn_within: Duration) -> CheckResult {
    match Api::<Secret>::namespaced(client.clone(), names::MESH_NAMESPACE)
        .get_opt(CA_SECRET)
        .await
    {
        Ok(secret) => ca(secret.as_ref(), OffsetDateTime::now_utc(), warn_within),
        Err(err) => CheckResult::fail(
            CA,
            format!(
                "reading Secret {}/{CA_SECRET}: {}",
                names::MESH_NAMESPACE,
                describe(&err)
            ),
            format!(
                "check that you may get secrets in {}",
                names::MESH_NAMESPACE
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::result::Status;
    use crate::pki::Ca;

    #[test]
    fn crds_missing_unserved_or_different() {
        let expected = crds::all();
        let all: Vec<_> = expected.iter().cloned().map(Some).collect();
        assert_eq!(crds(&expected, &all).status, Status::Ok);

        let mut one_missing = all.clone();
        one_missing[2] = None;
        let missing = crds(&expected, &one_missing);
        assert_eq!(missing.status, Status::Fail);
        assert_eq!(
            missing.message,
            format!("missing: {}", expected[2].name_any())
        );

        let mut old = all.clone();
        old[0].as_mut().unwrap().spec.versions[0].name = "v1alpha0".to_owned();
        assert!(
            crds(&expected, &old)
                .message
                .starts_with("not serving v1alpha1")
        );

        // An integer stored for a float default is the same schema.
        let mut stored = all.clone();
        let spec = serde_json::to_value(&stored[0]).unwrap();
        let text = serde_json::to_string(&spec)
            .unwrap()
            .replace("\"samplingPercentage\":1.0", "\"samplingPercentage\":1");
        assert!(
            text.contains("\"samplingPercentage\":1}")
                || text.contains("\"samplingPercentage\":1,"),
            "{text}"
        );
        stored[0] = Some(serde_json::from_str(&text).unwrap());
        assert_eq!(crds(&expected, &stored).status, Status::Ok);

        let mut changed = all;
        changed[1].as_mut().unwrap().spec.versions[0].schema = None;
        assert_eq!(crds(&expected, &changed).status, Status::Warning);
    }

    fn lease(holder: &str, renewed: i64) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": OPERATOR_NAME},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": OffsetDateTime::from_unix_timestamp(renewed).unwrap()
                        .format(&time::format_description::well_known::Rfc3339).unwrap()},
        }))
        .unwrap()
    }

    #[test]
    fn the_operator_is_its_deployment_or_its_held_lease() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let available: Deployment =
            serde_json::from_value(serde_json::json!({"status": {"availableReplicas": 1}}))
                .unwrap();
        assert_eq!(operator(Some(&available), None, now).status, Status::Ok);
        let none: Deployment = serde_json::from_value(serde_json::json!({"status": {}})).unwrap();
        assert_eq!(operator(Some(&none), None, now).status, Status::Fail);

        assert_eq!(
            operator(None, Some(&lease("op-1", 999_990)), now).status,
            Status::Ok
        );
        let expired = operator(None, Some(&lease("op-1", 999_000)), now);
        assert_eq!(expired.status, Status::Fail);
        assert!(
            expired.message.contains("was not renewed"),
            "{}",
            expired.message
        );
        assert_eq!(operator(None, None, now).status, Status::Fail);
    }

    #[test]
    fn a_meshconfig_not_ready_says_why() {
        assert_eq!(meshconfig(None).status, Status::Fail);
        let mc: MeshConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "skein.dev/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "default", "generation": 2}, "spec": {},
            "status": {"observedGeneration": 2, "conditions": [
                {"type": "Ready", "status": "False", "reason": "InstallFailed",
                 "message": "secret skein-system/skein-ca holds a CA certificate that expired",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Installed", "status": "False", "reason": "CASecretInvalid",
                 "message": "bad CA", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ]},
        }))
        .unwrap();
        let result = meshconfig(Some(&mc));
        assert_eq!(result.status, Status::Fail);
        assert!(
            result
                .message
                .starts_with("Ready=False (InstallFailed): secret"),
            "{}",
            result.message
        );
        assert!(
            result
                .message
                .contains("Installed=False (CASecretInvalid): bad CA"),
            "{}",
            result.message
        );
    }

    fn secret_with(pem: &str) -> Secret {
        Secret {
            data: Some(
                [(
                    "tls.crt".to_owned(),
                    k8s_openapi::ByteString(pem.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_ca_is_checked_for_expiry_and_near_expiry() {
        let ca_cert = Ca::generate("test-ca", Duration::from_secs(10 * 24 * 3600)).unwrap();
        let secret = secret_with(&ca_cert.pem.cert_pem);
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(ca(Some(&secret), now, day).status, Status::Ok);
        let soon = ca(Some(&secret), now, 30 * day);
        assert_eq!(soon.status, Status::Warning);
        assert!(soon.message.contains("days left"), "{}", soon.message);
        let later = now + time::Duration::days(11);
        let expired = ca(Some(&secret), later, day);
        assert_eq!(expired.status, Status::Fail);
        assert!(
            expired.message.contains("expired at"),
            "{}",
            expired.message
        );
        assert_eq!(ca(None, now, day).status, Status::Fail);
        assert_eq!(
            ca(Some(&secret_with("junk")), now, day).status,
            Status::Fail
        );
    }
}
