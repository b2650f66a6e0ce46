//! Contexts and write operations as the wire names them: a context is
//! `"channel/anchorId"`, an operation `save`, `create` or `delete`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A write operation on one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Save,
    Create,
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Save => "save",
            Op::Create => "create",
            Op::Delete => "delete",
        })
    }
}

/// Splits a context name `"job/1"` into channel and anchor id.
pub fn parse_context(name: &str) -> Option<(&str, i64)> {
    let (channel, id) = name.rsplit_once('/')?;
    Some((channel, id.parse().ok()?))
}
