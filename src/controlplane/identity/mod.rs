//! Workload identity: the control plane as the mesh's certificate authority.
//!
//! - [`ca`]: the signing CA (an intermediate of the mesh root) and the trust bundle (roots),
//!   from the Secret `skein-system/skein-identity-issuer`.
//! - [`trust`]: what the trust bundle holds, and the ledger that keeps a removed root trusted
//!   while certificates it signed are valid (pure).
//! - [`authn`]: who is asking: a projected service-account token, checked with a TokenReview
//!   and bound to a live pod. The configuration stream authenticates with it too.
//! - [`service`]: `Identity/Certify`, a CSR in, a certificate for the pod's SPIFFE ID out.
//! - [`serving`]: the configuration stream's own TLS certificate, from the same CA.

pub mod authn;
pub mod ca;
pub mod service;
pub mod serving;
pub mod trust;

pub use authn::{Authenticate, AuthenticatedProxy, AuthnError, KubeAuthenticator};
pub use ca::CaStore;
pub use service::{IdentityService, IssuedCerts, MtlsSettings};
