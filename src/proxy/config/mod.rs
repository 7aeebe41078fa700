//! The proxy's configuration: the data ([`types`]), reading it from a file ([`load`]) and the
//! compiled, swappable form requests use ([`compiled`]).

pub mod compiled;
pub mod load;
pub mod types;

pub use compiled::{Compiled, ConfigError, ConfigStore};
pub use types::*;
