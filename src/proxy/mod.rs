//! The data-plane proxy (no kube client in here).

pub mod original_dst;
