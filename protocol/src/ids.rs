//! Ids, commit sequence numbers and the numeric ranges the protocol allows.

/// A row id. Positive ids are real; negative ids are temporary (never stored).
pub type Id = i64;
/// A commit sequence number: one persistent, strictly increasing counter per store.
pub type Seq = u64;

/// The largest integer both codecs (and JavaScript) carry exactly: 2^53 − 1.
pub const MAX_SAFE_INT: i64 = (1 << 53) - 1;
/// Client-minted ids are drawn from `[MINTED_ID_MIN, MINTED_ID_MAX]`.
pub const MINTED_ID_MIN: i64 = 1 << 52;
/// The largest client-minted id (2^53 − 1).
pub const MINTED_ID_MAX: i64 = MAX_SAFE_INT;

/// How a create names the id of its new row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// A negative temporary id, replaced by a server-assigned one.
    Temp,
    /// A client-minted id in `[2^52, 2^53)`, used verbatim.
    Minted,
    /// Any other value: refused with `INVALID_ID`.
    Invalid,
}

/// Classifies an id sent by a client on a create.
pub fn classify_create_id(id: Id) -> IdKind {
    if (-MAX_SAFE_INT..0).contains(&id) {
        IdKind::Temp
    } else if (MINTED_ID_MIN..=MINTED_ID_MAX).contains(&id) {
        IdKind::Minted
    } else {
        IdKind::Invalid
    }
}

/// True when `v` lies within ±(2^53 − 1).
pub fn is_safe_int(v: i64) -> bool {
    (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&v)
}

/// Draws a random client-minted id in `[2^52, 2^53)`.
pub fn mint_id() -> Id {
    use rand::Rng;
    rand::rng().random_range(MINTED_ID_MIN..=MINTED_ID_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_ids_are_classified_by_range() {
        assert_eq!(classify_create_id(-1), IdKind::Temp);
        assert_eq!(classify_create_id(MINTED_ID_MIN), IdKind::Minted);
        assert_eq!(classify_create_id(MINTED_ID_MAX), IdKind::Minted);
        assert_eq!(classify_create_id(0), IdKind::Invalid);
        assert_eq!(classify_create_id(5), IdKind::Invalid);
        assert_eq!(classify_create_id(MINTED_ID_MAX + 1), IdKind::Invalid);
        assert_eq!(classify_create_id(-MAX_SAFE_INT - 1), IdKind::Invalid);
        for _ in 0..100 {
            assert_eq!(classify_create_id(mint_id()), IdKind::Minted);
        }
    }
}
