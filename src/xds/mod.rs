//! The control plane's configuration stream: an xDS-style "Delta ADS" gRPC stream (one
//! bidirectional stream per proxy, incremental updates, ACK/NACK by nonce) carrying Skein's
//! own resource types instead of Envoy's.
//!
//! - [`discovery`]: the stream's messages and its gRPC client and server
//!   (`proto/skein/discovery/v1alpha1/discovery.proto`).
//! - [`config`]: the resources (`proto/skein/config/v1alpha1/config.proto`), which mirror
//!   [`crate::proxy::config::types`].
//! - [`convert`]: proxy config types ↔ resource messages.
//! - [`resources`]: a [`ProxyConfig`](crate::proxy::config::types::ProxyConfig) split into
//!   named, versioned resources, and assembled back.
//!
//! The server is [`crate::controlplane::push`]; the proxy's side is [`crate::proxy::client`].

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
/// `identity_server`); served next to the stream by [`crate::controlplane::identity`].
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
/// [`crate::proxy::tap`], the control plane's [`crate::controlplane::tap`].
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
/// ([`crate::proxy::trace::otlp`]); messages only.
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
