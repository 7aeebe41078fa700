//! The `skein-control-plane` group: the control plane is up, its configuration stream answers,
//! and the apiserver reaches its tap API.
//!
//! In the cluster (MeshConfig InCluster mode) "up" is its Deployment's available replicas, and
//! its debug server is asked through a port-forward as `skein proxy-status` does. In External
//! mode the MeshConfig does not say where the debug server is (only the webhook URL and the
//! stream's address), so it is `--url` (or `--cluster` for `skein dev up`); without either the
//! check is a warning that says so. The stream is probed by opening a connection to it (the
//! stream's address in External mode; a port-forward to a control-plane pod in the cluster) and
//! sending an HTTP/2 preface: any answer, or a clean close (a TLS listener refusing plaintext),
//! means something serves the port.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::core::Selector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::result::{Check, CheckResult};
use crate::api::meshconfig::ControlPlaneMode;
use crate::api::{MeshConfig, names};
use crate::cli::debug_server::{DebugTarget, control_plane_pods};
use crate::controlplane::proxy_status;
use crate::controlplane::push::ProxyStatus;
use crate::controlplane::tap::api::API_SERVICE;
use crate::operator::desired::{CONTROL_PLANE, XDS_PORT, control_plane_selector};
use crate::operator::federation::describe;

const GROUP: &str = "skein-control-plane";
pub const READY: Check = Check {
    id: "control-plane",
    group: GROUP,
    description: "the control plane is ready and its debug server answers",
};
pub const STREAM: Check = Check {
    id: "control-plane-stream",
    group: GROUP,
    description: "the configuration stream accepts connections",
};
pub const TAP_API: Check = Check {
    id: "tap-api",
    group: GROUP,
    description: "the apiserver reaches the tap API (APIService v1alpha1.tap.skein.dev)",
};

/// Bound of each network probe (the debug query includes a port-forward).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// What an HTTP/2 (gRPC) client sends first: the preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The proxies the control plane knows, or why they could not be read.
pub type Proxies = Result<Vec<ProxyStatus>, String>;

/// Pure: the control plane's Deployment (`None`: there is none) in InCluster mode.
pub fn deployment(deployment: Option<&Deployment>) -> Option<CheckResult> {
    let describe_pods = format!(
        "see why: kubectl -n {} describe pods -l app.kubernetes.io/name={CONTROL_PLANE}",
        names::MESH_NAMESPACE
    );
    let Some(deployment) = deployment else {
        return Some(CheckResult::fail(
            READY,
            format!(
                "there is no Deployment {}/{CONTROL_PLANE}",
                names::MESH_NAMESPACE
            ),
            "the operator creates it: see the operator and meshconfig checks",
        ));
    };
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    (available == 0).then(|| {
        CheckResult::fail(
            READY,
            format!("Deployment {CONTROL_PLANE}: 0 of {wanted} replicas available"),
            describe_pods,
        )
    })
}

/// Pure: the answer of the debug server (`None`: no address to ask).
pub fn debug_answer(mode: ControlPlaneMode, answer: Option<&Proxies>) -> CheckResult {
    match answer {
        Some(Ok(proxies)) => CheckResult::ok(
            READY,
            format!(
                "{mode:?} mode: the debug server lists {} connected proxies",
                proxies.len()
            ),
        ),
        Some(Err(error)) => CheckResult::fail(
            READY,
            format!("{mode:?} mode: the debug server did not answer: {error}"),
            match mode {
                ControlPlaneMode::External => {
                    "start the control plane (`skein control-plane`), or give the right --url"
                }
                ControlPlaneMode::InCluster => {
                    "see the control plane's log: kubectl -n skein-system logs deploy/skein-control-plane"
                }
            },
        ),
        None => CheckResult::warning(
            READY,
            "External mode: the MeshConfig does not say where the control plane's debug server is, so it was not asked",
            "give --url http://HOST:PORT (its --debug-addr), or --cluster NAME for `skein dev up`",
        ),
    }
}

pub async fn check_ready(
    client: &Client,
    mc: Option<&MeshConfig>,
    debug: DebugTarget<'_>,
) -> (CheckResult, Option<Proxies>) {
    let mode = mc.map(|mc| mc.spec.control_plane.mode).unwrap_or_default();
    let ask = match mode {
        ControlPlaneMode::External => debug.url.is_some() || debug.cluster.is_some(),
        ControlPlaneMode::InCluster => {
            let found = Api::<Deployment>::namespaced(client.clone(), names::MESH_NAMESPACE)
                .get_opt(CONTROL_PLANE)
                .await;
            match found {
                Ok(found) => {
                    if let Some(failed) = deployment(found.as_ref()) {
                        return (failed, None);
                    }
                }
                Err(err) => {
                    return (
                        CheckResult::fail(
                            READY,
                            format!("reading Deployment {CONTROL_PLANE}: {}", describe(&err)),
                            "check that you may get deployments in skein-system",
                        ),
                        None,
                    );
                }
            }
            true
        }
    };
    if !ask {
        return (debug_answer(mode, None), None);
    }
    let query = proxy_status::query(debug);
    let answer = match tokio::time::timeout(PROBE_TIMEOUT, query).await {
        Ok(Ok(proxies)) => Ok(proxies),
        Ok(Err(err)) => Err(format!("{err:#}")),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    (debug_answer(mode, Some(&answer)), Some(answer))
}

/// Sends the preface and waits for an answer or a close.
async fn probe<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> Result<(), String> {
    stream
        .write_all(H2_PREFACE)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("connected, but nothing answered within 3s".to_owned()),
    }
}

/// Pure: the outcome of probing the stream at `target`.
pub fn stream(target: &str, outcome: Result<(), String>) -> CheckResult {
    match outcome {
        Ok(()) => CheckResult::ok(STREAM, format!("{target} answers")),
        Err(error) => CheckResult::fail(
            STREAM,
            format!("{target}: {error}: proxies cannot get their configuration"),
            "start the control plane, or fix controlPlane.external.xdsAddress (External mode)",
        ),
    }
}

pub async fn check_stream(client: &Client, mc: Option<&MeshConfig>) -> CheckResult {
    let external = mc.and_then(|mc| match mc.spec.control_plane.mode {
        ControlPlaneMode::External => mc.spec.control_plane.external.as_ref(),
        ControlPlaneMode::InCluster => None,
    });
    if let Some(external) = external {
        let address = external.xds_address.clone();
        let outcome =
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&address))
                .await
            {
                Ok(Ok(tcp)) => probe(tcp).await,
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("no connection within {PROBE_TIMEOUT:?}")),
            };
        return stream(&address, outcome);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), names::MESH_NAMESPACE);
    let listed = match Selector::try_from(control_plane_selector()) {
        Ok(selector) => pods
            .list(&ListParams::default().labels_from(&selector))
            .await
            .map_err(|e| describe(&e)),
        Err(err) => Err(err.to_string()),
    };
    let running = match listed {
        Ok(list) => control_plane_pods(&list.items),
        Err(error) => {
            return stream(
                "the control-plane pods",
                Err(format!("listing them: {error}")),
            );
        }
    };
    let Some(pod) = running.first() else {
        return stream("the control-plane pods", Err("none is Running".to_owned()));
    };
    let target = format!("pod {}/{pod} port {XDS_PORT}", names::MESH_NAMESPACE);
    let port = XDS_PORT as u16;
    let outcome = async {
        let mut forwarder = pods
            .portforward(pod, &[port])
            .await
            .map_err(|e| describe(&e))?;
        let stream = forwarder
            .take_stream(port)
            .ok_or("the port-forward gave no stream")?;
        let failed = forwarder.take_error(port);
        let outcome = tokio::select! {
            outcome = probe(stream) => outcome,
            Some(reason) = async { failed?.await } => Err(reason),
        };
        forwarder.abort();
        outcome
    };
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, outcome)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
    stream(&target, outcome)
}

/// Pure: the tap API's registration (`None`: not registered) as the apiserver reports it.
pub fn tap_api(service: Option<&APIService>) -> CheckResult {
    let Some(service) = service else {
        return CheckResult::warning(
            TAP_API,
            format!("APIService {API_SERVICE} is not registered: `skein tap` needs --port-forward"),
            "the operator registers it: check the operator and meshconfig checks",
        );
    };
    let available = service
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Available"));
    match available {
        Some(condition) if condition.status == "True" => {
            CheckResult::ok(TAP_API, format!("{API_SERVICE} is available"))
        }
        condition => CheckResult::fail(
            TAP_API,
            format!(
                "{API_SERVICE} is not available ({}): `skein tap` through the apiserver fails, \
                 and deleting a namespace waits until it is back",
                condition
                    .map(|c| format!(
                        "{}: {}",
                        c.reason.as_deref().unwrap_or("no reason"),
                        c.message.as_deref().unwrap_or_default()
                    ))
                    .unwrap_or_else(|| "no Available condition yet".to_owned())
            ),
            "check the control-plane checks, and that the apiserver runs with a front proxy \
             (--requestheader-client-ca-file, --proxy-client-cert-file)",
        ),
    }
}

pub async fn check_tap_api(client: &Client) -> CheckResult {
    match Api::<APIService>::all(client.clone())
        .get_opt(API_SERVICE)
        .await
    {
        Ok(service) => tap_api(service.as_ref()),
        Err(err) => CheckResult::fail(
            TAP_API,
            format!("reading APIService {API_SERVICE}: {}", describe(&err)),
            "the check needs get on apiservices",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::result::Status;

    #[test]
    fn the_tap_api_check_reads_the_apiservice_condition() {
        assert_eq!(tap_api(None).status, Status::Warning);
        let service = |status: &str| -> APIService {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": API_SERVICE},
                "status": {"conditions": [{"type": "Available", "status": status,
                    "reason": "FailedDiscoveryCheck", "message": "no response",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap()
        };
        assert_eq!(tap_api(Some(&service("True"))).status, Status::Ok);
        let down = tap_api(Some(&service("False")));
        assert_eq!(down.status, Status::Fail);
        assert!(
            down.message.contains("FailedDiscoveryCheck: no response"),
            "{}",
            down.message
        );
        assert!(
            down.message.contains("deleting a namespace waits"),
            "{}",
            down.message
        );
    }

    #[test]
    fn an_unavailable_deployment_fails_and_an_available_one_is_then_asked() {
        assert_eq!(deployment(None).unwrap().status, Status::Fail);
        let down: Deployment = serde_json::from_value(serde_json::json!({
            "spec": {"replicas": 2, "selector": {}, "template": {}}, "status": {"availableReplicas": 0}}))
        .unwrap();
        assert!(deployment(Some(&down)).unwrap().message.contains("0 of 2"));
        let up: Deployment =
            serde_json::from_value(serde_json::json!({"status": {"availableReplicas": 1}}))
                .unwrap();
        assert!(deployment(Some(&up)).is_none());
    }

    #[test]
    fn the_debug_answer_decides_readiness() {
        assert_eq!(
            debug_answer(ControlPlaneMode::External, Some(&Ok(Vec::new()))).status,
            Status::Ok
        );
        let down = debug_answer(
            ControlPlaneMode::External,
            Some(&Err("connection refused".to_owned())),
        );
        assert_eq!(down.status, Status::Fail);
        assert!(down.message.contains("connection refused"));
        assert_eq!(
            debug_answer(ControlPlaneMode::External, None).status,
            Status::Warning
        );
    }

    #[tokio::test]
    async fn a_listener_answers_and_a_closed_port_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await;
        });
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        assert_eq!(probe(tcp).await, Ok(()));
        assert_eq!(stream("x", Err("refused".to_owned())).status, Status::Fail);
    }
}
