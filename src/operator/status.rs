//! What the operator reports in `MeshConfig.status`: pure condition logic, plus the two probes
//! of control-plane readiness (the Deployment's status, or an external control plane's
//! `/readyz`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::meshconfig::{ComponentStatus, TrustStatus, TrustedRootStatus};
use crate::api::not_acting::{self, InertField};
use crate::controlplane::identity::trust::{self, Ledger, Trust, TrustedCert, Why};

pub const CONTROL_PLANE_COMPONENT: &str = "control-plane";

/// What one reconcile found out.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `Err((reason, message))` when the install could not be applied.
    pub install: Result<(), (String, String)>,
    pub control_plane: ComponentStatus,
    /// A rollout of the control plane is under way.
    pub rolling_out: bool,
    /// Spec fields set to a value nothing acts on yet.
    pub fields_not_acting: Vec<InertField>,
}

/// The five conditions, keeping each one's `lastTransitionTime` while its status is unchanged.
/// `FieldsNotActing` ([`not_acting`]) names every field set that does nothing yet; it does not
/// make the mesh less Ready: everything else works as installed.
pub fn conditions(
    previous: &[Condition],
    generation: Option<i64>,
    observed: &Observation,
    now: &Time,
) -> Vec<Condition> {
    let make = |type_: &str, status: bool, reason: &str, message: String| {
        condition(previous, generation, now, type_, status, reason, message)
    };
    let cp = &observed.control_plane;
    let cp_message = cp.message.clone().unwrap_or_default();
    let (installed, ready, degraded) = match &observed.install {
        Err((reason, message)) => (
            make("Installed", false, reason, message.clone()),
            make(
                "Ready",
                false,
                "NotInstalled",
                format!("the mesh is not installed: {message}"),
            ),
            make("Degraded", true, reason, message.clone()),
        ),
        Ok(()) => (
            make(
                "Installed",
                true,
                "Applied",
                "every mesh object is applied".to_owned(),
            ),
            if cp.ready {
                make(
                    "Ready",
                    true,
                    "ControlPlaneReady",
                    "the control plane is ready".to_owned(),
                )
            } else {
                make("Ready", false, "ControlPlaneNotReady", cp_message.clone())
            },
            make("Degraded", false, "AsExpected", String::new()),
        ),
    };
    let progressing = if observed.rolling_out {
        make("Progressing", true, "RollingOut", cp_message)
    } else {
        make("Progressing", false, "Complete", String::new())
    };
    let (inert, reason, message) = not_acting::condition(&observed.fields_not_acting);
    let not_acting = make(not_acting::FIELDS_NOT_ACTING, inert, reason, message);
    vec![ready, installed, progressing, degraded, not_acting]
}

/// The only condition of a MeshConfig other than `default`: `Ready=False`, reason `NotActive`.
pub fn not_active(
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
    active_name: &str,
) -> Condition {
    let message =
        format!("only the MeshConfig named {active_name:?} is acted on; this one is ignored");
    condition(
        previous,
        generation,
        now,
        "Ready",
        false,
        "NotActive",
        message,
    )
}

/// One condition, keeping the previous `lastTransitionTime` when its status did not change.
fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// Pure: control-plane readiness from its Deployment. Returns the component and whether a
/// rollout is still under way.
pub fn deployment_component(
    deployment: Option<&Deployment>,
    version: &str,
) -> (ComponentStatus, bool) {
    let component = |ready: bool, message: Option<String>| ComponentStatus {
        name: CONTROL_PLANE_COMPONENT.to_owned(),
        ready,
        version: Some(version.to_owned()),
        message,
    };
    let Some(deployment) = deployment else {
        return (
            component(
                false,
                Some("the control-plane Deployment does not exist yet".to_owned()),
            ),
            true,
        );
    };
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation >= deployment.metadata.generation;
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let rolled_out = observed && updated >= wanted && status.replicas.unwrap_or(0) == updated;
    let ready = available >= 1 && observed;
    let message = (!ready || !rolled_out).then(|| {
        format!("{available} of {wanted} control-plane replicas available, {updated} updated to the current spec")
    });
    (component(ready, message), !rolled_out)
}

/// Asks an external control plane whether it is ready: `GET /readyz` over HTTPS on the
/// webhook's host and port, trusting only the mesh CA.
/// `status.trust`, and when it changes next by itself (a retained root's end), from the CA
/// Secret and the control plane's ledger (`None` while the Secret cannot be read).
pub async fn read_trust(client: &kube::Client) -> Option<(TrustStatus, Option<SystemTime>)> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let namespace = crate::api::names::MESH_NAMESPACE;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret = secrets.get_opt(super::desired::CA_SECRET).await.ok()??;
    let (ca, bundle) = super::certs::ca_and_bundle(&secret, super::desired::CA_SECRET).ok()?;
    let signing = TrustedCert::parse(&ca.pem.cert_pem)?;
    let configmaps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let data = configmaps
        .get_opt(trust::LEDGER_CONFIGMAP)
        .await
        .ok()
        .flatten()
        .and_then(|cm| cm.data)
        .unwrap_or_default();
    let (ledger, _) = Ledger::from_data(&data);
    let trust = trust::trust(&bundle, &[&signing], &ledger, SystemTime::now());
    let next_change = trust.retained().map(|(_, until)| until).min();
    Some((trust_status(&signing, &trust), next_change))
}

/// Pure: the trust bundle as `status.trust` shows it.
pub fn trust_status(signing: &TrustedCert, trust: &Trust) -> TrustStatus {
    let time = |at: SystemTime| Time(Timestamp::try_from(at).unwrap_or(Timestamp::UNIX_EPOCH));
    TrustStatus {
        signing: signing.subject.clone(),
        roots: trust
            .certs
            .iter()
            .map(|(cert, why)| TrustedRootStatus {
                subject: cert.subject.clone(),
                sha256: cert.fingerprint.clone(),
                not_after: time(cert.not_after),
                source: match why {
                    Why::Secret => "Secret",
                    Why::Signing => "Signing",
                    Why::Retained { .. } => "Retained",
                }
                .to_owned(),
                retained_until: match why {
                    Why::Retained { until } => Some(time(*until)),
                    _ => None,
                },
            })
            .collect(),
    }
}

pub async fn probe_external(webhook_url: &str, ca_pem: &str, version: &str) -> ComponentStatus {
    let result =
        tokio::time::timeout(Duration::from_secs(3), get_readyz(webhook_url, ca_pem)).await;
    let (ready, message) = match result {
        Ok(Ok(200)) => (true, None),
        Ok(Ok(code)) => (
            false,
            Some(format!("{webhook_url}: /readyz answered {code}")),
        ),
        Ok(Err(err)) => (false, Some(format!("{webhook_url}: {err}"))),
        Err(_) => (
            false,
            Some(format!("{webhook_url}: /readyz did not answer within 3s")),
        ),
    };
    ComponentStatus {
        name: CONTROL_PLANE_COMPONENT.to_owned(),
        ready,
        version: Some(version.to_owned()),
        message,
    }
}

async fn get_readyz(webhook_url: &str, ca_pem: &str) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let rest = webhook_url
        .strip_prefix("https://")
        .ok_or("not an https URL")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host.trim_matches(['[', ']']),
            port.parse::<u16>().map_err(|_| "bad port")?,
        ),
        _ => (authority.trim_matches(['[', ']']), 443),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 64];
    let n = tls.read(&mut head).await.map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn observation(install: Result<(), (String, String)>, ready: bool) -> Observation {
        Observation {
            install,
            control_plane: ComponentStatus {
                name: CONTROL_PLANE_COMPONENT.to_owned(),
                ready,
                version: Some("1".to_owned()),
                message: (!ready).then(|| "0 of 1 available".to_owned()),
            },
            rolling_out: !ready,
            fields_not_acting: Vec::new(),
        }
    }

    fn get<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_follows_the_control_plane_and_transition_times_stick() {
        let first = conditions(&[], Some(1), &observation(Ok(()), false), &at(100));
        assert_eq!(get(&first, "Ready").status, "False");
        assert_eq!(get(&first, "Ready").reason, "ControlPlaneNotReady");
        assert_eq!(get(&first, "Progressing").status, "True");
        assert_eq!(get(&first, "Installed").status, "True");

        let second = conditions(&first, Some(1), &observation(Ok(()), true), &at(200));
        assert_eq!(get(&second, "Ready").status, "True");
        assert_eq!(get(&second, "Ready").last_transition_time, at(200));
        assert_eq!(
            get(&second, "Installed").last_transition_time,
            at(100),
            "unchanged: time kept"
        );
    }

    #[test]
    fn an_install_error_is_degraded_with_its_reason() {
        let failed = Err((
            "CASecretInvalid".to_owned(),
            "secret skein-system/skein-ca has no tls.key".to_owned(),
        ));
        let conditions = conditions(&[], Some(2), &observation(failed, false), &at(1));
        let degraded = get(&conditions, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "CASecretInvalid")
        );
        assert_eq!(
            degraded.message,
            "secret skein-system/skein-ca has no tls.key"
        );
        assert_eq!(get(&conditions, "Ready").reason, "NotInstalled");
        assert!(conditions.iter().all(|c| c.observed_generation == Some(2)));
    }

    #[test]
    fn fields_not_acting_are_named_without_touching_readiness() {
        let mut observed = observation(Ok(()), true);
        let all_act = conditions(&[], Some(1), &observed, &at(1));
        let condition = get(&all_act, "FieldsNotActing");
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "AllFieldsAct")
        );

        observed.fields_not_acting = vec![InertField {
            path: "spec.mtls.mode".to_owned(),
            value: "Strict".to_owned(),
        }];
        let inert = conditions(&all_act, Some(2), &observed, &at(2));
        let condition = get(&inert, "FieldsNotActing");
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "NotImplemented")
        );
        assert!(
            condition
                .message
                .starts_with("spec.mtls.mode (Strict) is accepted but not acted on"),
            "{}",
            condition.message
        );
        assert_eq!(condition.last_transition_time, at(2));
        assert_eq!(get(&inert, "Ready").status, "True");
        assert_eq!(get(&inert, "Degraded").status, "False");
    }

    #[test]
    fn deployment_readiness() {
        let deployment = |replicas: i32, updated: i32, available: i32| Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(updated),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                ..Default::default()
            }),
        };
        assert!(!deployment_component(None, "1").0.ready);
        let (ready, rolling) = deployment_component(Some(&deployment(2, 2, 2)), "1");
        assert!(ready.ready && !rolling && ready.message.is_none());
        let (ready, rolling) = deployment_component(Some(&deployment(2, 1, 1)), "1");
        assert!(ready.ready && rolling, "available but still rolling out");
        let (ready, _) = deployment_component(Some(&deployment(1, 1, 0)), "1");
        assert!(!ready.ready);
        assert!(ready.message.unwrap().contains("0 of 1"));
    }
}
