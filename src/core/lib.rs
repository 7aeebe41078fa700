//! What Skein's data plane and the rest of Skein share, without any Kubernetes client: the
//! contract between the control plane and the proxy, and the plumbing every process needs.
//!
//! - [`proxy_config`]: the proxy's configuration as data (what `--config` holds and the stream
//!   carries).
//! - [`xds`]: the configuration stream's messages and services, and the conversions between
//!   them and [`proxy_config`].
//! - [`identity`]: workload identities (SPIFFE IDs); [`pki`]: the certificates that carry them.
//! - [`duration`], [`timestamp`], [`names`]: the vocabulary both sides write and read.
//! - [`yaml`], [`telemetry`] (logs, `/metrics`), [`signals`] (shutdown): process plumbing.

pub mod duration;
pub mod identity;
pub mod names;
pub mod pki;
pub mod proxy_config;
pub mod signals;
pub mod telemetry;
pub mod timestamp;
pub mod xds;
pub mod yaml;

pub use duration::Duration;
