//! The outcome of an applied write: the seq it committed at and the ids it
//! created. The exactly-once record stores it; `writeResponse` and `applied`
//! carry it.

use crate::ids::{Id, Seq};
use serde::{Deserialize, Serialize};

/// A created row's id, and the temp id it replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedId {
    #[serde(rename = "_type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_id: Option<Id>,
    pub id: Id,
}

/// The recorded outcome of an applied write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub seq: Seq,
    pub created: Vec<CreatedId>,
    /// When it was applied (Unix milliseconds).
    pub at_ms: u64,
}
