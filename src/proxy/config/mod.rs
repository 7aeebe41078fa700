//! The proxy's configuration: the data ([`types`], defined in `skein-core` because the control
//! plane writes it), reading it from a file ([`load`]) and the compiled, swappable form requests
//! use ([`compiled`]).

pub mod compiled;
pub mod load;

pub use skein_core::proxy_config as types;

pub use compiled::{Compiled, ConfigError, ConfigStore};
pub use types::*;
