//! `MeshConfig` (cluster-scoped, `skein.dev/v1alpha1`): the one object that describes a Skein
//! installation. Only the object named `default` is active.
//!
//! Every field is optional; defaults live in the schema, so the apiserver stores them and
//! `kubectl get meshconfig default -o yaml` shows the settings in force. Shape rules the type
//! system cannot express (ranges, cross-field requirements) are CEL rules in the schema, so an
//! invalid MeshConfig is refused at `kubectl apply` with a message naming the field.
//!
//! The one exception is `version`: unset means "the operator's own version", so upgrading the
//! operator upgrades a mesh that never pinned a version.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use skein_core::proxy_config::MtlsMode;

use super::duration::Duration;
use super::names;

/// Desired state of the mesh.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "skein.dev",
    version = "v1alpha1",
    kind = "MeshConfig",
    shortname = "mc",
    category = "skein",
    label("app.kubernetes.io/part-of", "skein"),
    status = "MeshConfigStatus",
    derive = "PartialEq",
    doc = "MeshConfig describes a Skein installation. Only the MeshConfig named `default` is active.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Version", "type": "string", "jsonPath": ".status.version"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfigSpec {
    /// Skein version to run (the image tag). Unset: the operator's own version.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub version: Option<String>,
    /// Repository of the one Skein image; every component runs it with a different subcommand.
    #[schemars(length(min = 1, max = 255))]
    pub image: String,
    /// Which pods get the proxy, and how the injection webhook is registered.
    pub injection: InjectionSpec,
    /// Settings of the injected proxy.
    pub proxy: ProxySpec,
    /// Mesh-wide traffic defaults.
    pub traffic: TrafficSpec,
    /// Workload identity and mutual TLS between workloads.
    pub mtls: MtlsSpec,
    /// Distributed tracing.
    pub tracing: TracingSpec,
    /// Where the control plane runs.
    pub control_plane: ControlPlaneSpec,
    /// Remote clusters this mesh is federated with.
    pub federation: FederationSpec,
}

impl Default for MeshConfigSpec {
    fn default() -> Self {
        Self {
            version: None,
            image: names::DEFAULT_IMAGE.to_owned(),
            injection: InjectionSpec::default(),
            proxy: ProxySpec::default(),
            traffic: TrafficSpec::default(),
            mtls: MtlsSpec::default(),
            tracing: TracingSpec::default(),
            control_plane: ControlPlaneSpec::default(),
            federation: FederationSpec::default(),
        }
    }
}

impl MeshConfigSpec {
    /// The Skein version this MeshConfig asks for: `spec.version`, or this build's.
    pub fn effective_version(&self) -> &str {
        self.version.as_deref().unwrap_or(names::SKEIN_VERSION)
    }
}

// ---------------------------------------------------------------------------------------------
// injection

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct InjectionSpec {
    /// Namespace label that turns injection on for every pod in the namespace.
    pub namespace_label: NamespaceLabel,
    /// Namespaces never injected, whatever their labels say.
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(length(max = 256))]
    pub excluded_namespaces: Vec<String>,
    /// What the apiserver does when the webhook cannot be reached: `Fail` (the pod is not
    /// created, so no pod ever runs outside the mesh by accident) or `Ignore`.
    pub failure_policy: FailurePolicy,
    /// How long the apiserver waits for the webhook (1–30 seconds).
    #[schemars(range(min = 1, max = 30))]
    pub timeout_seconds: i32,
}

impl Default for InjectionSpec {
    fn default() -> Self {
        Self {
            namespace_label: NamespaceLabel::default(),
            excluded_namespaces: names::DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|ns| (*ns).to_owned())
                .collect(),
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 5,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct NamespaceLabel {
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    #[schemars(length(max = 63))]
    pub value: String,
}

impl Default for NamespaceLabel {
    fn default() -> Self {
        Self {
            key: names::INJECTION_LABEL_KEY.to_owned(),
            value: names::INJECTION_LABEL_VALUE.to_owned(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Ignore,
}

// ---------------------------------------------------------------------------------------------
// proxy

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxySpec {
    /// CPU and memory for the proxy container; pod annotations may override them.
    pub resources: ProxyResources,
    /// Log filter of the proxy (`info`, `debug`, or per module: `warn,skein_proxy=debug`).
    #[schemars(length(min = 1, max = 256))]
    pub log_level: String,
    /// UID the proxy runs as. Its own connections are exempt from traffic capture.
    #[schemars(range(min = 1, max = 2147483647))]
    pub uid: i64,
    pub ports: ProxyPorts,
    /// Start the application only once the proxy is ready, so its first requests do not fail.
    pub hold_application_until_proxy_starts: bool,
    /// Run the proxy as a native sidecar (an init container with `restartPolicy: Always`).
    /// `Auto` uses one when the cluster supports it (Kubernetes ≥ 1.29).
    pub native_sidecar: NativeSidecar,
    /// How long a terminating pod keeps serving before its application is told to stop, so
    /// every caller learns the endpoint is leaving first: the application's containers get a
    /// `preStop` sleep this long (unless they have a `preStop` hook of their own) and the proxy
    /// keeps accepting, answering HTTP/1 with `Connection: close` and HTTP/2 with GOAWAY. It
    /// counts against the pod's termination grace period. `0s` turns it off.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) <= duration('300s')", "message": "must be at most 300s"}]))]
    pub drain_window: Duration,
    /// Images a pod may ask for with the `skein.dev/proxy-image` annotation, besides the mesh's
    /// own (`image:version`), which is always allowed. Both injected containers run the image,
    /// `skein-init` as root with NET_ADMIN, so by default pods cannot choose another one. An
    /// entry is an exact reference (`registry.local/skein:1.2.3`) or ends in `*` to allow every
    /// reference starting with what precedes it (`registry.local/skein:*`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    pub allowed_images: Vec<String>,
    /// What one client may hold of each proxy's listeners: limits against slow and abusive
    /// clients (and a misbehaving app). Read by the injector, so they apply to pods created after
    /// a change.
    pub listener_limits: ListenerLimits,
}

/// Limits each proxy's inbound and outbound listeners apply (the proxy's `--header-read-timeout`,
/// `--idle-timeout`, `--max-connections`, `--max-request-header-bytes` and
/// `--http2-max-concurrent-streams`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerLimits {
    /// An HTTP/1 client must send a whole request head within this; it is also the longest an
    /// HTTP/1 keep-alive connection may sit idle between requests.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "must be more than 0s"}]))]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved in either direction for this long is closed (a
    /// WebSocket or HTTP/2 stream that carries traffic never is). `0s`: never.
    pub idle_timeout: Duration,
    /// Connections each listener holds at most; more are reset at once.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
    /// Largest HTTP/1 request head (bigger ones get 431) and HTTP/2 header list, in bytes.
    #[schemars(range(min = 8192, max = 1048576))]
    pub max_request_header_bytes: i32,
    /// Concurrent streams an HTTP/2 client may open on one connection.
    #[schemars(range(min = 1, max = 10000))]
    pub http2_max_concurrent_streams: i32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        // The proxy's own defaults: one source for both.
        let limits = crate::proxy::limits::Limits::default();
        let int = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        Self {
            header_read_timeout: limits.header_read_timeout.into(),
            idle_timeout: limits.idle_timeout.into(),
            max_connections: int(limits.max_connections),
            max_request_header_bytes: int(limits.max_header_bytes),
            http2_max_concurrent_streams: int(limits.http2_max_concurrent_streams as usize),
        }
    }
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            resources: ProxyResources::default(),
            log_level: "info".to_owned(),
            uid: names::DEFAULT_PROXY_UID,
            ports: ProxyPorts::default(),
            hold_application_until_proxy_starts: true,
            native_sidecar: NativeSidecar::Auto,
            drain_window: Duration::from_secs(names::DEFAULT_DRAIN_WINDOW_SECS),
            allowed_images: Vec::new(),
            listener_limits: ListenerLimits::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyResources {
    pub requests: ResourceAmounts,
    pub limits: ResourceAmounts,
}

impl Default for ProxyResources {
    fn default() -> Self {
        Self {
            requests: ResourceAmounts {
                cpu: Some("10m".to_owned()),
                memory: Some("20Mi".to_owned()),
            },
            limits: ResourceAmounts {
                cpu: None,
                memory: Some("128Mi".to_owned()),
            },
        }
    }
}

/// CPU and memory as Kubernetes quantities (`100m`, `64Mi`). Unset: no request or limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(self)", "message": "must be a quantity such as 100m or 1"}]))]
    #[schemars(length(max = 64))]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(self)", "message": "must be a quantity such as 64Mi or 1Gi"}]))]
    #[schemars(length(max = 64))]
    pub memory: Option<String>,
}

/// The proxy's listeners. They must differ from each other and from the application's ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self.inbound != self.outbound && self.inbound != self.admin && self.outbound != self.admin", "message": "inbound, outbound and admin ports must all differ"}]))]
pub struct ProxyPorts {
    /// Port that captured inbound connections are redirected to.
    #[schemars(range(min = 1, max = 65535))]
    pub inbound: i32,
    /// Port that captured outbound connections are redirected to.
    #[schemars(range(min = 1, max = 65535))]
    pub outbound: i32,
    /// Admin, health and metrics port (never captured).
    #[schemars(range(min = 1, max = 65535))]
    pub admin: i32,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            inbound: names::DEFAULT_INBOUND_PORT,
            outbound: names::DEFAULT_OUTBOUND_PORT,
            admin: names::DEFAULT_ADMIN_PORT,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NativeSidecar {
    #[default]
    Auto,
    Enabled,
    Disabled,
}

// ---------------------------------------------------------------------------------------------
// traffic

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficSpec {
    /// What happens to traffic for destinations the mesh does not know: `RegistryOnly` blocks
    /// it unless an EgressRule allows it; `AllowAny` passes it through.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Retry policy for requests no RouteRule sets one for.
    pub retry: RetryPolicy,
    /// Overall request timeout for requests no RouteRule sets one for. Unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OutboundTrafficPolicy {
    #[default]
    RegistryOnly,
    AllowAny,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retries).
    #[schemars(range(min = 0, max = 10))]
    pub attempts: i32,
    /// Timeout of each try. Unset: only the overall timeout applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Which failures are retried.
    #[schemars(length(max = 16))]
    pub retry_on: Vec<RetryOn>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Only failures where the request cannot have reached the application, so a retry is
        // safe for any method.
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Unavailable,
            ],
        }
    }
}

/// A class of failure that may be retried.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection to the endpoint could not be established.
    ConnectFailure,
    /// The HTTP/2 stream was refused before the server processed it.
    RefusedStream,
    /// The connection was reset before a response arrived.
    Reset,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// gRPC status UNAVAILABLE.
    Unavailable,
    /// gRPC status CANCELLED.
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED.
    DeadlineExceeded,
}

// ---------------------------------------------------------------------------------------------
// mtls

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MtlsSpec {
    /// `Permissive` accepts plaintext and mTLS, `Strict` only mTLS, `Disabled` never uses mTLS.
    pub mode: MtlsMode,
    /// Trust domain of workload identities (`spiffe://<trustDomain>/ns/<ns>/sa/<sa>`).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub trust_domain: String,
    /// Lifetime of workload certificates; they are rotated well before they expire.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('1m') && duration(self) <= duration('8760h')", "message": "must be between 1m and 8760h"}]))]
    pub workload_cert_lifetime: Duration,
}

impl Default for MtlsSpec {
    fn default() -> Self {
        Self {
            mode: MtlsMode::Permissive,
            trust_domain: "cluster.local".to_owned(),
            workload_cert_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tracing

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TracingSpec {
    /// Zipkin v2 collector URL (`http://zipkin.tracing:9411/api/v2/spans`): every proxy sends
    /// the spans of sampled requests there as Zipkin JSON. Plain `http` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isURL(self) && url(self).getScheme() == 'http'", "message": "must be an http:// URL (proxies export spans over plain HTTP)"}]))]
    #[schemars(length(max = 2048))]
    pub zipkin_endpoint: Option<String>,
    /// OTLP/HTTP traces URL (`http://jaeger.tracing:4318/v1/traces`): every proxy sends the
    /// spans of sampled requests there as OTLP protobuf. Plain `http` only. Both endpoints may
    /// be set; with neither, proxies make no spans and pass trace headers on untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isURL(self) && url(self).getScheme() == 'http'", "message": "must be an http:// URL (proxies export spans over plain HTTP)"}]))]
    #[schemars(length(max = 2048))]
    pub otlp_endpoint: Option<String>,
    /// Percentage of new traces (requests whose trace headers carry no sampling decision)
    /// that are sampled, 0–100. A caller's decision always stands. Reaches proxies when their
    /// pods are (re)created, like every injected setting.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling_percentage: f64,
    /// The tracing UI's page for one trace, `{traceId}` standing for the trace's 32 hex digits
    /// (Jaeger: `http://jaeger.example:16686/trace/{traceId}`; Zipkin:
    /// `http://zipkin.example:9411/zipkin/traces/{traceId}`). The dashboard links a failing
    /// tier's sample request to its trace when the proxy sampled it. Read by the control plane
    /// at once, for every pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "(self.startsWith('http://') || self.startsWith('https://')) && self.contains('{traceId}')", "message": "must be an http:// or https:// URL containing {traceId}"}]))]
    #[schemars(length(max = 2048))]
    pub trace_url: Option<String>,
    /// The tracing UI's search for one workload's traces, `{service}` standing for the
    /// workload (the spans' service name) and `{namespace}` for its namespace (Jaeger:
    /// `http://jaeger.example:16686/search?service={service}`). The dashboard links each
    /// workload to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "(self.startsWith('http://') || self.startsWith('https://')) && self.contains('{service}')", "message": "must be an http:// or https:// URL containing {service}"}]))]
    #[schemars(length(max = 2048))]
    pub search_url: Option<String>,
}

impl Default for TracingSpec {
    fn default() -> Self {
        Self {
            zipkin_endpoint: None,
            otlp_endpoint: None,
            sampling_percentage: 1.0,
            trace_url: None,
            search_url: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// control plane

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self.mode != 'External' || has(self.external)", "message": "controlPlane.external (webhookUrl and xdsAddress) is required when mode is External", "fieldPath": ".external", "reason": "FieldValueRequired"}]))]
pub struct ControlPlaneSpec {
    /// `InCluster`: the operator runs the control plane as a Deployment. `External`: it runs
    /// elsewhere (development, tests, a managed cluster) and is reached at `external`.
    pub mode: ControlPlaneMode,
    /// Required when mode is External.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalControlPlane>,
    /// Control-plane replicas (InCluster mode). More than one gets a PodDisruptionBudget.
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        Self {
            mode: ControlPlaneMode::InCluster,
            external: None,
            replicas: 1,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ControlPlaneMode {
    #[default]
    InCluster,
    External,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalControlPlane {
    /// HTTPS URL the apiserver calls for sidecar injection, e.g. `https://10.0.0.5:9443/inject`.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isURL(self) && url(self).getScheme() == 'https'", "message": "must be an https URL"}]))]
    #[schemars(length(min = 1, max = 2048))]
    pub webhook_url: String,
    /// `host:port` where proxies reach the control plane's configuration stream.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\S+:[0-9]{1,5}$"))]
    pub xds_address: String,
}

// ---------------------------------------------------------------------------------------------
// federation

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct FederationSpec {
    /// Remote clusters, each reached with a kubeconfig stored in a Secret. Names are unique.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 64))]
    pub clusters: Vec<RemoteCluster>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteCluster {
    /// Name of the remote cluster (a DNS label), unique in this list.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Secret holding a kubeconfig for the remote cluster.
    pub kubeconfig_secret_ref: SecretKeyRef,
    /// Network the cluster's pods are on. Clusters on the same network reach each other's pods
    /// directly; others go through a gateway. Unset: the local cluster's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub network: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Must be `skein-system`: the operator reads kubeconfig Secrets from no other namespace.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_owned()
}

// ---------------------------------------------------------------------------------------------
// status

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Skein version installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `Ready`, `Installed`, `Progressing`, `Degraded` and `FieldsNotActing` (spec fields set
    /// to a value nothing acts on yet), each with a reason and a message.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Readiness of each mesh component.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub components: Vec<ComponentStatus>,
    /// State of each federated cluster.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub federation: Vec<RemoteClusterStatus>,
    /// The CA certificates every proxy trusts, from the Secret `skein-system/skein-ca` (see
    /// docs/ca-rotation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustStatus>,
}

/// What the mesh's trust bundle holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustStatus {
    /// The CA that signs workload certificates (the Secret's `tls.crt`).
    pub signing: String,
    #[serde(default)]
    pub roots: Vec<TrustedRootStatus>,
}

/// One CA certificate of the trust bundle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedRootStatus {
    pub subject: String,
    /// SHA-256 of the certificate (DER), hex.
    pub sha256: String,
    pub not_after: Time,
    /// `Secret` (in `ca.crt`, or `tls.crt` without one), `Signing` (signs, though missing from
    /// `ca.crt`) or `Retained`: removed from the Secret while certificates it signed are
    /// valid, so kept trusted until `retainedUntil` instead of breaking their connections.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub name: String,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why the component is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the operator knows about one federated cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterStatus {
    pub name: String,
    pub phase: FederationPhase,
    /// What went wrong, or a summary when connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the remote apiserver last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_probe_time: Option<Time>,
    /// The remote apiserver's version (`v1.37.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Services the remote cluster exports to this mesh (labelled `skein.dev/exported=true`).
    #[serde(default)]
    pub exported_services: Vec<ExportedService>,
}

/// The state of the connection to a federated cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FederationPhase {
    /// Not probed yet.
    #[default]
    Pending,
    /// The remote apiserver answers and the credentials work.
    Connected,
    /// The remote apiserver cannot be reached (network, TLS, timeout).
    Unreachable,
    /// The remote apiserver refused the credentials (401/403).
    AuthFailed,
    /// The Secret's kubeconfig cannot be parsed or used.
    InvalidKubeconfig,
    /// The referenced Secret, or its key, does not exist.
    SecretMissing,
}

/// A Service a remote cluster exports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub ports: Vec<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_deserializes_to_documented_defaults() {
        let spec: MeshConfigSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, MeshConfigSpec::default());
        assert_eq!(spec.injection.failure_policy, FailurePolicy::Fail);
        assert_eq!(spec.injection.timeout_seconds, 5);
        assert!(
            spec.injection
                .excluded_namespaces
                .contains(&"skein-system".to_owned())
        );
        assert_eq!(
            spec.traffic.outbound_traffic_policy,
            OutboundTrafficPolicy::RegistryOnly
        );
        assert_eq!(spec.mtls.mode, MtlsMode::Permissive);
        assert_eq!(spec.control_plane.mode, ControlPlaneMode::InCluster);
        assert_eq!(spec.effective_version(), names::SKEIN_VERSION);
    }

    #[test]
    fn partial_objects_keep_defaults_for_the_rest() {
        let spec: MeshConfigSpec =
            serde_json::from_str(r#"{"proxy": {"ports": {"inbound": 9000}}, "version": "1.2.3"}"#)
                .unwrap();
        assert_eq!(spec.proxy.ports.inbound, 9000);
        assert_eq!(spec.proxy.ports.outbound, names::DEFAULT_OUTBOUND_PORT);
        assert_eq!(spec.proxy.uid, names::DEFAULT_PROXY_UID);
        assert_eq!(spec.effective_version(), "1.2.3");
    }

    #[test]
    fn retry_conditions_use_their_wire_names() {
        let json = serde_json::to_value(RetryPolicy {
            attempts: 1,
            per_try_timeout: Some(Duration::from_millis(250)),
            retry_on: vec![
                RetryOn::ServerError,
                RetryOn::GatewayError,
                RetryOn::DeadlineExceeded,
            ],
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"attempts": 1, "perTryTimeout": "250ms", "retryOn": ["5xx", "gateway-error", "deadline-exceeded"]})
        );
    }

    /// The sample a user applies spells out the defaults; it must never drift from them.
    #[test]
    fn the_sample_meshconfig_spells_out_the_defaults() {
        let sample: MeshConfig =
            crate::yaml::from_str(include_str!("../../config/samples/meshconfig.yaml")).unwrap();
        assert_eq!(
            sample.metadata.name.as_deref(),
            Some(names::ACTIVE_MESHCONFIG)
        );
        assert_eq!(sample.spec, MeshConfigSpec::default());
    }
}
