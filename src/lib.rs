//! Skein: a service mesh for Kubernetes. One crate, one binary; each role is a module.
//!
//! - [`api`]: custom resource types and shared names.
//! - [`cli`]: the `skein` command line.
//! - [`dev`]: the local development environment (`skein dev ...`).

pub mod api;
pub mod cli;
pub mod dev;
pub mod telemetry;
