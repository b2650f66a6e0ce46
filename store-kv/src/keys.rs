//! The key layout of the one ordered key space. Every key starts with a one-letter
//! prefix; ids and seqs are big-endian (ids with the sign bit flipped) so that
//! byte order is numeric order.
//!
//! | key | value |
//! |---|---|
//! | `r/<type>/<id>` | a row |
//! | `x/<type>/<field>/<target id><row id>` | empty: the reference index |
//! | `a/<applied key>` | an applied record |
//! | `t/<at_ms><applied key>` | empty: applied records by time, for purging |
//! | `p/<user><client id>` | the highest purged writeId of a client |
//! | `l/<seq>` | a change log entry |
//! | `m/…` | meta: epoch, last seq, reserved seq, log trim point, per-type last id |
//!
//! Type names hold no `/`; field names and client ids are length-prefixed.

use statecast_core::Id;
use statecast_core::store::{AppliedKey, StoreError};

pub(crate) const ROWS: &[u8] = b"r/";
pub(crate) const APPLIED_BY_TIME: &[u8] = b"t/";
pub(crate) const LOG: &[u8] = b"l/";
pub(crate) const META_EPOCH: &[u8] = b"m/epoch";
/// Written by stores before 2026-12 on every commit; now only read at open.
pub(crate) const META_LAST_SEQ: &[u8] = b"m/last_seq";
pub(crate) const META_RESERVED: &[u8] = b"m/reserved";
pub(crate) const META_LOG_TRIMMED: &[u8] = b"m/log_trimmed";

/// An id as 8 bytes whose order is the numeric order.
pub(crate) fn id_bytes(id: Id) -> [u8; 8] {
    ((id as u64) ^ (1 << 63)).to_be_bytes()
}

fn id_from(bytes: &[u8]) -> Result<Id, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| corrupt_key(bytes))?;
    Ok((u64::from_be_bytes(arr) ^ (1 << 63)) as Id)
}

/// The id in the last 8 bytes of a key.
pub(crate) fn trailing_id(key: &[u8]) -> Result<Id, StoreError> {
    let start = key.len().checked_sub(8).ok_or_else(|| corrupt_key(key))?;
    id_from(&key[start..])
}

fn corrupt_key(key: &[u8]) -> StoreError {
    StoreError::corrupt(format!("malformed key {:?}", String::from_utf8_lossy(key)))
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn with_prefix(prefix: &[u8], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + capacity);
    out.extend_from_slice(prefix);
    out
}

/// `r/<type>/`: every row of a type.
pub(crate) fn rows_of(ty: &str) -> Vec<u8> {
    let mut k = with_prefix(ROWS, ty.len() + 9);
    k.extend_from_slice(ty.as_bytes());
    k.push(b'/');
    k
}

pub(crate) fn row(ty: &str, id: Id) -> Vec<u8> {
    let mut k = rows_of(ty);
    k.extend_from_slice(&id_bytes(id));
    k
}

/// `x/<type>/<field>/<target>`: the rows of `ty` whose `field` is `target`.
pub(crate) fn referencing(ty: &str, field: &str, target: Id) -> Vec<u8> {
    let mut k = with_prefix(b"x/", ty.len() + field.len() + 22);
    k.extend_from_slice(ty.as_bytes());
    k.push(b'/');
    push_str(&mut k, field);
    k.push(b'/');
    k.extend_from_slice(&id_bytes(target));
    k
}

pub(crate) fn reference(ty: &str, field: &str, target: Id, id: Id) -> Vec<u8> {
    let mut k = referencing(ty, field, target);
    k.extend_from_slice(&id_bytes(id));
    k
}

fn client(user: Id, client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 12);
    k.extend_from_slice(&id_bytes(user));
    push_str(&mut k, client_id);
    k
}

fn applied_suffix(key: &AppliedKey) -> Vec<u8> {
    let mut k = client(key.user, &key.client_id);
    k.extend_from_slice(&id_bytes(key.write_id));
    k
}

pub(crate) fn applied(key: &AppliedKey) -> Vec<u8> {
    let mut k = b"a/".to_vec();
    k.extend_from_slice(&applied_suffix(key));
    k
}

pub(crate) fn applied_by_time(at_ms: u64, key: &AppliedKey) -> Vec<u8> {
    let mut k = with_prefix(APPLIED_BY_TIME, 8);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&applied_suffix(key));
    k
}

/// The start of the `t/` keys at or after `at_ms`.
pub(crate) fn applied_time_bound(at_ms: u64) -> Vec<u8> {
    let mut k = with_prefix(APPLIED_BY_TIME, 8);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k
}

/// Parses a `t/<at_ms><applied key>` key back into the applied key.
pub(crate) fn parse_applied_by_time(k: &[u8]) -> Result<AppliedKey, StoreError> {
    let bad = || corrupt_key(k);
    let rest = k.strip_prefix(APPLIED_BY_TIME).ok_or_else(bad)?;
    let rest = rest.get(8..).ok_or_else(bad)?;
    let user = id_from(rest.get(..8).ok_or_else(bad)?)?;
    let len_bytes: [u8; 4] = rest.get(8..12).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let client_id = rest.get(12..12 + len).ok_or_else(bad)?;
    let client_id = String::from_utf8(client_id.to_vec()).map_err(|_| bad())?;
    let write_id = id_from(rest.get(12 + len..).ok_or_else(bad)?)?;
    Ok(AppliedKey { user, client_id, write_id })
}

pub(crate) fn purge_mark(user: Id, client_id: &str) -> Vec<u8> {
    let mut k = b"p/".to_vec();
    k.extend_from_slice(&client(user, client_id));
    k
}

pub(crate) fn log(seq: u64) -> Vec<u8> {
    let mut k = with_prefix(LOG, 8);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn last_id(ty: &str) -> Vec<u8> {
    let mut k = b"m/id/".to_vec();
    k.extend_from_slice(ty.as_bytes());
    k
}

/// Reads an 8-byte big-endian number.
pub(crate) fn u64_value(key: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::corrupt(format!("value of {:?} is not 8 bytes", String::from_utf8_lossy(key))))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_numerically() {
        let ids = [i64::MIN, -5, -1, 0, 1, 2, 255, 256, 1 << 52, i64::MAX];
        for w in ids.windows(2) {
            assert!(id_bytes(w[0]) < id_bytes(w[1]));
            assert_eq!(id_from(&id_bytes(w[0])).ok(), Some(w[0]));
        }
    }

    #[test]
    fn applied_keys_round_trip() {
        let key = AppliedKey { user: 42, client_id: "c/1\u{0}é".into(), write_id: 9 };
        let k = applied_by_time(1_234, &key);
        assert!(k.starts_with(&applied_time_bound(1_234)));
        assert!(k < applied_time_bound(1_235));
        assert_eq!(parse_applied_by_time(&k).ok(), Some(key));
        assert!(parse_applied_by_time(b"t/short").is_err());
    }
}
