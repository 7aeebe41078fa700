//! A container's environment, computed the way the kubelet computes it.
//!
//! Order of definition (a later definition of a name replaces the value of an earlier one but
//! keeps its position): the image defaults (`PATH`, `HOSTNAME`), the service link variables,
//! `envFrom`, then `env`. `$(VAR)` references in `env` values see everything defined before
//! them except the image defaults, which the kubelet never sees (the runtime adds those).
//!
//! The downward API helpers here (pod fields, container resources) are shared with the
//! `downwardAPI` volumes in [`super::volumes`].

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod,
    ResourceFieldSelector, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The image's `PATH`: the Debian default the project image inherits.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The longest hostname the kubelet gives a pod (a DNS label).
const MAX_HOSTNAME_LEN: usize = 63;

/// Everything outside the container spec that its environment depends on.
pub struct EnvSources<'a> {
    pub pod: &'a Pod,
    /// The pod's IPs; the first is `status.podIP`.
    pub pod_ips: &'a [String],
    pub host_ip: &'a str,
    pub node_name: &'a str,
    /// The Services of the pod's namespace.
    pub services: &'a [Service],
    /// The `kubernetes` Service of `default`, injected even when service links are off.
    pub master_services: &'a [Service],
    /// The pod namespace's ConfigMaps, by name.
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
    /// The pod namespace's Secrets, by name.
    pub secrets: &'a BTreeMap<String, Secret>,
    pub node_allocatable_cpu_millis: i64,
    pub node_allocatable_memory_bytes: i64,
}

/// Why a container's environment could not be built. The caller reports it as the container
/// waiting with reason `CreateContainerConfigError`, like the kubelet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("configmap {name:?} not found")]
    ConfigMapNotFound { name: String },
    #[error("secret {name:?} not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env {var:?}: {source}")]
    Field { var: String, source: FieldError },
    #[error(
        "env {var:?}: fileKeyRef is not supported by skein dev node (there is no container \
         filesystem to read the file from)"
    )]
    FileKeyRefUnsupported { var: String },
}

/// A downward API reference (`fieldRef`, `resourceFieldRef`) that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("unsupported pod version: {0}")]
    UnsupportedVersion(String),
    #[error("field label does not support subscript: {0}")]
    SubscriptNotSupported(String),
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    #[error("unsupported container resource: {0}")]
    UnsupportedResource(String),
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("invalid quantity {quantity:?} for {what}")]
    InvalidQuantity { what: String, quantity: String },
}

/// The node's allocatable resources: what a missing limit means to the downward API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allocatable {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// The environment of `container`, in definition order, each name once.
pub fn container_env(
    container: &Container,
    src: &EnvSources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env = EnvBuilder::default();
    env.set_image_default("PATH", DEFAULT_PATH.to_owned());
    env.set_image_default("HOSTNAME", pod_hostname(src.pod));
    for (name, value) in service_link_env(src) {
        env.set(name, value);
    }
    for from in container.env_from.iter().flatten() {
        apply_env_from(&mut env, from, src)?;
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_var_value(var, container, src, &env)? {
            env.set(var.name.clone(), value);
        }
    }
    Ok(env.into_vec())
}

/// Kubernetes `$(VAR)` expansion: a defined `VAR` is replaced by its value (the last entry of
/// that name), an undefined one is left as written, and `$$` is an escaped `$` (so `$$(VAR)`
/// is the literal `$(VAR)`).
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    expand_with(text, |name| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    })
}

/// The pod's hostname as the kubelet sets it: `spec.hostnameOverride`, else `spec.hostname`
/// or the pod name, cut to 63 characters without a trailing `-` or `.`.
pub fn pod_hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    if let Some(hostname) = spec
        .and_then(|spec| spec.hostname_override.as_deref())
        .filter(|hostname| !hostname.is_empty())
    {
        return hostname.to_owned();
    }
    let hostname = spec
        .and_then(|spec| spec.hostname.as_deref())
        .filter(|hostname| !hostname.is_empty())
        .or(pod.metadata.name.as_deref())
        .unwrap_or_default();
    if hostname.len() <= MAX_HOSTNAME_LEN {
        return hostname.to_owned();
    }
    let cut: String = hostname.chars().take(MAX_HOSTNAME_LEN).collect();
    cut.trim_end_matches(['-', '.']).to_owned()
}

/// Names in definition order; a redefinition replaces the value in place.
#[derive(Default)]
struct EnvBuilder {
    entries: Vec<EnvEntry>,
    index: HashMap<String, usize>,
}

struct EnvEntry {
    name: String,
    value: String,
    /// Set by the image rather than the kubelet, so invisible to `$(VAR)` in `env`.
    image_default: bool,
}

impl EnvBuilder {
    fn set_image_default(&mut self, name: &str, value: String) {
        self.insert(name.to_owned(), value, true);
    }

    fn set(&mut self, name: String, value: String) {
        self.insert(name, value, false);
    }

    fn insert(&mut self, name: String, value: String, image_default: bool) {
        if let Some(&at) = self.index.get(&name) {
            let entry = &mut self.entries[at];
            entry.value = value;
            entry.image_default = image_default;
            return;
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push(EnvEntry {
            name,
            value,
            image_default,
        });
    }

    /// The value `$(name)` expands to, as the kubelet sees it.
    fn lookup(&self, name: &str) -> Option<&str> {
        let entry = &self.entries[*self.index.get(name)?];
        (!entry.image_default).then_some(entry.value.as_str())
    }

    fn into_vec(self) -> Vec<(String, String)> {
        self.entries
            .into_iter()
            .map(|entry| (entry.name, entry.value))
            .collect()
    }
}

/// `$(VAR)` expansion against `lookup`, byte for byte the kubelet's algorithm.
fn expand_with<'a>(text: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.as_bytes().first() {
            // `$$`: an escaped `$`.
            Some(b'$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some(b'(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // An unterminated reference is copied as is.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            // A lone `$`, including a trailing one.
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

// ---- service links ----

/// The Docker-link style variables of every Service the pod sees, by Service name. A Service
/// of the pod's namespace shadows a master Service of the same name, as in the kubelet.
fn service_link_env(src: &EnvSources) -> Vec<(String, String)> {
    let links_enabled = src
        .pod
        .spec
        .as_ref()
        .and_then(|spec| spec.enable_service_links)
        != Some(false);
    let mut by_name: BTreeMap<&str, &Service> = BTreeMap::new();
    for service in src.master_services {
        if let Some(name) = linkable_name(service) {
            by_name.entry(name).or_insert(service);
        }
    }
    if links_enabled {
        for service in src.services {
            if let Some(name) = linkable_name(service) {
                by_name.insert(name, service);
            }
        }
    }
    by_name
        .into_iter()
        .flat_map(|(name, service)| service_vars(name, service))
        .collect()
}

/// The name of a Service that gets link variables: one with a cluster IP (not headless).
fn linkable_name(service: &Service) -> Option<&str> {
    let ip = cluster_ip(service)?;
    (ip != "None").then_some(())?;
    service.metadata.name.as_deref()
}

fn cluster_ip(service: &Service) -> Option<&str> {
    service
        .spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

fn service_vars(name: &str, service: &Service) -> Vec<(String, String)> {
    let prefix = env_name_part(name);
    let ip = cluster_ip(service).unwrap_or_default();
    let mut vars = vec![(format!("{prefix}_SERVICE_HOST"), ip.to_owned())];
    let ports = service
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_deref())
        .unwrap_or_default();
    let Some(first) = ports.first() else {
        return vars;
    };
    vars.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
    for port in ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            vars.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name_part(port_name)),
                port.port.to_string(),
            ));
        }
    }
    for (i, port) in ports.iter().enumerate() {
        let protocol = port
            .protocol
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("TCP");
        let lower = protocol.to_ascii_lowercase();
        let url = format!("{lower}://{}", join_host_port(ip, port.port));
        if i == 0 {
            // Docker special-cases the first port.
            vars.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!(
            "{prefix}_PORT_{}_{}",
            port.port,
            protocol.to_ascii_uppercase()
        );
        vars.push((port_prefix.clone(), url));
        vars.push((format!("{port_prefix}_PROTO"), lower));
        vars.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        vars.push((format!("{port_prefix}_ADDR"), ip.to_owned()));
    }
    vars
}

/// A Service or port name as part of a variable name: `my-svc` → `MY_SVC`.
fn env_name_part(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// `host:port`, with an IPv6 address in brackets.
fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

// ---- envFrom ----

fn apply_env_from(
    env: &mut EnvBuilder,
    from: &EnvFromSource,
    src: &EnvSources,
) -> Result<(), EnvError> {
    let prefix = from.prefix.as_deref().unwrap_or_default();
    if let Some(reference) = &from.config_map_ref {
        let Some(config_map) = find_config_map(src, &reference.name, reference.optional)? else {
            return Ok(());
        };
        for (key, value) in config_map.data.iter().flatten() {
            set_from_key(
                env,
                prefix,
                key,
                value.clone(),
                "configmap",
                &reference.name,
            );
        }
    } else if let Some(reference) = &from.secret_ref {
        let Some(secret) = find_secret(src, &reference.name, reference.optional)? else {
            return Ok(());
        };
        for (key, value) in secret.data.iter().flatten() {
            let value = String::from_utf8_lossy(&value.0).into_owned();
            set_from_key(env, prefix, key, value, "secret", &reference.name);
        }
    }
    Ok(())
}

/// Sets `prefix + key` unless that cannot be an environment variable name. Current kubelets
/// no longer filter keys (the API accepts any printable ASCII but `=` in names, and ConfigMap
/// and Secret keys always qualify); the check only keeps a malformed object from producing an
/// entry `execve` would misread.
fn set_from_key(
    env: &mut EnvBuilder,
    prefix: &str,
    key: &str,
    value: String,
    kind: &str,
    object: &str,
) {
    let name = format!("{prefix}{key}");
    if is_env_var_name(&name) {
        env.set(name, value);
    } else {
        tracing::warn!(
            "skipping key {key:?} of {kind} {object:?} in envFrom: {name:?} is not a valid \
             environment variable name"
        );
    }
}

/// The API's (relaxed) rule for environment variable names.
fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

fn find_config_map<'s>(
    src: &EnvSources<'s>,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<&'s ConfigMap>, EnvError> {
    match src.config_maps.get(name) {
        Some(config_map) => Ok(Some(config_map)),
        None if optional == Some(true) => Ok(None),
        None => Err(EnvError::ConfigMapNotFound {
            name: name.to_owned(),
        }),
    }
}

fn find_secret<'s>(
    src: &EnvSources<'s>,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<&'s Secret>, EnvError> {
    match src.secrets.get(name) {
        Some(secret) => Ok(Some(secret)),
        None if optional == Some(true) => Ok(None),
        None => Err(EnvError::SecretNotFound {
            name: name.to_owned(),
        }),
    }
}

// ---- env ----

/// The value of one `env` entry; `None` when an optional reference is missing, which leaves
/// the variable undefined.
fn env_var_value(
    var: &EnvVar,
    container: &Container,
    src: &EnvSources,
    env: &EnvBuilder,
) -> Result<Option<String>, EnvError> {
    let literal = var.value.as_deref().unwrap_or_default();
    // As in the kubelet, an empty value falls through to valueFrom.
    if !literal.is_empty() {
        return Ok(Some(expand_with(literal, |name| env.lookup(name))));
    }
    match &var.value_from {
        Some(source) => value_from(&var.name, source, container, src),
        None => Ok(Some(String::new())),
    }
}

fn value_from(
    var: &str,
    source: &EnvVarSource,
    container: &Container,
    src: &EnvSources,
) -> Result<Option<String>, EnvError> {
    let field_error = |source| EnvError::Field {
        var: var.to_owned(),
        source,
    };
    if let Some(selector) = &source.field_ref {
        return pod_field(selector, src).map(Some).map_err(field_error);
    }
    if let Some(selector) = &source.resource_field_ref {
        let allocatable = Allocatable {
            cpu_millis: src.node_allocatable_cpu_millis,
            memory_bytes: src.node_allocatable_memory_bytes,
        };
        return resource_field_value(src.pod, Some(container), selector, allocatable)
            .map(Some)
            .map_err(field_error);
    }
    if let Some(selector) = &source.config_map_key_ref {
        let Some(config_map) = find_config_map(src, &selector.name, selector.optional)? else {
            return Ok(None);
        };
        return match config_map.data.as_ref().and_then(|d| d.get(&selector.key)) {
            Some(value) => Ok(Some(value.clone())),
            None if selector.optional == Some(true) => Ok(None),
            None => Err(EnvError::ConfigMapKeyNotFound {
                namespace: pod_namespace(src.pod).to_owned(),
                name: selector.name.clone(),
                key: selector.key.clone(),
            }),
        };
    }
    if let Some(selector) = &source.secret_key_ref {
        let Some(secret) = find_secret(src, &selector.name, selector.optional)? else {
            return Ok(None);
        };
        return match secret.data.as_ref().and_then(|d| d.get(&selector.key)) {
            Some(value) => Ok(Some(String::from_utf8_lossy(&value.0).into_owned())),
            None if selector.optional == Some(true) => Ok(None),
            None => Err(EnvError::SecretKeyNotFound {
                namespace: pod_namespace(src.pod).to_owned(),
                name: selector.name.clone(),
                key: selector.key.clone(),
            }),
        };
    }
    if source.file_key_ref.is_some() {
        return Err(EnvError::FileKeyRefUnsupported {
            var: var.to_owned(),
        });
    }
    Ok(Some(String::new()))
}

fn pod_namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

// ---- downward API: pod fields ----

/// A `fieldRef` for an environment variable: the metadata fields plus the node and IPs.
fn pod_field(selector: &ObjectFieldSelector, src: &EnvSources) -> Result<String, FieldError> {
    let version = selector.api_version.as_deref().unwrap_or("v1");
    if !version.is_empty() && version != "v1" {
        return Err(FieldError::UnsupportedVersion(version.to_owned()));
    }
    let path = selector.field_path.as_str();
    let spec = src.pod.spec.as_ref();
    Ok(match path {
        // `spec.host` is the v1 name's old alias.
        "spec.nodeName" | "spec.host" => spec
            .and_then(|spec| spec.node_name.as_deref())
            .filter(|name| !name.is_empty())
            .unwrap_or(src.node_name)
            .to_owned(),
        "spec.serviceAccountName" => spec
            .and_then(|spec| spec.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => src.host_ip.to_owned(),
        "status.podIP" => src.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => src.pod_ips.join(","),
        _ => return metadata_field(src.pod, path),
    })
}

/// A metadata `fieldRef` (all a `downwardAPI` volume may use), like the kubelet's
/// `ExtractFieldPathAsString`.
pub(crate) fn metadata_field(pod: &Pod, path: &str) -> Result<String, FieldError> {
    let meta = &pod.metadata;
    if let Some((base, key)) = split_subscript(path) {
        let map = match base {
            "metadata.annotations" => &meta.annotations,
            "metadata.labels" => &meta.labels,
            _ => return Err(FieldError::SubscriptNotSupported(path.to_owned())),
        };
        return Ok(map
            .as_ref()
            .and_then(|map| map.get(key))
            .cloned()
            .unwrap_or_default());
    }
    Ok(match path {
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        _ => return Err(FieldError::UnsupportedFieldPath(path.to_owned())),
    })
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`).
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let (base, key) = path.strip_suffix("']")?.split_once("['")?;
    (!base.is_empty()).then_some((base, key))
}

/// Labels or annotations as the kubelet writes them: sorted `key="value"` lines, the value
/// quoted like Go's `%q`.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---- downward API: container resources ----

/// A `resourceFieldRef`, like the kubelet: the amount divided by `divisor`, rounded up; a
/// missing (or zero) cpu or memory limit is the node's allocatable amount. `default` is the
/// container an environment variable belongs to (its `containerName` may be empty).
pub(crate) fn resource_field_value(
    pod: &Pod,
    default: Option<&Container>,
    selector: &ResourceFieldSelector,
    allocatable: Allocatable,
) -> Result<String, FieldError> {
    let container = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => find_container(pod, name)?,
        None => default.ok_or_else(|| FieldError::ContainerNotFound(String::new()))?,
    };
    let resource = selector.resource.as_str();
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| FieldError::UnsupportedResource(resource.to_owned()))?;
    let limits = match kind {
        "limits" => true,
        "requests" => false,
        _ => return Err(FieldError::UnsupportedResource(resource.to_owned())),
    };
    // cpu counts in millicores, everything else in units.
    let scale = match name {
        "cpu" => -3,
        "memory" | "ephemeral-storage" => 0,
        _ if name.starts_with("hugepages-") => 0,
        _ => return Err(FieldError::UnsupportedResource(resource.to_owned())),
    };
    let mut amount = container_amount(container, limits, name, scale)?;
    if limits && amount == 0 {
        amount = match name {
            "cpu" => i128::from(allocatable.cpu_millis),
            "memory" => i128::from(allocatable.memory_bytes),
            _ => 0,
        };
    }
    let divisor = divisor_amount(selector.divisor.as_ref(), scale)?;
    Ok(clamp_i64(ceil_div(amount, divisor)).to_string())
}

fn find_container<'p>(pod: &'p Pod, name: &str) -> Result<&'p Container, FieldError> {
    let spec = pod.spec.as_ref();
    let containers = spec
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default();
    let init = spec
        .and_then(|spec| spec.init_containers.as_deref())
        .unwrap_or_default();
    containers
        .iter()
        .chain(init)
        .find(|container| container.name == name)
        .ok_or_else(|| FieldError::ContainerNotFound(name.to_owned()))
}

/// The container's request or limit for `name` in units of 10^scale; 0 when unset.
fn container_amount(
    container: &Container,
    limits: bool,
    name: &str,
    scale: i32,
) -> Result<i128, FieldError> {
    let resources = container.resources.as_ref();
    let list = if limits {
        resources.and_then(|r| r.limits.as_ref())
    } else {
        resources.and_then(|r| r.requests.as_ref())
    };
    let Some(quantity) = list.and_then(|list| list.get(name)) else {
        return Ok(0);
    };
    let what = format!(
        "{}.{name} of container {:?}",
        if limits { "limits" } else { "requests" },
        container.name
    );
    Ok(parse_quantity(&quantity.0)
        .ok_or_else(|| FieldError::InvalidQuantity {
            what,
            quantity: quantity.0.clone(),
        })?
        .scaled_ceil(scale))
}

/// The divisor in units of 10^scale; an unset or zero divisor means 1.
fn divisor_amount(divisor: Option<&Quantity>, scale: i32) -> Result<i128, FieldError> {
    let Some(quantity) = divisor else {
        return Ok(Amount::ONE.scaled_ceil(scale));
    };
    let invalid = || FieldError::InvalidQuantity {
        what: "divisor".to_owned(),
        quantity: quantity.0.clone(),
    };
    let amount = parse_quantity(&quantity.0).ok_or_else(invalid)?;
    if amount.mantissa == 0 {
        return Ok(Amount::ONE.scaled_ceil(scale));
    }
    let scaled = amount.scaled_ceil(scale);
    if scaled <= 0 {
        return Err(invalid());
    }
    Ok(scaled)
}

/// A parsed Kubernetes quantity: `mantissa * 10^exp10` (binary suffixes folded into the
/// mantissa), exact for every value the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Amount {
    mantissa: i128,
    exp10: i32,
}

impl Amount {
    const ONE: Amount = Amount {
        mantissa: 1,
        exp10: 0,
    };

    /// The value in units of 10^scale, rounded up (like `Quantity.ScaledValue`).
    fn scaled_ceil(self, scale: i32) -> i128 {
        if self.mantissa == 0 {
            return 0;
        }
        let shift = i64::from(self.exp10) - i64::from(scale);
        let power = u32::try_from(shift.unsigned_abs())
            .ok()
            .and_then(|exp| 10i128.checked_pow(exp));
        if shift >= 0 {
            match power.and_then(|p| self.mantissa.checked_mul(p)) {
                Some(value) => value,
                None if self.mantissa > 0 => i128::MAX,
                None => i128::MIN,
            }
        } else {
            match power {
                Some(p) => ceil_div(self.mantissa, p),
                // Smaller than any unit: rounds up to 1, or to 0 if negative.
                None => i128::from(self.mantissa > 0),
            }
        }
    }
}

/// Parses `<sign><digits>[.<digits>]<suffix>`, suffix one of the binary SI (`Ki`..`Ei`),
/// decimal SI (`n u m k M G T P E`) or an exponent (`e3`, `E-2`).
fn parse_quantity(text: &str) -> Option<Amount> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let mut mantissa: i128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(digit - b'0'))?;
    }
    let mut exp10 = -i32::try_from(fraction.len()).ok()?;
    let binary = |power: u32| mantissa.checked_mul(1i128 << (10 * power));
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => mantissa = binary(1)?,
        "Mi" => mantissa = binary(2)?,
        "Gi" => mantissa = binary(3)?,
        "Ti" => mantissa = binary(4)?,
        "Pi" => mantissa = binary(5)?,
        "Ei" => mantissa = binary(6)?,
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            exp10 = exp10.checked_add(exponent.parse().ok()?)?;
        }
    }
    Some(Amount {
        mantissa: if negative { -mantissa } else { mantissa },
        exp10,
    })
}

/// ⌈a / b⌉ for b > 0.
fn ceil_div(a: i128, b: i128) -> i128 {
    let quotient = a.div_euclid(b);
    if a.rem_euclid(b) == 0 {
        quotient
    } else {
        quotient + 1
    }
}

fn clamp_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value > 0 { i64::MAX } else { i64::MIN })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a valid pod")
    }

    fn container(value: serde_json::Value) -> Container {
        serde_json::from_value(value).expect("a valid container")
    }

    fn service(name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .expect("a valid service")
    }

    fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn secret(name: &str, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn basic_pod() -> Pod {
        pod(json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "uid-1",
                "labels": {"app": "web", "tier": "front"},
                "annotations": {"note": "say \"hi\"\n"},
            },
            "spec": {
                "nodeName": "dev-node",
                "serviceAccountName": "web-sa",
                "containers": [{
                    "name": "app",
                    "resources": {
                        "limits": {"memory": "128Mi"},
                        "requests": {"cpu": "250m", "memory": "64Mi"},
                    },
                }, {
                    "name": "side",
                    "resources": {"limits": {"cpu": "1500m"}},
                }],
            },
        }))
    }

    /// Sources with no Services and no objects, to be adjusted per test.
    struct Fixture {
        pod: Pod,
        ips: Vec<String>,
        services: Vec<Service>,
        master: Vec<Service>,
        config_maps: BTreeMap<String, ConfigMap>,
        secrets: BTreeMap<String, Secret>,
    }

    impl Fixture {
        fn new(pod: Pod) -> Self {
            Fixture {
                pod,
                ips: vec!["10.1.0.5".to_owned(), "fd00::5".to_owned()],
                services: vec![],
                master: vec![],
                config_maps: BTreeMap::new(),
                secrets: BTreeMap::new(),
            }
        }

        fn sources(&self) -> EnvSources<'_> {
            EnvSources {
                pod: &self.pod,
                pod_ips: &self.ips,
                host_ip: "192.168.1.10",
                node_name: "dev-node",
                services: &self.services,
                master_services: &self.master,
                config_maps: &self.config_maps,
                secrets: &self.secrets,
                node_allocatable_cpu_millis: 4000,
                node_allocatable_memory_bytes: 8 << 30,
            }
        }

        fn env(&self, container: &Container) -> Result<Vec<(String, String)>, EnvError> {
            container_env(container, &self.sources())
        }
    }

    fn get<'e>(env: &'e [(String, String)], name: &str) -> Option<&'e str> {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn names(env: &[(String, String)]) -> Vec<&str> {
        env.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn image_defaults_come_first() {
        let fixture = Fixture::new(basic_pod());
        let env = fixture.env(&container(json!({"name": "app"}))).unwrap();
        assert_eq!(
            env,
            vec![
                ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
                ("HOSTNAME".to_owned(), "web-0".to_owned()),
            ]
        );
    }

    #[test]
    fn hostname_prefers_spec_hostname_and_is_cut_to_a_label() {
        let named =
            pod(json!({"metadata": {"name": "p"}, "spec": {"hostname": "h", "containers": []}}));
        assert_eq!(pod_hostname(&named), "h");
        let overridden = pod(json!({"metadata": {"name": "p"}, "spec": {
            "hostname": "h", "hostnameOverride": "o", "containers": []}}));
        assert_eq!(pod_hostname(&overridden), "o");
        let long = format!("{}-.x", "a".repeat(61));
        let long_pod = pod(json!({"metadata": {"name": long}, "spec": {"containers": []}}));
        assert_eq!(pod_hostname(&long_pod), "a".repeat(61));
    }

    #[test]
    fn service_links_for_a_service_with_two_ports() {
        let mut fixture = Fixture::new(basic_pod());
        fixture.services = vec![service(
            "my-svc",
            "10.96.0.20",
            json!([
                {"port": 80},
                {"name": "metrics-port", "port": 9090, "protocol": "UDP"},
            ]),
        )];
        let env = fixture.env(&container(json!({"name": "app"}))).unwrap();
        let expected = [
            ("MY_SVC_SERVICE_HOST", "10.96.0.20"),
            ("MY_SVC_SERVICE_PORT", "80"),
            ("MY_SVC_SERVICE_PORT_METRICS_PORT", "9090"),
            ("MY_SVC_PORT", "tcp://10.96.0.20:80"),
            ("MY_SVC_PORT_80_TCP", "tcp://10.96.0.20:80"),
            ("MY_SVC_PORT_80_TCP_PROTO", "tcp"),
            ("MY_SVC_PORT_80_TCP_PORT", "80"),
            ("MY_SVC_PORT_80_TCP_ADDR", "10.96.0.20"),
            ("MY_SVC_PORT_9090_UDP", "udp://10.96.0.20:9090"),
            ("MY_SVC_PORT_9090_UDP_PROTO", "udp"),
            ("MY_SVC_PORT_9090_UDP_PORT", "9090"),
            ("MY_SVC_PORT_9090_UDP_ADDR", "10.96.0.20"),
        ];
        let links: Vec<(&str, &str)> = env[2..]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(links, expected);
    }

    #[test]
    fn headless_and_ipless_services_get_no_links_and_ipv6_is_bracketed() {
        let mut fixture = Fixture::new(basic_pod());
        fixture.services = vec![
            service("headless", "None", json!([{"port": 80}])),
            service("pending", "", json!([{"port": 80}])),
            service("six", "fd00::20", json!([{"port": 443}])),
        ];
        let env = fixture.env(&container(json!({"name": "app"}))).unwrap();
        assert!(!names(&env).iter().any(|n| n.starts_with("HEADLESS")));
        assert!(!names(&env).iter().any(|n| n.starts_with("PENDING")));
        assert_eq!(get(&env, "SIX_PORT"), Some("tcp://[fd00::20]:443"));
        assert_eq!(get(&env, "SIX_PORT_443_TCP_ADDR"), Some("fd00::20"));
    }

    #[test]
    fn master_services_are_injected_even_without_service_links() {
        let mut fixture = Fixture::new(pod(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"enableServiceLinks": false, "containers": []},
        })));
        fixture.services = vec![service("my-svc", "10.96.0.20", json!([{"port": 80}]))];
        fixture.master = vec![service(
            "kubernetes",
            "10.96.0.1",
            json!([{"name": "https", "port": 443}]),
        )];
        let env = fixture.env(&container(json!({"name": "app"}))).unwrap();
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get(&env, "MY_SVC_SERVICE_HOST"), None);
    }

    #[test]
    fn a_namespace_service_shadows_a_master_service_of_the_same_name() {
        let mut fixture = Fixture::new(basic_pod());
        fixture.services = vec![service("kubernetes", "10.96.7.7", json!([{"port": 80}]))];
        fixture.master = vec![service("kubernetes", "10.96.0.1", json!([{"port": 443}]))];
        let env = fixture.env(&container(json!({"name": "app"}))).unwrap();
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.7.7"));
    }

    #[test]
    fn env_from_with_prefix_then_env_overrides_in_place() {
        let mut fixture = Fixture::new(basic_pod());
        fixture.config_maps.insert(
            "settings".to_owned(),
            config_map("settings", &[("MODE", "fast"), ("LEVEL", "3")]),
        );
        fixture.secrets.insert(
            "creds".to_owned(),
            secret("creds", &[("TOKEN", b"s3cret"), ("BIN", b"\xffok")]),
        );
        let app = container(json!({
            "name": "app",
            "envFrom": [
                {"configMapRef": {"name": "settings"}},
                {"prefix": "DB_", "secretRef": {"name": "creds"}},
            ],
            "env": [{"name": "MODE", "value": "slow"}, {"name": "EXTRA", "value": "x"}],
        }));
        let env = fixture.env(&app).unwrap();
        assert_eq!(
            names(&env),
            [
                "PATH", "HOSTNAME", "LEVEL", "MODE", "DB_BIN", "DB_TOKEN", "EXTRA"
            ]
        );
        assert_eq!(get(&env, "MODE"), Some("slow"));
        assert_eq!(get(&env, "DB_TOKEN"), Some("s3cret"));
        assert_eq!(get(&env, "DB_BIN"), Some("\u{fffd}ok"));
    }

    #[test]
    fn env_from_skips_keys_that_cannot_be_variable_names() {
        let mut fixture = Fixture::new(basic_pod());
        fixture.config_maps.insert(
            "odd".to_owned(),
            config_map("odd", &[("a=b", "1"), ("config.yaml", "2"), ("1st", "3")]),
        );
        let app = container(json!({"name": "app", "envFrom": [{"configMapRef": {"name": "odd"}}]}));
        let env = fixture.env(&app).unwrap();
        // Relaxed names (dots, leading digits) pass, as in current Kubernetes.
        assert_eq!(names(&env), ["PATH", "HOSTNAME", "1st", "config.yaml"]);
    }

    #[test]
    fn optional_missing_references_are_skipped() {
        let mut fixture = Fixture::new(basic_pod());
        fixture
            .config_maps
            .insert("present".to_owned(), config_map("present", &[]));
        let app = container(json!({
            "name": "app",
            "envFrom": [
                {"configMapRef": {"name": "gone", "optional": true}},
                {"secretRef": {"name": "gone", "optional": true}},
            ],
            "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "present", "key": "k", "optional": true}}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}},
            ],
        }));
        let env = fixture.env(&app).unwrap();
        assert_eq!(names(&env), ["PATH", "HOSTNAME"]);
    }

    #[test]
    fn missing_references_are_errors_like_the_kubelets() {
        let mut fixture = Fixture::new(basic_pod());
        fixture
            .config_maps
            .insert("cm".to_owned(), config_map("cm", &[("a", "1")]));
        fixture
            .secrets
            .insert("s".to_owned(), secret("s", &[("a", b"1")]));
        let cases = [
            (
                json!({"envFrom": [{"configMapRef": {"name": "x"}}]}),
                r#"configmap "x" not found"#,
            ),
            (
                json!({"envFrom": [{"secretRef": {"name": "x"}}]}),
                r#"secret "x" not found"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}),
                "couldn't find key k in ConfigMap shop/cm",
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
                "couldn't find key k in Secret shop/s",
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}),
                r#"secret "nope" not found"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]}),
                r#"env "V": unsupported fieldPath: status.phase"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName['x']"}}}]}),
                r#"env "V": field label does not support subscript: spec.nodeName['x']"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}}}]}),
                r#"env "V": unsupported pod version: v2"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}]}),
                r#"env "V": unsupported container resource: limits.gpu"#,
            ),
            (
                json!({"env": [{"name": "V", "valueFrom": {"resourceFieldRef": {"containerName": "ghost", "resource": "limits.cpu"}}}]}),
                r#"env "V": container ghost not found"#,
            ),
        ];
        for (spec, message) in cases {
            let mut spec = spec;
            spec["name"] = json!("app");
            let err = fixture.env(&container(spec)).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn literal_values_expand_earlier_variables_only() {
        let mut fixture = Fixture::new(basic_pod());
        fixture.services = vec![service("db", "10.96.0.9", json!([{"port": 5432}]))];
        let app = container(json!({
            "name": "app",
            "env": [
                {"name": "A", "value": "alpha"},
                {"name": "B", "value": "$(A)-$(C)-$$(A)-$(DB_SERVICE_HOST)"},
                {"name": "C", "value": "gamma"},
                {"name": "D", "value": "$(PATH)|$(HOSTNAME)"},
                {"name": "A", "value": "$(A)2"},
            ],
        }));
        let env = fixture.env(&app).unwrap();
        assert_eq!(get(&env, "B"), Some("alpha-$(C)-$(A)-10.96.0.9"));
        // The image's variables are the runtime's, invisible to the kubelet's expansion.
        assert_eq!(get(&env, "D"), Some("$(PATH)|$(HOSTNAME)"));
        assert_eq!(get(&env, "A"), Some("alpha2"));
        assert_eq!(&names(&env)[names(&env).len() - 4..], ["A", "B", "C", "D"]);
    }

    #[test]
    fn expand_follows_the_kubernetes_rules() {
        let env = vec![
            ("VAR".to_owned(), "value".to_owned()),
            ("EMPTY".to_owned(), String::new()),
            ("VAR".to_owned(), "later".to_owned()),
        ];
        let cases = [
            ("$(VAR)", "later"),
            ("x$(VAR)y", "xlatery"),
            ("$(EMPTY)!", "!"),
            ("$(UNSET)", "$(UNSET)"),
            ("$$(VAR)", "$(VAR)"),
            ("$$$(VAR)", "$later"),
            ("$$", "$"),
            ("$", "$"),
            ("a$b", "a$b"),
            ("$(VAR", "$(VAR"),
            ("$()", "$()"),
            ("$(VAR)$(VAR)", "laterlater"),
            ("ünï$(VAR)cødé", "ünïlatercødé"),
            ("$ü", "$ü"),
        ];
        for (text, want) in cases {
            assert_eq!(expand(text, &env), want, "expanding {text:?}");
        }
    }

    #[test]
    fn field_refs() {
        let fixture = Fixture::new(basic_pod());
        let field = |path: &str| {
            let app = container(json!({"name": "app", "env": [
                {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": path}}}]}));
            let env = fixture.env(&app).unwrap();
            get(&env, "V").map(str::to_owned)
        };
        assert_eq!(field("metadata.name").as_deref(), Some("web-0"));
        assert_eq!(field("metadata.namespace").as_deref(), Some("shop"));
        assert_eq!(field("metadata.uid").as_deref(), Some("uid-1"));
        assert_eq!(field("metadata.labels['app']").as_deref(), Some("web"));
        assert_eq!(field("metadata.labels['none']").as_deref(), Some(""));
        assert_eq!(
            field("metadata.annotations['note']").as_deref(),
            Some("say \"hi\"\n")
        );
        assert_eq!(
            field("metadata.labels").as_deref(),
            Some("app=\"web\"\ntier=\"front\"")
        );
        assert_eq!(field("spec.nodeName").as_deref(), Some("dev-node"));
        assert_eq!(field("spec.serviceAccountName").as_deref(), Some("web-sa"));
        assert_eq!(field("status.hostIP").as_deref(), Some("192.168.1.10"));
        assert_eq!(field("status.hostIPs").as_deref(), Some("192.168.1.10"));
        assert_eq!(field("status.podIP").as_deref(), Some("10.1.0.5"));
        assert_eq!(field("status.podIPs").as_deref(), Some("10.1.0.5,fd00::5"));
    }

    #[test]
    fn annotations_are_quoted_like_go() {
        let mut map = BTreeMap::new();
        map.insert("b".to_owned(), "tab\there \\ \u{1}".to_owned());
        map.insert("a".to_owned(), "plain".to_owned());
        assert_eq!(
            format_map(Some(&map)),
            "a=\"plain\"\nb=\"tab\\there \\\\ \\x01\""
        );
    }

    #[test]
    fn resource_field_refs_round_up_and_default_to_allocatable() {
        let fixture = Fixture::new(basic_pod());
        let resource = |container_name: Option<&str>, resource: &str, divisor: Option<&str>| {
            let mut selector = json!({"resource": resource});
            if let Some(name) = container_name {
                selector["containerName"] = json!(name);
            }
            if let Some(divisor) = divisor {
                selector["divisor"] = json!(divisor);
            }
            let app = container(json!({
                "name": "app",
                "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "250m", "memory": "64Mi"}},
                "env": [{"name": "V", "valueFrom": {"resourceFieldRef": selector}}],
            }));
            let env = fixture.env(&app).unwrap();
            get(&env, "V").map(str::to_owned).unwrap_or_default()
        };
        // cpu: 250m is 1 core rounded up, 250 in millicores.
        assert_eq!(resource(None, "requests.cpu", None), "1");
        assert_eq!(resource(None, "requests.cpu", Some("1m")), "250");
        assert_eq!(resource(None, "requests.memory", None), "67108864");
        assert_eq!(resource(None, "requests.memory", Some("1Mi")), "64");
        assert_eq!(resource(None, "limits.memory", Some("1M")), "135");
        // No cpu limit: the node's allocatable 4000m.
        assert_eq!(resource(None, "limits.cpu", None), "4");
        assert_eq!(resource(None, "limits.cpu", Some("1m")), "4000");
        assert_eq!(resource(Some("side"), "limits.cpu", None), "2");
        assert_eq!(resource(Some("side"), "limits.memory", Some("1Gi")), "8");
        assert_eq!(resource(None, "limits.ephemeral-storage", None), "0");
        assert_eq!(resource(None, "requests.hugepages-2Mi", None), "0");
        // A zero divisor means 1.
        assert_eq!(resource(None, "requests.cpu", Some("0")), "1");
    }

    #[test]
    fn quantities_parse_exactly() {
        let cases = [
            ("1", 0, 1),
            ("250m", -3, 250),
            ("0.5", -3, 500),
            ("1.5Gi", 0, 1_610_612_736),
            ("1Ki", 0, 1024),
            ("2k", 0, 2000),
            ("1e3", 0, 1000),
            ("1E-3", -3, 1),
            ("100n", -3, 1),
            ("+.5", -3, 500),
            ("1.", 0, 1),
            ("-1500m", 0, -1),
        ];
        for (text, scale, want) in cases {
            let amount = parse_quantity(text).unwrap_or_else(|| panic!("parsing {text}"));
            assert_eq!(amount.scaled_ceil(scale), want, "{text} at 10^{scale}");
        }
        for bad in ["", "m", ".", "1..2", "1x", "1Ki2", "1e", "--1", "1 "] {
            assert_eq!(parse_quantity(bad), None, "{bad:?} should not parse");
        }
        let huge = parse_quantity("1e400").unwrap();
        assert_eq!(clamp_i64(huge.scaled_ceil(0)), i64::MAX);
        assert_eq!(parse_quantity("1e-400").unwrap().scaled_ceil(0), 1);
    }

    #[test]
    fn file_key_ref_is_unsupported() {
        let fixture = Fixture::new(basic_pod());
        let app = container(json!({"name": "app", "env": [{"name": "V", "valueFrom": {
            "fileKeyRef": {"volumeName": "v", "path": "p", "key": "k"}}}]}));
        assert!(matches!(
            fixture.env(&app),
            Err(EnvError::FileKeyRefUnsupported { .. })
        ));
    }

    #[test]
    fn empty_value_and_no_source_is_empty() {
        let fixture = Fixture::new(basic_pod());
        let app =
            container(json!({"name": "app", "env": [{"name": "E"}, {"name": "F", "value": ""}]}));
        let env = fixture.env(&app).unwrap();
        assert_eq!(get(&env, "E"), Some(""));
        assert_eq!(get(&env, "F"), Some(""));
    }
}
