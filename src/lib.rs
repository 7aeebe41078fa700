//! Skein: a service mesh for Kubernetes. One image, one `skein` binary; each role is a module
//! here, but for the data plane, which is its own crate (`skein-proxy`, built without a
//! Kubernetes client into the lean `skein-proxy` binary) and re-exported as [`proxy`]. What the
//! two sides share is `skein-core`, re-exported module by module below.
//!
//! - [`api`]: custom resource types and shared names.
//! - [`cli`]: the `skein` command line.
//! - [`operator`]: `skein operator`: installs the mesh from MeshConfig, federation state.
//! - [`controlplane`]: `skein control-plane`: the injection webhook server (later discovery, CA).
//! - [`inject`]: sidecar injection: the decision, the patch, the webhook handler, `skein inject`.
//! - [`capture`]: `skein init`: the pod's iptables traffic capture.
//! - [`proxy`]: the data-plane proxy (the `skein-proxy` crate).
//! - [`dev`]: the local development environment (`skein dev ...`).
//! - [`identity`]: workload identities (SPIFFE IDs), shared by the control plane, proxy and policies.
//! - [`yaml`]: YAML in and out, for every role.
//! - [`plain_http`]: one bounded HTTP/1.1 GET, for the CLI and the control plane alike.

pub mod api;
pub mod capture;
pub mod cli;
pub mod controlplane;
pub mod demo;
pub mod dev;
pub mod inject;
pub mod operator;
pub mod plain_http;

pub use skein_core::{identity, pki, signals, telemetry, timestamp, xds, yaml};
pub use skein_proxy as proxy;
