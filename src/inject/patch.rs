//! Pod + settings → injected pod, and the JSON patch between the two. Pure: the webhook and
//! `skein inject` both call [`inject`], so a pod looks the same whichever way it was injected.
//!
//! # What is added
//!
//! - `skein-init`: programs the pod's traffic capture
//!   (`skein init ...`, see [`crate::capture::CaptureSettings`]). It needs root with `NET_ADMIN`
//!   and `NET_RAW` and nothing else.
//! - `skein-proxy`, either as a **native sidecar** (an init container with
//!   `restartPolicy: Always`, right after `skein-init`, so the user's init containers already run
//!   inside the mesh) or, on clusters without native sidecars, as the **first regular container**.
//!   Native is used when the MeshConfig says `Enabled`, or `Auto` on a cluster that supports it.
//! - A `preStop` hook `sleep: {seconds: <proxy.drainWindow>}` on each application container
//!   that has no `preStop` hook of its own (Kubernetes ≥ 1.30), at most half of the pod's
//!   termination grace period, so the app keeps serving after the pod is deleted until every
//!   caller has learned the endpoint is leaving; only then does it get SIGTERM. An app's own
//!   hook is kept: it says how that app wants to stop. See `docs/termination.md`.
//! - `skein-identity`: a projected service-account token (audience `skein.dev`, one hour) the
//!   proxy presents to the control plane.
//! - Annotations: `skein.dev/proxy-version`, `skein.dev/injection-status` (JSON of what was added),
//!   and, unless the user set them, `kubectl.kubernetes.io/default-container` (so `kubectl logs`
//!   and `exec` keep picking the app) and the `prometheus.io/*` scrape annotations for the proxy's
//!   admin port. Those three are added all together or not at all, so a user's own scrape settings
//!   are never mixed with ours. No labels are added: labels feed selectors, annotations do not.
//!
//! # Holding the application until the proxy is ready
//!
//! With `holdApplicationUntilProxyStarts`:
//! - native sidecar: the proxy's startup probe does it (the kubelet starts the next container
//!   only once a sidecar's startup probe succeeds). Without the setting the startup probe is left
//!   out, so nothing waits.
//! - regular container: the proxy runs first and its `postStart` hook runs
//!   `skein proxy wait-ready`, which the kubelet waits for before starting the next container.
//!   (That subcommand arrives with the proxy issue; the image's entrypoint is
//!   `/usr/local/bin/skein`.)
//!
//! # Caveats of the regular-container mode
//!
//! - Jobs: the pod completes only when every container exits, and the proxy does not exit on its
//!   own. The application must call `POST /shutdown` on the proxy's admin port when it is done,
//!   on `127.0.0.1` (the admin port answers it only from inside the pod). Native sidecars do not have this problem.
//! - `skein-init` runs after the user's init containers (there is no proxy yet to capture
//!   their traffic for), so they run outside the mesh. Native sidecars put them inside it.
//!
//! # Idempotence
//!
//! A pod that is already injected (see [`is_injected`]) is returned unchanged, so re-admitting
//! or re-running `skein inject` on it yields an empty patch. Re-injecting with new settings is
//! not supported yet; the status annotation records everything needed to undo an injection.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, PodSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, SleepAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::InjectConfig;
use super::overrides::{self, OverrideErrors, Overrides};
use crate::api::meshconfig::{NativeSidecar, OutboundTrafficPolicy, ResourceAmounts};
use crate::api::names;
use crate::capture::{CaptureSettings, PortList};

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 30;

/// JSON record of what the injector added ([`InjectionStatus`]); its presence marks a pod as
/// injected.
pub const STATUS_ANNOTATION: &str = "skein.dev/injection-status";
/// The Skein version the pod was injected with.
pub const VERSION_ANNOTATION: &str = "skein.dev/proxy-version";
/// What the pod's proxy can do that callers must know before relying on it (comma-separated);
/// the control plane reads it ([`PROXY_FEATURE_HTTP2_UPGRADE`]). Absent: a proxy from before
/// features were declared, or an image the injector cannot vouch for.
pub const FEATURES_ANNOTATION: &str = "skein.dev/proxy-features";
/// The proxy takes HTTP/1 requests carried over HTTP/2 from other proxies (`x-skein-orig-proto`).
pub const PROXY_FEATURE_HTTP2_UPGRADE: &str = "http2-upgrade";
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
pub const PROMETHEUS_SCRAPE_ANNOTATION: &str = "prometheus.io/scrape";
pub const PROMETHEUS_PORT_ANNOTATION: &str = "prometheus.io/port";
pub const PROMETHEUS_PATH_ANNOTATION: &str = "prometheus.io/path";

/// Name of the proxy's admin port (health, readiness, metrics). At most 15 characters.
pub const ADMIN_PORT_NAME: &str = "skein-admin";
/// The projected token volume and where the proxy finds it.
pub const IDENTITY_VOLUME: &str = "skein-identity";
pub const IDENTITY_TOKEN_DIR: &str = "/var/run/secrets/skein.dev/tokens";
pub const IDENTITY_TOKEN_FILE: &str = "token";
pub const IDENTITY_AUDIENCE: &str = "skein.dev";
pub const IDENTITY_TOKEN_SECONDS: i64 = 3600;
/// An emptyDir that outlives the proxy container: it saves the pushed trust bundle there, so a
/// restarted sidecar trusts a CA rotated since the pod was created.
pub const PROXY_STATE_VOLUME: &str = "skein-proxy-state";
pub const PROXY_STATE_DIR: &str = "/var/run/skein-proxy";
/// `postStart` hook of a regular-container proxy when the application must wait for it.
pub const WAIT_READY_COMMAND: [&str; 4] = [
    "/usr/local/bin/skein",
    "proxy",
    "wait-ready",
    "--timeout=120s",
];

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the pod has no containers")]
    NoContainers,
    /// Already names the annotation and the value, so it is shown as is.
    #[error(transparent)]
    InvalidAnnotation(#[from] OverrideErrors),
    #[error("MeshConfig {field} is {value}, which is out of range")]
    InvalidMeshConfig { field: &'static str, value: i64 },
    #[error(
        "container {container:?} declares port {port}, which the Skein proxy uses as its {role} port"
    )]
    PortConflict {
        container: String,
        port: i32,
        role: &'static str,
    },
    #[error("the pod already has a {kind} named {name:?}, a name the Skein injector uses")]
    NameConflict { kind: &'static str, name: String },
    // The detail is in the message (not a `source`) because the webhook shows only the
    // message to the user.
    #[error("cannot serialize the pod: {0}")]
    Serialization(serde_json::Error),
}

impl From<serde_json::Error> for InjectError {
    fn from(error: serde_json::Error) -> Self {
        Self::Serialization(error)
    }
}

/// Value of [`STATUS_ANNOTATION`]: the names of everything the injector added.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    /// Annotation keys added besides the status itself.
    pub annotations: Vec<String>,
    /// Application containers given the drain window's `preStop` sleep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_stop_hooks: Vec<String>,
}

/// Whether the pod already has the proxy: the status annotation, or a `skein-proxy` container
/// (regular or init), which also catches pods injected by hand or by an older injector.
pub fn is_injected(pod: &Pod) -> bool {
    let has_status = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
    let has_proxy = pod
        .spec
        .as_ref()
        .is_some_and(|spec| all_containers(spec).any(|c| c.name == names::PROXY_CONTAINER));
    has_status || has_proxy
}

/// The injected copy of `pod`; an already-injected pod is returned unchanged. Whether the pod
/// *should* be injected is [`super::decide`]'s business, not this function's.
pub fn inject(pod: &Pod, cfg: &InjectConfig) -> Result<Pod, InjectError> {
    if is_injected(pod) {
        return Ok(pod.clone());
    }
    let spec = pod
        .spec
        .as_ref()
        .filter(|s| !s.containers.is_empty())
        .ok_or(InjectError::NoContainers)?;
    let overrides = overrides::parse(pod.metadata.annotations.as_ref())?;
    let proxy = ProxySettings::resolve(cfg, &overrides)?;
    check_conflicts(spec, &proxy)?;

    let app_container = spec.containers[0].name.clone();
    let mut injected = pod.clone();
    let mut status = InjectionStatus::default();
    let spec = injected.spec.get_or_insert_with(PodSpec::default);

    let init_containers = spec.init_containers.get_or_insert_with(Vec::new);
    status
        .init_containers
        .push(names::INIT_CONTAINER.to_owned());
    if proxy.native {
        // Capture, then the proxy, then the user's init containers: those run inside the mesh.
        init_containers.splice(0..0, [init_container(&proxy), proxy_container(&proxy, cfg)]);
        status
            .init_containers
            .push(names::PROXY_CONTAINER.to_owned());
    } else {
        // No proxy runs during the init phase here, so capture is programmed last: the user's
        // init containers keep their network (outside the mesh) instead of being redirected to
        // a port nobody listens on yet.
        init_containers.push(init_container(&proxy));
        spec.containers.insert(0, proxy_container(&proxy, cfg));
        status.containers.push(names::PROXY_CONTAINER.to_owned());
    }
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend([identity_volume(), state_volume()]);
    status
        .volumes
        .extend([IDENTITY_VOLUME.to_owned(), PROXY_STATE_VOLUME.to_owned()]);
    if cfg.sleep_hooks_supported {
        status.pre_stop_hooks = hold_apps_for_drain(spec, proxy.drain_window);
    }

    let version = cfg.mesh.effective_version();
    // Features are this build's: declared only when the pod runs this build's proxy, not an
    // image a MeshConfig `version` or the pod's annotation chose.
    let own_build = version == names::SKEIN_VERSION && proxy.image == cfg.proxy_image();
    annotate(
        &mut injected,
        &proxy,
        version,
        &app_container,
        status,
        own_build,
    )?;
    Ok(injected)
}

/// Gives each application container without a `preStop` hook one that sleeps for the drain
/// window (whole seconds, rounded up, at most half the termination grace period, so the app
/// keeps half of it for its own shutdown); returns their names.
fn hold_apps_for_drain(spec: &mut PodSpec, window: std::time::Duration) -> Vec<String> {
    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS);
    let window_secs = i64::try_from(window.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
    let seconds = window_secs.min(grace / 2);
    if seconds <= 0 {
        return Vec::new();
    }
    let mut held = Vec::new();
    for container in spec
        .containers
        .iter_mut()
        .filter(|c| c.name != names::PROXY_CONTAINER)
    {
        let lifecycle = container.lifecycle.get_or_insert_with(Lifecycle::default);
        if lifecycle.pre_stop.is_none() {
            lifecycle.pre_stop = Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds }),
                ..LifecycleHandler::default()
            });
            held.push(container.name.clone());
        }
    }
    held
}

/// The JSON patch that turns `original` into `injected` (the webhook's response). Computed by
/// diffing the two as JSON, so keys such as `app.kubernetes.io/name` are escaped by the library.
pub fn json_patch(original: &Pod, injected: &Pod) -> Result<json_patch::Patch, InjectError> {
    let before = serde_json::to_value(original)?;
    let after = serde_json::to_value(injected)?;
    Ok(json_patch::diff(&before, &after))
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

/// The MeshConfig's proxy settings with the pod's overrides applied, range-checked once.
struct ProxySettings {
    image: String,
    log_level: String,
    uid: i64,
    inbound_port: i32,
    outbound_port: i32,
    admin_port: i32,
    native: bool,
    hold: bool,
    drain_window: std::time::Duration,
    resources: ResourceRequirements,
    capture: CaptureSettings,
}

impl ProxySettings {
    fn resolve(cfg: &InjectConfig, overrides: &Overrides) -> Result<Self, InjectError> {
        let proxy = &cfg.mesh.proxy;
        let uid = u32::try_from(proxy.uid).ok().filter(|uid| *uid > 0).ok_or(
            InjectError::InvalidMeshConfig {
                field: "proxy.uid",
                value: proxy.uid,
            },
        )?;
        let port = |field: &'static str, value: i32| {
            u16::try_from(value)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(InjectError::InvalidMeshConfig {
                    field,
                    value: value.into(),
                })
        };
        let inbound = port("proxy.ports.inbound", proxy.ports.inbound)?;
        let outbound = port("proxy.ports.outbound", proxy.ports.outbound)?;
        let admin = port("proxy.ports.admin", proxy.ports.admin)?;
        let native = match proxy.native_sidecar {
            NativeSidecar::Enabled => true,
            NativeSidecar::Disabled => false,
            NativeSidecar::Auto => cfg.native_sidecars_supported,
        };
        let resources = overrides.resources(&proxy.resources)?;
        let image = overrides.image(&cfg.proxy_image(), &proxy.allowed_images)?;
        Ok(Self {
            image,
            log_level: overrides
                .log_level
                .clone()
                .unwrap_or_else(|| proxy.log_level.clone()),
            uid: proxy.uid,
            inbound_port: proxy.ports.inbound,
            outbound_port: proxy.ports.outbound,
            admin_port: proxy.ports.admin,
            native,
            hold: proxy.hold_application_until_proxy_starts,
            drain_window: proxy.drain_window.as_std(),
            resources: requirements(&resources.requests, &resources.limits),
            capture: CaptureSettings {
                proxy_uid: uid,
                inbound_port: inbound,
                outbound_port: outbound,
                exclude_inbound_ports: overrides.exclude_inbound_ports.clone(),
                exclude_outbound_ports: overrides.exclude_outbound_ports.clone(),
                include_outbound_cidrs: overrides.include_outbound_ip_ranges.to_cidrs(),
                exclude_outbound_cidrs: overrides.exclude_outbound_ip_ranges.clone(),
                proxy_ports: PortList(vec![admin]),
            },
        })
    }
}

/// Refuses pods that would break once injected: two containers cannot both listen on a port of
/// the shared network namespace, and names must stay unique.
fn check_conflicts(spec: &PodSpec, proxy: &ProxySettings) -> Result<(), InjectError> {
    let proxy_ports = [
        (proxy.inbound_port, "inbound"),
        (proxy.outbound_port, "outbound"),
        (proxy.admin_port, "admin"),
    ];
    // Ordinary init containers have exited before the proxy starts; only long-running ones count.
    let running = spec.containers.iter().chain(
        spec.init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always")),
    );
    for container in running {
        for declared in container.ports.iter().flatten() {
            if let Some((port, role)) = proxy_ports
                .iter()
                .find(|(port, _)| *port == declared.container_port)
            {
                return Err(InjectError::PortConflict {
                    container: container.name.clone(),
                    port: *port,
                    role,
                });
            }
        }
    }
    if let Some(c) = all_containers(spec).find(|c| c.name == names::INIT_CONTAINER) {
        return Err(InjectError::NameConflict {
            kind: "container",
            name: c.name.clone(),
        });
    }
    if let Some(v) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == IDENTITY_VOLUME || v.name == PROXY_STATE_VOLUME)
    {
        return Err(InjectError::NameConflict {
            kind: "volume",
            name: v.name.clone(),
        });
    }
    Ok(())
}

fn init_container(proxy: &ProxySettings) -> Container {
    let args = std::iter::once("init".to_owned())
        .chain(proxy.capture.to_args())
        .collect();
    Container {
        name: names::INIT_CONTAINER.to_owned(),
        image: Some(proxy.image.clone()),
        args: Some(args),
        // iptables-restore runs once and exits; it needs little.
        resources: Some(requirements(
            &ResourceAmounts {
                cpu: Some("10m".to_owned()),
                memory: Some("16Mi".to_owned()),
            },
            &ResourceAmounts {
                cpu: Some("100m".to_owned()),
                memory: Some("64Mi".to_owned()),
            },
        )),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The container runtime's default seccomp filter, whatever the pod's own setting: both
/// injected containers are the mesh's, and neither needs the syscalls it blocks.
fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

fn proxy_container(proxy: &ProxySettings, cfg: &InjectConfig) -> Container {
    let admin = proxy.admin_port;
    let startup_probe = if proxy.native && !proxy.hold {
        None
    } else {
        // Two minutes, like the wait-ready hook: a cold start pulls certificates and config.
        Some(http_probe("/ready", admin, 1, 120))
    };
    let lifecycle = (!proxy.native && proxy.hold).then(|| Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(WAIT_READY_COMMAND.map(str::to_owned).to_vec()),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });
    Container {
        name: names::PROXY_CONTAINER.to_owned(),
        image: Some(proxy.image.clone()),
        args: Some(vec!["proxy".to_owned()]),
        restart_policy: proxy.native.then(|| "Always".to_owned()),
        env: Some(proxy_env(proxy, cfg)),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_owned()),
            container_port: admin,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        startup_probe,
        readiness_probe: Some(http_probe("/ready", admin, 5, 3)),
        liveness_probe: Some(http_probe("/live", admin, 10, 3)),
        lifecycle,
        resources: Some(proxy.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(proxy.uid),
            run_as_group: Some(proxy.uid),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: IDENTITY_VOLUME.to_owned(),
                mount_path: IDENTITY_TOKEN_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: PROXY_STATE_VOLUME.to_owned(),
                mount_path: PROXY_STATE_DIR.to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

fn proxy_env(proxy: &ProxySettings, cfg: &InjectConfig) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        field("NODE_NAME", "spec.nodeName"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value("SKEIN_XDS_ADDRESS", cfg.xds_address.clone()),
        value(crate::telemetry::LOG_ENV, proxy.log_level.clone()),
        value("SKEIN_INBOUND_PORT", proxy.inbound_port.to_string()),
        value("SKEIN_OUTBOUND_PORT", proxy.outbound_port.to_string()),
        value("SKEIN_ADMIN_PORT", proxy.admin_port.to_string()),
        value(
            "SKEIN_DRAIN_WINDOW",
            crate::api::Duration::from(proxy.drain_window).to_string(),
        ),
        value(
            "SKEIN_IDENTITY_TOKEN",
            format!("{IDENTITY_TOKEN_DIR}/{IDENTITY_TOKEN_FILE}"),
        ),
        value("SKEIN_STATE_DIR", PROXY_STATE_DIR.to_owned()),
        // Before the control plane's first configuration the proxy knows nothing else: the mesh's
        // policy then decides whether unknown destinations are refused.
        value(
            "SKEIN_OUTBOUND_TRAFFIC_POLICY",
            match cfg.mesh.traffic.outbound_traffic_policy {
                OutboundTrafficPolicy::RegistryOnly => "RegistryOnly",
                OutboundTrafficPolicy::AllowAny => "AllowAny",
            }
            .to_owned(),
        ),
    ];
    let limits = &cfg.mesh.proxy.listener_limits;
    env.extend([
        value(
            "SKEIN_HEADER_READ_TIMEOUT",
            limits.header_read_timeout.to_string(),
        ),
        value("SKEIN_IDLE_TIMEOUT", limits.idle_timeout.to_string()),
        value("SKEIN_MAX_CONNECTIONS", limits.max_connections.to_string()),
        value(
            "SKEIN_MAX_REQUEST_HEADER_BYTES",
            limits.max_request_header_bytes.to_string(),
        ),
        value(
            "SKEIN_HTTP2_MAX_CONCURRENT_STREAMS",
            limits.http2_max_concurrent_streams.to_string(),
        ),
    ]);
    if let Some(pem) = &cfg.xds_trust_bundle_pem {
        env.push(value("SKEIN_XDS_TRUST_BUNDLE_PEM", pem.clone()));
    }
    env.extend(tracing_env(&cfg.mesh.tracing));
    env
}

/// MeshConfig `tracing` as the proxy's variables. An endpoint the proxy would refuse (the
/// apiserver's schema already refuses it) is left out with a warning rather than given to a
/// proxy that would then not start.
fn tracing_env(spec: &crate::api::meshconfig::TracingSpec) -> Vec<EnvVar> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = Vec::new();
    for (name, field, endpoint) in [
        (
            "SKEIN_ZIPKIN_ENDPOINT",
            "zipkinEndpoint",
            &spec.zipkin_endpoint,
        ),
        ("SKEIN_OTLP_ENDPOINT", "otlpEndpoint", &spec.otlp_endpoint),
    ] {
        let Some(endpoint) = endpoint else { continue };
        match crate::proxy::trace::parse_endpoint(endpoint) {
            Ok(_) => env.push(value(name, endpoint.trim().to_owned())),
            Err(err) => {
                tracing::warn!(field, error = %err, "MeshConfig tracing endpoint left out of injected proxies");
            }
        }
    }
    let percentage = crate::proxy::trace::check_percentage(spec.sampling_percentage)
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "MeshConfig tracing.samplingPercentage out of range; proxies sample 0%");
            0.0
        });
    env.push(value(
        "SKEIN_TRACE_SAMPLING_PERCENTAGE",
        percentage.to_string(),
    ));
    env
}

fn http_probe(path: &str, port: i32, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn identity_volume() -> Volume {
    Volume {
        name: IDENTITY_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(IDENTITY_AUDIENCE.to_owned()),
                    expiration_seconds: Some(IDENTITY_TOKEN_SECONDS),
                    path: IDENTITY_TOKEN_FILE.to_owned(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn state_volume() -> Volume {
    Volume {
        name: PROXY_STATE_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Mi".to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Only the amounts that are set; an empty map would be noise in the pod.
fn requirements(requests: &ResourceAmounts, limits: &ResourceAmounts) -> ResourceRequirements {
    let map = |amounts: &ResourceAmounts| {
        let map: BTreeMap<String, Quantity> = [("cpu", &amounts.cpu), ("memory", &amounts.memory)]
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), Quantity(value.clone()?))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..ResourceRequirements::default()
    }
}

fn annotate(
    pod: &mut Pod,
    proxy: &ProxySettings,
    version: &str,
    app_container: &str,
    mut status: InjectionStatus,
    own_build: bool,
) -> Result<(), InjectError> {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut added = vec![(VERSION_ANNOTATION, version.to_owned())];
    if own_build {
        added.push((FEATURES_ANNOTATION, PROXY_FEATURE_HTTP2_UPGRADE.to_owned()));
    }
    if !annotations.contains_key(DEFAULT_CONTAINER_ANNOTATION) {
        added.push((DEFAULT_CONTAINER_ANNOTATION, app_container.to_owned()));
    }
    let prometheus = [
        PROMETHEUS_SCRAPE_ANNOTATION,
        PROMETHEUS_PORT_ANNOTATION,
        PROMETHEUS_PATH_ANNOTATION,
    ];
    if !prometheus.iter().any(|key| annotations.contains_key(*key)) {
        added.extend([
            (PROMETHEUS_SCRAPE_ANNOTATION, "true".to_owned()),
            (PROMETHEUS_PORT_ANNOTATION, proxy.admin_port.to_string()),
            (PROMETHEUS_PATH_ANNOTATION, "/metrics".to_owned()),
        ]);
    }
    for (key, value) in added {
        annotations.insert(key.to_owned(), value);
        status.annotations.push(key.to_owned());
    }
    annotations.insert(
        STATUS_ANNOTATION.to_owned(),
        serde_json::to_string(&status)?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshConfigSpec;
    use serde_json::json;

    const TEST_BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn config(native_supported: bool) -> InjectConfig {
        InjectConfig {
            mesh: MeshConfigSpec::default(),
            xds_address: "skein-control-plane.skein-system.svc:9090".to_owned(),
            xds_trust_bundle_pem: Some(TEST_BUNDLE.to_owned()),
            native_sidecars_supported: native_supported,
            sleep_hooks_supported: true,
        }
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    /// A pod with a user init container and the labels and annotations real pods carry.
    fn web() -> Pod {
        pod(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "labels": {"app.kubernetes.io/name": "web"},
                "annotations": {"app.kubernetes.io/part-of": "shop"}
            },
            "spec": {
                "initContainers": [{"name": "migrate", "image": "web:1"}],
                "containers": [
                    {"name": "app", "image": "web:1", "ports": [{"containerPort": 8080}]},
                    {"name": "log-shipper", "image": "shipper:1"}
                ]
            }
        }))
    }

    fn minimal() -> Pod {
        pod(json!({"spec": {"containers": [{"name": "app", "image": "app:1"}]}}))
    }

    fn with_annotations(mut pod: Pod, pairs: &[(&str, &str)]) -> Pod {
        let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in pairs {
            annotations.insert((*k).to_owned(), (*v).to_owned());
        }
        pod
    }

    fn names(containers: &Option<Vec<Container>>) -> Vec<&str> {
        containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect()
    }

    fn spec(pod: &Pod) -> &PodSpec {
        pod.spec.as_ref().unwrap()
    }

    fn find<'a>(pod: &'a Pod, name: &str) -> &'a Container {
        all_containers(spec(pod)).find(|c| c.name == name).unwrap()
    }

    fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
        pod.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    fn env(container: &Container) -> BTreeMap<&str, serde_json::Value> {
        container
            .env
            .iter()
            .flatten()
            .map(|e| {
                let value = match (&e.value, &e.value_from) {
                    (Some(v), _) => json!(v),
                    (None, Some(from)) => {
                        json!({"fieldRef": from.field_ref.as_ref().unwrap().field_path})
                    }
                    (None, None) => json!(null),
                };
                (e.name.as_str(), value)
            })
            .collect()
    }

    #[test]
    fn native_sidecar_order_puts_the_users_init_containers_inside_the_mesh() {
        let injected = inject(&web(), &config(true)).unwrap();
        let spec = spec(&injected);
        assert_eq!(
            names(&spec.init_containers),
            ["skein-init", "skein-proxy", "migrate"]
        );
        assert_eq!(
            spec.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["app", "log-shipper"]
        );
        let proxy = find(&injected, "skein-proxy");
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        assert!(proxy.lifecycle.is_none(), "the startup probe holds the app");
        assert!(proxy.startup_probe.is_some());
    }

    #[test]
    fn classic_order_puts_the_proxy_first_among_containers() {
        let injected = inject(&web(), &config(false)).unwrap();
        let spec = spec(&injected);
        assert_eq!(names(&spec.init_containers), ["migrate", "skein-init"]);
        assert_eq!(
            spec.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["skein-proxy", "app", "log-shipper"]
        );
        let proxy = find(&injected, "skein-proxy");
        assert_eq!(proxy.restart_policy, None);
        let hook = proxy
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .as_ref()
            .unwrap();
        assert_eq!(
            hook.exec.as_ref().unwrap().command.as_deref().unwrap(),
            WAIT_READY_COMMAND
        );
    }

    #[test]
    fn without_user_init_containers() {
        let native = inject(&minimal(), &config(true)).unwrap();
        assert_eq!(
            names(&spec(&native).init_containers),
            ["skein-init", "skein-proxy"]
        );
        let classic = inject(&minimal(), &config(false)).unwrap();
        assert_eq!(names(&spec(&classic).init_containers), ["skein-init"]);
        assert_eq!(spec(&classic).containers[0].name, "skein-proxy");
    }

    #[test]
    fn the_meshconfig_can_force_either_mode() {
        let mut cfg = config(false);
        cfg.mesh.proxy.native_sidecar = NativeSidecar::Enabled;
        let injected = inject(&minimal(), &cfg).unwrap();
        assert_eq!(
            find(&injected, "skein-proxy").restart_policy.as_deref(),
            Some("Always")
        );

        let mut cfg = config(true);
        cfg.mesh.proxy.native_sidecar = NativeSidecar::Disabled;
        let injected = inject(&minimal(), &cfg).unwrap();
        assert_eq!(spec(&injected).containers[0].name, "skein-proxy");
    }

    #[test]
    fn without_hold_nothing_waits_for_the_proxy() {
        let mut cfg = config(false);
        cfg.mesh.proxy.hold_application_until_proxy_starts = false;
        let classic = inject(&minimal(), &cfg).unwrap();
        assert!(find(&classic, "skein-proxy").lifecycle.is_none());
        cfg.native_sidecars_supported = true;
        let native = inject(&minimal(), &cfg).unwrap();
        assert!(find(&native, "skein-proxy").startup_probe.is_none());
    }

    #[test]
    fn init_container_captures_with_minimal_privileges() {
        let injected = inject(&minimal(), &config(true)).unwrap();
        let init = serde_json::to_value(find(&injected, "skein-init")).unwrap();
        assert_eq!(
            init,
            json!({
                "name": "skein-init",
                "image": format!("{}:{}", names::DEFAULT_IMAGE, names::SKEIN_VERSION),
                "args": ["init", "--proxy-uid=2170", "--inbound-port=16006",
                         "--outbound-port=16001", "--proxy-ports=16000"],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"cpu": "100m", "memory": "64Mi"}
                },
                "securityContext": {
                    "runAsUser": 0,
                    "runAsNonRoot": false,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}
                }
            })
        );
    }

    #[test]
    fn every_variable_the_proxy_is_given_is_one_it_reads_and_listener_limits_reach_it() {
        use clap::Args;
        let command = crate::proxy::ProxyArgs::augment_args(clap::Command::new("proxy"));
        let read: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        // Read by the logging set-up, or there for people reading the pod's environment.
        let read_elsewhere = [crate::telemetry::LOG_ENV, "NODE_NAME", "SERVICE_ACCOUNT"];
        let mut cfg = config(true);
        cfg.mesh.proxy.listener_limits.header_read_timeout = crate::api::Duration::from_secs(5);
        cfg.mesh.proxy.listener_limits.idle_timeout = crate::api::Duration::from_secs(0);
        cfg.mesh.proxy.listener_limits.max_connections = 300;
        cfg.mesh.tracing.zipkin_endpoint = Some("http://zipkin.tracing:9411/api/v2/spans".into());
        cfg.mesh.tracing.otlp_endpoint = Some("http://jaeger.tracing:4318/v1/traces".into());
        cfg.mesh.tracing.sampling_percentage = 12.5;
        let injected = inject(&minimal(), &cfg).unwrap();
        let env = env(find(&injected, "skein-proxy"));
        for name in env.keys() {
            assert!(
                read.iter().any(|r| r == name) || read_elsewhere.contains(name),
                "the injector sets {name}, which the proxy does not read"
            );
        }
        assert_eq!(env["SKEIN_HEADER_READ_TIMEOUT"], json!("5s"));
        assert_eq!(env["SKEIN_IDLE_TIMEOUT"], json!("0s"));
        assert_eq!(env["SKEIN_MAX_CONNECTIONS"], json!("300"));
        assert_eq!(
            env["SKEIN_ZIPKIN_ENDPOINT"],
            json!("http://zipkin.tracing:9411/api/v2/spans")
        );
        assert_eq!(
            env["SKEIN_OTLP_ENDPOINT"],
            json!("http://jaeger.tracing:4318/v1/traces")
        );
        assert_eq!(env["SKEIN_TRACE_SAMPLING_PERCENTAGE"], json!("12.5"));
        // What the injector writes, the proxy's flags parse.
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Proxy {
            #[command(flatten)]
            args: crate::proxy::ProxyArgs,
        }
        let flags = [
            "--zipkin-endpoint",
            "--otlp-endpoint",
            "--trace-sampling-percentage",
        ];
        let values = [
            "SKEIN_ZIPKIN_ENDPOINT",
            "SKEIN_OTLP_ENDPOINT",
            "SKEIN_TRACE_SAMPLING_PERCENTAGE",
        ]
        .map(|name| env[name].as_str().unwrap().to_owned());
        let mut argv = vec!["proxy".to_owned()];
        for (flag, value) in flags.iter().zip(&values) {
            argv.extend([(*flag).to_owned(), value.clone()]);
        }
        let parsed = Proxy::try_parse_from(argv).expect("the proxy reads what the injector writes");
        assert_eq!(parsed.args.trace_sampling_percentage, 12.5);
        assert!(parsed.args.otlp_endpoint.is_some() && parsed.args.zipkin_endpoint.is_some());
    }

    #[test]
    fn a_bad_tracing_endpoint_is_left_out() {
        let mut cfg = config(true);
        cfg.mesh.tracing.zipkin_endpoint = Some("https://zipkin:9411/api/v2/spans".into());
        cfg.mesh.tracing.sampling_percentage = 0.0;
        let injected = inject(&minimal(), &cfg).unwrap();
        let env = env(find(&injected, "skein-proxy"));
        assert!(!env.contains_key("SKEIN_ZIPKIN_ENDPOINT"));
        assert_eq!(env["SKEIN_TRACE_SAMPLING_PERCENTAGE"], json!("0"));
    }

    #[test]
    fn proxy_container_runs_unprivileged_with_env_probes_and_token() {
        let injected = inject(&minimal(), &config(true)).unwrap();
        let proxy = find(&injected, "skein-proxy");
        assert_eq!(proxy.args.as_deref().unwrap(), ["proxy"]);
        assert_eq!(
            serde_json::to_value(&proxy.security_context).unwrap(),
            json!({
                "runAsUser": 2170, "runAsGroup": 2170, "runAsNonRoot": true,
                "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            })
        );
        let want_env: BTreeMap<&str, serde_json::Value> = [
            ("POD_NAME", json!({"fieldRef": "metadata.name"})),
            ("POD_NAMESPACE", json!({"fieldRef": "metadata.namespace"})),
            ("POD_IP", json!({"fieldRef": "status.podIP"})),
            ("NODE_NAME", json!({"fieldRef": "spec.nodeName"})),
            (
                "SERVICE_ACCOUNT",
                json!({"fieldRef": "spec.serviceAccountName"}),
            ),
            (
                "SKEIN_XDS_ADDRESS",
                json!("skein-control-plane.skein-system.svc:9090"),
            ),
            ("SKEIN_LOG", json!("info")),
            ("SKEIN_INBOUND_PORT", json!("16006")),
            ("SKEIN_OUTBOUND_PORT", json!("16001")),
            ("SKEIN_ADMIN_PORT", json!("16000")),
            ("SKEIN_DRAIN_WINDOW", json!("5s")),
            (
                "SKEIN_IDENTITY_TOKEN",
                json!("/var/run/secrets/skein.dev/tokens/token"),
            ),
            ("SKEIN_STATE_DIR", json!("/var/run/skein-proxy")),
            ("SKEIN_OUTBOUND_TRAFFIC_POLICY", json!("RegistryOnly")),
            ("SKEIN_HEADER_READ_TIMEOUT", json!("30s")),
            ("SKEIN_IDLE_TIMEOUT", json!("1h")),
            ("SKEIN_MAX_CONNECTIONS", json!("10000")),
            ("SKEIN_MAX_REQUEST_HEADER_BYTES", json!("65536")),
            ("SKEIN_HTTP2_MAX_CONCURRENT_STREAMS", json!("250")),
            ("SKEIN_XDS_TRUST_BUNDLE_PEM", json!(TEST_BUNDLE)),
            ("SKEIN_TRACE_SAMPLING_PERCENTAGE", json!("1")),
        ]
        .into_iter()
        .collect();
        assert_eq!(env(proxy), want_env);
        // The mesh's policy reaches the proxy before its first configuration does.
        let mut allow_any = config(true);
        allow_any.mesh.traffic.outbound_traffic_policy = OutboundTrafficPolicy::AllowAny;
        let injected_allow_any = inject(&minimal(), &allow_any).unwrap();
        assert_eq!(
            env(find(&injected_allow_any, "skein-proxy"))["SKEIN_OUTBOUND_TRAFFIC_POLICY"],
            json!("AllowAny")
        );
        let mut plaintext = config(true);
        plaintext.xds_trust_bundle_pem = None;
        let injected_plain = inject(&minimal(), &plaintext).unwrap();
        assert!(
            !env(find(&injected_plain, "skein-proxy")).contains_key("SKEIN_XDS_TRUST_BUNDLE_PEM"),
            "a plaintext stream needs no bundle"
        );

        assert_eq!(
            serde_json::to_value(&proxy.ports).unwrap(),
            json!([{"name": "skein-admin", "containerPort": 16000, "protocol": "TCP"}])
        );
        assert!(ADMIN_PORT_NAME.len() <= 15);
        let probe = |p: &Option<Probe>| {
            let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
            (get.path.clone().unwrap(), get.port.clone())
        };
        assert_eq!(
            probe(&proxy.startup_probe),
            ("/ready".into(), IntOrString::Int(16000))
        );
        assert_eq!(
            probe(&proxy.readiness_probe),
            ("/ready".into(), IntOrString::Int(16000))
        );
        assert_eq!(
            probe(&proxy.liveness_probe),
            ("/live".into(), IntOrString::Int(16000))
        );

        assert_eq!(
            serde_json::to_value(&proxy.resources).unwrap(),
            json!({"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"memory": "128Mi"}})
        );
        assert_eq!(
            serde_json::to_value(&proxy.volume_mounts).unwrap(),
            json!([
                {"name": "skein-identity", "mountPath": "/var/run/secrets/skein.dev/tokens", "readOnly": true},
                {"name": "skein-proxy-state", "mountPath": "/var/run/skein-proxy"},
            ])
        );
        assert_eq!(
            serde_json::to_value(&spec(&injected).volumes).unwrap(),
            json!([
                {"name": "skein-identity", "projected": {"sources": [{"serviceAccountToken": {
                    "audience": "skein.dev", "expirationSeconds": 3600, "path": "token"}}]}},
                {"name": "skein-proxy-state", "emptyDir": {"sizeLimit": "1Mi"}},
            ])
        );
    }

    #[test]
    fn overrides_are_applied() {
        let pod = with_annotations(
            minimal(),
            &[
                (overrides::PROXY_CPU, "200m"),
                (overrides::PROXY_MEMORY_LIMIT, "1Gi"),
                (overrides::PROXY_LOG_LEVEL, "debug"),
                (overrides::PROXY_IMAGE, "registry.local/skein:dev"),
                (overrides::EXCLUDE_INBOUND_PORTS, "22"),
                (overrides::EXCLUDE_OUTBOUND_PORTS, "5432,6379"),
                (overrides::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"),
                (overrides::EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12"),
            ],
        );
        let mut cfg = config(true);
        cfg.mesh.proxy.allowed_images = vec!["registry.local/skein:*".to_owned()];
        let injected = inject(&pod, &cfg).unwrap();
        let proxy = find(&injected, "skein-proxy");
        let init = find(&injected, "skein-init");
        assert_eq!(proxy.image.as_deref(), Some("registry.local/skein:dev"));
        assert_eq!(init.image.as_deref(), Some("registry.local/skein:dev"));
        // An image the pod chose may be any build: no features are declared for it.
        assert_eq!(annotation(&injected, FEATURES_ANNOTATION), None);
        assert_eq!(env(proxy)["SKEIN_LOG"], json!("debug"));
        assert_eq!(
            serde_json::to_value(&proxy.resources).unwrap(),
            json!({"requests": {"cpu": "200m", "memory": "20Mi"}, "limits": {"memory": "1Gi"}})
        );
        assert_eq!(
            init.args.as_deref().unwrap(),
            [
                "init",
                "--proxy-uid=2170",
                "--inbound-port=16006",
                "--outbound-port=16001",
                "--proxy-ports=16000",
                "--exclude-inbound-ports=22",
                "--exclude-outbound-ports=5432,6379",
                "--include-outbound-cidrs=10.0.0.0/8",
                "--exclude-outbound-cidrs=10.96.0.0/12",
            ]
        );
    }

    #[test]
    fn a_proxy_image_the_meshconfig_does_not_allow_is_refused() {
        let pod = with_annotations(minimal(), &[(overrides::PROXY_IMAGE, "evil.example/x:1")]);
        let err = inject(&pod, &config(true)).unwrap_err();
        assert!(matches!(err, InjectError::InvalidAnnotation(_)), "{err:?}");
        assert!(
            err.to_string().starts_with(
                "annotation skein.dev/proxy-image: \"evil.example/x:1\" is not an allowed proxy image"
            ),
            "{err}"
        );
        // Another mesh version's image is another image too.
        let mut cfg = config(true);
        cfg.mesh.version = Some("9.9.9".to_owned());
        let own = format!("{}:{}", names::DEFAULT_IMAGE, names::SKEIN_VERSION);
        let pod = with_annotations(minimal(), &[(overrides::PROXY_IMAGE, &own)]);
        assert!(inject(&pod, &cfg).is_err());
        cfg.mesh.proxy.allowed_images = vec![own.clone()];
        let injected = inject(&pod, &cfg).unwrap();
        assert_eq!(find(&injected, "skein-init").image.as_deref(), Some(&*own));
    }

    #[test]
    fn meshconfig_settings_flow_into_the_pod() {
        let mut cfg = config(true);
        cfg.mesh.proxy.uid = 1500;
        cfg.mesh.proxy.ports.admin = 7000;
        cfg.mesh.proxy.log_level = "warn".to_owned();
        cfg.mesh.version = Some("9.9.9".to_owned());
        let injected = inject(&minimal(), &cfg).unwrap();
        let proxy = find(&injected, "skein-proxy");
        assert_eq!(
            proxy.image.as_deref(),
            Some("ghcr.io/skein-mesh/skein:9.9.9")
        );
        assert_eq!(
            proxy.security_context.as_ref().unwrap().run_as_user,
            Some(1500)
        );
        assert_eq!(env(proxy)["SKEIN_LOG"], json!("warn"));
        assert_eq!(proxy.ports.as_ref().unwrap()[0].container_port, 7000);
        let init_args = find(&injected, "skein-init").args.clone().unwrap();
        assert!(init_args.contains(&"--proxy-uid=1500".to_owned()));
        assert!(init_args.contains(&"--proxy-ports=7000".to_owned()));
        assert_eq!(annotation(&injected, VERSION_ANNOTATION), Some("9.9.9"));
        // Another version's proxy: its features are not this build's to declare.
        assert_eq!(annotation(&injected, FEATURES_ANNOTATION), None);
        assert_eq!(
            annotation(&injected, PROMETHEUS_PORT_ANNOTATION),
            Some("7000")
        );
    }

    #[test]
    fn annotations_record_the_injection() {
        let injected = inject(&web(), &config(true)).unwrap();
        assert_eq!(
            annotation(&injected, FEATURES_ANNOTATION),
            Some(PROXY_FEATURE_HTTP2_UPGRADE)
        );
        assert_eq!(
            annotation(&injected, VERSION_ANNOTATION),
            Some(names::SKEIN_VERSION)
        );
        assert_eq!(
            annotation(&injected, DEFAULT_CONTAINER_ANNOTATION),
            Some("app")
        );
        assert_eq!(
            annotation(&injected, PROMETHEUS_SCRAPE_ANNOTATION),
            Some("true")
        );
        assert_eq!(
            annotation(&injected, PROMETHEUS_PORT_ANNOTATION),
            Some("16000")
        );
        assert_eq!(
            annotation(&injected, PROMETHEUS_PATH_ANNOTATION),
            Some("/metrics")
        );
        assert_eq!(
            annotation(&injected, "app.kubernetes.io/part-of"),
            Some("shop")
        );
        let status: InjectionStatus =
            serde_json::from_str(annotation(&injected, STATUS_ANNOTATION).unwrap()).unwrap();
        assert_eq!(
            status,
            InjectionStatus {
                init_containers: vec!["skein-init".into(), "skein-proxy".into()],
                containers: vec![],
                volumes: vec!["skein-identity".into(), "skein-proxy-state".into()],
                annotations: vec![
                    VERSION_ANNOTATION.into(),
                    FEATURES_ANNOTATION.into(),
                    DEFAULT_CONTAINER_ANNOTATION.into(),
                    PROMETHEUS_SCRAPE_ANNOTATION.into(),
                    PROMETHEUS_PORT_ANNOTATION.into(),
                    PROMETHEUS_PATH_ANNOTATION.into(),
                ],
                pre_stop_hooks: vec!["app".into(), "log-shipper".into()],
            }
        );
        // No label is added.
        assert_eq!(injected.metadata.labels, web().metadata.labels);
    }

    #[test]
    fn apps_are_held_for_the_drain_window_unless_they_stop_their_own_way() {
        let pre_stop = |pod: &Pod, name: &str| {
            find(pod, name)
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.clone())
        };
        let sleep = |seconds| LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..LifecycleHandler::default()
        };
        let own_hook = LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["/bin/drain".into()]),
            }),
            ..LifecycleHandler::default()
        };
        let two_apps = || {
            pod(json!({"spec": {"containers": [
                {"name": "app", "image": "app:1"},
                {"name": "own", "image": "own:1",
                 "lifecycle": {"preStop": {"exec": {"command": ["/bin/drain"]}}}},
            ]}}))
        };
        for native in [true, false] {
            let injected = inject(&two_apps(), &config(native)).unwrap();
            assert_eq!(
                pre_stop(&injected, "app"),
                Some(sleep(5)),
                "native {native}"
            );
            assert_eq!(pre_stop(&injected, "own"), Some(own_hook.clone()));
            assert_eq!(pre_stop(&injected, names::PROXY_CONTAINER), None);
            let proxy = find(&injected, names::PROXY_CONTAINER);
            assert_eq!(env(proxy)["SKEIN_DRAIN_WINDOW"], json!("5s"));
        }

        // At most half the grace period, whole seconds rounded up; `0s` adds nothing.
        let mut short = two_apps();
        short
            .spec
            .as_mut()
            .unwrap()
            .termination_grace_period_seconds = Some(4);
        let injected = inject(&short, &config(true)).unwrap();
        assert_eq!(pre_stop(&injected, "app"), Some(sleep(2)));
        let mut cfg = config(true);
        cfg.mesh.proxy.drain_window = crate::api::Duration::from_millis(1500);
        let injected = inject(&two_apps(), &cfg).unwrap();
        assert_eq!(pre_stop(&injected, "app"), Some(sleep(2)));
        cfg.mesh.proxy.drain_window = crate::api::Duration::from_secs(0);
        let injected = inject(&two_apps(), &cfg).unwrap();
        assert_eq!(pre_stop(&injected, "app"), None);
        // A cluster without sleep hooks would refuse the pod: none is added.
        let mut old = config(true);
        old.sleep_hooks_supported = false;
        assert_eq!(pre_stop(&inject(&two_apps(), &old).unwrap(), "app"), None);
    }

    #[test]
    fn the_users_own_annotations_are_kept() {
        let pod = with_annotations(
            web(),
            &[
                (DEFAULT_CONTAINER_ANNOTATION, "log-shipper"),
                (PROMETHEUS_PORT_ANNOTATION, "9090"),
            ],
        );
        let injected = inject(&pod, &config(false)).unwrap();
        assert_eq!(
            annotation(&injected, DEFAULT_CONTAINER_ANNOTATION),
            Some("log-shipper")
        );
        assert_eq!(
            annotation(&injected, PROMETHEUS_PORT_ANNOTATION),
            Some("9090")
        );
        assert_eq!(annotation(&injected, PROMETHEUS_SCRAPE_ANNOTATION), None);
        assert_eq!(annotation(&injected, PROMETHEUS_PATH_ANNOTATION), None);
        let status: InjectionStatus =
            serde_json::from_str(annotation(&injected, STATUS_ANNOTATION).unwrap()).unwrap();
        assert_eq!(
            status.annotations,
            [VERSION_ANNOTATION, FEATURES_ANNOTATION]
        );
        assert_eq!(status.containers, ["skein-proxy"]);
    }

    #[test]
    fn injection_is_idempotent() {
        for native in [true, false] {
            let cfg = config(native);
            let once = inject(&web(), &cfg).unwrap();
            let twice = inject(&once, &cfg).unwrap();
            assert_eq!(twice, once);
            assert!(json_patch(&once, &twice).unwrap().0.is_empty());
            assert!(is_injected(&once));
            assert!(!is_injected(&web()));
        }
    }

    #[test]
    fn the_patch_turns_the_original_into_the_injected_pod() {
        for (native, original) in [
            (true, web()),
            (false, web()),
            (true, minimal()),
            (false, minimal()),
        ] {
            let injected = inject(&original, &config(native)).unwrap();
            let patch = json_patch(&original, &injected).unwrap();
            let mut doc = serde_json::to_value(&original).unwrap();
            json_patch::patch(&mut doc, &patch.0).unwrap();
            assert_eq!(doc, serde_json::to_value(&injected).unwrap());
        }
    }

    #[test]
    fn patch_paths_escape_slashes_in_annotation_keys() {
        let original = web();
        let injected = inject(&original, &config(true)).unwrap();
        let patch = serde_json::to_value(json_patch(&original, &injected).unwrap()).unwrap();
        let paths: Vec<&str> = patch
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.contains(&"/metadata/annotations/kubectl.kubernetes.io~1default-container"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"/metadata/annotations/skein.dev~1injection-status"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"/metadata/annotations/prometheus.io~1scrape"),
            "{paths:?}"
        );
        assert!(
            !paths.iter().any(|p| p.contains("app.kubernetes.io")),
            "untouched keys stay out"
        );
    }

    #[test]
    fn a_pod_without_containers_is_an_error() {
        assert!(matches!(
            inject(&Pod::default(), &config(true)),
            Err(InjectError::NoContainers)
        ));
        let empty = pod(json!({"spec": {"containers": []}}));
        let err = inject(&empty, &config(true)).unwrap_err();
        assert_eq!(err.to_string(), "the pod has no containers");
    }

    #[test]
    fn an_invalid_annotation_is_an_error_naming_it() {
        let pod = with_annotations(minimal(), &[(overrides::EXCLUDE_OUTBOUND_PORTS, "http")]);
        let err = inject(&pod, &config(true)).unwrap_err();
        assert!(matches!(err, InjectError::InvalidAnnotation(_)));
        assert_eq!(
            err.to_string(),
            r#"annotation traffic.skein.dev/exclude-outbound-ports: "http" is not a port (1-65535)"#
        );
    }

    #[test]
    fn conflicts_are_refused() {
        let port_clash = pod(json!({"spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 16001}]}]}}));
        assert_eq!(
            inject(&port_clash, &config(true)).unwrap_err().to_string(),
            r#"container "app" declares port 16001, which the Skein proxy uses as its outbound port"#
        );
        // An ordinary init container's port is gone by the time the proxy starts.
        let finished = pod(json!({"spec": {
            "initContainers": [{"name": "setup", "ports": [{"containerPort": 16000}]}],
            "containers": [{"name": "app"}]}}));
        assert!(inject(&finished, &config(true)).is_ok());

        let name_clash = pod(json!({"spec": {"containers": [{"name": "skein-init"}]}}));
        assert!(matches!(
            inject(&name_clash, &config(true)),
            Err(InjectError::NameConflict {
                kind: "container",
                ..
            })
        ));
        let volume_clash = pod(json!({"spec": {"containers": [{"name": "app"}],
            "volumes": [{"name": "skein-identity", "emptyDir": {}}]}}));
        assert!(matches!(
            inject(&volume_clash, &config(true)),
            Err(InjectError::NameConflict { kind: "volume", .. })
        ));
    }

    #[test]
    fn an_out_of_range_meshconfig_is_an_error_not_a_panic() {
        let mut cfg = config(true);
        cfg.mesh.proxy.ports.inbound = 70000;
        assert_eq!(
            inject(&minimal(), &cfg).unwrap_err().to_string(),
            "MeshConfig proxy.ports.inbound is 70000, which is out of range"
        );
        let mut cfg = config(true);
        cfg.mesh.proxy.uid = 0;
        assert!(matches!(
            inject(&minimal(), &cfg),
            Err(InjectError::InvalidMeshConfig {
                field: "proxy.uid",
                ..
            })
        ));
    }
}
