//! The Skein API: custom resource types and the names every role shares.

pub use skein_core::{duration, names};

pub mod access_policy;
pub mod crds;
pub mod egress_rule;
pub mod meshconfig;
pub mod mtls_policy;
pub mod not_acting;
pub mod route_rule;
pub mod rule_status;
pub mod traffic_policy;

pub use access_policy::{AccessPolicy, AccessPolicySpec};
pub use duration::Duration;
pub use egress_rule::{EgressRule, EgressRuleSpec};
pub use meshconfig::{MeshConfig, MeshConfigSpec, MeshConfigStatus};
pub use mtls_policy::{MtlsPolicy, MtlsPolicySpec};
pub use route_rule::{RouteRule, RouteRuleSpec};
pub use rule_status::RuleStatus;
pub use traffic_policy::{TrafficPolicy, TrafficPolicySpec};
