//! `skein init`: programs the pod's network namespace so that all inbound and outbound TCP passes
//! through the proxy.
//!
//! - [`settings`]: the flags (shared with the injector, which writes them).
//! - [`rules`]: pure: settings → iptables-restore text.
//! - [`apply`]: backend detection, iptables-restore, cleanup.

pub mod apply;
pub mod rules;
pub mod settings;

pub use apply::run;
pub use settings::{CaptureSettings, IpCidr, PortList};
