//! Stored values, encoded as MessagePack with named fields.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use statecast_core::store::{Change, StoreError};
use statecast_core::{Fields, Id, Row, RowKey, Seq};
use std::sync::Arc;

/// A row as stored (its type and id are in the key).
#[derive(Serialize, Deserialize)]
struct StoredRow {
    version: Seq,
    created: Seq,
    fields: Fields,
}

impl StoredRow {
    fn from_row(row: &Row) -> Self {
        Self { version: row.version, created: row.created, fields: row.fields.clone() }
    }
    fn into_row(self, ty: Arc<str>, id: Id) -> Row {
        Row { ty, id, version: self.version, created: self.created, fields: self.fields }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredChange {
    ty: String,
    id: Id,
    before: Option<StoredRow>,
    after: Option<StoredRow>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::backend(format!("encoding failed: {e}")).with_source(e))
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    decode_with(bytes, || what.to_owned())
}

/// Decodes; `what` names the value in the error and is only built on failure.
fn decode_with<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::corrupt(format!("{}: {e}", what())).with_source(e))
}

pub(crate) fn encode_row(row: &Row) -> Result<Vec<u8>, StoreError> {
    encode(&StoredRow::from_row(row))
}

/// Decodes a stored row; `ty` is shared by the rows of a type (no allocation
/// per row for its name, nor for an error text unless it fails).
pub(crate) fn decode_row(ty: &Arc<str>, id: Id, bytes: &[u8]) -> Result<Row, StoreError> {
    let stored: StoredRow = decode_with(bytes, || format!("row {ty}#{id}"))?;
    Ok(stored.into_row(ty.clone(), id))
}

pub(crate) fn encode_changes(changes: &[Change]) -> Result<Vec<u8>, StoreError> {
    let stored: Vec<StoredChange> = changes
        .iter()
        .map(|c| StoredChange {
            ty: c.key.ty.to_string(),
            id: c.key.id,
            before: c.before.as_ref().map(StoredRow::from_row),
            after: c.after.as_ref().map(StoredRow::from_row),
        })
        .collect();
    encode(&stored)
}

pub(crate) fn decode_changes(seq: Seq, bytes: &[u8]) -> Result<Vec<Change>, StoreError> {
    let stored: Vec<StoredChange> = decode_with(bytes, || format!("log entry {seq}"))?;
    Ok(stored
        .into_iter()
        .map(|c| {
            let ty: Arc<str> = c.ty.into();
            Change {
                key: RowKey::new(ty.clone(), c.id),
                before: c.before.map(|r| r.into_row(ty.clone(), c.id)),
                after: c.after.map(|r| r.into_row(ty.clone(), c.id)),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_round_trip_with_every_value_kind() {
        let fields = json!({
            "s": "text", "i": -3, "big": 9_007_199_254_740_991_i64, "f": 1.5, "whole_float": 2.0,
            "b": true, "n": null, "j": {"a": [1, "x", null, {"b": 2.25}]}, "t": "2026-11-23T16:00:00Z"
        });
        let row = Row {
            ty: "Task".into(),
            id: 7,
            version: 12,
            created: 3,
            fields: fields.as_object().cloned().unwrap_or_default(),
        };
        let bytes = encode_row(&row).expect("encode");
        let ty: Arc<str> = "Task".into();
        assert_eq!(decode_row(&ty, 7, &bytes).expect("decode"), row);
        let change = Change { key: row.key(), before: None, after: Some(row.clone()) };
        let bytes = encode_changes(std::slice::from_ref(&change)).expect("encode");
        assert_eq!(decode_changes(12, &bytes).expect("decode"), vec![change]);
        assert!(matches!(decode_row(&ty, 7, b"\xc1junk"), Err(StoreError::Corrupt { .. })));
    }
}
