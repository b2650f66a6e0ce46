//! Wire errors (defined in `statecast-protocol`) and the one place where the
//! engine's failures (store, commit, policy) become them.

pub use statecast_protocol::error::{ErrorReason, WireError};
