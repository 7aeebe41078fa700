//! Mutual TLS between meshed workloads.
//!
//! - [`credentials`]: the workload certificate and trust bundle every handshake reads.

pub mod credentials;

pub use credentials::{Credentials, CredentialsError, Loaded};
