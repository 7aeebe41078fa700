//! `skein dev`: a local playground on one machine, no containers needed — a real Kubernetes
//! control plane on loopback (`cluster`), a node running pods as processes in network
//! namespaces (`node`), and `up`/`down` to bring the whole mesh and its demo up.

pub mod background;
pub mod cluster;
pub mod node;
pub mod up;

pub use up::{down, up};
