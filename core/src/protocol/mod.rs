//! The wire protocol. Each version lives in its own module; `v1` is current.

pub mod codec;
pub mod v1;

pub use codec::{Codec, DecodeError};
