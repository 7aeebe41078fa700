//! Proxy config types ([`crate::proxy_config`]) ↔ the stream's resource messages
//! ([`super::config`]). Pure functions: the config side is what the proxy compiles, the proto
//! side what travels. Everything the config holds survives a round trip except sub-millisecond
//! precision of durations (the wire carries whole milliseconds; a duration is rounded up, so a
//! non-zero one never becomes zero). Messages from the network are checked on the way in: IP
//! addresses, 16-bit ports and statuses, enum values.

use std::net::{IpAddr, SocketAddr};

use super::config as pb;
use crate::duration::Duration;
use crate::proxy_config as cfg;

/// Why a resource message is not a valid proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{field}: {value:?} is not an IP address")]
    InvalidIp { field: &'static str, value: String },
    #[error("{field}: {value} is out of range (at most {max})")]
    OutOfRange {
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{field}: unknown value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("{field}: no value set")]
    MissingField { field: &'static str },
    #[error("destination {name:?}: {source}")]
    Destination {
        name: String,
        #[source]
        source: Box<ConvertError>,
    },
}

type Result<T> = std::result::Result<T, ConvertError>;

// ---- Proxy-wide settings ----

/// The proxy-wide part of `config` (everything but destinations and egress).
pub fn settings_to_proto(config: &cfg::ProxyConfig) -> pb::ProxySettings {
    pb::ProxySettings {
        version: config.version.clone(),
        workload: Some(workload_to_proto(&config.workload)),
        outbound_traffic_policy: match config.outbound_traffic_policy {
            cfg::OutboundTrafficPolicy::RegistryOnly => pb::OutboundTrafficPolicy::RegistryOnly,
            cfg::OutboundTrafficPolicy::AllowAny => pb::OutboundTrafficPolicy::AllowAny,
        } as i32,
        opaque_ports: config.opaque_ports.iter().map(|&p| u32::from(p)).collect(),
        detect_timeout_millis: millis(config.detect_timeout),
        draining: config.draining,
        inbound_mtls: Some(inbound_mtls_to_proto(&config.inbound_mtls)),
        access_policies: config
            .access_policies
            .iter()
            .map(access_policy_to_proto)
            .collect(),
        trust_bundle_pem: config.trust_bundle_pem.clone(),
    }
}

/// A configuration with these settings and no destinations or egress (added by the caller).
pub fn settings_from_proto(settings: pb::ProxySettings) -> Result<cfg::ProxyConfig> {
    let policy = enum_value::<pb::OutboundTrafficPolicy>(
        "outboundTrafficPolicy",
        settings.outbound_traffic_policy,
    )?;
    Ok(cfg::ProxyConfig {
        version: settings.version,
        workload: settings
            .workload
            .map(workload_from_proto)
            .unwrap_or_default(),
        outbound_traffic_policy: match policy {
            pb::OutboundTrafficPolicy::RegistryOnly => cfg::OutboundTrafficPolicy::RegistryOnly,
            pb::OutboundTrafficPolicy::AllowAny => cfg::OutboundTrafficPolicy::AllowAny,
        },
        destinations: Vec::new(),
        egress: Vec::new(),
        opaque_ports: ports("opaquePorts", &settings.opaque_ports)?,
        detect_timeout: Duration::from_millis(settings.detect_timeout_millis),
        draining: settings.draining,
        access_policies: settings
            .access_policies
            .into_iter()
            .map(access_policy_from_proto)
            .collect::<Result<_>>()?,
        inbound_mtls: settings
            .inbound_mtls
            .map(inbound_mtls_from_proto)
            .transpose()?
            .unwrap_or_default(),
        trust_bundle_pem: settings.trust_bundle_pem,
    })
}

fn mtls_mode_to_proto(mode: cfg::MtlsMode) -> i32 {
    (match mode {
        cfg::MtlsMode::Permissive => pb::MtlsMode::Permissive,
        cfg::MtlsMode::Strict => pb::MtlsMode::Strict,
        cfg::MtlsMode::Disabled => pb::MtlsMode::Disabled,
    }) as i32
}

fn mtls_mode_from_proto(field: &'static str, value: i32) -> Result<cfg::MtlsMode> {
    Ok(match enum_value::<pb::MtlsMode>(field, value)? {
        pb::MtlsMode::Permissive => cfg::MtlsMode::Permissive,
        pb::MtlsMode::Strict => cfg::MtlsMode::Strict,
        pb::MtlsMode::Disabled => cfg::MtlsMode::Disabled,
    })
}

fn inbound_mtls_to_proto(mtls: &cfg::InboundMtls) -> pb::InboundMtls {
    pb::InboundMtls {
        mode: mtls_mode_to_proto(mtls.mode),
        port_modes: mtls
            .port_modes
            .iter()
            .map(|(&port, &mode)| (u32::from(port), mtls_mode_to_proto(mode)))
            .collect(),
        probes: mtls
            .probes
            .iter()
            .map(|probe| pb::ProbePort {
                port: u32::from(probe.port),
                http_paths: probe.http_paths.clone(),
            })
            .collect(),
        node_ip: mtls.node_ip.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

fn inbound_mtls_from_proto(mtls: pb::InboundMtls) -> Result<cfg::InboundMtls> {
    Ok(cfg::InboundMtls {
        mode: mtls_mode_from_proto("inboundMtls.mode", mtls.mode)?,
        port_modes: mtls
            .port_modes
            .into_iter()
            .map(|(port, mode)| {
                Ok((
                    port_number("inboundMtls.portModes", port)?,
                    mtls_mode_from_proto("inboundMtls.portModes", mode)?,
                ))
            })
            .collect::<Result<_>>()?,
        probes: mtls
            .probes
            .into_iter()
            .map(|probe| {
                Ok(cfg::ProbePort {
                    port: port_number("inboundMtls.probes.port", probe.port)?,
                    http_paths: probe.http_paths,
                })
            })
            .collect::<Result<_>>()?,
        node_ip: if mtls.node_ip.is_empty() {
            None
        } else {
            Some(ip("inboundMtls.nodeIp", &mtls.node_ip)?)
        },
    })
}

fn workload_to_proto(workload: &cfg::Workload) -> pb::Workload {
    pb::Workload {
        name: workload.name.clone(),
        namespace: workload.namespace.clone(),
    }
}

fn workload_from_proto(workload: pb::Workload) -> cfg::Workload {
    cfg::Workload {
        name: workload.name,
        namespace: workload.namespace,
    }
}

// ---- Access policies ----

fn access_policy_to_proto(policy: &cfg::AccessPolicy) -> pb::AccessPolicy {
    pb::AccessPolicy {
        name: policy.name.clone(),
        action: match policy.action {
            cfg::AccessAction::Allow => pb::AccessAction::Allow,
            cfg::AccessAction::Deny => pb::AccessAction::Deny,
            cfg::AccessAction::Audit => pb::AccessAction::Audit,
        } as i32,
        rules: policy
            .rules
            .iter()
            .map(|rule| pb::AccessRule {
                from: rule
                    .from
                    .iter()
                    .map(|source| pb::AccessSource {
                        identities: source.identities.clone(),
                        namespaces: source.namespaces.clone(),
                        unauthenticated: source.unauthenticated,
                    })
                    .collect(),
                to: rule
                    .to
                    .iter()
                    .map(|operation| pb::AccessOperation {
                        ports: operation.ports.iter().map(|&p| u32::from(p)).collect(),
                        methods: operation.methods.clone(),
                        paths: operation
                            .paths
                            .iter()
                            .map(|path| pb::PathMatch {
                                kind: Some(match path {
                                    cfg::PathMatch::Exact(p) => {
                                        pb::path_match::Kind::Exact(p.clone())
                                    }
                                    cfg::PathMatch::Prefix(p) => {
                                        pb::path_match::Kind::Prefix(p.clone())
                                    }
                                }),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn access_policy_from_proto(policy: pb::AccessPolicy) -> Result<cfg::AccessPolicy> {
    let action = enum_value::<pb::AccessAction>("accessPolicies.action", policy.action)?;
    Ok(cfg::AccessPolicy {
        name: policy.name,
        action: match action {
            pb::AccessAction::Allow => cfg::AccessAction::Allow,
            pb::AccessAction::Deny => cfg::AccessAction::Deny,
            pb::AccessAction::Audit => cfg::AccessAction::Audit,
        },
        rules: policy
            .rules
            .into_iter()
            .map(|rule| {
                Ok(cfg::AccessRule {
                    from: rule
                        .from
                        .into_iter()
                        .map(|source| cfg::AccessSource {
                            identities: source.identities,
                            namespaces: source.namespaces,
                            unauthenticated: source.unauthenticated,
                        })
                        .collect(),
                    to: rule
                        .to
                        .into_iter()
                        .map(|operation| {
                            Ok(cfg::AccessOperation {
                                ports: ports("accessPolicies.rules.to.ports", &operation.ports)?,
                                methods: operation.methods,
                                // A path match without a kind is refused rather than read as
                                // "any path", which would widen an Allow.
                                paths: operation
                                    .paths
                                    .into_iter()
                                    .map(|path| match path.kind {
                                        Some(pb::path_match::Kind::Exact(p)) => {
                                            Ok(cfg::PathMatch::Exact(p))
                                        }
                                        Some(pb::path_match::Kind::Prefix(p)) => {
                                            Ok(cfg::PathMatch::Prefix(p))
                                        }
                                        None => Err(ConvertError::MissingField {
                                            field: "accessPolicies.rules.to.paths",
                                        }),
                                    })
                                    .collect::<Result<_>>()?,
                            })
                        })
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?,
    })
}

// ---- Egress ----

pub fn egress_to_proto(allow: &[cfg::EgressAllow]) -> pb::EgressPolicy {
    pb::EgressPolicy {
        allow: allow
            .iter()
            .map(|allow| pb::EgressAllow {
                host: allow.host.clone(),
                ports: allow.ports.iter().map(|&p| u32::from(p)).collect(),
                protocol: match allow.protocol {
                    cfg::EgressProtocol::Any => pb::EgressProtocol::Any,
                    cfg::EgressProtocol::Http => pb::EgressProtocol::Http,
                    cfg::EgressProtocol::Tls => pb::EgressProtocol::Tls,
                    cfg::EgressProtocol::Tcp => pb::EgressProtocol::Tcp,
                } as i32,
            })
            .collect(),
    }
}

pub fn egress_from_proto(policy: pb::EgressPolicy) -> Result<Vec<cfg::EgressAllow>> {
    policy
        .allow
        .into_iter()
        .map(|allow| {
            let protocol = enum_value::<pb::EgressProtocol>("egress.protocol", allow.protocol)?;
            Ok(cfg::EgressAllow {
                ports: ports("egress.ports", &allow.ports)?,
                host: allow.host,
                protocol: match protocol {
                    pb::EgressProtocol::Any => cfg::EgressProtocol::Any,
                    pb::EgressProtocol::Http => cfg::EgressProtocol::Http,
                    pb::EgressProtocol::Tls => cfg::EgressProtocol::Tls,
                    pb::EgressProtocol::Tcp => cfg::EgressProtocol::Tcp,
                },
            })
        })
        .collect()
}

// ---- Destinations ----

pub fn destination_to_proto(destination: &cfg::Destination) -> pb::Destination {
    pb::Destination {
        name: destination.name.clone(),
        addresses: destination
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        hosts: destination.hosts.clone(),
        ports: destination.ports.iter().map(port_to_proto).collect(),
        load_balancer: match destination.load_balancer {
            cfg::LoadBalancer::PeakEwma => pb::LoadBalancer::PeakEwma,
            cfg::LoadBalancer::RoundRobin => pb::LoadBalancer::RoundRobin,
            cfg::LoadBalancer::LeastRequest => pb::LoadBalancer::LeastRequest,
        } as i32,
        outlier_detection: destination.outlier_detection.as_ref().map(|outlier| {
            pb::OutlierDetection {
                consecutive_failures: outlier.consecutive_failures,
                base_ejection_time_millis: millis(outlier.base_ejection_time),
                max_ejection_percent: u32::from(outlier.max_ejection_percent),
            }
        }),
        // Left out when there are none: most destinations, and a smaller message.
        limits: (destination.limits != cfg::Limits::default()).then_some(pb::Limits {
            max_connections: destination.limits.max_connections,
            max_pending_requests: destination.limits.max_pending_requests,
        }),
        routes: destination.routes.iter().map(route_to_proto).collect(),
    }
}

/// The destination a message describes; errors name it.
pub fn destination_from_proto(destination: pb::Destination) -> Result<cfg::Destination> {
    let name = destination.name.clone();
    destination_fields(destination).map_err(|source| ConvertError::Destination {
        name,
        source: Box::new(source),
    })
}

fn destination_fields(destination: pb::Destination) -> Result<cfg::Destination> {
    let load_balancer = enum_value::<pb::LoadBalancer>("loadBalancer", destination.load_balancer)?;
    Ok(cfg::Destination {
        addresses: destination
            .addresses
            .iter()
            .map(|address| ip("addresses", address))
            .collect::<Result<_>>()?,
        hosts: destination.hosts,
        ports: destination
            .ports
            .into_iter()
            .map(port_from_proto)
            .collect::<Result<_>>()?,
        load_balancer: match load_balancer {
            pb::LoadBalancer::PeakEwma => cfg::LoadBalancer::PeakEwma,
            pb::LoadBalancer::RoundRobin => cfg::LoadBalancer::RoundRobin,
            pb::LoadBalancer::LeastRequest => cfg::LoadBalancer::LeastRequest,
        },
        outlier_detection: destination
            .outlier_detection
            .map(|outlier| {
                Ok::<_, ConvertError>(cfg::OutlierDetection {
                    consecutive_failures: outlier.consecutive_failures,
                    base_ejection_time: Duration::from_millis(outlier.base_ejection_time_millis),
                    max_ejection_percent: u8::try_from(outlier.max_ejection_percent).map_err(
                        |_| ConvertError::OutOfRange {
                            field: "outlierDetection.maxEjectionPercent",
                            value: u64::from(outlier.max_ejection_percent),
                            max: u64::from(u8::MAX),
                        },
                    )?,
                })
            })
            .transpose()?,
        limits: destination
            .limits
            .map(|limits| cfg::Limits {
                max_connections: limits.max_connections,
                max_pending_requests: limits.max_pending_requests,
            })
            .unwrap_or_default(),
        routes: destination
            .routes
            .into_iter()
            .map(route_from_proto)
            .collect::<Result<_>>()?,
        name: destination.name,
    })
}

fn port_to_proto(port: &cfg::DestinationPort) -> pb::DestinationPort {
    pb::DestinationPort {
        port: u32::from(port.port),
        protocol: match port.protocol {
            cfg::Protocol::Detect => pb::Protocol::Detect,
            cfg::Protocol::Http1 => pb::Protocol::Http1,
            cfg::Protocol::Http2 => pb::Protocol::Http2,
            cfg::Protocol::Grpc => pb::Protocol::Grpc,
            cfg::Protocol::Opaque => pb::Protocol::Opaque,
        } as i32,
        endpoints: port
            .endpoints
            .iter()
            .map(|endpoint| pb::Endpoint {
                ip: endpoint.address.ip().to_string(),
                port: u32::from(endpoint.address.port()),
                labels: endpoint.labels.clone(),
                workload: endpoint.workload.as_ref().map(workload_to_proto),
                terminating: endpoint.terminating,
                identity: endpoint.identity.clone().unwrap_or_default(),
                http2_upgrade: endpoint.http2_upgrade,
            })
            .collect(),
        not_ready_endpoints: port.not_ready_endpoints,
    }
}

fn port_from_proto(port: pb::DestinationPort) -> Result<cfg::DestinationPort> {
    let protocol = enum_value::<pb::Protocol>("ports.protocol", port.protocol)?;
    Ok(cfg::DestinationPort {
        port: port_number("ports.port", port.port)?,
        protocol: match protocol {
            pb::Protocol::Detect => cfg::Protocol::Detect,
            pb::Protocol::Http1 => cfg::Protocol::Http1,
            pb::Protocol::Http2 => cfg::Protocol::Http2,
            pb::Protocol::Grpc => cfg::Protocol::Grpc,
            pb::Protocol::Opaque => cfg::Protocol::Opaque,
        },
        endpoints: port
            .endpoints
            .into_iter()
            .map(|endpoint| {
                Ok(cfg::Endpoint {
                    address: SocketAddr::new(
                        ip("endpoints.ip", &endpoint.ip)?,
                        port_number("endpoints.port", endpoint.port)?,
                    ),
                    labels: endpoint.labels,
                    workload: endpoint.workload.map(workload_from_proto),
                    terminating: endpoint.terminating,
                    identity: Some(endpoint.identity).filter(|id| !id.is_empty()),
                    http2_upgrade: endpoint.http2_upgrade,
                })
            })
            .collect::<Result<_>>()?,
        not_ready_endpoints: port.not_ready_endpoints,
    })
}

// ---- Routes ----

fn route_to_proto(route: &cfg::Route) -> pb::Route {
    pb::Route {
        name: route.name.clone(),
        matches: route.matches.iter().map(request_match_to_proto).collect(),
        backends: route
            .backends
            .iter()
            .map(|backend| pb::WeightedSubset {
                subset: backend.subset.clone(),
                weight: backend.weight,
            })
            .collect(),
        timeout_millis: route.timeout.map(millis),
        retry: route.retry.as_ref().map(retry_to_proto),
        fault: route.fault.as_ref().map(|fault| pb::Fault {
            delay: fault.delay.as_ref().map(|delay| pb::FaultDelay {
                percent: delay.percent,
                duration_millis: millis(delay.duration),
            }),
            abort: fault.abort.as_ref().map(|abort| pb::FaultAbort {
                percent: abort.percent,
                status: u32::from(abort.status),
            }),
        }),
        mirror: route.mirror.as_ref().map(|mirror| pb::Mirror {
            subset: mirror.subset.clone(),
            percent: mirror.percent,
        }),
        request_headers: header_edits_to_proto(&route.request_headers),
        response_headers: header_edits_to_proto(&route.response_headers),
    }
}

fn route_from_proto(route: pb::Route) -> Result<cfg::Route> {
    Ok(cfg::Route {
        name: route.name,
        matches: route
            .matches
            .into_iter()
            .map(request_match_from_proto)
            .collect::<Result<_>>()?,
        backends: route
            .backends
            .into_iter()
            .map(|backend| cfg::WeightedSubset {
                subset: backend.subset,
                weight: backend.weight,
            })
            .collect(),
        timeout: route.timeout_millis.map(Duration::from_millis),
        retry: route.retry.map(retry_from_proto).transpose()?,
        fault: route
            .fault
            .map(|fault| {
                Ok::<_, ConvertError>(cfg::Fault {
                    delay: fault.delay.map(|delay| cfg::FaultDelay {
                        percent: delay.percent,
                        duration: Duration::from_millis(delay.duration_millis),
                    }),
                    abort: fault
                        .abort
                        .map(|abort| {
                            Ok::<_, ConvertError>(cfg::FaultAbort {
                                percent: abort.percent,
                                status: port_number("fault.abort.status", abort.status)?,
                            })
                        })
                        .transpose()?,
                })
            })
            .transpose()?,
        mirror: route.mirror.map(|mirror| cfg::Mirror {
            subset: mirror.subset,
            percent: mirror.percent,
        }),
        request_headers: header_edits_from_proto(route.request_headers),
        response_headers: header_edits_from_proto(route.response_headers),
    })
}

fn request_match_to_proto(request: &cfg::RequestMatch) -> pb::RequestMatch {
    pb::RequestMatch {
        path: request.path.as_ref().map(string_match_to_proto),
        method: request.method.clone(),
        headers: request.headers.iter().map(key_match_to_proto).collect(),
        query: request.query.iter().map(key_match_to_proto).collect(),
    }
}

fn request_match_from_proto(request: pb::RequestMatch) -> Result<cfg::RequestMatch> {
    Ok(cfg::RequestMatch {
        path: request.path.map(string_match_from_proto),
        method: request.method,
        headers: request
            .headers
            .into_iter()
            .map(key_match_from_proto)
            .collect(),
        query: request
            .query
            .into_iter()
            .map(key_match_from_proto)
            .collect(),
    })
}

fn key_match_to_proto(key: &cfg::KeyMatch) -> pb::KeyMatch {
    pb::KeyMatch {
        name: key.name.clone(),
        value: Some(string_match_to_proto(&key.value)),
    }
}

fn key_match_from_proto(key: pb::KeyMatch) -> cfg::KeyMatch {
    cfg::KeyMatch {
        name: key.name,
        value: key.value.map(string_match_from_proto).unwrap_or_default(),
    }
}

fn string_match_to_proto(value: &cfg::StringMatch) -> pb::StringMatch {
    use pb::string_match::Kind;
    pb::StringMatch {
        kind: Some(match value {
            cfg::StringMatch::Present => Kind::Present(true),
            cfg::StringMatch::Exact(text) => Kind::Exact(text.clone()),
            cfg::StringMatch::Prefix(text) => Kind::Prefix(text.clone()),
            cfg::StringMatch::Regex(text) => Kind::Regex(text.clone()),
        }),
    }
}

/// Total: an unset `kind` (or a future one this proxy does not know, which decodes as unset)
/// means "present".
fn string_match_from_proto(value: pb::StringMatch) -> cfg::StringMatch {
    use pb::string_match::Kind;
    match value.kind {
        None | Some(Kind::Present(_)) => cfg::StringMatch::Present,
        Some(Kind::Exact(text)) => cfg::StringMatch::Exact(text),
        Some(Kind::Prefix(text)) => cfg::StringMatch::Prefix(text),
        Some(Kind::Regex(text)) => cfg::StringMatch::Regex(text),
    }
}

fn header_edits_to_proto(edits: &cfg::HeaderEdits) -> Option<pb::HeaderEdits> {
    (edits != &cfg::HeaderEdits::default()).then(|| pb::HeaderEdits {
        set: edits.set.clone(),
        add: edits.add.clone(),
        remove: edits.remove.clone(),
    })
}

fn header_edits_from_proto(edits: Option<pb::HeaderEdits>) -> cfg::HeaderEdits {
    edits
        .map(|edits| cfg::HeaderEdits {
            set: edits.set,
            add: edits.add,
            remove: edits.remove,
        })
        .unwrap_or_default()
}

fn retry_to_proto(retry: &cfg::RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        attempts: retry.attempts,
        per_try_timeout_millis: retry.per_try_timeout.map(millis),
        retry_on: retry
            .retry_on
            .iter()
            .map(|on| retry_on_to_proto(*on) as i32)
            .collect(),
        retriable_status_codes: retry
            .retriable_status_codes
            .iter()
            .map(|&code| u32::from(code))
            .collect(),
        base_backoff_millis: millis(retry.base_backoff),
        max_backoff_millis: millis(retry.max_backoff),
        budget: Some(pb::RetryBudget {
            percent: retry.budget.percent,
            min_per_second: retry.budget.min_per_second,
            window_millis: millis(retry.budget.window),
        }),
    }
}

fn retry_from_proto(retry: pb::RetryPolicy) -> Result<cfg::RetryPolicy> {
    Ok(cfg::RetryPolicy {
        attempts: retry.attempts,
        per_try_timeout: retry.per_try_timeout_millis.map(Duration::from_millis),
        retry_on: retry
            .retry_on
            .iter()
            .map(|&on| retry_on_from_proto(on))
            .collect::<Result<_>>()?,
        retriable_status_codes: ports("retry.retriableStatusCodes", &retry.retriable_status_codes)?,
        base_backoff: Duration::from_millis(retry.base_backoff_millis),
        max_backoff: Duration::from_millis(retry.max_backoff_millis),
        budget: retry
            .budget
            .map(|budget| cfg::RetryBudget {
                percent: budget.percent,
                min_per_second: budget.min_per_second,
                window: Duration::from_millis(budget.window_millis),
            })
            .unwrap_or_default(),
    })
}

fn retry_on_to_proto(on: cfg::RetryOn) -> pb::RetryOn {
    match on {
        cfg::RetryOn::ConnectFailure => pb::RetryOn::ConnectFailure,
        cfg::RetryOn::RefusedStream => pb::RetryOn::RefusedStream,
        cfg::RetryOn::Reset => pb::RetryOn::Reset,
        cfg::RetryOn::FiveXx => pb::RetryOn::FiveXx,
        cfg::RetryOn::GatewayError => pb::RetryOn::GatewayError,
        cfg::RetryOn::RetriableStatusCodes => pb::RetryOn::RetriableStatusCodes,
        cfg::RetryOn::Unavailable => pb::RetryOn::Unavailable,
        cfg::RetryOn::Cancelled => pb::RetryOn::Cancelled,
        cfg::RetryOn::DeadlineExceeded => pb::RetryOn::DeadlineExceeded,
    }
}

fn retry_on_from_proto(value: i32) -> Result<cfg::RetryOn> {
    let unknown = ConvertError::UnknownEnum {
        field: "retry.retryOn",
        value,
    };
    Ok(
        match pb::RetryOn::try_from(value).map_err(|_| unknown.clone())? {
            pb::RetryOn::Unspecified => return Err(unknown),
            pb::RetryOn::ConnectFailure => cfg::RetryOn::ConnectFailure,
            pb::RetryOn::RefusedStream => cfg::RetryOn::RefusedStream,
            pb::RetryOn::Reset => cfg::RetryOn::Reset,
            pb::RetryOn::FiveXx => cfg::RetryOn::FiveXx,
            pb::RetryOn::GatewayError => cfg::RetryOn::GatewayError,
            pb::RetryOn::RetriableStatusCodes => cfg::RetryOn::RetriableStatusCodes,
            pb::RetryOn::Unavailable => cfg::RetryOn::Unavailable,
            pb::RetryOn::Cancelled => cfg::RetryOn::Cancelled,
            pb::RetryOn::DeadlineExceeded => cfg::RetryOn::DeadlineExceeded,
        },
    )
}

// ---- Scalars ----

/// Whole milliseconds, rounded up so that a non-zero duration stays non-zero.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_std().as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn ip(field: &'static str, text: &str) -> Result<IpAddr> {
    text.parse().map_err(|_| ConvertError::InvalidIp {
        field,
        value: text.to_owned(),
    })
}

/// A port or an HTTP status: 16 bits.
fn port_number(field: &'static str, value: u32) -> Result<u16> {
    u16::try_from(value).map_err(|_| ConvertError::OutOfRange {
        field,
        value: u64::from(value),
        max: u64::from(u16::MAX),
    })
}

fn ports(field: &'static str, values: &[u32]) -> Result<Vec<u16>> {
    values.iter().map(|&v| port_number(field, v)).collect()
}

fn enum_value<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E> {
    E::try_from(value).map_err(|_| ConvertError::UnknownEnum { field, value })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A configuration that sets every field, most to a value other than the default.
    pub(crate) fn rich_config() -> cfg::ProxyConfig {
        from_yaml(
            r#"
version: "42"
workload: {name: frontend, namespace: demo}
outboundTrafficPolicy: AllowAny
opaquePorts: [5432, 6379]
detectTimeout: 250ms
accessPolicies:
  - name: demo/deny-admin
    action: Deny
    rules: [{to: [{paths: [{prefix: /admin}]}]}]
  - name: demo/allow-frontend
    action: Allow
    rules:
      - from:
          - {identities: ["spiffe://cluster.local/ns/demo/sa/frontend"], namespaces: [demo]}
          - {unauthenticated: true}
        to: [{ports: [8080, 9090], methods: [GET, POST], paths: [{exact: /}, {prefix: /api/}]}]
  - {name: demo/try, action: Audit}
egress:
  - {host: api.example.com, ports: [443], protocol: tls}
  - {host: "*.example.org", protocol: http}
  - {host: "203.0.113.9", ports: [22, 2222], protocol: tcp}
  - {host: anything.example.net}
destinations:
  - name: backend.demo.svc.cluster.local
    addresses: ["198.19.0.20", "fd00::20"]
    hosts: [backend, backend.demo]
    loadBalancer: leastRequest
    outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 10s, maxEjectionPercent: 50}
    limits: {maxConnections: 100, maxPendingRequests: 10}
    ports:
      - port: 80
        protocol: http1
        endpoints:
          - address: "198.18.0.5:8080"
            labels: {version: v1, app: backend}
            workload: {name: backend-v1, namespace: demo}
          - address: "[fd00::5]:8080"
      - {port: 9000, protocol: grpc, endpoints: []}
      - {port: 5432, protocol: opaque, endpoints: [{address: "198.18.0.6:5432"}]}
      - {port: 81, protocol: http2, endpoints: []}
      - {port: 82, endpoints: []}
    routes:
      - name: canary
        matches:
          - path: {prefix: /api}
            method: GET
            headers: [{name: x-canary, value: {exact: "1"}}, {name: x-debug}]
            query: [{name: q, value: {regex: "a.*"}}]
          - path: {regex: "/v[0-9]+"}
        backends: [{subset: {version: v2}, weight: 10}, {weight: 90}]
        timeout: 1500ms
        retry:
          attempts: 2
          perTryTimeout: 300ms
          retryOn: [connect-failure, refused-stream, reset, 5xx, gateway-error,
                    retriable-status-codes, unavailable, cancelled, deadline-exceeded]
          retriableStatusCodes: [409, 429]
          baseBackoff: 10ms
          maxBackoff: 1s
          budget: {percent: 12.5, minPerSecond: 3, window: 30s}
        fault:
          delay: {percent: 5.5, duration: 2s}
          abort: {percent: 1.0, status: 503}
        mirror: {subset: {version: shadow}, percent: 25.0}
        requestHeaders: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
        responseHeaders: {set: {x-d: "3"}}
      - name: rest
        matches: [{path: {exact: /}}]
        fault: {}
  - name: plain.demo.svc.cluster.local
    ports: [{port: 80, endpoints: []}]
"#,
        )
    }

    /// YAML read as JSON would be, so enums are written as maps (`{prefix: /api}`) rather
    /// than YAML tags.
    pub(crate) fn from_yaml(yaml: &str) -> cfg::ProxyConfig {
        let value: serde_json::Value = crate::yaml::from_str(yaml).expect("valid yaml");
        serde_json::from_value(value).expect("valid config")
    }

    fn round_trip(config: &cfg::ProxyConfig) -> cfg::ProxyConfig {
        let mut back = settings_from_proto(settings_to_proto(config)).expect("settings");
        back.egress = egress_from_proto(egress_to_proto(&config.egress)).expect("egress");
        back.destinations = config
            .destinations
            .iter()
            .map(|d| destination_from_proto(destination_to_proto(d)).expect("destination"))
            .collect();
        back
    }

    #[test]
    fn a_rich_config_round_trips_exactly() {
        let config = rich_config();
        assert_eq!(round_trip(&config), config);
        let defaults = cfg::ProxyConfig::default();
        assert_eq!(round_trip(&defaults), defaults);
    }

    #[test]
    fn durations_travel_as_whole_milliseconds_rounded_up() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(std::time::Duration::from_micros(1).into()), 1);
        assert_eq!(millis(std::time::Duration::from_micros(1001).into()), 2);
        assert_eq!(millis(Duration::from_millis(0)), 0);
    }

    #[test]
    fn bad_values_from_the_network_are_errors_naming_the_field() {
        let good = destination_to_proto(&rich_config().destinations[0]);

        let mut bad = good.clone();
        bad.addresses[0] = "198.19.0.300".to_owned();
        let err = destination_from_proto(bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "destination \"backend.demo.svc.cluster.local\": addresses: \"198.19.0.300\" is not an IP address"
        );

        let mut bad = good.clone();
        bad.ports[0].endpoints[0].port = 70_000;
        let err = destination_from_proto(bad).unwrap_err().to_string();
        assert!(
            err.contains("endpoints.port: 70000 is out of range"),
            "{err}"
        );

        let mut bad = good.clone();
        bad.ports[0].protocol = 17;
        let err = destination_from_proto(bad).unwrap_err().to_string();
        assert!(err.contains("ports.protocol: unknown value 17"), "{err}");

        let mut bad = good.clone();
        if let Some(retry) = bad.routes[0].retry.as_mut() {
            retry.retry_on.push(pb::RetryOn::Unspecified as i32);
        }
        let err = destination_from_proto(bad).unwrap_err().to_string();
        assert!(err.contains("retry.retryOn: unknown value 0"), "{err}");

        let mut bad = good;
        if let Some(outlier) = bad.outlier_detection.as_mut() {
            outlier.max_ejection_percent = 256;
        }
        assert!(destination_from_proto(bad).is_err());

        let mut settings = settings_to_proto(&rich_config());
        settings.outbound_traffic_policy = 9;
        assert_eq!(
            settings_from_proto(settings).unwrap_err(),
            ConvertError::UnknownEnum {
                field: "outboundTrafficPolicy",
                value: 9
            }
        );
        let mut egress = egress_to_proto(&rich_config().egress);
        egress.allow[0].ports.push(65_536);
        assert!(egress_from_proto(egress).is_err());
    }

    #[test]
    fn unset_messages_mean_the_defaults() {
        let destination = destination_from_proto(pb::Destination {
            name: "a".to_owned(),
            ports: vec![pb::DestinationPort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(destination.limits, cfg::Limits::default());
        assert_eq!(destination.outlier_detection, None);
        assert_eq!(destination.load_balancer, cfg::LoadBalancer::PeakEwma);
        assert_eq!(destination.ports[0].protocol, cfg::Protocol::Detect);

        let key = key_match_from_proto(pb::KeyMatch {
            name: "x".to_owned(),
            value: None,
        });
        assert_eq!(key.value, cfg::StringMatch::Present);
    }
}
