//! The Skein API: custom resource types and the names every role shares.

pub mod crds;
pub mod duration;
pub mod meshconfig;
pub mod names;

pub use duration::Duration;
pub use meshconfig::{MeshConfig, MeshConfigSpec, MeshConfigStatus};
