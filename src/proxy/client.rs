//! The proxy's side of the configuration stream (`--xds-address`): keeps one stream to the
//! control plane open, holds the resources it is sent, and applies the configuration they
//! make (see the control plane's `push` module for the protocol).
//!
//! - On connect the proxy subscribes to every type ([`TYPE_URLS`]), the first request carrying
//!   its identity and, after a reconnect, the versions of what it holds: the control plane
//!   then sends only what differs.
//! - It holds what the control plane sent, by type and name. Once every type has arrived
//!   (the first response of each type is always sent) and a push is complete (the settings,
//!   which carry the push's version, come last), what is held is assembled into a whole
//!   configuration and applied once: ACK if it compiles, else NACK with the reason, and the
//!   previous configuration stays active ([`ConfigStore::replace`]).
//! - What is held mirrors what the control plane sent, rejected content included: the
//!   control plane does not resend what it already sent, so dropping a rejected response
//!   would lose the good resources that came with it. Each later response is assembled from
//!   the whole mirror again, so the proxy converges as soon as the control plane's
//!   configuration is valid again (until then, its updates are rejected too, as a bad
//!   `--config` file would be).
//! - When the stream breaks or the control plane is unreachable the proxy keeps serving with
//!   its last good configuration, warns once per outage, and reconnects with exponential
//!   back-off ([`BACKOFF_BASE`] doubling to [`BACKOFF_MAX`], full jitter), resyncing on
//!   reconnect.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::config::{Compiled, ConfigStore, ProxyConfig};
use skein_core::xds::ProxyIdentity;
use skein_core::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use skein_core::xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use skein_core::xds::resources::{self, Resources, TYPE_URLS};

/// First retry delay (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings, so a control plane that vanished is noticed even when nothing changes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests (subscriptions, ACKs) queued to the stream.
const REQUEST_QUEUE: usize = 4;
/// gRPC INVALID_ARGUMENT, the code of a NACK.
const NACK_CODE: i32 = 3;
/// Largest response accepted (gRPC's default is 4 MiB): the first response of a stream holds
/// every destination of the mesh.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Where the control plane is and who this proxy is.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `host:port` (or a URL with a scheme).
    pub address: String,
    pub identity: ProxyIdentity,
    /// The pod's projected service-account token (audience `skein.dev`), read afresh for each
    /// stream: the kubelet rotates it. The control plane refuses a stream without one.
    pub token_path: Option<std::path::PathBuf>,
    /// What the control plane's certificate is verified against (none: plaintext); read
    /// afresh for each connection.
    pub trust: super::stream_trust::StreamTrust,
}

/// Why there is no endpoint to connect to.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid control-plane address {address:?}: {source}")]
    Address {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("reading the control plane's trust bundle: {0}")]
    Bundle(std::io::Error),
    #[error("the control plane's TLS settings: {0}")]
    Tls(tonic::transport::Error),
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("connecting to {address}: {}", crate::tcp::ErrorChain(.source))]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Token(super::identity::IdentityError),
    #[error("the control plane refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("the stream broke: {0}")]
    Broken(tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

/// Runs forever: connects, keeps the stream, applies configurations, reconnects.
pub async fn run(
    settings: ClientSettings,
    store: Arc<ConfigStore>,
    on_result: impl Fn(Result<&Compiled, &str>) + Send + Sync + 'static,
) {
    let mut state = ClientState::default();
    let mut outage = Outage::default();
    loop {
        let err = stream(&settings, &store, &on_result, &mut state, &mut outage).await;
        outage.failed(&settings.address, &err);
        tokio::time::sleep(outage.delay()).await;
    }
}

/// One stream, from connecting until it ends.
async fn stream(
    settings: &ClientSettings,
    store: &ConfigStore,
    on_result: &(impl Fn(Result<&Compiled, &str>) + Send + Sync),
    state: &mut ClientState,
    outage: &mut Outage,
) -> StreamError {
    let channel = match endpoint(&settings.address, &settings.trust).await {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => channel,
            Err(source) => {
                return StreamError::Connect {
                    address: settings.address.clone(),
                    source,
                };
            }
        },
        Err(err) => return StreamError::Endpoint(err),
    };
    let (requests, mut queued) = mpsc::channel(REQUEST_QUEUE);
    for subscription in state.subscriptions(&settings.identity) {
        if requests.send(subscription).await.is_err() {
            return StreamError::Closed;
        }
    }
    let outgoing = futures::stream::poll_fn(move |cx| queued.poll_recv(cx));
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let mut request = tonic::Request::new(outgoing);
    if let Some(path) = &settings.token_path {
        let authorized = super::identity::read_token(path)
            .await
            .and_then(|token| super::identity::authorize(&mut request, &token));
        if let Err(err) = authorized {
            return StreamError::Token(err);
        }
    }
    let mut responses = match client.delta_aggregated_resources(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return StreamError::Refused(status),
    };
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return StreamError::Closed,
            Err(status) => return StreamError::Broken(status),
        };
        outage.connected(&settings.address);
        let step = state.receive(&response);
        let result = apply(step, store, state, on_result);
        if requests.send(answer(&response, result)).await.is_err() {
            return StreamError::Closed;
        }
    }
}

/// The control plane at `address`; over TLS when `trust` has roots.
pub async fn endpoint(
    address: &str,
    trust: &super::stream_trust::StreamTrust,
) -> Result<tonic::transport::Endpoint, EndpointError> {
    let roots = trust.roots().await.map_err(EndpointError::Bundle)?;
    let scheme = if roots.is_some() { "https" } else { "http" };
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("{scheme}://{address}")
    };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(uri).map_err(|source| EndpointError::Address {
            address: address.to_owned(),
            source,
        })?;
    if let Some(bundle) = roots {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(bundle));
        endpoint = endpoint.tls_config(tls).map_err(EndpointError::Tls)?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Does what [`ClientState::receive`] decided; `Err` is the NACK's reason.
fn apply(
    step: Step,
    store: &ConfigStore,
    state: &mut ClientState,
    on_result: &impl Fn(Result<&Compiled, &str>),
) -> Result<(), String> {
    match step {
        Step::Incomplete | Step::Unchanged => Ok(()),
        Step::Invalid(reason) => {
            on_result(Err(&reason));
            Err(reason)
        }
        Step::Apply(config) => match store.replace((*config).clone()) {
            Ok(compiled) => {
                state.applied = Some(*config);
                on_result(Ok(&compiled));
                Ok(())
            }
            Err(err) => {
                let reason = err.to_string();
                on_result(Err(&reason));
                Err(reason)
            }
        },
    }
}

/// The ACK (or, with a reason, NACK) of `response`.
fn answer(response: &DeltaDiscoveryResponse, result: Result<(), String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        error_detail: result.err().map(|message| Status {
            code: NACK_CODE,
            message,
        }),
        ..Default::default()
    }
}

fn node(identity: &ProxyIdentity) -> Node {
    Node {
        id: format!("{}.{}", identity.pod, identity.namespace),
        pod: identity.pod.clone(),
        namespace: identity.namespace.clone(),
        ip: identity.ip.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

/// What to do after a response.
#[derive(Debug, PartialEq)]
enum Step {
    /// Some type, or the rest of the push, has not arrived yet: nothing to apply (ACK).
    Incomplete,
    /// The configuration is the one applied already (ACK).
    Unchanged,
    Apply(Box<ProxyConfig>),
    /// The response or what is held makes no configuration (NACK).
    Invalid(String),
}

/// What the proxy holds, across reconnects.
#[derive(Debug, Default)]
struct ClientState {
    /// A mirror of what the control plane sent, by type and name.
    held: Resources,
    /// Types whose complete set has arrived.
    complete: BTreeSet<&'static str>,
    /// The configuration last applied.
    applied: Option<ProxyConfig>,
}

impl ClientState {
    /// The requests that open a stream: one wildcard subscription per type, the first with
    /// the node, each with the versions held.
    fn subscriptions(&self, identity: &ProxyIdentity) -> Vec<DeltaDiscoveryRequest> {
        TYPE_URLS
            .iter()
            .enumerate()
            .map(|(index, type_url)| DeltaDiscoveryRequest {
                node: (index == 0).then(|| node(identity)),
                type_url: (*type_url).to_owned(),
                resource_names_subscribe: vec!["*".to_owned()],
                initial_resource_versions: self
                    .held
                    .get(type_url)
                    .map(resources::versions)
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect()
    }

    /// Takes in a response and decides what to apply.
    fn receive(&mut self, response: &DeltaDiscoveryResponse) -> Step {
        let Some(type_url) = resources::known_type(&response.type_url) else {
            return Step::Invalid(format!("unknown resource type {:?}", response.type_url));
        };
        let held = self.held.entry(type_url).or_default();
        for name in &response.removed_resources {
            held.remove(name);
        }
        for resource in &response.resources {
            held.insert(resource.name.clone(), resource.clone());
        }
        self.complete.insert(type_url);
        if self.complete.len() < TYPE_URLS.len() {
            return Step::Incomplete;
        }
        match resources::assemble(&self.held) {
            // Every response of a push names the push's version, and the settings, which carry
            // it, come last: until they are in, what is held mixes two pushes, and compiling it
            // would be work thrown away a moment later.
            Ok(config)
                if !config.version.is_empty() && config.version != response.system_version_info =>
            {
                Step::Incomplete
            }
            Ok(config) if self.applied.as_ref() == Some(&config) => Step::Unchanged,
            Ok(config) => Step::Apply(Box::new(config)),
            Err(err) => Step::Invalid(err.to_string()),
        }
    }
}

/// Reconnection pacing, and logging once per outage.
#[derive(Debug, Default)]
struct Outage {
    /// Consecutive failed streams (none received a response).
    failures: u32,
    /// The outage has been logged at warn.
    logged: bool,
}

impl Outage {
    fn failed(&mut self, address: &str, err: &StreamError) {
        if self.logged {
            tracing::debug!(%address, error = %err, "configuration stream still unavailable");
        } else {
            tracing::warn!(%address, error = %err, "configuration stream unavailable: keeping the last configuration and retrying");
            self.logged = true;
        }
    }

    fn connected(&mut self, address: &str) {
        if self.logged {
            tracing::info!(%address, "configuration stream connected again");
        }
        self.failures = 0;
        self.logged = false;
    }

    /// The next delay: full jitter over the capped exponential back-off.
    fn delay(&mut self) -> Duration {
        let cap = backoff_cap(self.failures);
        self.failures = self.failures.saturating_add(1);
        cap.mul_f64(fastrand::f64())
    }
}

/// [`BACKOFF_BASE`] doubled per failure, at most [`BACKOFF_MAX`].
pub(crate) fn backoff_cap(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(failures))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_core::xds::resources::{DESTINATION_TYPE, EGRESS_TYPE, SETTINGS_TYPE, split};

    fn config(yaml: &str) -> ProxyConfig {
        skein_core::yaml::from_str(yaml).expect("valid yaml")
    }

    /// The first responses of a stream, as the control plane sends them: every type, all of it.
    fn full_responses(config: &ProxyConfig) -> Vec<DeltaDiscoveryResponse> {
        let resources = split(config).expect("split");
        TYPE_URLS
            .iter()
            .map(|type_url| DeltaDiscoveryResponse {
                type_url: (*type_url).to_owned(),
                resources: resources[type_url].values().cloned().collect(),
                nonce: format!("n-{type_url}"),
                system_version_info: config.version.clone(),
                ..Default::default()
            })
            .collect()
    }

    const ONE: &str = r#"
version: "1"
destinations:
  - {name: a, addresses: ["198.19.0.1"], ports: [{port: 80, endpoints: []}]}
  - {name: b, addresses: ["198.19.0.2"], ports: [{port: 80, endpoints: []}]}
"#;

    #[test]
    fn nothing_is_applied_until_every_type_has_arrived() {
        let mut state = ClientState::default();
        let responses = full_responses(&config(ONE));
        assert_eq!(state.receive(&responses[0]), Step::Incomplete);
        assert_eq!(state.receive(&responses[1]), Step::Incomplete);
        assert_eq!(
            state.receive(&responses[2]),
            Step::Apply(Box::new(config(ONE)))
        );
    }

    #[test]
    fn deltas_update_what_is_held() {
        let mut state = ClientState::default();
        for response in full_responses(&config(ONE)) {
            state.receive(&response);
        }
        state.applied = Some(config(ONE));
        let two = config(
            r#"
version: "1"
destinations:
  - {name: a, addresses: ["198.19.0.9"], ports: [{port: 80, endpoints: []}]}
"#,
        );
        let changed = split(&two).expect("split")[DESTINATION_TYPE]["a"].clone();
        let step = state.receive(&DeltaDiscoveryResponse {
            type_url: DESTINATION_TYPE.to_owned(),
            resources: vec![changed],
            removed_resources: vec!["b".to_owned()],
            system_version_info: "1".to_owned(),
            ..Default::default()
        });
        assert_eq!(step, Step::Apply(Box::new(two.clone())));
        state.applied = Some(two.clone());
        // An empty response (a resync after a reconnect) changes nothing.
        let step = state.receive(&DeltaDiscoveryResponse {
            type_url: EGRESS_TYPE.to_owned(),
            system_version_info: "1".to_owned(),
            ..Default::default()
        });
        assert_eq!(step, Step::Unchanged);

        // A push of version 2: its destinations wait for its settings, then it applies once.
        let mut three = two;
        three.version = "2".to_owned();
        three.destinations[0].addresses = vec!["198.19.0.10".parse().unwrap()];
        let resources = split(&three).expect("split");
        let step = state.receive(&DeltaDiscoveryResponse {
            type_url: DESTINATION_TYPE.to_owned(),
            resources: resources[DESTINATION_TYPE].values().cloned().collect(),
            system_version_info: "2".to_owned(),
            ..Default::default()
        });
        assert_eq!(step, Step::Incomplete, "half a push is not applied");
        let step = state.receive(&DeltaDiscoveryResponse {
            type_url: SETTINGS_TYPE.to_owned(),
            resources: resources[SETTINGS_TYPE].values().cloned().collect(),
            system_version_info: "2".to_owned(),
            ..Default::default()
        });
        assert_eq!(step, Step::Apply(Box::new(three)));
    }

    #[test]
    fn subscriptions_carry_the_node_once_and_the_versions_held() {
        let identity = ProxyIdentity {
            pod: "web-1".to_owned(),
            namespace: "demo".to_owned(),
            ip: "10.1.0.7".parse().ok(),
        };
        let mut state = ClientState::default();
        let first = state.subscriptions(&identity);
        assert_eq!(first.len(), 3);
        assert_eq!(
            first[0].node.as_ref().map(|n| n.ip.as_str()),
            Some("10.1.0.7")
        );
        assert!(first[1].node.is_none() && first[2].node.is_none());
        assert!(first.iter().all(|r| r.initial_resource_versions.is_empty()));

        for response in full_responses(&config(ONE)) {
            state.receive(&response);
        }
        let again = state.subscriptions(&identity);
        let destinations = again
            .iter()
            .find(|r| r.type_url == DESTINATION_TYPE)
            .expect("destinations");
        assert_eq!(
            destinations
                .initial_resource_versions
                .keys()
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let settings = again
            .iter()
            .find(|r| r.type_url == SETTINGS_TYPE)
            .expect("settings");
        assert_eq!(settings.initial_resource_versions.len(), 1);
    }

    #[test]
    fn bad_responses_are_invalid() {
        let mut state = ClientState::default();
        let step = state.receive(&DeltaDiscoveryResponse {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned(),
            ..Default::default()
        });
        assert!(matches!(step, Step::Invalid(reason) if reason.contains("unknown resource type")));

        let mut responses = full_responses(&config(ONE));
        if let Some(any) = responses[1].resources[0].resource.as_mut() {
            any.value = vec![0xff; 3];
        }
        for response in &responses[..2] {
            state.receive(response);
        }
        assert!(matches!(state.receive(&responses[2]), Step::Invalid(_)));
    }

    #[test]
    fn a_rejected_config_is_nacked_and_the_previous_one_stays() {
        let store = ConfigStore::new(Compiled::passthrough());
        let mut state = ClientState::default();
        let results = std::sync::Mutex::new(Vec::new());
        let on_result = |result: Result<&Compiled, &str>| {
            results.lock().unwrap().push(
                result
                    .map(|c| c.source.version.clone())
                    .map_err(str::to_owned),
            );
        };
        let good = config(ONE);
        let mut outcome = Ok(());
        for response in full_responses(&good) {
            let step = state.receive(&response);
            outcome = apply(step, &store, &mut state, &on_result);
        }
        assert_eq!(outcome, Ok(()));
        assert_eq!(store.current().source, good);

        let mut bad = good.clone();
        bad.version = "2".to_owned();
        bad.detect_timeout = skein_core::Duration::from_millis(0);
        let response = DeltaDiscoveryResponse {
            type_url: SETTINGS_TYPE.to_owned(),
            resources: split(&bad).expect("split")[SETTINGS_TYPE]
                .values()
                .cloned()
                .collect(),
            nonce: "n2".to_owned(),
            system_version_info: "2".to_owned(),
            ..Default::default()
        };
        let step = state.receive(&response);
        let outcome = apply(step, &store, &mut state, &on_result);
        let reason = outcome.clone().unwrap_err();
        assert!(reason.contains("detectTimeout"), "{reason}");
        assert_eq!(store.current().source, good, "the previous config stays");
        let nack = answer(&response, outcome);
        assert_eq!(nack.response_nonce, "n2");
        assert_eq!(nack.error_detail.map(|s| s.message), Some(reason.clone()));
        assert_eq!(
            results.lock().unwrap().clone(),
            [Ok("1".to_owned()), Err(reason)]
        );
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        assert_eq!(backoff_cap(0), Duration::from_millis(200));
        assert_eq!(backoff_cap(1), Duration::from_millis(400));
        assert_eq!(backoff_cap(6), Duration::from_millis(12_800));
        assert_eq!(backoff_cap(7), BACKOFF_MAX);
        assert_eq!(backoff_cap(u32::MAX), BACKOFF_MAX);
        let mut outage = Outage::default();
        for _ in 0..50 {
            assert!(outage.delay() <= BACKOFF_MAX);
        }
        outage.connected("cp:9090");
        assert!(outage.delay() <= BACKOFF_BASE);
    }
}
