//! Wire errors (defined in `statecast-protocol`) and the one place where the
//! engine's failures become them: [`From`] for store, commit and policy
//! errors, and the few answers a failed durability wait gets, which say what
//! could not be made durable.

use crate::policy::PolicyError;
use crate::store::{CommitError, StoreError};
pub use statecast_protocol::error::{ErrorReason, WireError};

/// A store failure: 503 when retrying may help (the store is unreachable, a
/// flush failed, the outcome is unknown), else 500.
impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { message, .. } => {
                WireError::new(ErrorReason::Unavailable, format!("the store is unavailable: {message}"))
            }
            StoreError::FlushFailed { message, .. } => {
                WireError::new(ErrorReason::Unavailable, format!("the store failed: {message}"))
            }
            StoreError::OutcomeUnknown { message, .. } => WireError::new(
                ErrorReason::OutcomeUnknown,
                format!("the commit's outcome is unknown; resend with the same writeId: {message}"),
            ),
            other => WireError::internal(other.to_string()),
        }
    }
}

/// A refused or failed commit.
impl From<CommitError> for WireError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::IdConflict { ty, id } => {
                WireError::new(ErrorReason::IdConflict, format!("{ty} id {id} is already taken"))
                    .with_field("instanceId")
            }
            CommitError::Restricted { ty, id, by_ty, by_id } => WireError::new(
                ErrorReason::Restricted,
                format!("{ty}#{id} can't be deleted: {by_ty}#{by_id} still references it"),
            ),
            CommitError::Invalid(m) => WireError::new(ErrorReason::InvalidData, m),
            CommitError::Store(e) => e.into(),
            CommitError::Conflict { ty, id } => {
                WireError::new(ErrorReason::Contended, format!("{ty}#{id} changed during the write"))
            }
            CommitError::Duplicate(rec) => WireError::internal(format!("unexpected duplicate at seq {}", rec.seq)),
        }
    }
}

/// A policy hook that failed (a refusal is `Ok(false)`, answered `DENIED`
/// where it is asked).
impl From<PolicyError> for WireError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Store(e) => e.into(),
            PolicyError::Other(m) => WireError::internal(format!("a policy hook failed: {m}")),
        }
    }
}

/// A wait for durability that failed: whatever was read may be lost, so the
/// client must ask again later (resend with the same writeId).
pub(crate) fn not_durable(e: StoreError) -> WireError {
    WireError::new(
        ErrorReason::OutcomeUnknown,
        format!("the store could not make this durable ({e}); resend with the same writeId once it is back"),
    )
}

/// The writer's answer when its own commit could not be made durable.
pub(crate) fn commit_not_durable(e: &StoreError) -> WireError {
    WireError::new(ErrorReason::OutcomeUnknown, format!("the store failed while committing: {e}"))
}

/// An answer built from reads that could not be made durable.
pub(crate) fn reads_not_durable(e: StoreError) -> WireError {
    WireError::new(ErrorReason::Unavailable, format!("the store could not make what was read durable: {e}"))
}
