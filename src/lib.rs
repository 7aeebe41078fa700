//! Skein: a service mesh for Kubernetes. One crate, one binary; each role is a module.
//!
//! - [`api`]: custom resource types and shared names.
//! - [`cli`]: the `skein` command line.
//! - [`operator`]: `skein operator`: installs the mesh from MeshConfig, federation state.
//! - [`controlplane`]: `skein control-plane`: the injection webhook server (later discovery, CA).
//! - [`inject`]: sidecar injection: the decision, the patch, the webhook handler, `skein inject`.
//! - [`capture`]: `skein init`: the pod's iptables traffic capture.
//! - [`proxy`]: the data-plane proxy.
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
pub mod identity;
pub mod inject;
pub mod operator;
pub mod pki;
pub mod plain_http;
pub mod proxy;
pub mod signals;
pub mod telemetry;
pub mod xds;
pub mod yaml;
