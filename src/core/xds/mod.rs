//! The control plane's configuration stream: an xDS-style "Delta ADS" gRPC stream (one
//! bidirectional stream per proxy, incremental updates, ACK/NACK by nonce) carrying Skein's
//! own resource types instead of Envoy's.
//!
//! - [`discovery`]: the stream's messages and its gRPC client and server
//!   (`proto/skein/discovery/v1alpha1/discovery.proto`).
//! - [`config`]: the resources (`proto/skein/config/v1alpha1/config.proto`), which mirror
//!   [`crate::proxy_config`].
//! - [`convert`]: proxy config types ↔ resource messages.
//! - [`resources`]: a [`ProxyConfig`](crate::proxy_config::ProxyConfig) split into
//!   named, versioned resources, and assembled back.
//!
//! The server is the control plane's `push` module; the proxy's side is `skein_proxy::client`.

/// Generated from `discovery.proto` (messages, `aggregated_discovery_service_client`,
/// `aggregated_discovery_service_server`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    unreachable_pub
)]
pub mod discovery {
    tonic::include_proto!("skein.discovery.v1alpha1");
}

/// Generated from `config.proto`.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    unreachable_pub
)]
pub mod config {
    tonic::include_proto!("skein.config.v1alpha1");
}

/// Generated from `identity.proto` (workload certificates: `identity_client`,
/// `identity_server`); served next to the stream by the control plane's `identity` module.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    unreachable_pub
)]
pub mod identity {
    tonic::include_proto!("skein.identity.v1alpha1");
}

/// Generated from `tap.proto` (live tap: `tap_client`, `tap_server`); the proxy's side is
/// `skein_proxy::tap`, the control plane's `tap` module.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    unreachable_pub
)]
pub mod tap {
    tonic::include_proto!("skein.tap.v1alpha1");
}

/// Generated from `otlp/v1/trace.proto`: the OTLP trace export request the proxies send
/// (`skein_proxy::trace::otlp`); messages only.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    unreachable_pub
)]
pub mod otlp {
    tonic::include_proto!("skein.otlp.v1");
}

pub mod convert;
pub mod resources;

use std::net::IpAddr;

/// Who a connected proxy says it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ProxyIdentity {
    pub pod: String,
    pub namespace: String,
    pub ip: Option<IpAddr>,
}
