//! JSON forms of what the store keeps outside the entity tables: change-log
//! entries (full rows before and after) and the created ids of applied records.

use serde::{Deserialize, Serialize};
use statecast_core::row::Fields;
use statecast_core::store::{Change, CreatedId, StoreError};
use statecast_core::{Id, Row, RowKey, Seq};

#[derive(Serialize, Deserialize)]
struct LoggedRow {
    #[serde(rename = "_version")]
    version: Seq,
    #[serde(rename = "_created")]
    created: Seq,
    fields: Fields,
}

#[derive(Serialize, Deserialize)]
struct LoggedChange {
    #[serde(rename = "type")]
    ty: String,
    id: Id,
    before: Option<LoggedRow>,
    after: Option<LoggedRow>,
}

fn logged(row: &Option<Row>) -> Option<LoggedRow> {
    row.as_ref().map(|r| LoggedRow { version: r.version, created: r.created, fields: r.fields.clone() })
}

/// The log form of a commit's changes.
pub(crate) fn encode_changes(changes: &[Change]) -> String {
    let list: Vec<LoggedChange> = changes
        .iter()
        .map(|c| LoggedChange {
            ty: c.key.ty.to_string(),
            id: c.key.id,
            before: logged(&c.before),
            after: logged(&c.after),
        })
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

/// Decodes a log entry. A version or creation seq of 0 in an after image
/// stands for the entry's own seq (PostgreSQL draws the seq after the rows are written).
pub(crate) fn decode_changes(seq: Seq, text: &str) -> Result<Vec<Change>, StoreError> {
    let list: Vec<LoggedChange> = serde_json::from_str(text)
        .map_err(|e| StoreError::corrupt(format!("change log entry {seq} is not valid: {e}")).with_source(e))?;
    Ok(list
        .into_iter()
        .map(|c| {
            let key = RowKey::new(c.ty, c.id);
            let row = |r: LoggedRow, fill: bool| {
                let fix = |s: Seq| if fill && s == 0 { seq } else { s };
                Row {
                    ty: key.ty.clone(),
                    id: key.id,
                    version: fix(r.version),
                    created: fix(r.created),
                    fields: r.fields,
                }
            };
            Change { before: c.before.map(|r| row(r, false)), after: c.after.map(|r| row(r, true)), key: key.clone() }
        })
        .collect())
}

pub(crate) fn encode_created(created: &[CreatedId]) -> String {
    serde_json::to_string(created).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn decode_created(text: &str) -> Result<Vec<CreatedId>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::corrupt(format!("an applied record is not valid: {e}")).with_source(e))
}
