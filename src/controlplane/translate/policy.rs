//! TrafficPolicy → a destination's load balancer, limits, outlier detection and opaque ports.

use crate::api::TrafficPolicySpec;
use crate::api::meshconfig::MtlsMode;
use crate::api::traffic_policy::LoadBalancerAlgorithm;
use crate::proxy::config::types::{Limits, LoadBalancer, OutlierDetection};

/// What a TrafficPolicy sets on its Service's destination.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct DestinationPolicy {
    pub load_balancer: LoadBalancer,
    pub limits: Limits,
    pub outlier_detection: Option<OutlierDetection>,
    /// Service ports forwarded as bytes.
    pub opaque_ports: Vec<u16>,
    /// `Disabled`: callers speak plaintext to the Service's endpoints.
    pub mtls_mode: Option<MtlsMode>,
}

/// Checks what the CRD schema cannot (or what a rule created without it could get wrong) and
/// what the proxy would refuse the whole configuration for: every problem with its field path.
pub fn validate_traffic_policy(spec: &TrafficPolicySpec) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(problem) = super::status::parse_service_ref(&spec.service, "default") {
        problems.push(problem);
    }
    if let Some(pool) = &spec.connection_pool {
        // A limit of 0 would answer every request 503.
        if pool.max_connections == Some(0) {
            problems.push("spec.connectionPool.maxConnections: must be at least 1".to_owned());
        }
        if pool.max_pending_requests == Some(0) {
            problems.push("spec.connectionPool.maxPendingRequests: must be at least 1".to_owned());
        }
    }
    if let Some(outlier) = &spec.outlier_detection {
        if outlier.consecutive_failures == Some(0) {
            problems
                .push("spec.outlierDetection.consecutiveFailures: must be at least 1".to_owned());
        }
        if let Some(percent) = outlier.max_ejection_percent
            && percent > 100
        {
            problems.push(format!(
                "spec.outlierDetection.maxEjectionPercent: {percent} is more than 100"
            ));
        }
    }
    for (i, port) in spec.opaque_ports.iter().enumerate() {
        if *port == 0 {
            problems.push(format!("spec.opaquePorts[{i}]: 0 is not a port"));
        }
    }
    problems
}

/// The destination settings of a valid policy; unset outlier-detection fields take the
/// proxy's own defaults (5 failures, 30s, 10%).
pub(super) fn translate(spec: &TrafficPolicySpec) -> DestinationPolicy {
    DestinationPolicy {
        load_balancer: match spec.load_balancer {
            None | Some(LoadBalancerAlgorithm::PeakEwma) => LoadBalancer::PeakEwma,
            Some(LoadBalancerAlgorithm::RoundRobin) => LoadBalancer::RoundRobin,
            Some(LoadBalancerAlgorithm::LeastRequest) => LoadBalancer::LeastRequest,
        },
        limits: spec
            .connection_pool
            .as_ref()
            .map(|pool| Limits {
                max_connections: pool.max_connections,
                max_pending_requests: pool.max_pending_requests,
            })
            .unwrap_or_default(),
        outlier_detection: spec.outlier_detection.as_ref().map(|spec| {
            let defaults = outlier_defaults();
            OutlierDetection {
                consecutive_failures: spec
                    .consecutive_failures
                    .unwrap_or(defaults.consecutive_failures),
                base_ejection_time: spec
                    .base_ejection_time
                    .unwrap_or(defaults.base_ejection_time),
                max_ejection_percent: spec
                    .max_ejection_percent
                    .unwrap_or(defaults.max_ejection_percent),
            }
        }),
        opaque_ports: spec.opaque_ports.clone(),
        mtls_mode: spec.mtls_mode,
    }
}

/// The proxy's outlier-detection defaults, read from its config type's serde defaults so the
/// two can never disagree.
fn outlier_defaults() -> OutlierDetection {
    serde_json::from_str("{}").expect("every OutlierDetection field has a serde default")
}
