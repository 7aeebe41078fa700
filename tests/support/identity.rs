//! Proxies outside a pod authenticate like the real one: with a service-account token for
//! audience `skein.dev`, bound to a pod that exists (what `kubectl create token SA --audience
//! skein.dev --bound-object-kind Pod --bound-object-name POD` makes). The pods are never
//! scheduled: a pending pod is a live pod for the TokenReview.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;

/// The service account the stand-in pods run as.
pub const SERVICE_ACCOUNT: &str = "proxy";

/// Creates the service account [`SERVICE_ACCOUNT`] in `namespace` (if missing).
pub async fn service_account(client: &Client, namespace: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(SERVICE_ACCOUNT.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(err) => panic!("creating service account {namespace}/{SERVICE_ACCOUNT}: {err}"),
    }
}

/// A pod `namespace/name` running as [`SERVICE_ACCOUNT`] (call [`service_account`] first).
pub async fn pod(client: &Client, namespace: &str, name: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "containers": [{"name": "app", "image": "skein:test"}],
        }
    }))
    .expect("a pod");
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|err| panic!("creating pod {namespace}/{name}: {err}"))
}

/// A token of [`SERVICE_ACCOUNT`] for `audience`, bound to `pod`.
pub async fn token_for(client: &Client, pod: &Pod, audience: &str) -> String {
    let namespace = pod.metadata.namespace.clone().expect("a stored pod");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .expect("requesting a token")
        .status
        .and_then(|status| status.token)
        .expect("a token in the answer")
}

/// A pod `namespace/name` and a `skein.dev` token bound to it: a proxy's credentials.
pub async fn pod_token(client: &Client, namespace: &str, name: &str) -> String {
    service_account(client, namespace).await;
    let pod = pod(client, namespace, name).await;
    token_for(client, &pod, "skein.dev").await
}

/// A configuration stream opened as `namespace/pod` (with `token`, or none), which has received
/// its first push. It never acknowledges anything (a stale proxy); dropping it closes the stream,
/// as a proxy going away does.
pub struct OpenStream {
    _close: tokio::sync::oneshot::Sender<()>,
    _client: skein::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient<
        tonic::transport::Channel,
    >,
    _responses: tonic::Streaming<skein::xds::discovery::DeltaDiscoveryResponse>,
}

/// Opens a [`OpenStream`] to the control plane's stream at `xds` (`host:port`); the status the
/// control plane answers otherwise (`Unavailable` when it does not serve yet).
pub async fn open_stream(
    xds: &str,
    token: Option<&str>,
    namespace: &str,
    pod: &str,
) -> Result<OpenStream, tonic::Status> {
    use futures::StreamExt;
    use skein::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use skein::xds::discovery::{DeltaDiscoveryRequest, Node};
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let first = DeltaDiscoveryRequest {
        node: Some(Node {
            id: String::new(),
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            ip: String::new(),
        }),
        type_url: skein::xds::resources::TYPE_URLS[0].to_owned(),
        resource_names_subscribe: vec!["*".to_owned()],
        ..DeltaDiscoveryRequest::default()
    };
    // The requests stay silent (no ACK ever follows the push) until `close` is dropped; then
    // they end, which is the proxy closing the stream.
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    let requests = futures::stream::iter([first]).chain(
        futures::stream::once(closed).filter_map(|_| async { None::<DeltaDiscoveryRequest> }),
    );
    let mut request = tonic::Request::new(requests);
    if let Some(token) = token {
        skein::proxy::identity::authorize(&mut request, token)
            .map_err(|err| tonic::Status::invalid_argument(err.to_string()))?;
    }
    let mut responses = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    responses
        .message()
        .await?
        .ok_or_else(|| tonic::Status::cancelled("the stream ended before its first push"))?;
    Ok(OpenStream {
        _close: close,
        _client: client,
        _responses: responses,
    })
}
